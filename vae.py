"""
The CogVideoX causal 3D VAE (diffusers `AutoencoderKLCogVideoX`), written from scratch.
16 latent channels, x4 in time (frame 0 alone, then groups of 4), x8 in space.
Parameter names equal the diffusers checkpoint keys, so `<base>/vae` loads with strict=True.

    import torch, vae as V
    m = V.VAE.from_pretrained("THUDM/CogVideoX-5b-I2V", dtype=torch.bfloat16, device="cuda")  # or a local folder
    mean, logvar = m.encode(x)                 # x (B, 3, T, H, W) in [-1, 1], T = 4k+1, H, W multiples of 8
    z = m.sample_latent(x) * m.config.scaling_factor        # what the DiT sees (mean + std * eps, scaled)
    video = m.decode(z / m.config.scaling_factor)            # (B, 3, T, H, W), roughly in [-1, 1]
    m.decode(z / m.config.scaling_factor, tile=True)  # tiles (<= 240x360 px) blended at the seams, for 49x480x720
    toy = V.VAE(V.PRESETS["toy"])              # CPU: 9x64x64 -> 3x16x16 latent (x4 space, x4 time)

Time is processed in windows, exactly as the model was run in training (and as diffusers runs it):
pixel frames in windows of 8 (the first window takes the remainder: 49 = 9 + 5*8), latent frames
in windows of 2 (13 = 3 + 5*2). GroupNorm statistics never cross a window; causal convolutions
carry the last frames of one window into the next (the conv cache). `chunk_frames` only sets how
many windows run per forward call (memory vs. speed); it never changes the result.
encode/decode run without autograd (the VAE is frozen throughout stm).
One deliberate difference from diffusers: with an even number of latent frames (T = 5, 13, ...)
diffusers decodes 4t frames (its first window does not keep frame 0 apart); we decode 4(t-1)+1.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing import weights

# -----------------------------------------------------------------------------
# config


@dataclass
class VAEConfig:
    in_channels: int = 3                 # RGB in
    out_channels: int = 3                # RGB out
    # the only block type there is; kept so config.json round-trips
    down_block_types: tuple = ("CogVideoXDownBlock3D",) * 4
    up_block_types: tuple = ("CogVideoXUpBlock3D",) * 4
    block_out_channels: tuple = (128, 256, 256, 512)  # channels per level; space shrinks by 2**(levels-1)
    latent_channels: int = 16            # z channels (the encoder outputs twice that: mean and logvar)
    layers_per_block: int = 3            # resnets per encoder block; decoder blocks have one more
    act_fn: str = "silu"                 # only silu is used by CogVideoX
    norm_eps: float = 1e-6               # encoder resnet GroupNorms (all other norms use 1e-6 fixed, as in diffusers)
    norm_num_groups: int = 32            # GroupNorm groups everywhere
    temporal_compression_ratio: float = 4  # 2**k: the first k down (up) blocks also halve (double) time
    sample_height: int = 480             # training resolution; default tiles are half of it
    sample_width: int = 720
    scaling_factor: float = 1.15258426   # callers multiply latents by this before the DiT (not applied here)
    shift_factor: float | None = None    # unused by CogVideoX
    latents_mean: tuple | None = None    # unused by CogVideoX
    latents_std: tuple | None = None     # unused by CogVideoX
    force_upcast: bool = True            # advice to pipelines: run the VAE in fp32 when the rest is fp16
    use_quant_conv: bool = False         # CogVideoX has no quant convs (True is rejected)
    use_post_quant_conv: bool = False
    invert_scale_latents: bool = False   # CogVideoX 1.5 I2V quirk: the image latent is divided by scaling_factor


PRESETS = {
    "cogvideox-2b": VAEConfig(scaling_factor=1.15258426),
    "cogvideox-5b": VAEConfig(scaling_factor=0.7),  # also the 5B-I2V VAE
    # CPU toy: x4 space (3 levels), x4 time, 16 latent channels so the real DiT input layout holds
    "toy": VAEConfig(down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
                     block_out_channels=(8, 16, 32), layers_per_block=1, norm_num_groups=4,
                     sample_height=64, sample_width=64, scaling_factor=1.0),
}

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONV_SPLIT_NUMEL = 2**30  # larger conv inputs are convolved in time slices (cuDNN's 32-bit indexing)

# -----------------------------------------------------------------------------
# time bookkeeping


@dataclass
class Frames:
    """The frame windows inside the chunk being processed. The model only ever saw one window per
    call in training, so GroupNorm statistics span one window; the clip's frame 0 (present when
    `first`) is encoded alone, so it is kept apart whenever time is halved or doubled."""
    sizes: list       # frames per window, in order
    first: bool       # this chunk starts at frame 0 of the clip

    def halved(self):
        sizes = [1 + (n - 1) // 2 if self.first and i == 0 else n // 2 for i, n in enumerate(self.sizes)]
        return Frames(sizes, self.first)

    def doubled(self):
        sizes = [1 + 2 * (n - 1) if self.first and i == 0 else 2 * n for i, n in enumerate(self.sizes)]
        return Frames(sizes, self.first)


def silu(x):
    # in place when no graph is recorded: the VAE is frozen here, and it saves one activation of memory
    return F.silu(x, inplace=not torch.is_grad_enabled())


def resize(x, size, first):
    """Nearest-neighbour resize of (B, C, T, H, W) to `size` = (T', H', W'), frame 0 resized on its own."""
    if first and x.shape[2] > 1:
        head = F.interpolate(x[:, :, :1], size=(1, *size[1:]))
        rest = F.interpolate(x[:, :, 1:], size=(size[0] - 1, *size[1:]))
        return torch.cat([head, rest], dim=2)
    return F.interpolate(x, size=tuple(size))

# -----------------------------------------------------------------------------
# layers


class CausalConv3d(nn.Module):
    """3D conv that only looks back in time. In front of the chunk go the k-1 last input frames of
    the previous chunk (the cache), or copies of frame 0 at the start of the clip; space is
    zero-padded by the conv itself."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, k, padding=(0, k // 2, k // 2))
        self.cache = None  # (B, C, k-1, H, W), not a parameter; VAE._run resets it per clip

    def forward(self, x):                                               # (B, Cin, T, H, W)
        k = self.conv.kernel_size[0]
        if k == 1:
            return self.conv(x)
        front = self.cache if self.cache is not None else x[:, :, :1].expand(-1, -1, k - 1, -1, -1)
        x = torch.cat([front, x], dim=2)                                # (B, Cin, T+k-1, H, W)
        self.cache = x[:, :, -(k - 1):].clone()  # a copy, so the padded chunk can be freed
        if x.numel() <= CONV_SPLIT_NUMEL:
            return self.conv(x)                                         # (B, Cout, T, H, W)
        # cuDNN cannot index tensors past 2**31 elements: convolve overlapping time slices (exact)
        T, per_frame = x.shape[2] - k + 1, x.numel() // x.shape[2]
        step = max(1, CONV_SPLIT_NUMEL // per_frame - (k - 1))          # output frames per slice
        return torch.cat([self.conv(x[:, :, t:t + step + k - 1]) for t in range(0, T, step)], dim=2)


class GroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics never cross a frame window (see Frames)."""

    def forward(self, x, fr, zq=None):  # zq unused: same call signature as SpatialNorm
        norm = lambda t: F.group_norm(t, self.num_groups, self.weight, self.bias, self.eps)
        return norm(x) if len(fr.sizes) == 1 else torch.cat([norm(w) for w in x.split(fr.sizes, dim=2)], dim=2)


class SpatialNorm(nn.Module):
    """Decoder norm conditioned on the latent (arXiv 2209.09002): GroupNorm(f) * conv_y(zq) + conv_b(zq),
    with zq the latent chunk resized to f's shape, so every decoder layer sees the latent directly."""

    def __init__(self, channels, zq_channels, groups):
        super().__init__()
        self.norm_layer = GroupNorm(groups, channels, eps=1e-6)
        self.conv_y = CausalConv3d(zq_channels, channels, 1)
        self.conv_b = CausalConv3d(zq_channels, channels, 1)

    def forward(self, f, fr, zq):                                       # f (B, C, T, H, W), zq (B, Z, t, h, w)
        zq = resize(zq, f.shape[2:], fr.first)                          # (B, Z, T, H, W)
        h = self.norm_layer(f, fr)
        if torch.is_grad_enabled():
            return h * self.conv_y(zq) + self.conv_b(zq)
        return h.mul_(self.conv_y(zq)).add_(self.conv_b(zq))            # one full-size temporary at a time


class ResnetBlock(nn.Module):
    """norm -> silu -> causal conv, twice, plus a (1x1x1 conv) shortcut. Encoder: GroupNorm;
    decoder: SpatialNorm (zq given)."""

    def __init__(self, cin, cout, groups, eps, zq_channels=None):
        super().__init__()
        norm = (lambda c: GroupNorm(groups, c, eps=eps)) if zq_channels is None else \
            (lambda c: SpatialNorm(c, zq_channels, groups))
        self.norm1, self.conv1 = norm(cin), CausalConv3d(cin, cout, 3)
        self.norm2, self.conv2 = norm(cout), CausalConv3d(cout, cout, 3)
        self.conv_shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x, fr, zq=None):                                  # (B, Cin, T, H, W)
        h = self.conv1(silu(self.norm1(x, fr, zq)))                     # (B, Cout, T, H, W)
        h = self.conv2(silu(self.norm2(h, fr, zq)))  # dropout is 0 in every CogVideoX VAE
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h + x if torch.is_grad_enabled() else h.add_(x)


def conv2d_per_frame(conv, x, **kw):
    # a Conv2d applied to every frame, as one Conv3d with a 1-frame kernel: no (B*T, C, H, W) copies
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, *conv.stride), **kw)


def pool_pairs(x):
    """Average consecutive frame pairs of (B, C, T, H, W). In fp32 where x is bf16: CPU has no bf16 avg_pool3d,
    and the mean of two bf16 values rounded once is what a GPU kernel returns too."""
    return F.avg_pool3d(x.float(), (2, 1, 1)).to(x.dtype)


class Downsample(nn.Module):
    """Halve H, W with a stride-2 conv; with compress_time also average frame pairs (frame 0 kept alone)."""

    def __init__(self, channels, compress_time):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)
        self.compress_time = compress_time

    def forward(self, x, fr):                                           # (B, C, T, H, W)
        if self.compress_time:
            if fr.first and x.shape[2] > 1:
                x = torch.cat([x[:, :, :1], pool_pairs(x[:, :, 1:])], dim=2)
            elif not fr.first:
                x = pool_pairs(x)                                       # (B, C, T/2, H, W)
            fr = fr.halved()
        x = F.pad(x, (0, 1, 0, 1))  # pad right/bottom only, as the original (a 3x3 stride-2 conv, no symmetric padding)
        return conv2d_per_frame(self.conv, x), fr                       # (B, C, T', H/2, W/2)


class Upsample(nn.Module):
    """Double H, W (nearest) then a 3x3 conv; with compress_time also repeat every frame but frame 0 twice."""

    def __init__(self, channels, compress_time):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.compress_time = compress_time

    def forward(self, x, fr):                                           # (B, C, T, H, W)
        B, C, T, H, W = x.shape
        if self.compress_time and T > 1:
            fr = fr.doubled()
            x = resize(x, (sum(fr.sizes), 2 * H, 2 * W), fr.first)      # (B, C, T', 2H, 2W)
        else:
            x = F.interpolate(x, scale_factor=(1, 2, 2))
        return conv2d_per_frame(self.conv, x, padding=(0, 1, 1)), fr

# -----------------------------------------------------------------------------
# blocks


class DownBlock(nn.Module):
    def __init__(self, cin, cout, n, groups, eps, downsample, compress_time):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups, eps) for i in range(n)])
        self.downsamplers = nn.ModuleList([Downsample(cout, compress_time)]) if downsample else None

    def forward(self, x, fr):
        for r in self.resnets:
            x = r(x, fr)
        return self.downsamplers[0](x, fr) if self.downsamplers is not None else (x, fr)


class MidBlock(nn.Module):
    def __init__(self, channels, groups, eps, zq_channels=None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, eps, zq_channels) for _ in range(2)])

    def forward(self, x, fr, zq=None):
        for r in self.resnets:
            x = r(x, fr, zq)
        return x


class UpBlock(nn.Module):
    def __init__(self, cin, cout, n, groups, zq_channels, upsample, compress_time):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups, 1e-6, zq_channels)
                                      for i in range(n)])
        self.upsamplers = nn.ModuleList([Upsample(cout, compress_time)]) if upsample else None

    def forward(self, x, fr, zq):
        for r in self.resnets:
            x = r(x, fr, zq)
        return self.upsamplers[0](x, fr) if self.upsamplers is not None else (x, fr)


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        ch, t_levels, g = c.block_out_channels, round(math.log2(c.temporal_compression_ratio)), c.norm_num_groups
        self.conv_in = CausalConv3d(c.in_channels, ch[0], 3)
        self.down_blocks = nn.ModuleList([
            DownBlock(ch[max(i - 1, 0)], ch[i], c.layers_per_block, g, c.norm_eps,
                      downsample=i < len(ch) - 1, compress_time=i < t_levels) for i in range(len(ch))])
        self.mid_block = MidBlock(ch[-1], g, c.norm_eps)
        self.norm_out = GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = CausalConv3d(ch[-1], 2 * c.latent_channels, 3)

    def forward(self, x, fr):                                           # (B, 3, T, H, W)
        h = self.conv_in(x)                                             # (B, ch0, T, H, W)
        for block in self.down_blocks:
            h, fr = block(h, fr)                                        # time /2 in the first blocks, space /2 but last
        h = self.mid_block(h, fr)                                       # (B, ch-1, t, h, w)
        return self.conv_out(silu(self.norm_out(h, fr)))                # (B, 2*Z, t, h, w)


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        ch, t_levels, g = c.block_out_channels[::-1], round(math.log2(c.temporal_compression_ratio)), c.norm_num_groups
        z = c.latent_channels
        self.conv_in = CausalConv3d(z, ch[0], 3)
        self.mid_block = MidBlock(ch[0], g, 1e-6, zq_channels=z)
        self.up_blocks = nn.ModuleList([
            UpBlock(ch[max(i - 1, 0)], ch[i], c.layers_per_block + 1, g, z,
                    upsample=i < len(ch) - 1, compress_time=i < t_levels) for i in range(len(ch))])
        self.norm_out = SpatialNorm(ch[-1], z, g)
        self.conv_out = CausalConv3d(ch[-1], c.out_channels, 3)

    def forward(self, z, fr):                                           # (B, Z, t, h, w)
        h = self.mid_block(self.conv_in(z), fr, z)                      # (B, ch0, t, h, w)
        for block in self.up_blocks:
            h, fr = block(h, fr, z)                                     # time x2 in the first blocks, space x2 but last
        return self.conv_out(silu(self.norm_out(h, fr, z)))             # (B, 3, T, H, W)

# -----------------------------------------------------------------------------
# the VAE


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        c = config
        if c.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn={c.act_fn!r}: only silu is supported")
        if c.use_quant_conv or c.use_post_quant_conv:
            raise ValueError("use_quant_conv / use_post_quant_conv: CogVideoX has none and they are not supported")
        n = len(c.block_out_channels)
        if len(c.down_block_types) != n or len(c.up_block_types) != n or \
                set(c.down_block_types) != {"CogVideoXDownBlock3D"} or set(c.up_block_types) != {"CogVideoXUpBlock3D"}:
            raise ValueError("down/up_block_types: need one CogVideoXDown/UpBlock3D per entry of block_out_channels")
        self.config = config
        self.space = 2 ** (n - 1)                                  # pixels per latent, along H and W
        self.time = round(c.temporal_compression_ratio)            # frames per latent frame after frame 0
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)

    # --- loading -------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_hub_id, subfolder="vae", dtype=None, device=None):
        """A diffusers-format VAE folder (config.json + diffusion_pytorch_model.safetensors, or shards),
        a base-model folder holding `subfolder`, or a hub id."""
        return weights.load_pretrained(cls, VAEConfig, path_or_hub_id, subfolder, WEIGHTS_NAME, dtype, device)

    def save_pretrained(self, folder):
        weights.write_config(folder, self.config, extra={"_class_name": "AutoencoderKLCogVideoX"})
        weights.save_state_dict(self.state_dict(), folder, WEIGHTS_NAME)

    # --- public API ----------------------------------------------------------

    def encode(self, x, chunk_frames=8, tile=False, tile_size=None, tile_overlap=None, grad=False):
        """x (B, 3, T, H, W) in [-1, 1], T = 4k+1 -> (mean, logvar), each (B, Z, k+1, H/8, W/8), unscaled.
        chunk_frames: pixel frames per forward call, a multiple of 8 (None = the whole clip at once).
        tile / tile_size=(h, w) / tile_overlap=(h, w), in pixels: encode overlapping spatial tiles.
        grad: record the autograd graph (to train the VAE itself); by default it runs without."""
        self._check(x, "x", self.config.in_channels, lambda T: T % self.time == 1, f"{self.time}k+1 frames")
        self._check_hw(x.shape[-2:], self.space, "x")
        x = x.to(self.encoder.conv_in.conv.weight.dtype)
        run = lambda t: self._run(self.encoder, t, 2 * self.time, chunk_frames, "chunk_frames", grad)
        h = self._tiled(run, x, tile_size, tile_overlap, down=self.space) if tile or tile_size else run(x)
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the clamp diffusers' DiagonalGaussianDistribution applies

    def decode(self, z, chunk_frames=2, tile=False, tile_size=None, tile_overlap=None, grad=False):
        """z (B, Z, t, h, w) unscaled -> video (B, 3, 4(t-1)+1, 8h, 8w).
        chunk_frames: latent frames per forward call, a multiple of 2 (None = all at once).
        tile / tile_size / tile_overlap / grad: as in encode, in output pixels."""
        self._check(z, "z", self.config.latent_channels, lambda t: t >= 1, "at least one frame")
        z = z.to(self.decoder.conv_in.conv.weight.dtype)
        run = lambda t: self._run(self.decoder, t, 2, chunk_frames, "chunk_frames", grad)
        return self._tiled(run, z, tile_size, tile_overlap, up=self.space) if tile or tile_size else run(z)

    def sample_latent(self, x, generator=None, **kw):
        """A posterior sample mean + std * eps for video x (unscaled; multiply by scaling_factor for the DiT)."""
        mean, logvar = self.encode(x, **kw)
        # drawn where the generator lives (a CPU generator also serves a GPU model), then moved
        dev = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=dev).to(mean)
        return mean + (0.5 * logvar).exp() * eps

    def forward(self, x):
        """The training pass (toy.py trains the toy VAE with it), with autograd: video x (B, 3, T, H, W) ->
        (reconstruction of a posterior sample (B, 3, T, H, W), mean, logvar). Each network sees the whole clip in
        one call, on the same time windows encode / decode use, so training matches inference."""
        mean, logvar = self.encode(x, chunk_frames=None, grad=True)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)        # the decoder must tolerate posterior noise
        return self.decode(z, chunk_frames=None, grad=True), mean, logvar

    def decode_bytes(self, z_shape, dtype=torch.bfloat16, chunk_frames=2, tile_size=None):
        """Rough peak bytes of one decode (a rule, derived, not measured): ~5 live tensors of the widest
        full-resolution activation (the last upsample's output: block_out_channels[1] channels) over one call's
        pixel frames plus the causal-conv cache, on one tile (tile_size in pixels) or the whole frame; plus the
        output. 49x480x720 bf16, untiled: ~11.7 GiB; a 240x360 tile: ~3.1 GiB."""
        B, _, t, h, w = z_shape
        size = torch.empty((), dtype=dtype).element_size()
        H, W = tile_size or (h * self.space, w * self.space)
        frames = self.time * (min(chunk_frames or t, t) + 1) + 2
        widest = max(self.config.block_out_channels[:2])
        return 5 * B * widest * frames * H * W * size + B * 3 * (self.time * (t - 1) + 1) * h * w * self.space ** 2 * 4

    def plan_decode(self, z_shape, free, dtype=torch.bfloat16):
        """-> (decode kwargs, bytes needed, why): untiled, with as many latent frames per call as fit in half of
        `free` bytes (fewer calls; half, so a roomy GPU is not filled for little speed), else 2 (one window) if
        that fits in 80%; else tiled, 2 latent frames per call, the default tiles (half the training size) halved
        until they fit in 80% (down to 64x64 px)."""
        t, h, w = z_shape[2:]
        for n in range(t + t % 2, 1, -2):                   # untiled, the most windows per call that fit
            need = self.decode_bytes(z_shape, dtype, n)
            if need <= (0.5 if n > 2 else 0.8) * free:
                return {"tile": False, "chunk_frames": n}, need, "fits untiled"
        untiled = self.decode_bytes(z_shape, dtype, 2)
        ts = [min(self.config.sample_height // 2, h * self.space), min(self.config.sample_width // 2, w * self.space)]
        while True:
            need = self.decode_bytes(z_shape, dtype, 2, tile_size=ts)
            if need <= 0.8 * free or max(ts) <= 64:
                why = f"an untiled decode needs ~{untiled / 2**30:.1f} GiB"
                return {"tile": True, "tile_size": tuple(ts), "chunk_frames": 2}, need, why
            ts = [max(64, s // 2 // self.space * self.space) for s in ts]

    # --- time chunks and spatial tiles --------------------------------------

    def _run(self, net, x, window, chunk_frames, name, grad=False):
        """Run `net` over time windows of `window` frames (the first takes the remainder), a few windows
        per call, carrying the causal-conv caches from one call to the next; without autograd unless `grad`."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self._windows(net, x, window, chunk_frames, name)

    def _windows(self, net, x, window, chunk_frames, name):
        T = x.shape[2]
        n = max(T // window, 1)
        sizes = [T - window * (n - 1)] + [window] * (n - 1)
        if chunk_frames is not None and (chunk_frames < window or chunk_frames % window):
            raise ValueError(f"{name}={chunk_frames}: must be a positive multiple of {window} (or None)")
        per = n if chunk_frames is None else chunk_frames // window   # windows per call
        self._reset_caches()
        out, t0 = [], 0
        for i in range(0, n, per):
            fr = Frames(sizes[i:i + per], first=i == 0)
            out.append(net(x[:, :, t0:t0 + sum(fr.sizes)], fr))
            t0 += sum(fr.sizes)
        self._reset_caches()  # do not keep the last chunk's frames alive
        return torch.cat(out, dim=2)

    def _reset_caches(self):
        for m in self.modules():
            if isinstance(m, CausalConv3d):
                m.cache = None

    def _tiled(self, run, x, tile_size, tile_overlap, down=1, up=1):
        """Run `run` on overlapping spatial tiles of x and blend the results linearly across each overlap.
        Tiles are laid out on the latent grid (so encoder tiles start on multiples of 8 pixels) by `_spans`:
        at most `tile_size`, as few and as evenly sized as fit, neighbours overlapping by `tile_overlap`."""
        f = self.space
        ts = tile_size or (self.config.sample_height // 2, self.config.sample_width // 2)
        ov = tile_overlap or (ts[0] // 6, ts[1] // 5)  # diffusers' default overlap factors
        ts = [max(1, s // f) for s in ts]                                   # latent units
        ov = [min(max(1, round(o / f)), s // 2) for o, s in zip(ov, ts)]   # never more than half a tile
        H, W = (s // down for s in x.shape[-2:])                            # latent-grid size
        rows, cols = _spans(H, ts[0], ov[0]), _spans(W, ts[1], ov[1])
        out = wsum = None
        for i, (y0, y1) in enumerate(rows):
            for j, (x0, x1) in enumerate(cols):
                part = run(x[..., y0 * down:y1 * down, x0 * down:x1 * down])
                w = _ramp(rows, i, up)[:, None] * _ramp(cols, j, up)[None, :]    # (h, w) in output pixels
                w = w.to(part)
                if out is None:
                    out = part.new_zeros(*part.shape[:3], H * up, W * up)
                    wsum = part.new_zeros(H * up, W * up)
                sl = (slice(y0 * up, y1 * up), slice(x0 * up, x1 * up))
                out[..., sl[0], sl[1]] += part * w
                wsum[sl] += w
        return out.div_(wsum)

    # --- input checks --------------------------------------------------------

    @staticmethod
    def _check(x, name, channels, frames_ok, frames_msg):
        if not torch.is_tensor(x) or x.ndim != 5:
            raise ValueError(f"{name}: expected a tensor (B, C, T, H, W), got {getattr(x, 'shape', type(x))}")
        if x.shape[1] != channels:
            raise ValueError(f"{name}: expected {channels} channels in dim 1 of (B, C, T, H, W), "
                             f"got shape {tuple(x.shape)}")
        if not frames_ok(x.shape[2]):
            raise ValueError(f"{name}: {x.shape[2]} frames in dim 2; need {frames_msg}")

    @staticmethod
    def _check_hw(hw, f, name):
        if hw[0] % f or hw[1] % f:
            raise ValueError(f"{name}: height and width must be multiples of {f}, got {tuple(hw)}")


def _spans(n, size, overlap):
    """The tiles along an axis of length n, as (start, stop): the fewest of at most `size` that cover it with
    neighbours overlapping by `overlap`, all overlaps exactly `overlap` and lengths differing by at most 1.
    Why: a tile costs its area, so the tiles cover no more than n + (k-1) * overlap (what diffusers' tiles cover,
    its last one cut short); even lengths keep every tile's GroupNorm statistics over a large area (a thin
    remainder tile would stand out)."""
    if n <= size:
        return [(0, n)]                                  # one tile: the untiled result
    k = math.ceil((n - overlap) / (size - overlap))      # fewest tiles: k * size - (k-1) * overlap >= n
    total = n + (k - 1) * overlap                        # what the k tiles cover, the overlaps counted twice
    lengths = [total // k + (i < total % k) for i in range(k)]   # the longer ones first; each <= size
    spans, start = [], 0
    for length in lengths:
        spans.append((start, start + length))
        start += length - overlap                        # the next tile starts `overlap` before this one ends
    return spans


def _ramp(spans, i, scale=1):
    """Blend weight along one axis for tile i of `spans` (latent units), in output units (x `scale`): rises
    linearly over the overlap with the previous tile, falls over the overlap with the next one, 1 elsewhere.
    Neighbours' ramps over one overlap sum to 1; where a tile's two ramps cross, the smaller one wins."""
    start, stop = (scale * s for s in spans[i])
    w = torch.ones(stop - start)
    if i > 0:                                            # overlap with the previous tile: [start, its stop)
        k = scale * spans[i - 1][1] - start
        w[:k] = torch.minimum(w[:k], (torch.arange(k) + 0.5) / k)
    if i + 1 < len(spans):                               # overlap with the next tile: [its start, stop)
        k = stop - scale * spans[i + 1][0]
        w[len(w) - k:] = torch.minimum(w[len(w) - k:], (k - torch.arange(k) - 0.5) / k)
    return w
