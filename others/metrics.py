"""
The networks behind the StM metrics, in plain torch, with parameter names equal to the official
weight files so they load with strict=True and no rename table:

    Swin3D-B  torchvision `swin3d_b` KINETICS400_V1   swin3d_b_1k-24f7c7c6.pth        (M2 action KL)
    RAFT      torchvision `raft_large` C_T_SKHT_V2    raft_large_C_T_SKHT_V2-ff5fadd5.pth  (M3 bg flow)
    ViCLIP    InternVid ViCLIP-L/14                   OpenGVLab/ViCLIP-L-14-hf model.safetensors (M1, M4)
              + the CLIP byte-level BPE tokenizer     bpe_simple_vocab_16e6.txt.gz

plus the preprocessing and the metric arithmetic of the StM release (evaluation/metrics/*), and
weight-free fallbacks (a pyramidal Lucas-Kanade flow, masked PSNR / SSIM). evaluate.py uses these.

Sections, in file order:
    weight files          read_weights: .pth / .safetensors / folder / URL / hub file -> a state dict, loaded
                          into a meta-device model through weights.py (names and shapes checked, no copy)
    Swin3D                the M2 network, swin3d_preprocess, load_swin3d
    RAFT                  the M3 network, load_raft
    ViCLIP                the M1 / M4 network, viclip_preprocess, load_viclip
    CLIP BPE tokenizer    CLIPTokenizer, load_clip_tokenizer (ViCLIP's text side)
    classical flow        the weight-free M3 fallback: pyramidal Lucas-Kanade
    metric arithmetic     cosine, action_kl, flow_mse, background_flow_mse, masked_psnr, masked_ssim

    python -c "import metrics; m = metrics.load_viclip('OpenGVLab/ViCLIP-L-14-hf'); \
        tok = metrics.load_clip_tokenizer('OpenGVLab/ViCLIP-L-14-hf'); \
        print(m.encode_text(tok(['a dog runs'], m.config.context_length)).shape)"   # (1, 768)
    python -c "import metrics; m = metrics.load_swin3d('swin3d_b_1k-24f7c7c6.pth')"
    python -c "import metrics; m = metrics.load_raft('raft_large_C_T_SKHT_V2-ff5fadd5.pth')"
"""
import json
import gzip
import html
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing import weights
from plumbing.cli import BadInput
from plumbing.video import LUMA

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# -----------------------------------------------------------------------------------------------
# weight files


def read_weights(path_or_id, filename=None):
    """A state dict from a local .pth / .safetensors, a folder holding `filename` (or its shards and index),
    an http(s) URL, or `owner/name` on the hub (then `filename` inside it). safetensors are read by weights.py;
    a `{'model': sd}` / `{'state_dict': sd}` wrapper (torchvision / InternVid .pth files) is unwrapped."""
    src = str(path_or_id)
    p = Path(src)
    if src.startswith(("http://", "https://")):
        sd = torch.hub.load_state_dict_from_url(src, map_location="cpu", weights_only=True)
    elif p.is_dir() and filename:
        sd = weights.read_state_dict(p, filename)
    elif p.is_file() and p.suffix == ".safetensors":
        sd = weights.read_state_dict(p.parent, p.name)
    elif p.is_file():
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{p}: not a readable weight file ({type(e).__name__}: {e})") from None
    elif src.count("/") == 1 and not src.startswith((".", "/")) and filename:
        from huggingface_hub import hf_hub_download
        try:
            return read_weights(hf_hub_download(src, filename))
        except Exception as e:
            raise FileNotFoundError(f"{src}/{filename}: not on this machine and not downloadable "
                                    f"({type(e).__name__}: {e})") from None
    else:
        raise FileNotFoundError(f"{src}: weight file not found")
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def _build_and_load(cls, config, path_or_id, filename=None):
    model = weights.meta_model(cls, config)
    return weights.load_into(model, read_weights(path_or_id, filename), str(path_or_id)).eval()


def sample_frames(frames, num):
    """StM's even sampling: pad with the last frame up to `num`, then every (len // num)-th frame."""
    frames = list(frames)
    frames += [frames[-1]] * max(0, num - len(frames))
    return np.stack([np.asarray(f) for f in frames[::len(frames) // num][:num]])


def _resize_uint8(x, size):
    """(N, C, H, W) uint8 -> bilinear (half-pixel centres, no antialias) -> rounded uint8."""
    y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def _normalise(x, mean, std):
    return (x.float() / 255 - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


# -----------------------------------------------------------------------------------------------
# Swin3D (torchvision SwinTransformer3d)


@dataclass
class Swin3DConfig:
    patch_size: tuple = (2, 4, 4)
    embed_dim: int = 128
    depths: tuple = (2, 2, 18, 2)
    num_heads: tuple = (4, 8, 16, 32)
    window_size: tuple = (8, 7, 7)
    mlp_ratio: float = 4.0
    num_classes: int = 400


SWIN3D_PRESETS = {
    "swin3d_b": Swin3DConfig(),
    "swin3d_t": Swin3DConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "tiny": Swin3DConfig(embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=(2, 3, 3), num_classes=10),
}


def relative_position_index_3d(window):
    """(N, N) index into the (2Wd-1)(2Wh-1)(2Ww-1) bias table for each pair of positions in a window."""
    wd, wh, ww = window
    pos = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1).T  # N, 3
    rel = pos[:, None, :] - pos[None, :, :] + torch.tensor([wd - 1, wh - 1, ww - 1])
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


def _windows(x, w):
    """(B, D, H, W, C) -> (B * nWindows, wd*wh*ww, C), windows in raster order."""
    b, d, h, ww_, c = x.shape
    x = x.view(b, d // w[0], w[0], h // w[1], w[1], ww_ // w[2], w[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w[0] * w[1] * w[2], c)


def _unwindows(x, w, b, size):
    d, h, ww_ = size
    x = x.view(b, d // w[0], h // w[1], ww_ // w[2], w[0], w[1], w[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, ww_, -1)


def shift_mask_3d(size, window, shift):
    """(nWindows, N, N) additive mask: -100 between tokens that came from different regions of the
    cyclically shifted map, 0 otherwise."""
    labels = torch.zeros(size, dtype=torch.long)
    for axis, (n, w, s) in enumerate(zip(size, window, shift)):
        lab = torch.zeros(n, dtype=torch.long)
        if s > 0:
            lab[n - w:n - s], lab[n - s:] = 1, 2
        labels = labels * 3 + lab.view([-1 if i == axis else 1 for i in range(3)])
    lw = _windows(labels[None, ..., None], window)[..., 0]  # nW, N
    return (lw[:, :, None] != lw[:, None, :]).float() * -100.0


class WindowAttention3d(nn.Module):
    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.heads, self.window, self.shift = heads, list(window), list(shift)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        n_rel = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(n_rel, heads))
        self.register_buffer("relative_position_index", relative_position_index_3d(window))

    def forward(self, x):  # (B, D, H, W, C)
        b, *size, c = x.shape
        # a window larger than the map shrinks to it (and then does not shift), as torchvision does
        window = [min(w, n) for w, n in zip(self.window, size)]
        shift = [0 if n <= w else s for w, s, n in zip(self.window, self.shift, size)]
        pad = [(-n) % w for n, w in zip(size, window)]
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        padded = x.shape[1:4]
        if any(shift):
            x = torch.roll(x, [-s for s in shift], dims=(1, 2, 3))
        win = _windows(x, window)  # B*nW, N, C
        n = win.shape[1]
        q, k, v = self.qkv(win).view(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        # torchvision slices the full-window index when the window shrank; we do the same
        idx = self.relative_position_index[:n, :n].reshape(-1)
        attn = attn + self.relative_position_bias_table[idx].view(n, n, -1).permute(2, 0, 1)
        if any(shift):
            mask = shift_mask_3d(padded, window, shift).to(attn)
            attn = (attn.view(b, -1, self.heads, n, n) + mask[None, :, None]).view(-1, self.heads, n, n)
        out = self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c))
        out = _unwindows(out, window, b, padded)
        if any(shift):
            out = torch.roll(out, shift, dims=(1, 2, 3))
        return out[:, :size[0], :size[1], :size[2]]


class SwinBlock3d(nn.Module):
    def __init__(self, dim, heads, window, shift, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3d(dim, heads, window, shift)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)  # indices 0 and 3 as torchvision's MLP (Linear, GELU, Dropout, Linear)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 spatial neighbours -> one token with twice the channels (time is not merged)."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        h, w = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[..., i::2, j::2, :] for j in (0, 1) for i in (0, 1)], -1)
        return self.reduction(self.norm(x))


class PatchEmbed3d(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.patch = list(patch)
        self.proj = nn.Conv3d(3, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        pad = [(-n) % p for n, p in zip(x.shape[2:], self.patch)]
        x = self.proj(F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0])))
        return self.norm(x.permute(0, 2, 3, 4, 1))


class Swin3D(nn.Module):
    """(B, 3, T, H, W) normalised video -> (B, num_classes) logits."""

    def __init__(self, config: Swin3DConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbed3d(c.patch_size, c.embed_dim)
        layers = []
        for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads)):
            dim = c.embed_dim * 2 ** i
            layers.append(nn.Sequential(*[
                SwinBlock3d(dim, heads, c.window_size, [0 if j % 2 == 0 else w // 2 for w in c.window_size],
                            c.mlp_ratio)
                for j in range(depth)]))
            if i < len(c.depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(c.embed_dim * 2 ** (len(c.depths) - 1))
        self.head = nn.Linear(c.embed_dim * 2 ** (len(c.depths) - 1), c.num_classes)

    def forward(self, x):
        x = self.norm(self.features(self.patch_embed(x)))
        return self.head(x.mean(dim=(1, 2, 3)))


def swin3d_preprocess(frames, num_frames=32, resize=256, crop=224):
    """uint8 (T, H, W, 3) -> (1, 3, num_frames, crop, crop): StM's frame sampling, then torchvision's
    VideoClassification (short side to `resize`, bilinear without antialias, centre crop, ImageNet norm)."""
    x = torch.as_tensor(sample_frames(frames, num_frames)).permute(0, 3, 1, 2)  # T, C, H, W
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new = (int(resize * long / short), resize) if w <= h else (resize, int(resize * long / short))
    x = _resize_uint8(x, new)
    top, left = int(round((new[0] - crop) / 2.0)), int(round((new[1] - crop) / 2.0))
    x = _normalise(x[..., top:top + crop, left:left + crop], IMAGENET_MEAN, IMAGENET_STD)
    return x.permute(1, 0, 2, 3)[None]


def load_swin3d(path_or_id, config="swin3d_b", filename="swin3d_b_1k-24f7c7c6.pth"):
    config = SWIN3D_PRESETS[config] if isinstance(config, str) else config
    return _build_and_load(Swin3D, config, path_or_id, filename)


# -----------------------------------------------------------------------------------------------
# RAFT (torchvision raft_large)


@dataclass
class RAFTConfig:
    feature_layers: tuple = (64, 64, 96, 128, 256)
    context_layers: tuple = (64, 64, 96, 128, 256)
    corr_levels: int = 4
    corr_radius: int = 4
    motion_corr_layers: tuple = (256, 192)
    motion_flow_layers: tuple = (128, 64)
    motion_out: int = 128
    hidden: int = 128
    flow_head_hidden: int = 256
    mask_hidden: int = 256
    iterations: int = 12


RAFT_PRESETS = {
    "raft_large": RAFTConfig(),
    "tiny": RAFTConfig(feature_layers=(8, 8, 12, 16, 16), context_layers=(8, 8, 12, 16, 24), corr_levels=2,
                       corr_radius=2, motion_corr_layers=(16, 12), motion_flow_layers=(8, 8), motion_out=10,
                       hidden=8, flow_head_hidden=16, mask_hidden=16, iterations=3),
}


def _conv(cin, cout, k, stride=1, norm=None, relu=True):
    """torchvision's Conv2dNormActivation layout: Sequential(conv[, norm][, relu]) -> keys .0 / .1."""
    mods = [nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2)]
    if norm == "instance":
        mods.append(nn.InstanceNorm2d(cout))
    elif norm == "batch":
        mods.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*mods, *([nn.ReLU()] if relu else []))


class ResidualBlock(nn.Module):
    def __init__(self, cin, cout, norm, stride):
        super().__init__()
        self.convnormrelu1 = _conv(cin, cout, 3, stride, norm)
        self.convnormrelu2 = _conv(cout, cout, 3, 1, norm)
        self.downsample = nn.Identity() if stride == 1 else _conv(cin, cout, 1, stride, norm, relu=False)

    def forward(self, x):
        return F.relu(self.downsample(x) + self.convnormrelu2(self.convnormrelu1(x)))


class FeatureEncoder(nn.Module):
    """Image -> features at 1/8 resolution (used as feature encoder and as context encoder)."""

    def __init__(self, layers, norm):
        super().__init__()
        self.convnormrelu = _conv(3, layers[0], 7, 2, norm)
        for i, stride in enumerate((1, 2, 2), start=1):
            blocks = [ResidualBlock(layers[i - 1], layers[i], norm, stride),
                      ResidualBlock(layers[i], layers[i], norm, 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.conv = nn.Conv2d(layers[3], layers[4], 1)

    def forward(self, x):
        return self.conv(self.layer3(self.layer2(self.layer1(self.convnormrelu(x)))))


class ConvGRU(nn.Module):
    def __init__(self, cin, hidden, k, pad):
        super().__init__()
        self.convz, self.convr, self.convq = [nn.Conv2d(hidden + cin, hidden, k, padding=pad) for _ in range(3)]

    def forward(self, h, x):
        hx = torch.cat([h, x], 1)
        z, r = torch.sigmoid(self.convz(hx)), torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], 1)))
        return (1 - z) * h + z * q


class MotionEncoder(nn.Module):
    def __init__(self, c: RAFTConfig):
        super().__init__()
        corr_ch = c.corr_levels * (2 * c.corr_radius + 1) ** 2
        self.convcorr1 = _conv(corr_ch, c.motion_corr_layers[0], 1)
        self.convcorr2 = _conv(c.motion_corr_layers[0], c.motion_corr_layers[1], 3)
        self.convflow1 = _conv(2, c.motion_flow_layers[0], 7)
        self.convflow2 = _conv(c.motion_flow_layers[0], c.motion_flow_layers[1], 3)
        self.conv = _conv(c.motion_corr_layers[1] + c.motion_flow_layers[1], c.motion_out - 2, 3)

    def forward(self, flow, corr):
        feats = torch.cat([self.convcorr2(self.convcorr1(corr)), self.convflow2(self.convflow1(flow))], 1)
        return torch.cat([self.conv(feats), flow], 1)


class UpdateBlock(nn.Module):
    def __init__(self, c: RAFTConfig):
        super().__init__()
        self.motion_encoder = MotionEncoder(c)
        cin = c.motion_out + c.context_layers[-1] - c.hidden
        self.recurrent_block = nn.Module()
        self.recurrent_block.convgru1 = ConvGRU(cin, c.hidden, (1, 5), (0, 2))  # horizontal then vertical
        self.recurrent_block.convgru2 = ConvGRU(cin, c.hidden, (5, 1), (2, 0))
        self.flow_head = nn.Module()
        self.flow_head.conv1 = nn.Conv2d(c.hidden, c.flow_head_hidden, 3, padding=1)
        self.flow_head.conv2 = nn.Conv2d(c.flow_head_hidden, 2, 3, padding=1)

    def forward(self, h, context, corr, flow):
        x = torch.cat([context, self.motion_encoder(flow, corr)], 1)
        h = self.recurrent_block.convgru2(self.recurrent_block.convgru1(h, x), x)
        return h, self.flow_head.conv2(F.relu(self.flow_head.conv1(h)))


def corr_pyramid(f1, f2, levels):
    """All-pairs correlation (B*h*w, 1, h, w) / sqrt(C), then `levels - 1` 2x2 average poolings."""
    b, c, h, w = f1.shape
    corr = (f1.flatten(2).transpose(1, 2) @ f2.flatten(2)) / math.sqrt(c)
    pyramid = [corr.reshape(b * h * w, 1, h, w)]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, 2))
    return pyramid


def corr_lookup(pyramid, coords, radius):
    """coords (B, 2, h, w) as (x, y) in level-0 pixels -> (B, levels*(2r+1)^2, h, w): bilinear samples
    (zeros outside) of each level at coords/2^l + (dx, dy), dx major then dy, as torchvision orders them."""
    b, _, h, w = coords.shape
    d = torch.arange(-radius, radius + 1, dtype=coords.dtype, device=coords.device)
    offs = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1).view(1, 2 * radius + 1, 2 * radius + 1, 2)
    centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
    out = []
    for lvl, corr in enumerate(pyramid):
        pts = centre / 2 ** lvl + offs  # (x, y)
        hl, wl = corr.shape[-2:]
        grid = torch.stack([2 * pts[..., 0] / (wl - 1) - 1, 2 * pts[..., 1] / (hl - 1) - 1], -1)
        out.append(F.grid_sample(corr, grid, mode="bilinear", align_corners=True).view(b, h, w, -1))
    return torch.cat(out, -1).permute(0, 3, 1, 2)


def convex_upsample(flow, mask):
    """Flow at 1/8 -> full resolution, each fine pixel a softmax-weighted mix of its 3x3 coarse neighbours."""
    b, _, h, w = flow.shape
    mask = mask.view(b, 1, 9, 8, 8, h, w).softmax(2)
    nb = F.unfold(8 * flow, 3, padding=1).view(b, 2, 9, 1, 1, h, w)
    return (mask * nb).sum(2).permute(0, 1, 4, 2, 5, 3).reshape(b, 2, 8 * h, 8 * w)


class RAFT(nn.Module):
    """forward(img1, img2) with images in [-1, 1], (B, 3, H, W), H and W multiples of 8 -> (B, 2, H, W),
    the last of `iterations` refinements (x, y displacement from img1 to img2, in pixels)."""

    def __init__(self, config: RAFTConfig):
        super().__init__()
        self.config = c = config
        self.feature_encoder = FeatureEncoder(c.feature_layers, "instance")
        self.context_encoder = FeatureEncoder(c.context_layers, "batch")
        self.update_block = UpdateBlock(c)
        self.mask_predictor = nn.Module()
        self.mask_predictor.convrelu = _conv(c.hidden, c.mask_hidden, 3)
        self.mask_predictor.conv = nn.Conv2d(c.mask_hidden, 8 * 8 * 9, 1)

    def forward(self, img1, img2, iterations=None):
        b, _, h, w = img1.shape
        if h % 8 or w % 8:
            raise ValueError(f"RAFT needs H and W divisible by 8, got {h}x{w}")
        f1, f2 = self.feature_encoder(torch.cat([img1, img2])).chunk(2)
        pyramid = corr_pyramid(f1, f2, self.config.corr_levels)
        c = self.config
        hidden, context = self.context_encoder(img1).split([c.hidden, c.context_layers[-1] - c.hidden], 1)
        hidden, context = torch.tanh(hidden), F.relu(context)
        ys, xs = torch.meshgrid(torch.arange(h // 8), torch.arange(w // 8), indexing="ij")
        coords0 = torch.stack([xs, ys]).float().to(img1.device)[None].expand(b, -1, -1, -1)
        coords1 = coords0.clone()
        for _ in range(iterations or self.config.iterations):
            corr = corr_lookup(pyramid, coords1, self.config.corr_radius)
            hidden, delta = self.update_block(hidden, context, corr, coords1 - coords0)
            coords1 = coords1 + delta
        mask = 0.25 * self.mask_predictor.conv(self.mask_predictor.convrelu(hidden))
        return convex_upsample(coords1 - coords0, mask)

    @torch.no_grad()
    def flow(self, img1, img2):
        """uint8 (H, W, 3) frames (or float (B, 3, H, W) in [0, 1]) -> (B, 2, H, W); edges are
        replicated up to a multiple of 8 and cropped back (a no-op for 480x720)."""
        dev = self.mask_predictor.conv.weight.device
        a, b = [_to_unit(x).to(dev) * 2 - 1 for x in (img1, img2)]
        h, w = a.shape[-2:]
        pad = (0, (-w) % 8, 0, (-h) % 8)
        a, b = F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate")
        return self(a, b)[..., :h, :w]


def _to_unit(x):
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if x.dtype == torch.uint8:
        x = x.float() / 255
    if x.ndim == 3 and x.shape[-1] == 3:
        x = x.permute(2, 0, 1)
    return x[None] if x.ndim == 3 else x


def load_raft(path_or_id, config="raft_large", filename="raft_large_C_T_SKHT_V2-ff5fadd5.pth"):
    config = RAFT_PRESETS[config] if isinstance(config, str) else config
    return _build_and_load(RAFT, config, path_or_id, filename)


# -----------------------------------------------------------------------------------------------
# ViCLIP (InternVid): CLIP ViT-L/14 over 8 frames (joint space-time attention) + CLIP text tower


@dataclass
class ViCLIPConfig:
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    num_frames: int = 8
    embed_dim: int = 768
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    vocab_size: int = 49408
    context_length: int = 32  # ViCLIP's max_txt_l (OpenAI CLIP uses 77)


VICLIP_PRESETS = {
    "viclip_l14": ViCLIPConfig(),
    "tiny": ViCLIPConfig(image_size=28, patch_size=14, vision_width=32, vision_layers=2, vision_heads=2,
                         num_frames=4, embed_dim=16, text_width=24, text_layers=2, text_heads=2,
                         vocab_size=300, context_length=12),
}


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(),
                                             c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask=None):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x, mask=None):
        for blk in self.resblocks:
            x = blk(x, mask)
        return x


class VisionTower(nn.Module):
    def __init__(self, c: ViCLIPConfig):
        super().__init__()
        w, p = c.vision_width, c.patch_size
        self.conv1 = nn.Conv3d(3, w, (1, p, p), (1, p, p), bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros((c.image_size // p) ** 2 + 1, w))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, c.num_frames, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, c.vision_layers, c.vision_heads)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, c.embed_dim))

    def forward(self, x):  # (B, 3, T, H, W)
        x = self.conv1(x)
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(b, t, h * w, c) + self.positional_embedding[1:]
        temporal = self.temporal_positional_embedding
        x = x + (temporal.mean(1) if t == 1 else temporal[0])[:, None, :]  # one frame: the mean, as ViCLIP
        x = x.transpose(1, 2).reshape(b, h * w * t, c)  # space-major, time-minor token order
        cls = (self.class_embedding + self.positional_embedding[0]).expand(b, 1, c)
        x = self.transformer(self.ln_pre(torch.cat([cls, x], 1)))
        return self.ln_post(x[:, 0]) @ self.proj


class TextTower(nn.Module):
    def __init__(self, c: ViCLIPConfig):
        super().__init__()
        self.transformer = Transformer(c.text_width, c.text_layers, c.text_heads)
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(c.context_length, c.text_width))
        self.ln_final = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Parameter(torch.zeros(c.text_width, c.embed_dim))

    def forward(self, ids):  # (B, L) with L <= context_length; the end token has the largest id
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        causal = torch.full((n, n), float("-inf"), device=ids.device).triu(1)
        x = self.ln_final(self.transformer(x, causal))
        return x[torch.arange(len(ids)), ids.argmax(-1)] @ self.text_projection


class ViCLIP(nn.Module):
    def __init__(self, config: ViCLIPConfig):
        super().__init__()
        self.config = config
        self.vision_encoder = VisionTower(config)
        self.text_encoder = TextTower(config)
        self.temp = nn.Parameter(torch.tensor(0.01))

    def encode_video(self, x):
        """(B, 3, T, H, W) normalised frames (see `viclip_preprocess`) -> (B, D), unit length."""
        return F.normalize(self.vision_encoder(x).float(), dim=-1)

    def encode_text(self, ids):
        """(B, L) CLIP token ids -> (B, D), unit length."""
        return F.normalize(self.text_encoder(ids.long()).float(), dim=-1)


def viclip_preprocess(frames, num_frames=8, size=224):
    """uint8 (T, H, W, 3) -> (1, 3, num_frames, size, size) as the StM release: even sampling, a plain
    bilinear resize to size x size (cv2.resize, no crop), /255, ImageNet mean/std."""
    x = torch.as_tensor(sample_frames(frames, num_frames)).permute(0, 3, 1, 2)
    x = _normalise(_resize_uint8(x, (size, size)), IMAGENET_MEAN, IMAGENET_STD)
    return x.permute(1, 0, 2, 3)[None]


def load_viclip(path_or_id, config="viclip_l14", filename="model.safetensors"):
    config = VICLIP_PRESETS[config] if isinstance(config, str) else config
    return _build_and_load(ViCLIP, config, path_or_id, filename)


# -----------------------------------------------------------------------------------------------
# CLIP byte-level BPE tokenizer


def byte_alphabet():
    """byte -> printable character; printable latin-1 bytes stand for themselves, the others are
    moved to 256, 257, ... so that no token contains whitespace or control characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


class CLIPTokenizer:
    """OpenAI CLIP's tokenizer: clean (ftfy if installed, html unescape), collapse whitespace, lower-case,
    split into words / single digits / punctuation runs, byte-encode, merge by BPE rank."""

    def __init__(self, merges_path, max_merges=49152 - 256 - 2):
        path = Path(merges_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: BPE merges file (bpe_simple_vocab_16e6.txt.gz) not found")
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        lines = raw.decode("utf-8").split("\n")[1:max_merges + 1]  # line 0 is a version header
        merges = [tuple(line.split()) for line in lines if line.strip()]
        self.byte_map = byte_alphabet()
        chars = list(self.byte_map.values())
        vocab = (chars + [ch + "</w>" for ch in chars] + ["".join(m) for m in merges]
                 + ["<|startoftext|>", "<|endoftext|>"])
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        self.cache = {}
        special = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
        try:
            import regex
            self.pattern = regex.compile(special + r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
        except ImportError:  # stdlib approximation of \p{L} / \p{N}, exact for ASCII
            import re
            self.pattern = re.compile(special + r"[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)

    def bpe(self, word):
        if word not in self.cache:
            parts = list(word[:-1]) + [word[-1] + "</w>"]
            while len(parts) > 1:
                a, b = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, math.inf))
                if (a, b) not in self.ranks:
                    break
                merged, i = [], 0
                while i < len(parts):  # merge every non-overlapping (a, b) left to right
                    if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                        merged.append(a + b)
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            self.cache[word] = parts
        return self.cache[word]

    @staticmethod
    def clean(text):
        try:
            import ftfy
            text = ftfy.fix_text(text)
        except ImportError:
            pass
        return " ".join(html.unescape(html.unescape(text)).split()).lower()

    def encode(self, text):
        ids = []
        for word in self.pattern.findall(self.clean(text)):
            word = "".join(self.byte_map[b] for b in word.encode("utf-8"))
            ids += [self.encoder[t] for t in self.bpe(word)]
        return ids

    def __call__(self, texts, context_length=77):
        """list of prompts -> LongTensor (B, context_length): start, BPE ids, end, zeros; too long ->
        cut and the last position set to the end token."""
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = ([self.sot] + self.encode(text) + [self.eot])[:context_length]
            ids[-1] = self.eot
            out[row, :len(ids)] = torch.tensor(ids)
        return out


def load_clip_tokenizer(path_or_id, filename="bpe_simple_vocab_16e6.txt.gz"):
    p = Path(str(path_or_id))
    if not p.exists() and str(path_or_id).count("/") == 1:
        from huggingface_hub import hf_hub_download
        p = Path(hf_hub_download(str(path_or_id), filename))
    return CLIPTokenizer(p / filename if p.is_dir() else p)


# -----------------------------------------------------------------------------------------------
# weight-free optical flow (fallback for M3 when no RAFT weights are at hand)


def _warp(img, flow):
    """Sample img (B, C, H, W) at x + flow (edges repeated)."""
    _, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=img.device), torch.arange(w, device=img.device), indexing="ij")
    x, y = xs + flow[:, 0], ys + flow[:, 1]
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], -1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


@torch.no_grad()
def classical_flow(img1, img2, levels=4, iterations=5, window=9, reg=3e-3):
    """Coarse-to-fine, iteratively warped Lucas-Kanade: per pixel, the displacement that best explains
    the brightness change over a window x window box. Frames as for `RAFT.flow`; -> (B, 2, H, W)."""
    gray = [(_to_unit(x) * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True) for x in (img1, img2)]
    pyramid = [gray]
    for _ in range(levels - 1):
        if min(pyramid[-1][0].shape[-2:]) < 2 * window:
            break
        pyramid.append([F.avg_pool2d(_blur(g), 2) for g in pyramid[-1]])
    dx = torch.tensor([[-0.5, 0.0, 0.5]]).view(1, 1, 1, 3)
    flow = None
    for a, b in reversed(pyramid):
        flow = torch.zeros(a.shape[0], 2, *a.shape[-2:]) if flow is None else \
            2 * F.interpolate(flow, size=a.shape[-2:], mode="bilinear", align_corners=False)
        for _ in range(iterations):
            bw = _warp(b, flow)
            m = (a + bw) / 2
            ix = F.conv2d(F.pad(m, (1, 1, 0, 0), mode="replicate"), dx)
            iy = F.conv2d(F.pad(m, (0, 0, 1, 1), mode="replicate"), dx.transpose(-1, -2))
            it = bw - a
            box = lambda t: F.avg_pool2d(F.pad(t, [window // 2] * 4, mode="replicate"), window, 1)
            sxx, sxy, syy, sxt, syt = [box(t) for t in (ix * ix, ix * iy, iy * iy, ix * it, iy * it)]
            sxx, syy = sxx + reg, syy + reg
            det = sxx * syy - sxy * sxy
            du = -(syy * sxt - sxy * syt) / det
            dv = -(sxx * syt - sxy * sxt) / det
            flow = flow + torch.cat([du, dv], 1).clamp(-1, 1)
            flow = _blur(flow)  # keep the field smooth where the local fit is poorly conditioned
        flow = _median3(flow)  # and drop isolated wrong estimates before they are upsampled
    return flow


def _median3(x):
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3)
    return patches.view(x.shape[0], x.shape[1], 9, *x.shape[-2:]).median(2).values


def _blur(x):
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    k = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k, groups=x.shape[1])


# -----------------------------------------------------------------------------------------------
# the StM metric arithmetic (evaluation/metrics/* of the release) and weight-free fallbacks


def cosine(a, b):
    """M1 (fg / bg identity) and M4 (text alignment): cosine of two flattened embeddings."""
    return float(F.cosine_similarity(a.flatten()[None].float(), b.flatten()[None].float()).item())


def action_kl(logits_ref, logits_gen):
    """M2: KL(p_ref || p_gen) of the Kinetics-400 softmaxes, summed over classes."""
    lp_ref, lp_gen = F.log_softmax(logits_ref.float(), -1), F.log_softmax(logits_gen.float(), -1)
    return float(F.kl_div(lp_gen, lp_ref, log_target=True, reduction="sum").item())


def flow_mse(flow_ref, flow_gen, valid=None):
    """Squared flow difference summed over the 2 channels (dim -3), averaged over `valid` pixels
    (bool (..., H, W)); nan when no pixel is valid."""
    err = ((flow_ref.float() - flow_gen.float()) ** 2).sum(-3)
    if valid is not None:
        valid = _bool(valid).expand_as(err)
        if not valid.any():
            return float("nan")
        err = err[valid]
    return float(err.mean())


def background_flow_mse(ref_frames, gen_frames, gen_fg_mask=None, flow_fn=classical_flow, stride=4):
    """M3: mean over pairs (t, t+1), t = 0, stride, 2*stride, ... of flow_mse on the pixels outside the
    generated foreground mask (bool (T, H, W)); pairs without background are skipped."""
    n = min(len(ref_frames), len(gen_frames))
    vals = []
    for t in range(0, n - 1, stride):
        valid = None if gen_fg_mask is None else ~_bool(gen_fg_mask[t])
        ref, gen = flow_fn(ref_frames[t], ref_frames[t + 1]), flow_fn(gen_frames[t], gen_frames[t + 1])
        vals.append(flow_mse(ref, gen, valid))
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _bool(mask):
    return mask.bool() if torch.is_tensor(mask) else torch.from_numpy(np.array(mask, dtype=bool))


def _frames(x):
    return torch.as_tensor(np.asarray(x)).float()  # (T, H, W, 3), 0..255


def colour_hist(frames, mask, bins=8):
    px = torch.as_tensor(np.asarray(frames))[torch.as_tensor(np.asarray(mask))].long() * bins // 256
    h = torch.bincount(px[:, 0] * bins * bins + px[:, 1] * bins + px[:, 2], minlength=bins ** 3).float()
    return h / h.sum().clamp(min=1)


def masked_psnr(a, b, mask=None, peak=255.0):
    """PSNR of uint8 frames (T, H, W, 3) over the pixels where mask (T, H, W) is true."""
    err = ((_frames(a) - _frames(b)) ** 2).mean(-1)
    if mask is not None:
        err = err[_bool(mask)]
    mse = float(err.mean()) if err.numel() else float("nan")
    return float("inf") if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def masked_ssim(a, b, mask=None, peak=255.0, size=11, sigma=1.5):
    """SSIM (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, per channel, zero-padded 'same') averaged over
    the pixels where mask (T, H, W) is true."""
    x, y = [_frames(v).permute(0, 3, 1, 2) for v in (a, b)]
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * sigma ** 2))
    k = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[1], 1, size, size)
    blur = lambda t: F.conv2d(t, k, padding=size // 2, groups=x.shape[1])
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean(1)
    return float(s[_bool(mask)].mean() if mask is not None else s.mean())


# ---------------------------------------------------------------------------------------------
# The networks of M1-M4, loaded from what the evaluate.py flags name


def network_config(spec, presets, cls):
    """A preset name or a JSON file of config fields."""
    if spec in presets:
        return presets[spec]
    p = Path(spec)
    if p.is_file():
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(p.read_text()).items()})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
            raise BadInput(f"{spec}: not a JSON object of {cls.__name__} fields ({type(e).__name__}: {e})") from None
    raise BadInput(f"{spec}: neither a preset ({', '.join(presets)}) nor a JSON config file")


class Networks:
    """The metric networks whose weights are given (the others stay None and their metrics are skipped).
    viclip / swin / raft: a weight file, URL or hub id as the --viclip / --swin / --raft flags take them (viclip
    also a folder holding model.safetensors); *_config: a preset name or a JSON file of config fields."""

    def __init__(self, viclip=None, swin=None, raft=None, viclip_config="viclip_l14", swin_config="swin3d_b",
                 raft_config="raft_large", bpe=None, device="cpu"):
        self.device, self.viclip, self.swin, self.raft = device, None, None, None
        if viclip:
            cfg = network_config(viclip_config, VICLIP_PRESETS, ViCLIPConfig)
            self.viclip = load_viclip(viclip, cfg).to(device)
            p = Path(viclip)                                           # the BPE merges default to beside the weights
            self.tok = load_clip_tokenizer(bpe or (p if p.is_dir() else p.parent if p.is_file() else viclip))
        if swin:
            cfg = network_config(swin_config, SWIN3D_PRESETS, Swin3DConfig)
            self.swin = load_swin3d(swin, cfg).to(device)
        if raft:
            cfg = network_config(raft_config, RAFT_PRESETS, RAFTConfig)
            self.raft = load_raft(raft, cfg).to(device)

    @torch.no_grad()
    def video(self, frames):
        c = self.viclip.config
        return self.viclip.encode_video(viclip_preprocess(frames, c.num_frames, c.image_size).to(self.device))

    @torch.no_grad()
    def action(self, frames):
        return self.swin(swin3d_preprocess(frames).to(self.device))

    def __call__(self, gen, fg, bg, gen_mask, prompt):
        gen_fg, gen_bg = gen * gen_mask[..., None], gen * ~gen_mask[..., None]
        out = {}
        if self.viclip is not None:
            out["m1_fg"] = cosine(self.video(gen_fg), self.video(fg))
            out["m1_bg"] = cosine(self.video(gen_bg), self.video(bg * ~gen_mask[..., None]))
            if prompt:
                with torch.no_grad():
                    ids = self.tok([prompt], self.viclip.config.context_length).to(self.device)
                    out["m4_text"] = cosine(self.video(gen), self.viclip.encode_text(ids))
        if self.swin is not None:
            out["m2_action_kl"] = action_kl(self.action(fg), self.action(gen_fg))
        if self.raft is not None:
            flow = lambda x, y: self.raft.flow(x, y).cpu()
            out["m3_flow_mse"] = background_flow_mse(bg, gen_bg, gen_mask, flow_fn=flow)
        return out
