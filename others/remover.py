"""
MiniMax-Remover (Zi et al. 2025, arXiv 2505.24873), the Split stage's video inpainter, written from scratch:
the Wan 2.1 causal 3D VAE, the remover DiT (a Wan 2.1 video transformer with the text cross-attention
taken out) and its samplers (2nd-order UniPC, as upstream; flow-matching Euler). Parameter names equal the
checkpoint keys of `zibojia/minimax-remover` (`vae/`, `transformer/`, `scheduler/`, diffusers layout), so it loads
with strict=True through weights.py and no rename table.

How it inpaints: the hole (the subject's mask, dilated) is blacked out of the video; the holed video and the
mask (as a video, 2m-1 on 3 channels) are both VAE-encoded and normalised with the VAE's latents_mean/std;
the DiT denoises [noise | holed-video latent | mask latent] (16 + 16 + 16 = 48 channels) from pure noise with
UniPC or Euler on flow sigmas (no text, no guidance); the VAE decodes the result.

    from others import remover as R
    rm = R.Remover.from_pretrained("zibojia/minimax-remover", dtype=torch.float16, device="cuda")  # or a folder
    bg = rm(video, mask, steps=12, dilate=6)   # uint8 (T, H, W, 3), bool (T, H, W) -> uint8 (T, H, W, 3)
    python remover.py                          # toy end-to-end run on CPU + parameter counts of the presets
    python -m pytest -q tests/test_remover.py  # parity with diffusers' Wan classes (CPU, no network)

T = 4k+1 frames, H and W multiples of 16 (49x480x720 is fine). The VAE runs over time in chunks with causal
caches that carry across chunks, so chunking changes memory, never the result (see WanVAE).
Upstream runs the checkpoint's scheduler, UniPC (2nd order, bh2, flow sigmas); so does this file by default
(FlowUniPC, parity with diffusers' UniPCMultistepScheduler in tests/test_split_release.py); first-order Euler on
the FlowMatchEuler ladder is the alternative (FlowEuler; `decompose.py --remover-sampler euler`).
"""
import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing import weights
from dit import GELU, TimestepEmbedding    # the same modules and key names in Wan (ff.net.0.proj, linear_1/2)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# -----------------------------------------------------------------------------
# configs (field names = keys of the checkpoint's config.json files)


@dataclass
class WanVAEConfig:
    base_dim: int = 96                       # channels at full resolution
    decoder_base_dim: int | None = None      # None: same as base_dim
    z_dim: int = 16                          # latent channels (the encoder outputs 2x: mean, logvar)
    dim_mult: tuple = (1, 2, 4, 4)           # channels per level = base_dim * mult; space /2 between levels
    num_res_blocks: int = 2                  # resnets per encoder level (decoder levels have one more)
    attn_scales: tuple = ()                  # Wan 2.1 has no attention inside levels (only in the mid blocks)
    temperal_downsample: tuple = (False, True, True)  # (sic) which level transitions also halve time
    dropout: float = 0.0
    # per-channel statistics of the latent; the remover normalises latents with them (z - mean) / std
    latents_mean: tuple = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                           0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
    latents_std: tuple = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                          3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
    is_residual: bool = False                # Wan 2.2 VAE layout (not supported)
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None            # Wan 2.2 pixel patchify (not supported)
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8


@dataclass
class RemoverConfig:
    patch_size: tuple = (1, 2, 2)            # (t, h, w) latent patch per token
    num_attention_heads: int = 12            # width D = heads * head dim
    attention_head_dim: int = 128            # RoPE splits it t/h/w = d - 2*2(d//6), 2(d//6), 2(d//6): 44/42/42
    in_channels: int = 48                    # [noisy | holed-video latent | mask latent]
    out_channels: int = 16                   # velocity of the noisy latent
    freq_dim: int = 256                      # timestep sinusoid width
    ffn_dim: int = 8960                      # feed-forward hidden width
    num_layers: int = 30
    cross_attn_norm: bool = True             # unused: no cross-attention here; kept so config.json round-trips
    qk_norm: str | None = "rms_norm_across_heads"  # RMSNorm over all heads at once on q and k
    eps: float = 1e-6                        # every LayerNorm / RMSNorm
    added_kv_proj_dim: int | None = None     # Wan I2V image tokens (not in the remover)
    rope_max_seq_len: int = 1024             # largest position along any axis


@dataclass
class SchedulerConfig:
    """Both keys the remover's scheduler may carry: FlowMatchEulerDiscreteScheduler's `shift`, or
    UniPCMultistepScheduler's `flow_shift` (with use_flow_sigmas); the flow shift wins when present."""
    num_train_timesteps: int = 1000
    shift: float = 1.0
    flow_shift: float | None = None
    use_flow_sigmas: bool | None = None
    prediction_type: str | None = None       # UniPC configs: must be flow_prediction
    use_dynamic_shifting: bool = False       # resolution-dependent shift (needs a `mu`; not used by Wan)
    solver_order: int = 2                    # UniPC only: 2nd order, as the remover's checkpoint sets it
    solver_type: str = "bh2"                 # UniPC only: the B(h) = expm1(-h) variant
    final_sigmas_type: str = "zero"          # UniPC only: the last step lands on sigma 0


# Real configs. vae: the Wan 2.1 VAE (the defaults above). transformer: Wan2.1-1.3B minus cross-attention
# (author, zibojia/MiniMax-Remover#23/#36); the shapes are inferred from the size of the fp16 single-file
# conversion (2.25 GB ~ 1.127B params, which this config gives); the folder's config.json always wins.
VAE_PRESETS = {"wan2.1": WanVAEConfig(),
               "toy": WanVAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1)}
PRESETS = {"minimax-remover": RemoverConfig(),
           "toy": RemoverConfig(num_attention_heads=2, attention_head_dim=32, ffn_dim=96, num_layers=2)}

# -----------------------------------------------------------------------------
# Wan VAE layers. Every layer is a causal function of time: output frame t depends on input frames <= t.
# A clip may be fed in chunks; each layer keeps what it needs of the previous chunk (`cache`, reset per clip),
# so the concatenated outputs equal one pass over the whole clip.


class CausalConv3d(nn.Conv3d):
    """Conv3d that only looks back in time: zeros stand in front of frame 0 (not copies of it, unlike
    CogVideoX); across chunks, the last k-1 input frames of the previous chunk."""

    def __init__(self, cin, cout, k, stride=1):
        k = (k, k, k) if isinstance(k, int) else k
        super().__init__(cin, cout, k, stride=stride, padding=(0, k[1] // 2, k[2] // 2))
        self.cache = None

    def forward(self, x):                                               # (B, Cin, T, H, W)
        n = self.kernel_size[0] - 1
        if n == 0:
            return super().forward(x)
        front = self.cache if self.cache is not None else x.new_zeros(*x.shape[:2], n, *x.shape[3:])
        x = torch.cat([front, x], dim=2)                                # (B, Cin, T+n, H, W)
        self.cache = x[:, :, -n:].clone()  # a copy, so the padded chunk can be freed
        return super().forward(x)                                       # (B, Cout, T, H, W)


class RMSNorm(nn.Module):
    """x / |x| over channels, times sqrt(C) * gamma: a per-pixel norm, so no statistic crosses frames or chunks."""

    def __init__(self, dim, images=False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))
        self.scale = dim ** 0.5

    def forward(self, x):                                               # (B, C, [T,] H, W)
        g = self.gamma.view(-1, *[1] * (x.ndim - 2))  # the 2D-shaped gamma of the attention norm, on video too
        return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * g


def conv2d_per_frame(conv, x, **kw):
    # a Conv2d on every frame, as one Conv3d with a 1-frame kernel: no (B*T, C, H, W) copies
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, *conv.stride), **kw)


class ResidualBlock(nn.Module):
    """(RMSNorm -> SiLU -> causal conv) twice, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = RMSNorm(cin), CausalConv3d(cin, cout, 3)
        self.norm2, self.conv2 = RMSNorm(cout), CausalConv3d(cout, cout, 3)
        self.conv_shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):                                               # (B, Cin, T, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))  # dropout is 0 in the Wan VAE
        return h + self.conv_shortcut(x)                                # (B, Cout, T, H, W)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (never across frames), residual."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):                                               # (B, C, T, H, W)
        B, C, T, H, W = x.shape
        qkv = conv2d_per_frame(self.to_qkv, self.norm(x))               # (B, 3C, T, H, W)
        qkv = qkv.permute(0, 2, 3, 4, 1).reshape(B * T, 1, H * W, 3 * C)
        q, k, v = qkv.chunk(3, dim=-1)                                  # (B*T, 1, HW, C) each
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3)             # (B, C, T, H, W)
        return x + conv2d_per_frame(self.proj, a)


class Resample(nn.Module):
    """Space /2 (encoder) or x2 (decoder), and in the *3d modes time /2 or x2, frame 0 always kept alone.

    downsample3d: out[0] = in[0]; out[j] = time_conv(in[2j-2], in[2j-1], in[2j]) (stride 2, no padding),
    so 1 + 2n frames become 1 + n. upsample3d: frame 0 passes; every later frame goes through a causal
    (zero-padded) time conv that ignores frame 0 and emits two frames (channel halves, interleaved),
    so 1 + n frames become 1 + 2n. This is what the original's chunk-by-chunk loop computes."""

    def __init__(self, dim, mode):
        super().__init__()
        self.mode = mode
        # index 0 of the original's Sequential is the parameter-free pad / nearest-upsample; key: resample.1
        if mode.startswith("up"):  # the up conv also halves the width (the decoder's levels expect it)
            self.resample = nn.ModuleList([nn.Identity(), nn.Conv2d(dim, dim // 2, 3, padding=1)])
        else:
            self.resample = nn.ModuleList([nn.Identity(), nn.Conv2d(dim, dim, 3, stride=2)])
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1))
        elif mode == "downsample3d":
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        self.cache = None   # downsample3d: the last input frame; upsample3d: True once frame 0 went by

    def forward(self, x):                                               # (B, C, T, H, W)
        if self.mode == "upsample3d":
            head = None
            if self.cache is None:                                      # clip start: frame 0 is not doubled
                head, x, self.cache = x[:, :, :1], x[:, :, 1:], True
            if x.shape[2]:
                B, C, T, H, W = x.shape
                x = self.time_conv(x).reshape(B, 2, C, T, H, W)         # two output frames per input frame
                x = x.permute(0, 2, 3, 1, 4, 5).reshape(B, C, 2 * T, H, W)
            x = x if head is None else torch.cat([head, x], dim=2)      # (B, C, T', H, W)
        if self.mode.startswith("up"):
            x = F.interpolate(x, scale_factor=(1, 2, 2))                # nearest; exact for a factor of 2
            return conv2d_per_frame(self.resample[1], x, padding=(0, 1, 1))   # (B, C/2, T', 2H, 2W)
        # pad right/bottom only (a 3x3 stride-2 conv without symmetric padding), as the original
        x = conv2d_per_frame(self.resample[1], F.pad(x, (0, 1, 0, 1)))  # (B, C, T, H/2, W/2)
        if self.mode == "downsample3d":
            first = self.cache is None
            y = x if first else torch.cat([self.cache, x], dim=2)
            self.cache = x[:, :, -1:].clone()
            y = self.time_conv(y) if y.shape[2] >= 3 else y[:, :, :0]
            x = torch.cat([x[:, :, :1], y], dim=2) if first else y      # (B, C, T', H/2, W/2)
        return x


class MidBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nn.Module):
    def __init__(self, c: WanVAEConfig):
        super().__init__()
        dims = [c.base_dim * m for m in (1, *c.dim_mult)]
        self.conv_in = CausalConv3d(c.in_channels, dims[0], 3)
        layers = []  # one flat list, as the checkpoint numbers it: resnets of a level, then its resample
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            layers += [ResidualBlock(cin if j == 0 else cout, cout) for j in range(c.num_res_blocks)]
            if i < len(c.dim_mult) - 1:
                layers.append(Resample(cout, "downsample3d" if c.temperal_downsample[i] else "downsample2d"))
        self.down_blocks = nn.ModuleList(layers)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * c.z_dim, 3)

    def forward(self, x):                                               # (B, 3, T, H, W)
        x = self.conv_in(x)
        for layer in self.down_blocks:
            x = layer(x)                                                # space /2 per level, time /2 where set
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.norm_out(x)))                  # (B, 2Z, t, h, w)


class UpBlock(nn.Module):
    def __init__(self, cin, cout, n, mode):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(cin if j == 0 else cout, cout) for j in range(n)])
        self.upsamplers = nn.ModuleList([Resample(cout, mode)]) if mode else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Decoder(nn.Module):
    def __init__(self, c: WanVAEConfig):
        super().__init__()
        base = c.decoder_base_dim or c.base_dim
        dims = [base * m for m in (c.dim_mult[-1], *c.dim_mult[::-1])]
        up_time = c.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(c.z_dim, dims[0], 3)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(c.dim_mult) - 1
            mode = None if last else ("upsample3d" if up_time[i] else "upsample2d")
            # after the first level, the input is the previous level's up conv output: half its width
            blocks.append(UpBlock(cin if i == 0 else cin // 2, cout, c.num_res_blocks + 1, mode))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], c.out_channels, 3)

    def forward(self, z):                                               # (B, Z, t, h, w)
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)                                                # space x2, time x2 where set
        return self.conv_out(F.silu(self.norm_out(x)))                  # (B, 3, T, H, W)


class WanVAE(nn.Module):
    """The Wan 2.1 VAE: 16 latent channels, x4 in time (frame 0 alone), x8 in space.

    encode / decode run the clip in time chunks (encode: frame 0, then `chunk_frames` pixel frames at a time;
    decode: `chunk_frames` latent frames at a time; None = everything in one call). The causal caches make the
    result independent of the chunking; the chunk size only trades memory for speed. Without autograd."""

    def __init__(self, config: WanVAEConfig):
        super().__init__()
        c = self.config = config
        if c.is_residual or c.patch_size is not None:
            raise ValueError("is_residual / patch_size: that is the Wan 2.2 VAE; only Wan 2.1 is supported")
        if c.attn_scales:
            raise ValueError("attn_scales: no Wan 2.1 VAE has attention inside its levels")
        if len(c.temperal_downsample) != len(c.dim_mult) - 1:
            raise ValueError("temperal_downsample needs one entry per level transition (len(dim_mult) - 1)")
        self.space = 2 ** (len(c.dim_mult) - 1)                          # pixels per latent along H, W
        self.time = 2 ** sum(map(bool, c.temperal_downsample))          # frames per latent frame after frame 0
        self.encoder = Encoder(c)
        self.quant_conv = CausalConv3d(2 * c.z_dim, 2 * c.z_dim, 1)
        self.post_quant_conv = CausalConv3d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder(c)

    @classmethod
    def from_pretrained(cls, path_or_hub_id, subfolder="vae", dtype=None, device=None):
        return weights.load_pretrained(cls, WanVAEConfig, path_or_hub_id, subfolder, WEIGHTS_NAME, dtype, device)

    def save_pretrained(self, folder):
        weights.write_config(folder, self.config, extra={"_class_name": "AutoencoderKLWan"})
        weights.save_state_dict(self.state_dict(), folder, WEIGHTS_NAME)

    @torch.no_grad()
    def encode(self, x, chunk_frames=4):
        """x (B, 3, T, H, W) in [-1, 1], T = 4k+1, H, W multiples of 8 -> (mean, logvar), each (B, Z, k+1, H/8, W/8),
        unscaled (see normalize). chunk_frames: a multiple of 4, or None."""
        B, C, T, H, W = _check(x, "x", self.config.in_channels)
        if T % self.time != 1 or H % self.space or W % self.space:
            raise ValueError(f"x: {T} frames of {H}x{W}; need {self.time}k+1 frames and H, W multiples of "
                             f"{self.space}")
        if chunk_frames is not None and (chunk_frames <= 0 or chunk_frames % self.time):
            raise ValueError(f"chunk_frames={chunk_frames}: must be a positive multiple of {self.time} (or None)")
        x = x.to(self.encoder.conv_in.weight.dtype)
        bounds = [0, T] if chunk_frames is None else [0, *range(1, T, chunk_frames), T]
        h = self._run(self.encoder, x, bounds)
        mean, logvar = self.quant_conv(h).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the clamp of diffusers' DiagonalGaussianDistribution

    @torch.no_grad()
    def decode(self, z, chunk_frames=1):
        """z (B, Z, t, h, w) unscaled -> video (B, 3, 4(t-1)+1, 8h, 8w) clamped to [-1, 1].
        chunk_frames: latent frames per call (any positive number, or None)."""
        B, C, t, h, w = _check(z, "z", self.config.z_dim)
        if chunk_frames is not None and chunk_frames <= 0:
            raise ValueError(f"chunk_frames={chunk_frames}: must be positive (or None)")
        z = self.post_quant_conv(z.to(self.decoder.conv_in.weight.dtype))
        bounds = [0, t] if chunk_frames is None else [*range(0, t, chunk_frames), t]
        return self._run(self.decoder, z, bounds).clamp_(-1.0, 1.0)

    def normalize(self, z):
        """Unscaled latent -> what the remover DiT reads and writes: (z - latents_mean) / latents_std."""
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z):
        mean, std = self._stats(z)
        return z * std + mean

    def _stats(self, z):
        view = lambda v: torch.tensor(v, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        return view(self.config.latents_mean), view(self.config.latents_std)

    def _run(self, net, x, bounds):
        self._reset()
        out = [net(x[:, :, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        self._reset()  # do not keep the last chunk's frames alive
        return torch.cat(out, dim=2)

    def _reset(self):
        for m in self.modules():
            if isinstance(m, (CausalConv3d, Resample)):
                m.cache = None


def _check(x, name, channels):
    if not torch.is_tensor(x) or x.ndim != 5 or x.shape[1] != channels:
        raise ValueError(f"{name}: expected a tensor (B, {channels}, T, H, W), got {getattr(x, 'shape', type(x))}")
    return x.shape

# -----------------------------------------------------------------------------
# The remover DiT


def timestep_embedding(t, dim, max_period=10000):
    """(B,) float timesteps -> (B, dim) sinusoids [cos | sin], frequencies max_period^(-i/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def rope_3d(head_dim, T, H, W, device, theta=10000.0):
    """Rotary angles for a (T, H, W) token grid -> cos, sin (T*H*W, head_dim/2), one angle per adjacent pair
    (x[2i], x[2i+1]) of a head. Pairs are split t/h/w with 2*(d//6) dims for each of h and w, the rest for t;
    each axis has its own frequency ladder theta^(-2i/dim_axis) and integer positions (float64, then cast)."""
    d_hw = 2 * (head_dim // 6)
    d_t = head_dim - 2 * d_hw

    def angles(dim, n):                                                 # (n, dim/2)
        freqs = theta ** -(torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
        return torch.outer(torch.arange(n, dtype=torch.float64, device=device), freqs)

    a = torch.cat([angles(d_t, T)[:, None, None].expand(T, H, W, -1),
                   angles(d_hw, H)[None, :, None].expand(T, H, W, -1),
                   angles(d_hw, W)[None, None].expand(T, H, W, -1)], dim=-1).reshape(T * H * W, -1)
    return a.cos().float(), a.sin().float()


def apply_rope(x, cos, sin):
    """Rotate adjacent pairs of x (B, heads, N, d) by the angles behind cos/sin (N, d/2), in fp32."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)                 # even, odd elements
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


class ConditionEmbedder(nn.Module):
    """Timestep -> temb (B, D) for the output head, and the blocks' modulation time_proj(silu(temb)) (B, 6D)."""

    def __init__(self, c: RemoverConfig, D):
        super().__init__()
        self.freq_dim = c.freq_dim
        self.time_embedder = TimestepEmbedding(c.freq_dim, D)
        self.time_proj = nn.Linear(D, 6 * D)

    def forward(self, t):
        temb = self.time_embedder(timestep_embedding(t, self.freq_dim).to(self.time_proj.weight.dtype))
        return temb, self.time_proj(F.silu(temb))


class RMSNormLast(nn.Module):
    """RMSNorm over the last dim with a weight; the statistic in fp32 whatever the input dtype."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Attention(nn.Module):
    """Self-attention with RMSNorm on q and k taken over all heads at once (before the head split), then RoPE."""

    def __init__(self, c: RemoverConfig, D):
        super().__init__()
        self.heads = c.num_attention_heads
        self.to_q, self.to_k, self.to_v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.norm_q, self.norm_k = RMSNormLast(D, c.eps), RMSNormLast(D, c.eps)
        self.to_out = nn.ModuleList([nn.Linear(D, D), nn.Dropout(0.0)])  # index 0 is the checkpoint key

    def forward(self, x, rope):                                         # (B, N, D)
        split = lambda y: y.unflatten(-1, (self.heads, -1)).transpose(1, 2)   # (B, heads, N, d)
        q = apply_rope(split(self.norm_q(self.to_q(x))), *rope)
        k = apply_rope(split(self.norm_k(self.to_k(x))), *rope)
        out = F.scaled_dot_product_attention(q, k, split(self.to_v(x)))
        return self.to_out[0](out.transpose(1, 2).flatten(2))           # (B, N, D)


class FeedForward(nn.Module):
    def __init__(self, D, hidden):
        super().__init__()
        self.net = nn.Sequential(GELU(D, hidden), nn.Dropout(0.0), nn.Linear(hidden, D))

    def forward(self, x):
        return self.net(x)


def layer_norm(x, eps):
    # affine-free LayerNorm in fp32 (the checkpoint has no weights for it); the result stays fp32
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps)


class Block(nn.Module):
    """adaLN block: self-attention, then feed-forward, each on a LayerNorm modulated by (shift, scale) and
    added back through a gate; the six vectors are a learned table plus the timestep's projection.
    A Wan 2.1 block minus its text cross-attention (and that attention's norm)."""

    def __init__(self, c: RemoverConfig, D):
        super().__init__()
        self.eps = c.eps
        self.attn1 = Attention(c, D)
        self.ffn = FeedForward(D, c.ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 6, D))

    def forward(self, x, mod, rope):                                    # x (B, N, D), mod (B, 6, D)
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + mod.float()).chunk(6, dim=1)
        h = (layer_norm(x, self.eps) * (1 + scale) + shift).to(x.dtype)
        x = (x.float() + self.attn1(h, rope) * gate).to(x.dtype)        # residual sums in fp32, as the original
        h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).to(x.dtype)
        return (x.float() + self.ffn(h).float() * c_gate).to(x.dtype)


class RemoverDiT(nn.Module):
    def __init__(self, config: RemoverConfig):
        super().__init__()
        c = self.config = config
        if c.qk_norm != "rms_norm_across_heads" or c.added_kv_proj_dim is not None:
            raise ValueError("only qk_norm='rms_norm_across_heads' and added_kv_proj_dim=None exist in the remover")
        D = c.num_attention_heads * c.attention_head_dim
        self.patch_embedding = nn.Conv3d(c.in_channels, D, c.patch_size, stride=c.patch_size)
        self.condition_embedder = ConditionEmbedder(c, D)
        self.blocks = nn.ModuleList([Block(c, D) for _ in range(c.num_layers)])
        self.proj_out = nn.Linear(D, c.out_channels * math.prod(c.patch_size))
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, D))   # output head's (shift, scale) offsets
        if not self.proj_out.weight.is_meta:  # random init for toys; checkpoints overwrite everything
            with torch.no_grad():
                for p in [self.scale_shift_table] + [b.scale_shift_table for b in self.blocks]:
                    p.normal_(std=D ** -0.5)

    def forward(self, x, t):
        """x (B, C_in, T, H, W) latent, t (B,) flow time in [0, num_train_timesteps] -> (B, C_out, T, H, W)."""
        c, (pt, ph, pw) = self.config, self.config.patch_size
        B, C, T, H, W = x.shape
        if T % pt or H % ph or W % pw:
            raise ValueError(f"x: latent {T}x{H}x{W} is not a multiple of patch_size {tuple(c.patch_size)}")
        n = (T // pt, H // ph, W // pw)
        if max(n) > c.rope_max_seq_len:
            raise ValueError(f"x: {n} patches along some axis exceeds rope_max_seq_len={c.rope_max_seq_len}")
        rope = rope_3d(c.attention_head_dim, *n, x.device)              # 2 x (N, d/2)
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)
        temb, mod = self.condition_embedder(torch.as_tensor(t, device=x.device).expand(B))
        mod = mod.unflatten(1, (6, -1))                                 # (B, 6, D)
        for block in self.blocks:
            x = block(x, mod, rope)
        shift, scale = (self.scale_shift_table + temb[:, None]).chunk(2, dim=1)   # (B, 1, D) each
        x = (layer_norm(x, c.eps) * (1 + scale) + shift).to(x.dtype)
        x = self.proj_out(x)                                            # (B, N, pt*ph*pw*C_out), channels last
        x = x.reshape(B, *n, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, -1, T, H, W)                                # (B, C_out, T, H, W)

    @classmethod
    def from_pretrained(cls, path_or_hub_id, subfolder="transformer", dtype=None, device=None):
        return weights.load_pretrained(cls, RemoverConfig, path_or_hub_id, subfolder, WEIGHTS_NAME, dtype, device)

    def save_pretrained(self, folder, max_shard_bytes=None):
        weights.save_state_dict(self.state_dict(), folder, WEIGHTS_NAME, max_shard_bytes)
        weights.write_config(folder, self.config, extra={"_class_name": "Transformer3DModel"})

# -----------------------------------------------------------------------------
# The sampler


class FlowEuler:
    """Flow-matching Euler on the shifted sigma ladder of diffusers' FlowMatchEulerDiscreteScheduler.

    x_sigma = (1 - sigma) x0 + sigma noise, the model predicts v = noise - x0, and one step is
    x <- x + (sigma_next - sigma) v. Sigmas: linspace(1, s_min, steps) with s_min the shifted 1/N, each then
    shifted by s -> shift*s / (1 + (shift-1)*s) (so s_min is shifted twice, as in diffusers), then a final 0;
    the model sees t = sigma * N. shift > 1 spends more steps at high noise."""

    def __init__(self, config: SchedulerConfig):
        c = self.config = config
        if c.use_dynamic_shifting:
            raise ValueError("use_dynamic_shifting: resolution-dependent shifts are not used by the remover")
        if c.prediction_type not in (None, "flow_prediction") or (c.prediction_type and not c.use_flow_sigmas):
            raise ValueError(f"scheduler config: prediction_type={c.prediction_type!r}, use_flow_sigmas="
                             f"{c.use_flow_sigmas}: not a flow-matching schedule")
        self.shift = c.flow_shift if c.flow_shift is not None else c.shift

    @classmethod
    def from_pretrained(cls, path_or_hub_id, subfolder="scheduler"):
        """`scheduler_config.json` in <folder>/<subfolder>, in <folder>, or in the hub repo's subfolder."""
        raw = json.loads(weights.config_file(path_or_hub_id, subfolder, "scheduler_config.json").read_text())
        names = {f.name for f in dataclasses.fields(SchedulerConfig)}
        return cls(SchedulerConfig(**{k: v for k, v in raw.items() if k in names}))

    def _shifted(self, s):
        return self.shift * s / (1 + (self.shift - 1) * s)

    def sigmas(self, steps):
        """(steps + 1,) float32 noise levels from 1 down to 0 (the last one)."""
        N = self.config.num_train_timesteps
        s_min = float(self._shifted(torch.tensor(1.0 / N)))             # fp32 here, as diffusers' init computes it
        s = self._shifted(np.linspace(1.0, s_min, steps))               # float64, as diffusers' set_timesteps
        return torch.cat([torch.from_numpy(s).float(), torch.zeros(1)])

    def timesteps(self, steps):
        return self.sigmas(steps)[:-1] * self.config.num_train_timesteps

    @staticmethod
    def step(v, x, sigma, sigma_next):
        """One Euler step in fp32; returns x's dtype."""
        return (x.float() + (sigma_next - sigma) * v.float()).to(x.dtype)

    def run(self, model, x, steps):
        """x pure noise -> the sample after `steps` steps; model(x, t) -> v at flow time t (a float)."""
        sig, ts = self.sigmas(steps).tolist(), self.timesteps(steps).tolist()
        for i in range(steps):
            x = self.step(model(x, ts[i]), x, sig[i], sig[i + 1])
        return x


def _lam(sigma):
    # UniPC's time variable: log-SNR of the flow path x = (1 - s) x0 + s noise; +inf at s = 0 (the clean end)
    return math.log(1 - sigma) - math.log(sigma) if sigma > 0 else math.inf


class FlowUniPC(FlowEuler):
    """UniPC (Zhao et al. 2023, arXiv 2302.04867) on flow sigmas, as diffusers' UniPCMultistepScheduler runs the
    remover's checkpoint: data (x0) prediction, B(h) = expm1(-h) ("bh2"), order 2, the last step first order.

    Each step turns the model's velocity into x0 = x - sigma v, first *corrects* the current sample with it (UniC:
    the previous step redone with the new x0 as a second derivative estimate), then *predicts* the next sample
    (UniP) from the two newest x0. Sigmas: the shifted 1 - linspace(1, 1/N, steps + 1), descending, without 0,
    then a final 0; the model sees t = int(sigma * N)."""

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        if config.solver_order not in (1, 2) or config.solver_type != "bh2" or config.final_sigmas_type != "zero":
            raise ValueError(f"scheduler config: solver_order={config.solver_order}, solver_type="
                             f"{config.solver_type!r}, final_sigmas_type={config.final_sigmas_type!r}: only order "
                             "1-2, bh2 and a final sigma of 0 are implemented (the remover's settings)")

    def _ladder(self, steps):
        N = self.config.num_train_timesteps
        s = 1.0 - np.linspace(1.0, 1.0 / N, steps + 1)                 # float64, as diffusers' set_timesteps
        return np.flip(self._shifted(s))[:-1].copy()

    def sigmas(self, steps):
        return torch.cat([torch.from_numpy(self._ladder(steps)).float(), torch.zeros(1)])

    def timesteps(self, steps):
        return torch.from_numpy(self._ladder(steps) * self.config.num_train_timesteps).long()   # truncated

    @staticmethod
    def update(x, m0, sig, s, t, older=None, order=1, m_t=None):
        """One UniPC update of x (at sigma sig[s], with its x0 m0) to sigma sig[t]: the predictor, or with m_t
        (the x0 found at sig[t]) the corrector. older = (sigma index, x0) one step before s, used at order 2."""
        h = _lam(sig[t]) - _lam(sig[s])
        phi = math.expm1(-h)                                            # h_phi_1, and B(h) in bh2
        base = (sig[t] / sig[s]) * x - (1 - sig[t]) * phi * m0           # the first-order (DDIM-like) step
        # b_k: the integrals the rho weights must match (phi_k(h) k! / B(h)), k = 1, 2
        b1 = (phi / -h - 1) if math.isfinite(h) else -1.0
        b = [b1 / phi, (b1 / -h - 0.5) * 2 / phi] if math.isfinite(h) else [1.0, 0.0]
        res = 0
        if order == 2:
            r = (_lam(sig[older[0]]) - _lam(sig[s])) / h                # where the older x0 sits, in units of h
            D = (older[1] - m0) / r
            if m_t is None:
                res = 0.5 * D                                           # UniP-2: rho fixed at 1/2
            else:                                                       # UniC-2: solve [1 1; r 1] rho = b
                rho1 = (b[0] - b[1]) / (1 - r)
                res = rho1 * D + (b[0] - rho1) * (m_t - m0)
        elif m_t is not None:
            res = 0.5 * (m_t - m0)                                      # UniC-1
        return base - (1 - sig[t]) * phi * res

    def run(self, model, x, steps):
        sig, ts = self.sigmas(steps).tolist(), self.timesteps(steps).tolist()
        dtype, x = x.dtype, x.float()
        x0s, orders, last = [], [], None                                # x0 and predictor order per step
        for i in range(steps):
            m = x.float() - sig[i] * model(x.to(dtype), float(ts[i])).float()
            if i > 0:                                                   # UniC: correct x_i with its own x0
                older = (i - 2, x0s[-2]) if orders[-1] == 2 else None
                x = self.update(last, x0s[-1], sig, i - 1, i, older, orders[-1], m_t=m)
            x0s = (x0s + [m])[-2:]
            order = min(self.config.solver_order, steps - i, len(x0s))  # first and last steps: order 1
            orders.append(order)
            last = x
            x = self.update(x, m, sig, i, i + 1, (i - 1, x0s[0]) if order == 2 else None, order)
        return x.to(dtype)


# -----------------------------------------------------------------------------
# The remover: mask dilation, conditioning latents, sampling, decoding


def dilate(mask, iterations):
    """Grow a (T, H, W) bool mask by `iterations` steps of the 4-neighbour cross, frame by frame (= a diamond
    of that radius; outside the frame counts as empty): scipy.ndimage.binary_dilation as the original uses it."""
    m = mask.float()[:, None]                                           # (T, 1, H, W)
    for _ in range(iterations):
        p = F.pad(m, (1, 1, 1, 1))
        m = torch.stack([m, p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., 1:-1, 2:]]).amax(0)
    return m[:, 0] > 0


class Remover:
    """WanVAE + RemoverDiT + FlowEuler. `remover(video, mask)` returns the video with the masked subject removed."""

    def __init__(self, vae: WanVAE, dit: RemoverDiT, scheduler: FlowEuler):
        self.vae, self.dit, self.scheduler = vae, dit, scheduler

    @classmethod
    def from_pretrained(cls, path_or_hub_id, dtype=None, device=None, sampler=None):
        """A folder laid out like `zibojia/minimax-remover` (vae/ transformer/ scheduler/), or that hub id.
        The VAE stays fp32 unless dtype says otherwise (it is cheap next to 12 DiT passes). sampler: "unipc",
        "euler", or None for the one scheduler/scheduler_config.json names (the real checkpoint: UniPC)."""
        vae = WanVAE.from_pretrained(path_or_hub_id, "vae", dtype=dtype, device=device)
        dit = RemoverDiT.from_pretrained(path_or_hub_id, "transformer", dtype=dtype, device=device)
        sched = FlowEuler.from_pretrained(path_or_hub_id, "scheduler")
        if sampler == "unipc" or (sampler is None and sched.config.use_flow_sigmas):
            sched = FlowUniPC(sched.config)
        return cls(vae, dit, sched)

    @torch.no_grad()
    def inpaint(self, x, hole, steps=12, generator=None, chunk_frames=4):
        """x (B, 3, T, H, W) in [-1, 1], hole (B, 1, T, H, W) in {0, 1} (already dilated) -> (B, 3, T, H, W)."""
        vae, dit = self.vae, self.dit
        p = vae.space * dit.config.patch_size[1]
        T, H, W = x.shape[2:]
        if (T - 1) % vae.time or H % p or W % p:
            raise ValueError(f"video: {T} frames of {H}x{W}; need {vae.time}k+1 frames and H, W multiples of {p}")
        dev, dt = dit.proj_out.weight.device, dit.proj_out.weight.dtype
        x, hole = x.to(dev, torch.float32), hole.to(dev, torch.float32).expand_as(x)
        enc = lambda v: vae.normalize(vae.encode(v.to(vae.encoder.conv_in.weight.dtype), chunk_frames)[0].float())
        cond = torch.cat([enc(x * (1 - hole)), enc(2 * hole - 1)], dim=1).to(dt)  # (B, 32, t, h, w) posterior modes
        shape = (x.shape[0], dit.config.out_channels, *cond.shape[2:])
        # drawn where the generator lives (a CPU generator also serves a GPU model), then moved
        z = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu").to(dev, dt)
        velocity = lambda z, t: dit(torch.cat([z, cond], dim=1), torch.full((x.shape[0],), t, device=dev))
        z = self.scheduler.run(velocity, z, steps)                      # (B, 16, t, h, w)
        z = vae.denormalize(z.float()).to(vae.decoder.conv_in.weight.dtype)
        return vae.decode(z).float()                                    # (B, 3, T, H, W) in [-1, 1]

    def __call__(self, video, mask, steps=12, dilate=6, seed=42):
        """video uint8 (T, H, W, 3), mask bool (T, H, W) (numpy or torch) -> uint8 (T, H, W, 3) numpy.
        dilate: cross-dilation steps of the mask (StM: 6); seed: of the starting noise (StM: 42)."""
        video, mask = torch.as_tensor(np.asarray(video)), torch.as_tensor(np.asarray(mask))
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != torch.uint8 or mask.shape != video.shape[:3]:
            raise ValueError(f"need video uint8 (T, H, W, 3) and mask (T, H, W); got {tuple(video.shape)} "
                             f"{video.dtype} and {tuple(mask.shape)}")
        hole = globals()["dilate"](mask.bool(), dilate) if dilate else mask.bool()
        x = video.permute(3, 0, 1, 2)[None].float() / 127.5 - 1             # (1, 3, T, H, W)
        out = self.inpaint(x, hole[None, None].float(), steps, torch.Generator().manual_seed(seed))
        out = ((out[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [-1, 1] -> 0..255
        return out.permute(1, 2, 3, 0).cpu().numpy()                    # (T, H, W, 3)


if __name__ == "__main__":
    torch.manual_seed(0)
    vae, dit = WanVAE(VAE_PRESETS["toy"]).eval(), RemoverDiT(PRESETS["toy"]).eval()
    rm = Remover(vae, dit, FlowEuler(SchedulerConfig(shift=3.0)))
    video = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    mask = torch.zeros(5, 32, 32, dtype=torch.bool)
    mask[:, 8:20, 10:22] = True
    print("toy:", rm(video, mask, steps=3).shape)
    for name, cfg in PRESETS.items():
        print(f"{name:16s} DiT {sum(p.numel() for p in weights.meta_model(RemoverDiT, cfg).parameters()) / 1e9:.3f}B")
    for name, cfg in VAE_PRESETS.items():
        print(f"{name:16s} VAE {sum(p.numel() for p in weights.meta_model(WanVAE, cfg).parameters()) / 1e6:.1f}M")
