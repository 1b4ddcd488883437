"""
BootsTAPIR (Doersch et al. 2023-24, "TAPIR" + "BootsTAP"), the point tracker of Segment-Any-Motion's stage 3,
written from scratch. Parameter names equal the keys of DeepMind's PyTorch checkpoint
`bootstapir_checkpoint_v2.pt` (54.7 M parameters, Apache-2.0), so it loads with strict=True and no rename table.

    from others import tapir
    model = tapir.load_tapir("bootstapir_checkpoint_v2.pt", device="cuda")
    q = tapir.grid_queries(49, 480, 720)                     # (48000, 3) [t, y, x]: a 6-px grid on frames 0,10,..,40
    tracks, vis, conf = tapir.track(model, video, q)         # uint8 (T, H, W, 3) -> (N, T, 2) xy, (N, T), (N, T)
    visible = vis * conf > 0.5                               # the release's rule
    python -m pytest -q tests/test_tapir.py                  # parity with the official torch port (CPU, goldens)

How it tracks, per query point (t, y, x) of a 256x256 clip:
1. A ResNet (pre-activation, instance norm) turns every frame into two unit-length feature maps: `hires`
   (stride 4, 128 channels) and `lowres` (stride 8, 256 channels, after 5 "extra" conv blocks: BootsTAPIR).
2. The query's feature vectors are read off both maps at (t, y, x) (trilinear).
3. Initial estimate (TAP-Net): the query's lowres vector is dotted with every position of every frame (a cost
   volume); a small conv net turns each frame's cost map into a heatmap (soft-argmax -> position), an occlusion
   logit and an "expected distance" logit (how far off the position is likely to be).
4. Refinement (PIPs), 4 times: correlations of the current query features with a 7x7 neighbourhood around the
   current position, at 3 scales (hires, lowres, lowres pooled 2x), go with the current occlusion / distance
   logits and features into a depthwise-conv MLP-Mixer over time, which outputs position, logit and feature
   updates. After the first pass the query features are the mixer's own per-frame features.

Details of the official code kept here, and why (the official port is `tapnet/torch` in google-deepmind/tapnet,
vendored by SegAnyMo as `preproc/tapnet_torch`; SegAnyMo's `preproc/run_tapir.py` calls it):
- JAX "SAME" padding as the port writes it: the 7x7 stride-2 stem pads (2, 4) and stride-2 3x3 convs pad (0, 2)
  (right/bottom), stride-1 convs pad 1. The extra pad row/column is never reached; kept as written.
- The extra conv blocks add their residual to the *layer-normed* input, not to the input (the port's `x +=` on the
  normed tensor); the checkpoint was trained so.
- Feature maps are divided by sqrt(max(sum of squares, 1e-12)); GELUs are the tanh approximation everywhere.
- Query features are sampled like `map_coordinates_3d`: one trilinear grid_sample over (t, y, x) with t + 0.5,
  border padding, coordinates scaled by feature size / image size (pixel centres at +0.5).
- Cost-volume head: conv 1->16 (3x3), ReLU; heatmap conv 16->1, softmax over the frame at temperature 20;
  soft-argmax = the softmax-weighted mean of cell centres (x + 0.5, y + 0.5) within radius 5 cells of the argmax
  (first maximum); occlusion head: pad (0, 2) right/bottom, conv 16->32 stride 2, ReLU, spatial mean, 32->16, ReLU,
  16->2 (occlusion, expected distance).
- On the query's own frame (round(t)) the initial position is the query itself.
- Refinement neighbourhoods: 7x7 offsets -3..3 (row-major, y outer), bilinear with zero padding; the position
  input of the mixer is all zeros (only correlations, logits and features go in); positions, logits and features
  are updated residually. The mixer's depthwise convs expand each channel 4x and the 4 copies are summed back
  (a+b+c+d, in that order). The pooled pyramid level reuses the lowres query / lowres half of the features.
- The output is the last refinement pass (the port's mean over `[p::p]` has one element at one resolution).
- Frames go through the ResNet 10 at a time (memory only; instance norm is per frame).
- `track()` does what the StM release's `segmentation.py::_tracks` does around the port (same maths as SegAnyMo's
  `run_tapir.py`): frames resized to 256x256 with PIL's Lanczos through uint8 (reimplemented here bit-exactly:
  `lanczos_resize`), pixels / 255 * 2 - 1; queries mapped to 256 px as y / (H-1) * 255 (corners aligned, float64
  then float32) and tracks mapped back by (W-1) / 255; the query frame's track set to the query itself; the
  video's feature grids computed once per clip (the port recomputes them for every call, same maths); queries
  in chunks of 4096 for query features and 256 for cost volume + refinement (the release's numbers).
- Visibility = 1 - sigmoid(occlusion), confidence = 1 - sigmoid(expected distance) (SegAnyMo's
  `parse_tapir_track_info`); see `track()` for what its callers do with them.
Left out: multi-resolution refinement above 256 px (the release always feeds 256x256, where the port's list of
refinement resolutions is that one size), the causal (online) mixer, the random query permutation of the port
(per-query maths, so order does not matter), training-only outputs. One deliberate difference: the port's 2D
sampler normalises x by the grid *height*; here each axis uses its own size (the same on the square grids used).
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing import weights


# ---- The backbone: a pre-activation ResNet with instance norm, and the BootsTAPIR extra convs ----------------

class BlockV2(nn.Module):
    """Pre-activation residual block: norm, ReLU, (projected shortcut), conv 3x3 (stride s), norm, ReLU, conv 3x3."""

    def __init__(self, c_in, c_out, stride, use_projection):
        super().__init__()
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 2, 0, 2)   # JAX "SAME" for stride 2, as the port pads it
        self.proj_conv = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if use_projection else None
        self.bn_0 = nn.InstanceNorm2d(c_in, affine=True)
        self.conv_0 = nn.Conv2d(c_in, c_out, 3, stride=stride, bias=False)
        self.conv_1 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn_1 = nn.InstanceNorm2d(c_out, affine=True)

    def forward(self, x):                                  # (B, c_in, H, W)
        h = torch.relu(self.bn_0(x))
        shortcut = x if self.proj_conv is None else self.proj_conv(h)   # projected from the *normed* input
        h = self.conv_0(F.pad(h, self.pad))                # (B, c_out, H/s, W/s)
        h = self.conv_1(torch.relu(self.bn_1(h)))
        return h + shortcut


class BlockGroup(nn.Module):
    def __init__(self, c_in, c_out, num_blocks, stride):
        super().__init__()
        self.blocks = nn.ModuleList(BlockV2(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, i == 0)
                                    for i in range(num_blocks))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class ResNet(nn.Module):
    """Stem (7x7, stride 2) then 4 groups with strides (1, 2, 2, 1): group 1 is the stride-4 `hires` map, group 3
    the stride-8 `lowres` map."""

    def __init__(self, widths=(64, 128, 256, 256), blocks_per_group=(2, 2, 2, 2), strides=(1, 2, 2, 1)):
        super().__init__()
        self.initial_conv = nn.Conv2d(3, widths[0], 7, stride=2, bias=False)
        c_in = [widths[0], *widths[:-1]]
        self.block_groups = nn.ModuleList(BlockGroup(c_in[i], widths[i], blocks_per_group[i], strides[i])
                                          for i in range(len(widths)))

    def forward(self, x):                                  # (B, 3, H, W) in [-1, 1]
        x = self.initial_conv(F.pad(x, (2, 4, 2, 4)))      # (B, w0, H/2, W/2)
        out = []
        for group in self.block_groups:
            x = group(x)
            out.append(x)
        return out[1], out[3]                              # hires (B, w1, H/4, W/4), lowres (B, w3, H/8, W/8)


class ExtraConvBlock(nn.Module):
    """LayerNorm over channels, conv 3x3 up (x multiplier), GELU, conv 3x3 down, added to the *normed* input."""

    def __init__(self, dim, multiplier):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim * multiplier, 3, padding=1)
        self.conv_1 = nn.Conv2d(dim * multiplier, dim, 3, padding=1)

    def forward(self, x):                                  # (B, C, h, w)
        x = self.layer_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv_1(F.gelu(self.conv(x), approximate="tanh"))


class ExtraConvs(nn.Module):
    def __init__(self, num_layers=5, dim=256, multiplier=4):
        super().__init__()
        self.blocks = nn.ModuleList(ExtraConvBlock(dim, multiplier) for _ in range(num_layers))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


# ---- The refinement network: an MLP-Mixer whose token mixing is a depthwise conv over time ------------------

class ChannelsMixer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mlp2_up = nn.Linear(dim, dim * 4)
        self.mlp2_down = nn.Linear(dim * 4, dim)

    def forward(self, x):
        return self.mlp2_down(F.gelu(self.mlp2_up(x), approximate="tanh"))


class MixerBlock(nn.Module):
    """Time mixing: two depthwise convs over frames (kernel 3), each channel expanded 4x, the 4 copies summed;
    then channel mixing (MLP x4). Both residual, pre-norm (LayerNorm without bias)."""

    def __init__(self, dim, kernel=3):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim, bias=False)
        self.mlp1_up = nn.Conv1d(dim, dim * 4, kernel, padding=kernel // 2, groups=dim)
        self.mlp1_up_1 = nn.Conv1d(dim * 4, dim * 4, kernel, padding=kernel // 2, groups=dim * 4)
        self.layer_norm_1 = nn.LayerNorm(dim, bias=False)
        self.conv_channels_mixer = ChannelsMixer(dim)

    def forward(self, x):                                  # (B, T, D)
        h = self.layer_norm(x).transpose(1, 2)             # (B, D, T)
        h = self.mlp1_up_1(F.gelu(self.mlp1_up(h), approximate="tanh")).transpose(1, 2)   # (B, T, 4D)
        x = x + (h[..., 0::4] + h[..., 1::4] + h[..., 2::4] + h[..., 3::4])              # copies of channel c
        return x + self.conv_channels_mixer(self.layer_norm_1(x))


class PIPSMLPMixer(nn.Module):
    def __init__(self, in_dim, out_dim, hidden_dim=512, num_blocks=12):
        super().__init__()
        self.linear = nn.Linear(in_dim, hidden_dim)
        self.blocks = nn.ModuleList(MixerBlock(hidden_dim) for _ in range(num_blocks))
        self.layer_norm = nn.LayerNorm(hidden_dim, bias=False)
        self.linear_1 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x):                                  # (B, T, in_dim) -> (B, T, out_dim)
        x = self.linear(x)
        for block in self.blocks:
            x = block(x)
        return self.linear_1(self.layer_norm(x))


# ---- TAPIR ---------------------------------------------------------------------------------------------------

def unit_length(x, dim=1):
    """Unit vectors along `dim`, so every dot product below (cost volume, correlations) is a cosine."""
    return x / torch.sqrt(torch.clamp(torch.sum(torch.square(x), dim=dim, keepdim=True), min=1e-12))


def sample_2d(grid, xy):
    """Bilinear features of `grid` (T, C, h, w) at `xy` (N, T, S, 2) in grid cells (cell i spans [i, i + 1), so
    its centre is i + 0.5), zeros outside -> (N, T, S, C)."""
    T, C, h, w = grid.shape
    norm = 2 * (xy / torch.tensor([w, h], device=xy.device, dtype=xy.dtype)) - 1
    out = F.grid_sample(grid, norm.transpose(0, 1), mode="bilinear", align_corners=False)   # (T, C, N, S)
    return out.permute(2, 0, 3, 1)


def sample_3d(grid, queries, size):
    """Trilinear features of `grid` (T, C, h, w) at `queries` (N, 3) [t, y, x] in pixels of frames of `size` (H, W),
    clamped at the borders -> (N, C). Frame t is read at its centre (t + 0.5), so an integer t reads that frame."""
    T, C, h, w = grid.shape
    dev = queries.device
    pos = queries * torch.tensor([T, h, w], device=dev) / torch.tensor([T, *size], device=dev)   # pixels -> cells
    pos = pos + torch.tensor([0.5, 0.0, 0.0], device=dev)
    norm = (2 * (pos / torch.tensor([T, h, w], device=dev)) - 1).flip(-1)                     # (N, 3) x, y, t
    vol = grid.transpose(0, 1)[None]                                                          # (1, C, T, h, w)
    out = F.grid_sample(vol, norm[None, :, None, None], mode="bilinear", align_corners=False,
                        padding_mode="border")                                                # (1, C, N, 1, 1)
    return out[0, :, :, 0, 0].T


def soft_argmax(heat, radius=5.0):
    """heat (N, T, h, w), a softmax per frame -> (N, T, 2) xy in cells: the weighted mean of cell centres within
    `radius` cells of the (first) maximum, so a second mode far away does not drag the estimate."""
    N, T, h, w = heat.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=heat.device), torch.arange(w, device=heat.device), indexing="ij")
    centres = torch.stack([xs + 0.5, ys + 0.5], dim=-1).reshape(-1, 2).to(heat.dtype)      # (h*w, 2)
    flat = heat.reshape(N, T, h * w)
    peak = centres[flat.argmax(dim=-1)]                                                    # (N, T, 2)
    near = ((centres - peak[..., None, :]).square().sum(-1) < radius ** 2).to(heat.dtype)  # (N, T, h*w)
    weight = flat * near
    return (weight[..., None] * centres).sum(-2) / torch.clamp(weight.sum(-1, keepdim=True), min=1e-12)


class TAPIR(nn.Module):
    """BootsTAPIR. The defaults are the checkpoint's config (`TAPIR(pyramid_level=1)` with extra convs and 4
    refinement passes); tests shrink `widths`, the extra convs and the mixer.

    Works at the resolution of the frames it gets (the official model at `initial_resolution` = 256x256, which is
    what `track()` feeds); positions are xy in those frames' pixels (pixel centres at +0.5)."""

    def __init__(self, widths=(64, 128, 256, 256), blocks_per_group=(2, 2, 2, 2), extra_conv_layers=5,
                 extra_conv_multiplier=4, mixer_hidden_dim=512, num_mixer_blocks=12, num_pips_iter=4,
                 pyramid_level=1, softmax_temperature=20.0, frame_chunk=10):
        super().__init__()
        self.highres_dim, self.lowres_dim = widths[1], widths[3]
        self.num_pips_iter, self.pyramid_level = num_pips_iter, pyramid_level
        self.softmax_temperature, self.frame_chunk = softmax_temperature, frame_chunk
        self.resnet_torch = ResNet(widths, blocks_per_group)
        self.torch_cost_volume_track_mods = nn.ModuleDict({
            "hid1": nn.Conv2d(1, 16, 3, padding=1),        # cost map -> 16 features
            "hid2": nn.Conv2d(16, 1, 3, padding=1),        # -> heatmap logits
            "hid3": nn.Conv2d(16, 32, 3, stride=2),        # -> occlusion features
            "hid4": nn.Linear(32, 16),
            "occ_out": nn.Linear(16, 2),                   # -> (occlusion, expected distance) logits
        })
        feat_dim = 4 + self.highres_dim + self.lowres_dim  # (dx, dy, occlusion, distance) + features
        corr_dim = (pyramid_level + 2) * 49                # a 7x7 neighbourhood per pyramid level
        self.torch_pips_mixer = PIPSMLPMixer(feat_dim + corr_dim, feat_dim, mixer_hidden_dim, num_mixer_blocks)
        self.extra_convs = ExtraConvs(extra_conv_layers, self.lowres_dim, extra_conv_multiplier)

    # -- once per clip
    def feature_grids(self, video):
        """video (T, 3, H, W) in [-1, 1], H and W multiples of 8 -> the correlation pyramid, a list of unit-length
        maps: [hires (T, 128, H/4, W/4), lowres (T, 256, H/8, W/8), lowres pooled 2x per pyramid level]."""
        hires, lowres = [], []
        for chunk in video.split(self.frame_chunk):        # memory only: instance norm is per frame
            h, lo = self.resnet_torch(chunk)
            hires.append(h)
            lowres.append(self.extra_convs(lo))
        pyramid = [unit_length(torch.cat(hires)), unit_length(torch.cat(lowres))]
        for _ in range(self.pyramid_level):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2))
        return pyramid

    def query_features(self, pyramid, queries, size):
        """queries (N, 3) [t, y, x] in pixels of frames of `size` (H, W) -> hires (N, 128), lowres (N, 256)."""
        return [sample_3d(grid, queries, size) for grid in pyramid[:2]]

    # -- per chunk of queries
    def initial_tracks(self, lowres, q_low, queries, size):
        """TAP-Net's estimate from the cost volume. lowres (T, C, h, w), q_low (N, C), queries (N, 3) [t, y, x]
        -> positions (N, T, 2) xy in pixels, occlusion and expected-distance logits (N, T)."""
        mods = self.torch_cost_volume_track_mods
        T, _, h, w = lowres.shape
        N = q_low.shape[0]
        cost = torch.einsum("nc,tchw->nthw", q_low, lowres).reshape(N * T, 1, h, w)
        hidden = torch.relu(mods["hid1"](cost))                                        # (N*T, 16, h, w)
        logits = mods["hid2"](hidden).reshape(N, T, h * w)
        heat = F.softmax(logits * self.softmax_temperature, dim=-1).reshape(N, T, h, w)
        points = soft_argmax(heat) * torch.tensor([size[1], size[0]], device=heat.device) / torch.tensor(
            [w, h], device=heat.device)                                                # cells -> pixels
        on_query_frame = (torch.round(queries[:, :1]) == torch.arange(T, device=queries.device))[..., None]
        points = torch.where(on_query_frame, queries[:, None, [2, 1]], points)        # the query itself
        occ = torch.relu(mods["hid3"](F.pad(hidden, (0, 2, 0, 2)))).mean(dim=(-1, -2))  # (N*T, 32)
        occ = mods["occ_out"](torch.relu(mods["hid4"](occ))).reshape(N, T, 2)
        return points, occ[..., 0], occ[..., 1]

    def refine(self, pyramid, q_feats, points, occ, expd, feats, size):
        """One PIPs pass. q_feats [hires (N, 128), lowres (N, 256)]; points (N, T, 2); feats None on the first
        pass, else the mixer's features (N, T, 128 + 256) -> updated (points, occ, expd, feats)."""
        N, T, _ = points.shape
        dy, dx = torch.meshgrid(torch.arange(-3, 4), torch.arange(-3, 4), indexing="ij")
        offsets = torch.stack([dx, dy], dim=-1).reshape(49, 2).to(points)                # row-major, y outer
        corrs = []
        for level, grid in enumerate(pyramid):
            hi = level == 0
            if feats is None:
                query = (q_feats[0] if hi else q_feats[1])[:, None].expand(N, T, -1)       # (N, T, C)
            else:
                query = feats[..., :self.highres_dim] if hi else feats[..., self.highres_dim:]
            cells = points * torch.tensor(grid.shape[:1:-1], device=points.device) / torch.tensor(
                size[::-1], device=points.device)                                         # pixels -> cells
            around = sample_2d(grid, cells[:, :, None] + offsets)                        # (N, T, 49, C)
            corrs.append(torch.einsum("ntsc,ntc->nts", around, query))
        if feats is None:
            feats = torch.cat(q_feats, dim=-1)[:, None].expand(N, T, -1)                  # (N, T, 128 + 256)
        x = torch.cat([torch.zeros_like(points), occ[..., None], expd[..., None], feats, *corrs], dim=-1)
        res = self.torch_pips_mixer(x)                                                    # (N, T, 4 + 384)
        return points + res[..., :2], occ + res[..., 2], expd + res[..., 3], feats + res[..., 4:]

    def estimate(self, pyramid, q_feats, queries, size):
        """Initial estimate, then `num_pips_iter` refinement passes -> tracks (N, T, 2), occlusion, expd (N, T)."""
        points, occ, expd = self.initial_tracks(pyramid[1], q_feats[1], queries, size)
        feats = None
        for _ in range(self.num_pips_iter):
            points, occ, expd, feats = self.refine(pyramid, q_feats, points, occ, expd, feats, size)
        return points, occ, expd

    def forward(self, video, queries, chunk=256):
        """video (T, 3, H, W) in [-1, 1], queries (N, 3) [t, y, x] in its pixels -> tracks (N, T, 2) xy,
        occlusion logits (N, T) (higher: occluded), expected-distance logits (N, T) (higher: likely far off)."""
        size = tuple(video.shape[-2:])
        pyramid = self.feature_grids(video)
        q_feats = self.query_features(pyramid, queries, size)
        outs = [self.estimate(pyramid, [f[i:i + chunk] for f in q_feats], queries[i:i + chunk], size)
                for i in range(0, len(queries), chunk)]
        return tuple(torch.cat(o) for o in zip(*outs))


def config_of(sd):
    """TAPIR's constructor arguments read off a state dict's shapes: the official checkpoint gives the defaults, a
    narrower one (a test's) its own widths, so one loader serves both."""
    n = lambda prefix: len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})
    groups = n("resnet_torch.block_groups.")
    return dict(widths=tuple(sd[f"resnet_torch.block_groups.{g}.blocks.0.conv_0.weight"].shape[0]
                             for g in range(groups)),
                blocks_per_group=tuple(n(f"resnet_torch.block_groups.{g}.blocks.") for g in range(groups)),
                extra_conv_layers=n("extra_convs.blocks."),
                extra_conv_multiplier=sd["extra_convs.blocks.0.conv.weight"].shape[0]
                // sd["extra_convs.blocks.0.conv.weight"].shape[1],
                mixer_hidden_dim=sd["torch_pips_mixer.linear.weight"].shape[0],
                num_mixer_blocks=n("torch_pips_mixer.blocks."))


def load_tapir(path, device="cpu"):
    """The official `bootstapir_checkpoint_v2.pt` (a plain state dict) -> TAPIR in eval mode, strictly: a key or
    shape that differs stops with one line naming the file. The widths are read off the file (config_of)."""
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    try:
        config = config_of(sd)
    except (KeyError, IndexError, AttributeError) as e:
        raise ValueError(f"{path}: not a BootsTAPIR checkpoint (no {e})") from None
    with torch.device("meta"):
        model = TAPIR(**config)
    return weights.load_into(model, sd, str(path), device=device).eval()


# ---- Around the model, as the StM release runs it -------------------------------------------------------------

def grid_queries(T, H, W, every=10):
    """(N, 3) float [t, y, x] in clip pixels: a grid every int(sqrt(H*W / 9000)) px (at least 1) from (0, 0), on
    frames 0, every, 2*every, ...; row-major within a frame (run_tapir.py's np.mgrid[0:H:s, 0:W:s])."""
    s = max(1, int(math.sqrt(H * W / 9000)))
    y, x = torch.meshgrid(torch.arange(0, H, s), torch.arange(0, W, s), indexing="ij")
    yx = torch.stack([y.reshape(-1), x.reshape(-1)], dim=-1).float()
    return torch.cat([torch.cat([torch.full((len(yx), 1), float(t)), yx], dim=1) for t in range(0, T, every)])


def sinc(x):
    return 1.0 if x == 0.0 else math.sin(x * math.pi) / (x * math.pi)


def _lanczos_weights(n_in, n_out):
    """PIL's fixed-point Lanczos-3 weights (Resample.c: precompute_coeffs + normalize_coeffs_8bpc), as a dense
    (n_out, n_in) float64 matrix of integers (scaled by 2^22)."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 3.0 * fscale
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        d = ((np.arange(lo, hi) - centre) + 0.5) * (1.0 / fscale)
        k = np.array([sinc(v) * sinc(v / 3) if -3.0 <= v < 3.0 else 0.0 for v in d])   # libm's sin, as PIL
        total = 0.0
        for v in k:                                        # PIL sums in order; keep its rounding
            total += v
        k = k / total if total != 0.0 else k
        out[i, lo:hi] = np.trunc(np.where(k < 0, k * (1 << 22) - 0.5, k * (1 << 22) + 0.5))
    return out


def lanczos_resize(video, size, device="cpu"):
    """uint8 (T, H, W, 3) -> uint8 numpy (T, h, w, 3), `size` (h, w): bit-exactly PIL's `Image.resize(LANCZOS)`
    (what mediapy.resize_video runs): horizontal pass first, each pass in fixed point, rounded and clipped to uint8.
    Products and sums are integers below 2^53, so the float64 matmuls are exact in any summation order."""
    video = torch.as_tensor(np.asarray(video))
    (_, H, W, _), (h, w) = video.shape, size
    wx = torch.from_numpy(_lanczos_weights(W, w)).to(device) if W != w else None   # PIL skips a same-size pass
    wy = torch.from_numpy(_lanczos_weights(H, h)).to(device) if H != h else None
    to_uint8 = lambda y: torch.clamp(torch.floor((y + (1 << 21)) / (1 << 22)), 0, 255)   # PIL's clip8
    out = []
    for frame in video:                                    # (H, W, 3), one at a time: float64 copies are big
        x = frame.to(device, torch.float64)
        if wx is not None:
            x = to_uint8(torch.einsum("oi,hic->hoc", wx, x))
        if wy is not None:
            x = to_uint8(torch.einsum("oi,iwc->owc", wy, x))
        out.append(x.to(torch.uint8).cpu())
    return torch.stack(out).numpy()


@torch.no_grad()
def track(model, video, queries, *, size=256, query_chunk=4096, refine_chunk=256):
    """Point tracks of a clip as the StM release computes them.

    video: uint8 (T, H, W, 3), numpy or tensor; queries: (N, 3) [t, y, x] in clip pixels (`grid_queries`).
    Returns float32 CPU tensors: tracks (N, T, 2) xy in clip pixels (the query frame's entry is the query itself),
    visibility (N, T) = 1 - sigmoid(occlusion logit), confidence (N, T) = 1 - sigmoid(expected-distance logit).
    The release (SegAnyMo's parse_tapir_track_info) then takes visible = visibility * confidence > 0.5 and zeroes
    the confidence where neither visibility * confidence nor (1 - visibility) * confidence exceeds 0.5.

    Frames are resized to size x size (PIL Lanczos through uint8), the feature grids computed once, query
    features in chunks of `query_chunk`, cost volume + refinement in chunks of `refine_chunk` (memory only)."""
    device = next(model.parameters()).device
    video = np.asarray(video.cpu() if torch.is_tensor(video) else video)
    T, H, W, _ = video.shape
    frames = torch.from_numpy(lanczos_resize(video, (size, size), device)).to(device).float()
    frames = (frames / 255 * 2 - 1).permute(0, 3, 1, 2)                                  # (T, 3, S, S)
    q = torch.as_tensor(queries, dtype=torch.float64).cpu()
    clip = torch.tensor([1.0, H - 1, W - 1], dtype=torch.float64)
    q_model = (q / clip * torch.tensor([1.0, size - 1, size - 1])).float().to(device)   # corners aligned
    pyramid = model.feature_grids(frames)
    outs = []
    for i in range(0, len(q_model), query_chunk):
        qc = q_model[i:i + query_chunk]
        q_feats = model.query_features(pyramid, qc, (size, size))
        for j in range(0, len(qc), refine_chunk):
            part = [f[j:j + refine_chunk] for f in q_feats]
            outs.append([o.cpu() for o in model.estimate(pyramid, part, qc[j:j + refine_chunk], (size, size))])
    if not outs:
        return torch.zeros(0, T, 2), torch.zeros(0, T), torch.zeros(0, T)
    tracks, occ, expd = (torch.cat(o) for o in zip(*outs))
    tracks = (tracks.double() * torch.tensor([W - 1.0, H - 1.0], dtype=torch.float64) / (size - 1)).float()
    rows = torch.arange(len(q))
    tracks[rows, q[:, 0].round().long()] = q[:, [2, 1]].float()                          # the query frame: exact
    return tracks, 1 - torch.sigmoid(occ), 1 - torch.sigmoid(expd)
