"""
Segment-Any-Motion (SegAnyMo, Huang et al. CVPR 2025) as the StM release runs it: the masks of every moving object
in a clip, with all five models resident on one device (the release's `stm/data_generation/segmentation.py` does the
same; SegAnyMo itself is five scripts that each reload their model).

    python -c "import toy; from others.segmo import load_segmo, fg_gate; \
        mask, n = load_segmo(device='cuda').seg(toy.clip(0, 49, 480, 720)['video']); print(n, fg_gate(mask))"
    python -m pytest -q tests/test_segmo.py        # the loop against the official code's masks, tiny models

(with bootstapir_checkpoint_v2.pt in the working folder, or a `SegAnyMoSpec` naming where it is).

The stages, in order (official code: github.com/nnanhuang/SegAnyMo; the model code lives in others/tapir.py and
others/moseg.py, this file chains them and owns stage 5):
1. depth: Depth-Anything-V2 on every frame, clipped to 8 bits as the official PNG round trip does
   (`core/utils/run_depth.py`; here `moseg.depth_maps`).
2. DINOv2 ViT-B/14 key features of the query frames 0, 10, 20, 30, 40 (`core/utils/dino_feat.py`;
   `moseg.dino_features`).
3. BootsTAPIR tracks from a pixel grid on the query frames (`preproc/run_tapir.py`; `tapir.grid_queries`,
   `tapir.track`).
4. the motion classifier over at most 5,000 of those tracks: a random 1/5 of each query frame's, seed 42
   (`inference.py`; `moseg.select_tracks`, `moseg.classify`, `moseg.moving_tracks`). The moving tracks reach SAM 2
   with the steps that are visible and have confidence > 0.9 (`inference.py`, the release's `_motion_seg`;
   `moseg.sam2_visible`).
5. SAM 2 turns the moving tracks into masks (`sam2/run_sam2.py`, here `prompt_objects`):
   a. find objects, at most `min(max(len(range(0, T, 16)), 5), 10)` rounds (5 for 49 frames) (`main`, l. 622-631):
      the prompt frame is the median of the int(0.2 T) frames with the most visible points (9 of 49), ties broken by
      numpy's argsort as there (`process_invisible_traj`, l. 30-37); prompt SAM 2 with the densest visible point,
      the one with the smallest summed distance to the others (`find_dense_pts`, l. 59-68); dilate the mask with a
      6x6 kernel 3 times as cv2 does (`dilate_mask`, l. 161-170); the points inside the dilated mask leave the pool;
      the object is kept when >= 6 of them are inside (`judge`, l. 142-159: its per-frame branch can never fire,
      since no frame holds more of them than all frames together) and the undilated mask holds >= 1 point, whose
      tracks become the object's (l. 122-132); with <= 5 moving tracks in all every object is kept (`take_all`,
      l. 24-26); the rounds stop when < 6 points remain (l. 54-55).
   b. each object on a fresh state (`main`, l. 641-718): prompt its own frame, then frames 0, 16, 32, 48 where its
      tracks are visible, each with its densest point; when < 70% of the visible points fall in that mask, prompt
      again (replacing the first prompt) with the point nearest the centroid and the 2 farthest
      (`find_centroid_and_nearest_farthest`, l. 459-492); propagate forward from the earliest prompted frame, and
      backward too unless frame 0 was prompted; the two passes are OR-ed.
   c. merge objects (`analyze_frame_merges`, `merge_masks`, l. 513-593): a pair counts on a frame when IoU > 0.9 or
      one covers >= 90% of the other; a pair counting on >= 30% of the frames merges; groups follow the official
      one-step (not transitive) rule, so one object can sit in two groups.
   The release unions the merged objects into one mask and records their number (`_sam2_masks`); clips with no
   moving object or a foreground share outside [0.01, 0.45] are skipped (`pipeline.py`; `fg_gate` here).

Where this differs from the official code (see also Sam2Predictor):
- No visible point left (every remaining track invisible on every frame) ends the rounds; the official code crashes
  in sklearn there (`find_dense_pts` on 0 points).
- An object whose tracks are invisible on all of its prompt frames is dropped, as the release does (`prompted`);
  the SegAnyMo script calls SAM 2 without prompts there and crashes.
"""

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from plumbing import weights
from plumbing.cli import BadInput
from .hf import placement

# ---- Stage 5: SAM 2 prompting, written against a small predictor protocol --------------------------------------


class Predictor(Protocol):
    """One object at a time on one video of T frames, H x W pixels (SAM 2's video predictor, or a test stub)."""

    def reset(self) -> None:
        """Forget every prompt and result (SAM 2's `reset_state`)."""

    def prompt(self, t: int, points: torch.Tensor) -> torch.Tensor:
        """Positive clicks `points` (P, 2) xy px on frame t, replacing that frame's earlier ones -> mask (H, W)."""

    def propagate(self, reverse: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """(t, mask (H, W)) from the earliest prompted frame to the last frame (or back to frame 0 when reverse;
        nothing when reverse and frame 0 is the earliest prompted), as SAM 2's `propagate_in_video`."""


def dilate(mask, k=6, iters=3):
    """cv2.dilate with a k x k kernel of ones: an even kernel anchors at (k//2, k//2), so an output pixel is the max
    over rows/cols -3..+2 of its own (k=6); a mask grows 2 px up/left and 3 px down/right per pass.
    bool (H, W) -> bool (H, W); outside the frame counts as empty."""
    a = k // 2
    x = mask[None, None].float()
    for _ in range(iters):
        x = F.max_pool2d(F.pad(x, (a, k - 1 - a, a, k - 1 - a)), k, stride=1)
    return x[0, 0] > 0


def points_in(mask, xy):
    """Which of the points xy (N, 2) float px fall in mask (H, W): coordinates truncated to int, then clipped to the
    frame (the official `find_pts_in_mask`; truncation and floor agree once clipped)."""
    H, W = mask.shape
    x = np.clip(xy[:, 0].astype(int), 0, W - 1)
    y = np.clip(xy[:, 1].astype(int), 0, H - 1)
    return mask.cpu().numpy()[y, x]


def densest_point(xy, chunk=1024):
    """The point with the smallest summed distance to all others: (N, 2) -> (1, 2)."""
    p = torch.from_numpy(xy).double()
    total = torch.cat([torch.cdist(c, p).sum(1) for c in p.split(chunk)])
    return xy[int(total.argmin())][None]


def centre_and_extremes(xy):
    """The point nearest the centroid, then the two farthest from it (the official order: second-farthest first);
    with 2 points the other one, with 1 point itself twice. (N, 2) -> (P, 2)."""
    d = np.linalg.norm(xy - xy.mean(0), axis=1)
    near = int(np.argmin(d))
    if len(xy) == 1:
        far = [near]
    elif len(xy) == 2:
        far = [1 - near]
    else:
        far = np.argsort(d)[-2:]
    return np.concatenate([xy[near][None], xy[far]])


def prompt_frame(counts, T):
    """The median frame among the int(0.2 T) frames with the most visible points (numpy's argsort picks among ties,
    as the official code's does); the busiest frame when that one has none. counts int64 (T,) -> t."""
    top = sorted(np.argsort(counts)[-int(T * 0.2):][::-1])
    t = int(top[len(top) // 2])
    return t if counts[t] > 0 else int(counts.argmax())


def find_objects(predictor, xy, visible, T, min_points=6):
    """Stage 5a: rounds of one SAM 2 click each; -> [(frame, track indices)] of the objects kept, in order."""
    N = len(xy)
    rounds = min(max(len(range(0, T, 16)), 5), 10)
    take_all = N <= 5                                  # very few moving tracks: whatever SAM 2 returns is kept
    alive, objects = np.arange(N), []
    for _ in range(rounds):
        t = prompt_frame(visible[alive].sum(0), T)
        on = visible[alive, t]
        if not on.any():
            break                                      # nothing visible left (the official code crashes here)
        pts = xy[alive, t]                             # (n, 2)
        predictor.reset()
        mask = predictor.prompt(t, torch.from_numpy(densest_point(pts[on])))
        near = on & points_in(dilate(mask), pts)       # the dilated mask claims these points
        core = on & points_in(mask, pts)               # the object keeps only those in the mask itself
        if (core.any() and near.sum() >= min_points) or take_all:
            objects.append((t, alive[core]))
        alive = alive[~near]
        if len(alive) < min_points:
            break
    return objects


def track_object(predictor, xy, visible, t0, T, H, W, share=0.7):
    """Stage 5b: one object's tracks xy (n, T, 2), visible (n, T) -> mask (T, H, W) bool, or None if no prompt."""
    frames = [t0] + [t for t in range(0, T, 16) if t != t0]
    predictor.reset()
    prompted, backward = False, True
    for t in frames:
        pts = xy[visible[:, t], t]
        if len(pts) == 0:
            continue
        prompted, backward = True, backward and t != 0   # prompted on frame 0: the forward pass covers all
        mask = predictor.prompt(t, torch.from_numpy(densest_point(pts)))
        if points_in(mask, pts).sum() < len(pts) * share:
            predictor.prompt(t, torch.from_numpy(centre_and_extremes(pts)))
    if not prompted:
        return None
    out = torch.zeros(T, H, W, dtype=torch.bool)
    for reverse in (False, True) if backward else (False,):
        for t, m in predictor.propagate(reverse):
            out[t] |= m.to(out.device)
    return out


def same_object(a, b, iou=0.9, cover=0.9):
    """Two masks of one frame are one object: IoU > 0.9, or one covers >= 90% of the other. (The IoU test never
    decides alone: IoU > 0.9 means each covers > 90% of the other; kept as the official code writes it.)"""
    inter, union, na, nb = int((a & b).sum()), int((a | b).sum()), int(a.sum()), int(b.sum())
    return (union > 0 and inter / union > iou) or (na > 0 and inter / na >= cover) or (nb > 0 and inter / nb >= cover)


def merge_objects(masks, share=0.3):
    """Stage 5c: [mask (T, H, W) bool] -> the merged objects. A pair merges when it is `same_object` on >= 30% of
    the frames. Groups are formed as the official code does: walking the objects in the order of their first
    match, each unseen one takes its partners and its partners' partners (one step, not transitive); objects never
    matched stay alone, after the groups."""
    if not masks:
        return []
    T = masks[0].shape[0]
    hits = {}                                          # i -> {j: frames}, in order of first match (as there)
    for t in range(T):
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                if same_object(masks[i][t], masks[j][t]):
                    hits.setdefault(i, {}).setdefault(j, 0)
                    hits[i][j] += 1
    partners = {i: [j for j, n in js.items() if n / T >= share] for i, js in hits.items()}
    groups, seen = [], set()
    for i, js in partners.items():
        if i not in seen:
            group = {i, *js}.union(*(partners.get(j, []) for j in js))
            groups.append(sorted(group))
            seen |= group
    groups += [[i] for i in range(len(masks)) if i not in seen]
    return [torch.stack([masks[i] for i in g]).any(0) for g in groups]


def prompt_objects(predictor, tracks, visible, T, H, W):
    """Stage 5: moving tracks (N, T, 2) xy px and their visibility (N, T) bool (already AND confidence > 0.9)
    -> the merged objects, [mask (T, H, W) bool]; [] when nothing is found."""
    xy = np.ascontiguousarray(torch.as_tensor(tracks).detach().cpu().float().numpy())
    vis = torch.as_tensor(visible).detach().cpu().bool().numpy()
    objects = []
    for t0, idx in find_objects(predictor, xy, vis, T):
        m = track_object(predictor, xy[idx], vis[idx], t0, T, H, W)
        if m is not None:
            objects.append(m)
    return merge_objects(objects)


# ---- SAM 2 through transformers ---------------------------------------------------------------------------------


def fill_holes(logits, max_area=8):
    """SAM 2's `fill_holes_in_mask_scores` (the official video predictor's `fill_hole_area=8`): background regions
    (logits <= 0) of at most `max_area` pixels, 8-connected, get the logit 0.1. (n, 1, h, w) -> same.
    A region that small is at most max_area - 1 steps across, so max_area rounds of passing on the largest pixel
    index label all of it alike; such a label is a whole region when one more round neither adds nor removes a
    pixel from it."""
    n, _, h, w = logits.shape
    bg = logits <= 0
    idx = torch.arange(1, h * w + 1, device=logits.device, dtype=torch.float32).view(1, 1, h, w)
    lab = torch.where(bg, idx, torch.zeros(()))
    for _ in range(max_area):
        lab = F.max_pool2d(lab, 3, stride=1, padding=1) * bg
    nxt = F.max_pool2d(lab, 3, stride=1, padding=1) * bg
    out = logits.clone()
    for i in range(n):                                 # per mask: label counts and labels still moving
        a, b = lab[i, 0].long().flatten(), nxt[i, 0].long().flatten()
        count = torch.bincount(a, minlength=h * w + 1)
        moving = torch.zeros(h * w + 1, dtype=torch.bool, device=logits.device)
        moving[a[a != b]] = moving[b[a != b]] = True
        hole = (a > 0) & (count[a] <= max_area) & ~moving[a]
        out[i, 0].view(-1)[hole] = 0.1
    return out


class Sam2Predictor:
    """The `Predictor` protocol over transformers' SAM 2 video model, holding one video.

    As SAM 2's own predictor prepares frames: resized to the model's square size (1024) with PIL's bicubic through
    uint8 (`moseg.pil_bicubic`, bit-exact), then /255 and ImageNet mean/std (`sam2/utils/misc.py::
    load_video_frames`); prompts in video pixels; masks are the low-res logits resized bilinearly to the video and
    thresholded at 0. The session runs on the
    model's device and in its dtype (bf16 on GPU, as the official autocast; fp32 on CPU).
    The official build's `fill_hole_area=8` (`build_sam.py`) fills small holes of every mask it returns
    (`fill_holes`); it needs SAM 2's CUDA extension and is skipped, with a warning, without it: `fill_hole_area=0`
    does the same here. Not reproduced: the official predictor also re-encodes the memory of prompted frames from
    those filled masks, and feeds a frame's first click's logits back in with a second click on it; transformers'
    `Sam2VideoModel` does neither."""

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, model, video, fill_hole_area=8):
        try:
            from transformers import Sam2VideoInferenceSession, Sam2VideoProcessor
        except ImportError:
            raise SystemExit("SegAnyMo needs transformers>=4.56 (pip install transformers)") from None
        self.model, self.fill, (self.T, self.H, self.W, _) = model, fill_hole_area, video.shape
        from .moseg import pil_bicubic
        p = next(model.parameters())
        S = model.config.image_size
        video = torch.as_tensor(np.asarray(video)).permute(0, 3, 1, 2)          # (T, 3, H, W) uint8
        x = torch.cat([pil_bicubic(f[None].to(p.device), S, S) for f in video]).float() / 255
        mean, std = (torch.tensor(v, device=p.device).view(1, 3, 1, 1) for v in (self.mean, self.std))
        self.session = Sam2VideoInferenceSession(
            video=(x - mean) / std, video_height=self.H, video_width=self.W, inference_device=p.device,
            inference_state_device=p.device, video_storage_device=p.device, dtype=p.dtype)
        self.proc = Sam2VideoProcessor.__new__(Sam2VideoProcessor)      # only its prompt-coordinate helpers
        self.proc.target_size, self.proc.point_pad_value = S, -10

    def _mask(self, logits):                          # (n_obj, 1, h, w) low-res logits -> (H, W) bool on the CPU
        logits = fill_holes(logits[:1].float(), self.fill) if self.fill > 0 else logits[:1].float()
        m = F.interpolate(logits, size=(self.H, self.W), mode="bilinear", align_corners=False)
        return (m[0, 0] > 0).cpu()

    def reset(self):
        self.session.reset_tracking_data()            # keeps the cached image features

    def prompt(self, t, points):
        pts = [[[[float(x), float(y)] for x, y in points.tolist()]]]
        self.proc.add_inputs_to_inference_session(self.session, frame_idx=t, obj_ids=1, input_points=pts,
                                                  input_labels=[[[1] * len(points)]])
        with torch.inference_mode():
            return self._mask(self.model(inference_session=self.session, frame_idx=t).pred_masks)

    def propagate(self, reverse=False):
        with torch.inference_mode():
            for o in self.model.propagate_in_video_iterator(self.session, reverse=reverse):
                yield o.frame_idx, self._mask(o.pred_masks)


# ---- The whole pipeline ----------------------------------------------------------------------------------------


def stage_dtype(device, stage):
    """The dtype each stage runs in, as upstream runs it on a GPU: SAM 2 in bf16 (the official autocast); depth
    in fp32 (the release's fp16 "fast" mode is off); DINO in fp32 (`dino_feat.py` has no autocast); the tracker in
    fp32 (the release's bf16 "fast" mode is off: it lowers DAVIS IoU); the classifier in fp32. fp32 on a CPU."""
    if stage not in ("depth", "dino", "tapir", "moseg", "sam2"):
        raise ValueError(f"unknown SegAnyMo stage {stage!r}")
    return placement("sam2" if stage == "sam2" else "segmo", device)[1]      # the one rule of every Split model


@dataclass(frozen=True)
class SegAnyMoSpec:
    """The five models, hub ids or local paths; the defaults are the release's (`config.py`). Depth-Anything-V2
    Small gives the classifier the same input once clipped to 8 bits, 3x faster (the release's own note)."""
    depth: str = "depth-anything/Depth-Anything-V2-Large-hf"   # = moseg.DEPTH_ID
    dino: str = "facebook/dinov2-base"                 # the weights of torch.hub's dinov2_vitb14
    tapir: str = "bootstapir_checkpoint_v2.pt"
    moseg: str = "Changearthmore/moseg"                # the hub repo holding moseg.pth, or a local moseg.pth
    sam2: str = "facebook/sam2-hiera-large"            # SAM 2.0 (sam2_hiera_large.pt), not 2.1


def fg_gate(mask, lo=0.01, hi=0.45):
    """The release's clip filter: None when the foreground share of mask (T, H, W) lies in [lo, hi], else the
    reason the release records ("no_dynamic_object", "fg_ratio:0.0031")."""
    share = float(torch.as_tensor(mask).double().mean())
    if share == 0:
        return "no_dynamic_object"
    return None if lo <= share <= hi else f"fg_ratio:{share:.4f}"


class SegAnyMo:
    """All five models resident on one device; `seg(video)` runs SegAnyMo on one clip.
    Build it with `load_segmo`; tests pass tiny models straight in."""

    def __init__(self, depth, dino, tapir, moseg, sam2, every=10, cap=5000, seed=42):
        self.depth, self.dino, self.tapir, self.moseg, self.sam2 = depth, dino, tapir, moseg, sam2
        self.every, self.cap, self.seed = every, cap, seed

    @torch.no_grad()
    def moving(self, video):
        """Stages 1-4: uint8 (T, H, W, 3) tensor -> the moving tracks (M, T, 2) xy px and the steps SAM 2 may use
        (M, T) bool: visible (every frame keeping >= 1 track) and confidence > 0.9."""
        from . import moseg as ms
        from . import tapir as tp
        T, H, W, _ = video.shape
        frames = range(0, T, self.every)                                      # the query frames
        depth = ms.depth_maps(self.depth, video)                              # (T, H, W)
        dino = ms.dino_features(self.dino, video[::self.every])               # (Q, 69, 103, 768)
        queries = tp.grid_queries(T, H, W, every=self.every)                  # (N, 3) t, y, x
        tracks, vis, conf = tp.track(self.tapir, video, queries)              # (N, T, 2), probabilities (N, T) x 2
        visible, vis, conf = ms.track_scores(vis, conf)                       # parse_tapir_track_info's rules
        query_t = queries[:, 0].long()
        i = ms.select_tracks(tracks, vis, conf, query_t, keep=1 / len(frames), cap=self.cap, seed=self.seed)
        probs = ms.classify(self.moseg, tracks[i], visible[i], conf[i], depth, dino, H, W, visibility=vis[i],
                            query_t=query_t[i], query_frames=frames)
        moving = ms.moving_tracks(probs)
        return tracks[i][moving], ms.sam2_visible(visible[i], conf[i])[moving]

    def predictor(self, video):
        """SAM 2 holding this clip, behind the `Predictor` protocol."""
        return Sam2Predictor(self.sam2, video)

    @torch.no_grad()
    def seg(self, video):
        """uint8 (T, H, W, 3) numpy or tensor -> (mask (T, H, W) bool, number of objects): the union of the moving
        objects; all False and 0 when nothing moves."""
        video = torch.as_tensor(np.asarray(video))
        T, H, W, _ = video.shape
        tracks, visible = self.moving(video)
        empty = torch.zeros(T, H, W, dtype=torch.bool)
        if len(tracks) == 0:
            return empty, 0
        objects = prompt_objects(self.predictor(video), tracks, visible, T, H, W)
        return (torch.stack(objects).any(0) if objects else empty), len(objects)


def load_segmo(spec=None, device="cpu", dtype=None):
    """SegAnyMo with every model on `device` (decompose.py passes its rank's device), each stage in
    `stage_dtype(device, stage)` unless `dtype` forces one for all."""
    from . import moseg as ms
    from . import tapir as tp
    try:
        from transformers import Sam2VideoModel
    except ImportError:
        raise SystemExit("SegAnyMo needs transformers>=4.56 (pip install transformers)") from None
    spec, device = spec or SegAnyMoSpec(), torch.device(device)

    def dt(stage):
        return dtype or stage_dtype(device, stage)
    depth = ms.load_depth(spec.depth, device).to(dtype=dt("depth"))
    dino = ms.load_dino(spec.dino, device, dt("dino"))
    tapir = tp.load_tapir(spec.tapir, device).to(dtype=dt("tapir"))
    moseg = ms.load_moseg(spec.moseg, device).to(dtype=dt("moseg"))
    sam2 = Sam2VideoModel.from_pretrained(spec.sam2).to(device, dt("sam2")).eval()
    return SegAnyMo(depth, dino, tapir, moseg, sam2)


# ---- The command line: one set of flags for the Split stage and Evaluate's re-decomposition -------------------

TAPIR_URL = "https://storage.googleapis.com/dm-tapnet/bootstap/bootstapir_checkpoint_v2.pt"


def add_flags(parser):
    """--segmo-{depth,dino,tapir,moseg,sam2}: the five models of --segmenter segmo (decompose.py, evaluate.py)."""
    d = SegAnyMoSpec()
    g = parser.add_argument_group("Segment-Any-Motion (--segmenter segmo; the StM release's segmenter)")
    g.add_argument("--segmo-depth", default=d.depth, help="Depth-Anything-V2 folder or hub id (the release: Large, "
                   "CC-BY-NC; depth-anything/Depth-Anything-V2-Small-hf is Apache-2.0 and, the release notes, gives "
                   "the classifier the same 8-bit input)")
    g.add_argument("--segmo-dino", default=d.dino, help="DINOv2 ViT-B/14 folder or hub id")
    g.add_argument("--segmo-tapir", default=d.tapir, help=f"BootsTAPIR checkpoint file (download: {TAPIR_URL})")
    g.add_argument("--segmo-moseg", default=d.moseg, help="the motion classifier: moseg.pth, or its hub repo")
    g.add_argument("--segmo-sam2", default=d.sam2, help="SAM 2.0 Hiera-L folder or hub id (the release: 2.0, not 2.1)")


def spec_of(args):
    return SegAnyMoSpec(args.segmo_depth, args.segmo_dino, args.segmo_tapir, args.segmo_moseg, args.segmo_sam2)


def check_flags(args, instead):
    """Before any clip: every SegAnyMo model is a local file / folder or can be had from the hub now; otherwise one
    line naming the flag and `instead` (the offline choices)."""
    if not Path(args.segmo_tapir).is_file():
        raise BadInput(f"--segmo-tapir {args.segmo_tapir}: no such file (BootsTAPIR's checkpoint: {TAPIR_URL}); "
                       f"or use {instead}")
    for flag, path in (("--segmo-depth", args.segmo_depth), ("--segmo-dino", args.segmo_dino),
                       ("--segmo-sam2", args.segmo_sam2)):
        weights.check_weights(path, f"--segmenter segmo {flag}", instead)
    if not Path(args.segmo_moseg).is_file():
        weights.check_weights(args.segmo_moseg, "--segmenter segmo --segmo-moseg", instead, need=("moseg.pth",),
                              patterns=["moseg.pth"], library=None)


@functools.lru_cache(maxsize=2)
def resident(spec, device):
    """SegAnyMo loaded once per process (per spec and device) and kept resident: every clip of a worker uses it."""
    return load_segmo(spec, device)

