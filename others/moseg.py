"""
Segment-Any-Motion's track stages (Huang et al., CVPR 2025; MIT): depth, DINOv2 key features, the motion classifier
over point tracks (`moseg.pth`, the `traj_oa_depth` network) and the StM release's rules for choosing tracks, all
written from scratch. The tracker (BootsTAPIR) and SAM 2 live elsewhere; this file turns their tracks into "which
tracks move".

    from others import moseg                                  # video uint8 (T, H, W, 3); tracker output for
    depth = moseg.depth_maps(moseg.load_depth(), video)       # the query frames 0, 10, ...: tracks (N, T, 2) xy,
    dino = moseg.dino_features(moseg.load_dino(), video[::10])          # logits (N, T) x 2, query_t (N,)
    visible, vis, conf = moseg.tapir_scores(occlusion_logits, expected_dist_logits)
    i = moseg.select_tracks(tracks, vis, conf, query_t)                 # then every array below is [i]
    p = moseg.classify(moseg.load_moseg(), tracks[i], visible[i], conf[i], depth, dino, H, W,
                       visibility=vis[i], query_t=query_t[i])
    moving = moseg.moving_tracks(p)                           # bool (N,)
    points = moseg.sam2_visible(visible[i], conf[i])[moving]  # the steps SAM 2 is prompted from

The classifier (official `core/network/traj_oa_depth.py`, config `configs/example_train.yaml`): every track step gets
an 88-d vector [NeRF encoding of xy (42) | of its frame-to-frame motion (42) | depth | depth motion | visibility |
confidence]; two 1x1 convs lift it to 16-d; a 2+2-layer transformer attends along each track's time and across all
tracks of a frame; a max over time gives one 16-d vector per track; a second transformer over all tracks (its
feed-forwards also read the track's 768-d DINO key vector) gives one logit per track.

Official details kept, with where they are (SegAnyMo = github.com/nnanhuang/SegAnyMo, release =
stm-stm-stm/split-then-merge `stm/data_generation/segmentation.py`, whose `_motion_seg` ports `inference.py`):
- Track scores (`core/dataset/kubric.py::parse_tapir_track_info`): visibility = 1 - sigmoid(occlusion logit),
  confidence = 1 - sigmoid(expected-distance logit), visible = visibility * confidence > 0.5, and confidence is then
  zeroed where neither visibility * confidence nor (1 - visibility) * confidence exceeds 0.5. "confidence" below is
  always that zeroed one; the model's extra channels are the raw visibility and the zeroed confidence.
- Track sampling (`inference.py` bootstapir branch; release `_motion_seg`): per query frame in order a random
  int(n * 1/len(query frames)) of its tracks, concatenated, then a random 5,000 of those, then tracks invisible in
  every frame dropped. Official: unseeded `torch.randperm`; release: one `torch.Generator().manual_seed(42)` for all
  the draws (config `seed: int = 42`), which `select_tracks` reproduces draw for draw.
- A frame where no kept track is visible gets its most confident track marked visible (`inference.py`, the
  `cols_all_false` loop): attention across a frame's tracks would otherwise be all masked (NaN).
- Coordinates are normalised x / W * 2 - 1, y / H * 2 - 1, clamped to [-1, 1] (`core/dataset/data_utils.py::
  normalize_point_traj_torch`).
- Depth is sampled at those normalised coordinates as if they were in [0, 1] (`traj_oa_depth.gather_point`): flat
  index int(y * H) * W + int(x * W) (truncation toward zero), clamped to [0, H * W - 1]. So a track in the upper
  half of the frame mostly reads pixel (0, 0), one in the lower half reads rows 0..H of the map with columns that
  spill into the neighbouring rows; the model was trained with it: kept.
- Motions are next-minus-this, zeroed where the next step is invisible, and 0 at the last step (`augment_traj`).
- NeRF encoding (`core/network/embeddings.py::FreqEmbedder(2, 10)`): [x, y, sin(x), sin(y), cos(x), cos(y),
  sin(2x), ... cos(512y)] = 42 channels.
- Time attention (`core/network/cus_transformer.py`): post-norm layers, ReLU, feed-forward 64, dropout off. Each
  layer attends first along time (the sequence axis is time, per track; key padding = invisible steps), then across
  tracks (per frame; key padding = invisible tracks) with the SAME `self_attn` weights, then (decoder layers)
  attends to the encoder output along time with no padding mask. The encoder and the decoder both read the same
  16-d input (src = tgt). A track invisible everywhere would have its first step unmasked (`extract_feature`).
- The max over time covers invisible steps too (`extract_feature`).
- The point transformer (`core/network/decoder.py::TransformerPointNet`, 8 heads, 128-d, 4 encoder + 4 decoder
  blocks, feed-forward 512): attention over all tracks without a mask; the encoder blocks' feed-forwards read
  [x | DINO] (128 + 768); the decoder blocks start again from the embedded input and cross-attend to the encoder
  output; the output is sigmoid(logit).
- DINO (`core/utils/dino_feat.py`, release `_dino_feats`): the query frames (0, 10, 20, ...) resized to the next
  multiples of 14 (490 x 728 for 480 x 720) by torchvision's tensor `Resize` (bilinear, antialias), ImageNet
  mean/std, DINOv2 ViT-B/14 with its patch conv at stride 7 (69 x 103 tokens), the keys of block 11, the last (qkv
  of its norm1 output), no CLS, channels flattened (head_dim, head) head-minor, stored as float16. The position
  embeddings are resized with `scale_factor = (n + 0.1) / 37` per axis, not `size=` (`ViTExtractor._fix_pos_enc`).
- A track's DINO vector is the one of its own query frame at its position there (`core/utils/utils.py::get_feat`):
  column int(x * w / W), row int(y * h / H), clamped to the grid.
- Depth (`core/utils/run_depth.py`, release `_depths`): Depth-Anything-V2 in fp32 on every frame through the
  transformers pipeline (4.46.3's DPT processor: keep aspect ratio, multiple of 14, PIL bicubic on uint8, which
  `pil_bicubic` reproduces bit for bit: 518 x 784 for 480 x 720), the predicted disparity bicubic (torch,
  align_corners=False) back to the clip size, scaled to uint16 by its own min and max, written as PNG and read back
  with PIL `.convert('L')`, which clips at 255, then min-max normalised per frame. About 99% of the pixels end at
  1.0: only disparities within 255/65535 of the range above the smallest survive. The classifier was trained on
  exactly that.
- Moving tracks (`inference.py` end; release `_motion_seg`): the first of the thresholds 0.95, 0.93, 0.9, 0.85, 0.8,
  0.75, 0.7 above which at least 10 tracks lie, else the 3 most probable (clips over 300 frames use 0.99 ... 0.95).
  The points handed to SAM 2 are those steps of the moving tracks that are visible (after the per-frame fix) and
  have confidence > 0.9.
"""

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

MOSEG_REPO = "Changearthmore/moseg"                       # moseg.pth, the release's `moseg_repo`
DINO_ID = "facebook/dinov2-base"                          # the same weights as torch.hub's dinov2_vitb14
DEPTH_ID = "depth-anything/Depth-Anything-V2-Large-hf"    # the release's (CC-BY-NC-4.0); -Small-hf: Apache-2.0
THRESHOLDS = (0.95, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7)
LONG_CLIP_THRESHOLDS = (0.99, 0.98, 0.97, 0.96, 0.95)     # for clips over 300 frames
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- The classifier -------------------------------------------------------------------------------------------
# Attribute names follow moseg.pth's keys, so the checkpoint loads with strict=True.

class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameter names (in_proj_weight packs q, k, v)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x, ctx=None, pad=None):
        """x (B, S, E), ctx (B, S', E) (default x), pad (B, S') True where a key is ignored -> (B, S, E)."""
        ctx = x if ctx is None else ctx
        (wq, wk, wv), (bq, bk, bv) = self.in_proj_weight.chunk(3), self.in_proj_bias.chunk(3)
        q, k, v = self.heads_of(F.linear(x, wq, bq)), self.heads_of(F.linear(ctx, wk, bk)), \
            self.heads_of(F.linear(ctx, wv, bv))
        mask = None if pad is None else ~pad[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                # (B, h, S, d)
        return self.out_proj(o.transpose(1, 2).flatten(2))

    def heads_of(self, t):
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)                   # (B, S, E) -> (B, h, S, d)


def _across_tracks(attn, x, pad):
    """The same attention applied per frame across tracks: x (N, T, E), pad (N, T)."""
    return attn(x.transpose(0, 1), pad=pad.t()).transpose(0, 1)


class TrackEncoderLayer(nn.Module):
    """Post-norm: attend along time, then across tracks (same weights, its own norm), then feed-forward."""

    def __init__(self, dim, heads, ff):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.linear1, self.linear2 = nn.Linear(dim, ff), nn.Linear(ff, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, pad):                                   # x (N, T, E), pad (N, T)
        x = self.norm1(x + self.self_attn(x, pad=pad))           # along each track's time
        x = self.norm3(x + _across_tracks(self.self_attn, x, pad))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class TrackDecoderLayer(nn.Module):
    """As the encoder layer, plus attention to the encoder output along time (no mask) before the feed-forward."""

    def __init__(self, dim, heads, ff):
        super().__init__()
        self.self_attn, self.multihead_attn = Attention(dim, heads), Attention(dim, heads)
        self.linear1, self.linear2 = nn.Linear(dim, ff), nn.Linear(ff, dim)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))

    def forward(self, x, memory, pad):                          # x, memory (N, T, E), pad (N, T)
        x = self.norm1(x + self.self_attn(x, pad=pad))
        x = self.norm4(x + _across_tracks(self.self_attn, x, pad))
        x = self.norm2(x + self.multihead_attn(x, memory))
        return self.norm3(x + self.linear2(F.relu(self.linear1(x))))


class Stack(nn.Module):
    """Layers then a final LayerNorm (nn.TransformerEncoder / Decoder's `layers` and `norm`)."""

    def __init__(self, layers, dim):
        super().__init__()
        self.layers, self.norm = nn.ModuleList(layers), nn.LayerNorm(dim)


class TrackTransformer(nn.Module):
    """Encoder and decoder both read the same track steps (src = tgt)."""

    def __init__(self, dim, heads, ff, depth):
        super().__init__()
        self.encoder = Stack([TrackEncoderLayer(dim, heads, ff) for _ in range(depth)], dim)
        self.decoder = Stack([TrackDecoderLayer(dim, heads, ff) for _ in range(depth)], dim)

    def forward(self, x, pad):                                   # (N, T, E) -> (N, T, E)
        memory = x
        for layer in self.encoder.layers:
            memory = layer(memory, pad)
        memory = self.encoder.norm(memory)
        for layer in self.decoder.layers:
            x = layer(x, memory, pad)
        return self.decoder.norm(x)


class TrackEncoder(nn.Module):
    """88-d track steps -> one 16-d vector per track (max over time)."""

    def __init__(self, in_dim, dim=16, heads=4, ff=64, depth=2):
        super().__init__()
        # 1x1 convs over (C, N, T) in the original: a linear layer per track step
        self.input_fc1, self.fc2 = nn.Conv2d(in_dim, 16, 1), nn.Conv2d(16, dim, 1)
        self.transformer_model = TrackTransformer(dim, heads, ff, depth)

    def forward(self, x, pad):                                   # x (N, T, in_dim), pad (N, T) -> (N, dim)
        x = F.relu(F.linear(x, self.input_fc1.weight.flatten(1), self.input_fc1.bias))
        x = F.relu(F.linear(x, self.fc2.weight.flatten(1), self.fc2.bias))
        pad = pad.clone()
        pad[pad.all(1), 0] = False                                # a track masked everywhere keeps its first step
        return self.transformer_model(x, pad).amax(1)             # the max covers invisible steps too


class PointEncoderBlock(nn.Module):
    """Attention over all tracks; the feed-forward also reads the track's DINO vector."""

    def __init__(self, dim, heads, ff, dino_dim):
        super().__init__()
        self.attention = Attention(dim, heads)
        self.ffn = nn.Sequential(nn.Linear(dim + dino_dim, ff), nn.ReLU(), nn.Linear(ff, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, dino):                                  # x (1, N, E), dino (1, N, D)
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.ffn(torch.cat([x, dino], -1)))


class PointDecoderBlock(nn.Module):
    def __init__(self, dim, heads, ff):
        super().__init__()
        self.self_attention, self.cross_attention = Attention(dim, heads), Attention(dim, heads)
        self.ffn = nn.Sequential(nn.Linear(dim, ff), nn.ReLU(), nn.Linear(ff, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, memory):
        x = self.norm1(x + self.self_attention(x))
        x = self.norm2(x + self.cross_attention(x, memory))
        return self.norm3(x + self.ffn(x))


class PointEmbedding(nn.Module):
    def __init__(self, in_dim, dim):
        super().__init__()
        self.embedding = nn.Linear(in_dim, dim)


class PointTransformer(nn.Module):
    """One 16-d vector (+ DINO) per track -> one logit per track, all tracks attending to each other."""

    def __init__(self, in_dim=16, dim=128, heads=8, ff=512, depth=8, dino_dim=768):
        super().__init__()
        self.embedding = PointEmbedding(in_dim, dim)
        self.encoders = nn.ModuleList([PointEncoderBlock(dim, heads, ff, dino_dim) for _ in range(depth // 2)])
        self.decoders = nn.ModuleList([PointDecoderBlock(dim, heads, ff) for _ in range(depth // 2)])
        self.output_layer = nn.Linear(dim, 1)

    def forward(self, x, dino):                                  # x (N, in_dim), dino (N, D) -> (N,)
        x, dino = self.embedding.embedding(x)[None], dino[None]
        memory = x
        for block in self.encoders:
            memory = block(memory, dino)
        for block in self.decoders:
            x = block(x, memory)
        return self.output_layer(x)[0, :, 0]


def freq_encode(x, n_freqs):
    """NeRF encoding of (..., 2): [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(n-1) x), cos(2^(n-1) x)]."""
    parts = [x]
    for f in 2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device):
        parts += [torch.sin(x * f), torch.cos(x * f)]
    return torch.cat(parts, -1)


def next_step_motion(x, pad):
    """x (N, T, C) -> x[t+1] - x[t], zeroed where step t+1 is invisible; 0 at the last step."""
    m = torch.zeros_like(x)
    m[:, :-1] = (x[:, 1:] - x[:, :-1]) * (1.0 - pad[:, 1:, None].to(x.dtype))
    return m


class MotionClassifier(nn.Module):
    """SegAnyMo's `traj_oa_depth` as example_train.yaml configures it (tracks, depth, visibility/confidence, DINO
    after the time transformer, time attention, positional encoding; OANet off). Real config by default (3.44 M
    parameters); smaller `point_*` and `dino_dim` make test-sized models."""

    def __init__(self, n_freqs=10, dim=16, heads=4, ff=64, depth=2,
                 point_dim=128, point_heads=8, point_ff=512, point_depth=8, dino_dim=768):
        super().__init__()
        self.n_freqs = n_freqs
        pe = 2 + 4 * n_freqs                                     # 42 channels per 2-d input
        self.joint_encoder = TrackEncoder(2 * pe + 4, dim, heads, ff, depth)
        self.decoder = PointTransformer(dim, point_dim, point_heads, point_ff, point_depth, dino_dim)

    def forward(self, traj, disp, pad, visibility, confidence, dino):
        """traj (N, T, 2) in [-1, 1], disp (N, T) depth at the tracks, pad (N, T) True where invisible,
        visibility / confidence (N, T), dino (N, D) -> moving probability (N,)."""
        disp = disp[..., None]
        x = torch.cat([freq_encode(traj, self.n_freqs), freq_encode(next_step_motion(traj, pad), self.n_freqs),
                       disp, next_step_motion(disp, pad), visibility[..., None], confidence[..., None]], -1)
        return torch.sigmoid(self.decoder(self.joint_encoder(x, pad), dino))


def load_moseg(path=MOSEG_REPO, device="cpu"):
    """moseg.pth (a dict holding `model_state_dict`), a local path or the hub repo that holds it -> eval model."""
    if not os.path.isfile(path):
        from huggingface_hub import hf_hub_download
        path = hf_hub_download(path, "moseg.pth")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = MotionClassifier(**ckpt.get("config", {}))   # official file: no "config", the real one; tests: theirs
    model.load_state_dict(ckpt.get("model_state_dict", ckpt), strict=True)
    return model.to(device).eval()


# ---- Track scores and the release's track rules ----------------------------------------------------------------

def tapir_scores(occlusion, expected_dist):
    """BootsTAPIR logits (N, T) -> (visible bool, visibility, confidence): visibility = 1 - sigmoid(occlusion),
    confidence = 1 - sigmoid(expected_dist), then `track_scores`."""
    return track_scores(1 - torch.sigmoid(occlusion), 1 - torch.sigmoid(expected_dist))


def track_scores(visibility, confidence):
    """Visibility and confidence probabilities (N, T) (tapir.track's) -> (visible bool, visibility, confidence):
    visible where their product > 0.5; confidence zeroed where the track is confidently neither visible nor occluded
    (`parse_tapir_track_info`)."""
    visible = visibility * confidence > 0.5
    sure = visible | ((1 - visibility) * confidence > 0.5)
    return visible, visibility, confidence * sure.float()


def select_tracks(tracks, visibility, confidence, query_t, *, keep=0.2, cap=5000, seed=42):
    """The release's track sampling -> LongTensor idx into the N tracks, in the order the classifier sees them.
    tracks (N, T, 2), visibility / confidence (N, T), query_t (N,) each track's query frame.
    Per query frame in increasing order, a random int(n * keep) of its tracks (keep = 1 / number of query frames);
    then a random `cap` of all of those; then the tracks visible (visibility * confidence > 0.5) in no frame are
    dropped. One generator seeded with `seed` draws all, as the release does. Then `frame_visible` the kept rows."""
    assert tracks.shape[:2] == visibility.shape == confidence.shape and query_t.shape == tracks.shape[:1]
    g = torch.Generator().manual_seed(seed)
    picked = []
    for q in torch.unique(query_t).tolist():                     # sorted
        own = torch.nonzero(query_t == q)[:, 0]
        picked.append(own[torch.randperm(len(own), generator=g)[:int(len(own) * keep)]])
    idx = torch.cat(picked)
    idx = idx[torch.randperm(len(idx), generator=g)[:cap]]
    seen = (visibility[idx] * confidence[idx] > 0.5).any(1)
    return idx[seen]


def frame_visible(visible, confidence):
    """visible (N, T) with every frame given at least one visible track: where a frame has none, its most
    confident track (first on ties) counts as visible. The classifier's padding and SAM 2's points both use it."""
    visible = visible.clone()
    for t in torch.nonzero(~visible.any(0))[:, 0].tolist():
        visible[int(confidence[:, t].argmax()), t] = True
    return visible


def sam2_visible(visible, confidence):
    """The steps of the tracks handed to SAM 2: visible (after `frame_visible`) and confidence > 0.9."""
    return frame_visible(visible, confidence) & (confidence > 0.9)


def moving_tracks(probs, confidence=None, thresholds=THRESHOLDS, min_tracks=10, top=3):
    """probs (N,) -> bool (N,): above the first threshold that leaves >= min_tracks tracks, else the `top` most
    probable. `confidence` does not change which tracks move: the confidence > 0.9 rule applies per step, to the
    points of these tracks handed to SAM 2 (`sam2_visible(visible, confidence)[moving]`)."""
    for t in thresholds:
        moving = probs > t
        if moving.sum() >= min_tracks:
            return moving
    moving = torch.zeros_like(probs, dtype=torch.bool)
    moving[torch.topk(probs, min(top, len(probs))).indices] = True
    return moving


# ---- Classifier inputs, as the release builds them ---------------------------------------------------------------

def normalize_tracks(tracks, H, W):
    """Pixel xy (..., 2) -> [-1, 1], clamped."""
    return ((tracks / torch.tensor([W, H], dtype=tracks.dtype, device=tracks.device)) * 2 - 1).clamp(-1, 1)


def depth_at_tracks(depth, traj):
    """depth (T, H, W), traj (N, T, 2) in [-1, 1] -> (N, T): the original's flat-index lookup that treats [-1, 1]
    as [0, 1] (int truncation, then the flat index clamped): kept, the model was trained with it."""
    T, H, W = depth.shape
    i = (traj[..., 1] * H).to(torch.int32) * W + (traj[..., 0] * W).to(torch.int32)
    i = i.long().clamp(0, H * W - 1)                                              # (N, T)
    return torch.gather(depth.reshape(T, H * W), 1, i.t()).t()


def dino_at_tracks(dino, tracks, query_t, query_frames, H, W):
    """dino (Q, h, w, D) of `query_frames`; each track's vector on its own query frame at its position there:
    column int(x * w / W), row int(y * h / H), clamped -> (N, D) float32."""
    _, h, w, _ = dino.shape
    row_of = {int(q): i for i, q in enumerate(query_frames)}
    n = torch.arange(len(tracks))
    xy = tracks[n, query_t]                                                       # (N, 2) at the query frame
    cx = (xy[:, 0] * (w / W)).long().clamp(0, w - 1)
    cy = (xy[:, 1] * (h / H)).long().clamp(0, h - 1)
    q = torch.tensor([row_of[int(t)] for t in query_t.tolist()], dtype=torch.long)
    return dino[q, cy, cx].float()


@torch.no_grad()
def classify(model, tracks, visible, confidence, depth, dino, H, W, *, visibility, query_t, query_frames=None):
    """Moving probability per track (N,), from the inputs exactly as the release builds them.
    tracks (N, T, 2) xy pixels of the H x W clip; visible (N, T) bool; confidence (N, T) (zeroed as `tapir_scores`
    does); visibility (N, T) = 1 - sigmoid(occlusion); depth (T, H, W) from `depth_maps`; dino (Q, h, w, D) from
    `dino_features` of `query_frames` (default 0, 10, 20, ...); query_t (N,) each track's query frame."""
    dev = next(model.parameters()).device
    T = tracks.shape[1]
    query_frames = range(0, T, 10) if query_frames is None else query_frames
    pad = ~frame_visible(visible, confidence)
    traj = normalize_tracks(tracks.float(), H, W)
    disp = depth_at_tracks(depth.float(), traj)
    vec = dino_at_tracks(dino, tracks.float(), query_t, query_frames, H, W)
    args = (traj, disp, pad, visibility.float(), confidence.float(), vec)
    return model(*(a.to(dev) for a in args)).float().cpu()


# ---- DINOv2 key features (transformers' Dinov2Model, run the way dino_feat.py runs the hub model) -----------------

def load_dino(name_or_path=DINO_ID, device="cpu", dtype=None):
    """transformers' Dinov2Model (facebook/dinov2-base holds dinov2_vitb14's weights), for `dino_features`."""
    try:
        from transformers import Dinov2Model
    except ImportError:
        raise SystemExit("DINOv2 features need transformers>=4.56 (pip install transformers)") from None
    kw = {} if dtype is None else {"dtype": dtype}
    return Dinov2Model.from_pretrained(name_or_path, **kw).to(device).eval()


def dino_pos_embed(pos, rows, cols, height, width):
    """(1, 1 + M*M, C) -> (1, 1 + rows*cols, C), bicubic with scale_factor (n + 0.1) / M as dino_feat.py does (the
    +0.1 dodges a floating-point floor; sampling positions differ from size=)."""
    M = math.isqrt(pos.shape[1] - 1)
    if rows * cols == M * M and height == width:
        return pos
    grid = pos[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / M, (cols + 0.1) / M), mode="bicubic",
                         align_corners=False, recompute_scale_factor=False)
    assert grid.shape[-2:] == (rows, cols), grid.shape
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], 1)


def dino_keys(model, pixels, stride=7):
    """pixels (B, 3, H, W) normalised, H and W multiples of the patch -> (B, rows, cols, C) float32: the keys of the
    last block, channels (head_dim, head) head-minor, no CLS."""
    emb, layers = model.embeddings, model.encoder.layer
    proj = emb.patch_embeddings.projection
    x = F.conv2d(pixels.to(proj.weight.dtype), proj.weight, proj.bias, stride=stride)   # (B, C, rows, cols)
    B, C, rows, cols = x.shape
    x = torch.cat([emb.cls_token.expand(B, -1, -1), x.flatten(2).transpose(1, 2)], 1)
    pos = dino_pos_embed(emb.position_embeddings.float(), rows, cols, *pixels.shape[-2:])   # fp32, as dino_feat
    x = x + pos.to(x.dtype)
    for layer in layers[:-1]:
        x = layer(x)
        x = x[0] if isinstance(x, tuple) else x                  # transformers < 5 returns a tuple
    last = layers[-1]
    attn = last.attention
    key = attn.k_proj if hasattr(attn, "k_proj") else attn.attention.key      # transformers 5 / 4
    k = key(last.norm1(x))[:, 1:].float()                        # (B, n, C), channel = head * head_dim + i
    heads = model.config.num_attention_heads
    k = k.unflatten(-1, (heads, C // heads)).transpose(-1, -2)   # (B, n, d, heads): head-minor
    return k.reshape(B, rows, cols, C)


def dino_input(frames, multiple=14):
    """uint8 (Q, H, W, 3) -> (Q, 3, H14, W14) normalised: torchvision's ToTensor, Resize (bilinear, antialias) to the
    next multiples of 14, Normalize."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255
    H, W = x.shape[-2:]
    size = (-(-H // multiple) * multiple, -(-W // multiple) * multiple)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def dino_features(model, frames, stride=7):
    """The query frames uint8 (Q, H, W, 3) (video[::10]) -> (Q, 69, 103, 768) float16 at 480 x 720 (float16, as the
    release stores them: the classifier read fp16-rounded vectors). One frame at a time, as the release runs them."""
    dev = model.embeddings.cls_token.device
    out = [dino_keys(model, x[None].to(dev), stride)[0].half().cpu() for x in dino_input(frames)]
    return torch.stack(out)


# ---- Depth (transformers' Depth-Anything-V2) ------------------------------------------------------------------------

def load_depth(name_or_path=DEPTH_ID, device="cpu"):
    """Depth-Anything-V2. The release defaults to ...-Large-hf (CC-BY-NC-4.0) "exactly as in Segment-Any-Motion" and
    notes that -Small-hf gives identical inputs after the 8-bit clip, 3x faster (config.py `depth_model`). We keep the
    release's Large as the default (its note is unmeasured here: no weights offline); `--segmo-depth
    depth-anything/Depth-Anything-V2-Small-hf` is the Apache-2.0 choice. Check it on real clips with
    `depth_agreement`."""
    try:
        from transformers import AutoModelForDepthEstimation
    except ImportError:
        raise SystemExit("Depth-Anything-V2 needs transformers>=4.56 (pip install transformers)") from None
    return AutoModelForDepthEstimation.from_pretrained(name_or_path).to(device).eval()


def dpt_size(H, W, size=518, multiple=14):
    """The DPT processor's keep-aspect-ratio size: scale by whichever of size/H, size/W is nearer 1, round to a
    multiple of 14 (480 x 720 -> 518 x 784)."""
    sh, sw = size / H, size / W
    s = sw if abs(1 - sw) < abs(1 - sh) else sh
    fit = lambda v: max(round(v / multiple) * multiple, multiple)    # noqa: E731
    return fit(s * H), fit(s * W)


def depth_clip(disp):
    """Disparity (H, W) float32 -> what inference.py reads back: scaled to uint16 by its own min and max (truncated),
    clipped at 255 (PIL's I;16 -> L conversion of the PNG), min-max normalised (the release guards a zero range)."""
    disp = disp.float()
    lo, hi = disp.min(), disp.max()
    if hi - lo > 2.220446049250313e-16:                          # np.finfo(float).eps
        u16 = (65535 * (disp - lo) / (hi - lo)).to(torch.int32)  # astype(uint16) truncates
    else:
        u16 = torch.zeros(disp.shape, dtype=torch.int32, device=disp.device)
    d8 = u16.clamp(max=255).float()
    return (d8 - d8.min()) / torch.clamp(d8.max() - d8.min(), min=1e-8)


def _cubic(x):
    """PIL's bicubic kernel (a = -0.5; torch's plain bicubic uses -0.75)."""
    x = abs(x)
    return ((1.5 * x - 2.5) * x * x + 1) if x < 1 else ((((x - 5) * x + 8) * x - 4) * -0.5 if x < 2 else 0.0)


def _pil_taps(n_in, n_out, bits=22):
    """PIL's resampling taps along one axis (Resample.c: precompute_coeffs, then 8-bit fixed point) ->
    (index (n_out, K), weight (n_out, K) int64 scaled by 2^bits)."""
    scale = n_in / n_out
    fs = max(scale, 1.0)
    support, ss = 2.0 * fs, 1.0 / fs
    K = int(math.ceil(support)) * 2 + 1
    idx, wt = torch.zeros(n_out, K, dtype=torch.long), torch.zeros(n_out, K, dtype=torch.long)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), n_in) - lo
        w = [_cubic((x + lo - center + 0.5) * ss) for x in range(n)]
        tot = sum(w)
        w = [v / tot if tot != 0 else v for v in w]
        idx[i, :n] = torch.arange(lo, lo + n)
        wt[i, :n] = torch.tensor([int(v * (1 << bits) + (0.5 if v >= 0 else -0.5)) for v in w])
    return idx, wt


def _pil_pass(x, n_out, dim, bits=22):
    """One 8-bit PIL pass along `dim` of an int64 image: fixed-point sum, round half up, clip to 0..255."""
    idx, wt = (t.to(x.device) for t in _pil_taps(x.shape[dim], n_out, bits))
    x = x.movedim(dim, -1)
    y = (x[..., idx] * wt).sum(-1) + (1 << (bits - 1))
    return torch.div(y, 1 << bits, rounding_mode="floor").clamp(0, 255).movedim(-1, dim)


def pil_bicubic(x, h, w):
    """uint8 (B, C, H, W) -> uint8 (B, C, h, w), bit-exact with PIL's Image.resize((w, h), BICUBIC) (width first,
    rounded to 8 bits, then height), which transformers 4.46's DPT processor runs for the release. Pillow 13 runs
    the height first when it shrinks by more than twice what the width shrinks; both orders agree when upscaling
    (480 x 720 -> 518 x 784)."""
    H, W = x.shape[-2:]
    passes = [(w, -1), (h, -2)] if not (H - h > 0 and H - h > (W - w) * 2) else [(h, -2), (w, -1)]
    x = x.long()
    for n, dim in passes:
        if x.shape[dim] != n:
            x = _pil_pass(x, n, dim)
    return x.to(torch.uint8)


@torch.no_grad()
def depth_maps(model, video, size=518, batch=8):
    """uint8 (T, H, W, 3) -> (T, H, W) float32 in [0, 1], the depth input of the classifier. Frames resized as the DPT
    processor of the release's transformers 4.46.3 does (PIL bicubic on uint8, `pil_bicubic`), ImageNet mean/std;
    the predicted disparity bicubic (torch) back to H x W, then `depth_clip`."""
    T, H, W, _ = video.shape
    p = next(model.parameters())
    mean = torch.tensor(IMAGENET_MEAN, device=p.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=p.device).view(1, 3, 1, 1)
    out = []
    for i in range(0, T, batch):
        x = torch.as_tensor(video[i:i + batch]).permute(0, 3, 1, 2).to(p.device)
        x = (pil_bicubic(x, *dpt_size(H, W, size)).float() / 255 - mean) / std
        d = model(pixel_values=x.to(p.dtype)).predicted_depth.float()               # (B, h, w) disparity
        d = F.interpolate(d[:, None], size=(H, W), mode="bicubic", align_corners=False)[:, 0]
        out += [depth_clip(f).cpu() for f in d]
    return torch.stack(out)


def depth_agreement(a, b):
    """Share of pixels where two `depth_maps` results agree exactly (the classifier's input after the clip). To choose
    Small against Large on real clips (needs the weights and a GPU):

        python -c "import torch, others.moseg as m; from plumbing.video import read_video; v = read_video('clip.mp4')
        s = m.depth_maps(m.load_depth('depth-anything/Depth-Anything-V2-Small-hf', 'cuda'), v)
        l = m.depth_maps(m.load_depth('depth-anything/Depth-Anything-V2-Large-hf', 'cuda'), v)
        print(m.depth_agreement(s, l))"
    """
    return (a == b).float().mean().item()
