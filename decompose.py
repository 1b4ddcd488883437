"""
Split: any folder of videos -> a layered-clip training set (caption, mask, fg layer, bg layer).

    python decompose.py --videos "clips/*.mp4" --out data/mine                      # motion masks, temporal inpainting
    python decompose.py --videos DAVIS/JPEGImages/480p --masks DAVIS/Annotations/480p --segmenter gt --out data/davis
    python decompose.py --videos clips --out data/mine --segmenter sam2 --sam2 facebook/sam2.1-hiera-tiny \\
        --captioner vlm --vlm OpenGVLab/InternVL3-1B-hf --inpainter minimax --remover zibojia/minimax-remover
    python decompose.py --videos clips --out data/mine --segmenter segmo --segmo-tapir bootstapir_checkpoint_v2.pt
    python decompose.py --videos clips --out data/mine --inpainter cmd --inpaint-cmd "propainter {video} {mask} {out}"
    python decompose.py --videos clips --val-videos DAVIS/JPEGImages/480p --out data/mine   # DAVIS: validation only
    torchrun --nproc_per_node=8 decompose.py --videos clips --out data/mine --segmenter sam2   # one process per GPU
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 decompose.py ...  # 4 nodes
    python decompose.py --videos clips --out data/mine --shard 3/8 --workers 4   # machine 3 of 8, no network between
    python decompose.py --merge --out data/mine          # then, the 8 folders copied into one: join their records

Stages (paper Sec. 3.3, App. A; the StM release's settings where the paper is silent: docs/split.md):
1. clips: each source is cut into consecutive, non-overlapping `--frames`-frame windows, each at a
   stride drawn (seeded by the source name) from `--strides` among those that still fit, at most
   `--max-clips` per source, cover-cropped to `--size` (`--resize stretch`: the release's plain resize); a clip
   whose motion score is below `--static` (0-255 scale) is recorded as skipped "static" (the release's score:
   mean |difference| of frames 4 apart on a 128x128 grey copy; `--static-rule adjacent`: of neighbouring frames).
2. mask: `gt` (your masks), `motion` (weight-free, below), `sam2` (SAM 2 video propagation via
   transformers, prompted with the motion mask's box) or `segmo` (Segment-Any-Motion as the StM release runs it:
   depth, DINOv2, BootsTAPIR tracks, the motion classifier, SAM 2; the union of the moving objects, their count
   recorded; others/segmo.py). fg ratio outside [1%, 45%] -> skipped; segmo finding nothing that moves ->
   "no_dynamic_object", as the release.
3. caption: `file`, `vlm` (a video-capable VLM via transformers: 12 frames, "Describe the video in detail",
   sampled, up to 1,024 new tokens, as the release) or `template`.
4. layers: fg = clip x mask on black; bg = the (dilated) hole filled by `temporal` (weight-free),
   `minimax` (MiniMax-Remover, others/remover.py: 12 UniPC steps in fp16 on a GPU, as the StM release), `none`
   (black hole) or `cmd` (an external inpainter such as ProPainter).
Besides metadata.jsonl and the five lists, the folder gets the release's metadata.csv (one row per kept clip,
aligned with the lists; is_training is False for clips of --val-videos, which training then leaves out).

The masks (the weight-free motion segmenter, SAM 2) and the camera-motion model the temporal inpainter shares
with it live in others/segment.py; evaluate.py re-segments generated videos with the same code.

Resume and scale: the one record engine (plumbing/records.py). One metadata.jsonl record per clip (kept or
skipped, with the reason), written after the clip's files, with the fingerprint of its source: a rerun skips
finished clips, redoes those whose source changed, and a kill loses at most the clips in progress. A clip that fails
(an unreadable frame, a failing inpainter) is recorded as "error" and the job goes on. Under torchrun, rank R of W
takes every W-th clip still to do of the (deterministic) clip list, keeps its models resident on cuda:LOCAL_RANK
(others.hf.placement: SAM 2 and the VLM in bf16, the remover in fp16; fp32 on a CPU), and rank 0 joins the ranks'
records in plan order (`python tests/bench_split.py --device cuda --videos DIR`: clips/hour per GPU per stage).
`--workers` adds processes inside each rank (CPU-only machines, no torchrun needed). `--shard I/N` is the same rule
for machines that share no network: shard I takes every N-th clip and writes its clips and
metadata.shard-I-of-N.jsonl into --out; copy the shards' folders into one and `--merge` joins them.
A rerun must use the same flags as the run that began the folder (metadata.settings.json): clips made another way
are never mixed in. Every flag and input file is checked before the first clip (one line, exit code 2).
"""
import argparse
import csv
import hashlib
import io
import os
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, fields, replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from others import inpaint, pages
from others.hf import vlm_caption
from others.inpaint import load_remover
from others import segmo
from others.segment import global_motion, motion_mask, sam2_mask
from plumbing import weights
from plumbing.cli import WRITE_ERRORS, BadInput, check_out_dir, check_ranges, run_cli
from plumbing.files import atomic_write_text
from plumbing.dataset import LayeredWriter, check_lists, merge_shards, read_captions
from plumbing.ranks import Ranks
from plumbing.records import Job, read_records
from plumbing.video import VIDEO_EXTS, check_shape, dilate, fit_video, probe, read_frames, read_mask, video_paths

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
a_ = parser.add_argument
a_("--videos", help="folder of videos / frame folders, a glob (quote it), or one file")
a_("--out", help="output dataset folder (with --shard: <out>/shard-I-of-N); required but with --preview")
a_("--frames", type=int, default=49, help="frames per clip (4k+1; 49 for CogVideoX)")
a_("--size", type=int, nargs=2, default=[480, 720], metavar=("H", "W"), help="clip size (cover crop)")
a_("--strides", type=int, nargs="+", default=[1, 2, 3, 4], help="frame strides to draw from (App. A)")
a_("--max-clips", type=int, default=4, help="at most this many clips per source video")
a_("--val-videos", help="like --videos, for sources kept for validation only (the paper: DAVIS): their clips are "
   "written with is_training False in metadata.csv, and training leaves them out")
a_("--resize", default="crop", help="crop: scale to cover --size and centre-crop (keeps the subject's shape); "
   "stretch: plain resize to --size, as the StM release (a 16:9 source is squeezed 16%% horizontally)")
a_("--static", type=float, default=1.5, help="skip clips whose motion score (0-255, --static-rule) is below this")
a_("--static-rule", default="release", help="release: mean |difference| of frames 4 apart on a 128x128 grey copy "
   "(the StM release's motion_score); adjacent: mean |difference| of neighbouring frames at full size, RGB")
a_("--fps", type=int, default=16, help="frame rate the clips are written at")
a_("--seed", type=int, default=42, help="seed of the stride draws")
a_("--segmenter", choices=["motion", "gt", "sam2", "segmo"], default="motion", help="where masks come from (segmo: "
   "Segment-Any-Motion, the StM release's; its models: the --segmo-* flags)")
a_("--masks", help="--segmenter gt: folder with <stem>/ PNG folders or <stem>.mp4 mask videos, "
                   "or a template such as '{dir}/mask.mp4'")
a_("--sam2", default="facebook/sam2.1-hiera-tiny", help="--segmenter sam2: local folder or hub id")
segmo.add_flags(parser)
a_("--min-fg", type=float, default=0.01, help="skip clips whose fg fills less of the video than this")
a_("--max-fg", type=float, default=0.45, help="skip clips whose fg fills more of the video than this")
a_("--inpainter", choices=["temporal", "none", "cmd", "minimax"], default="temporal",
   help="how the bg hole is filled (minimax: MiniMax-Remover, remover.py, as the StM release)")
a_("--inpaint-cmd", help="--inpainter cmd: command with {video} {mask} {out} (mp4 paths)")
a_("--remover", default="zibojia/minimax-remover",
   help="--inpainter minimax: folder with vae/ transformer/ scheduler/, or hub id")
a_("--remover-steps", type=int, default=12, help="--inpainter minimax: sampling steps (StM: 12)")
a_("--remover-sampler", default="unipc", help="--inpainter minimax: unipc (2nd-order UniPC, as the checkpoint's "
   "scheduler and the StM release) or euler (first-order flow-matching Euler)")
a_("--dilate", type=int, default=6, help="grow the mask by this many pixels before inpainting")
a_("--captioner", choices=["template", "file", "vlm"], default="template", help="where captions come from")
a_("--captions", help="--captioner file: jsonl ({video, caption}) or tsv (stem<TAB>caption)")
a_("--template", default="a video", help="--captioner template: the caption ({stem} = source name)")
a_("--vlm", default="OpenGVLab/InternVL3-1B-hf", help="--captioner vlm: local folder or hub id")
a_("--vlm-frames", type=int, default=12, help="--captioner vlm: frames shown to the model (StM: 12)")
a_("--vlm-tokens", type=int, default=1024, help="--captioner vlm: at most this many new tokens (StM: 1024)")
a_("--vlm-greedy", action="store_true", help="--captioner vlm: greedy decoding (StM samples, seeded by --seed and "
   "the clip id, so a rerun writes the same caption)")
a_("--workers", type=int, default=1, help="processes working on clips in parallel")
a_("--threads", type=int, default=0, help="torch threads per worker (0: cores / workers)")
a_("--shard", default="0/1", help="I/N: process every N-th clip starting at I, into <out>/shard-I-of-N")
a_("--merge", action="store_true", help="join <out>/shard-*/ into <out> and exit")
a_("--preview", metavar="OUT", help="write OUT/preview.html (input | mask | fg | bg of the first clips, captions, "
   "counts) for a Split output folder and exit")


def main(args):
    if args.preview:
        print(f"wrote {pages.write_preview(args.preview)}")
        return
    if not args.out:
        raise BadInput("--out is required (the dataset folder to write, or with --merge to join into)")
    if args.merge:
        added = merge_shards(args.out)
        write_release_csv(args.out)
        print(f"merged {added} new records\n{summary(args.out)}")
        return
    check_flags(args)
    shard = parse_shard(args.shard)
    caption_map = read_captions(args.captions) if args.captioner == "file" else {}
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    sources, val = list_sources(args.videos, "--videos"), []
    if args.val_videos:
        val = list_sources(args.val_videos, "--val-videos")
        sources = sources + [v for v in val if v not in sources]
    late = ("out", "caption_map", "threads", "device", "segmo")
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if f.name not in late}
    st = Settings(**given, out=args.out, caption_map=caption_map, threads=threads, device="cpu",
                  segmo=segmo.spec_of(args) if args.segmenter == "segmo" else None)
    items, notes = plan_items(sources, st, args.strides, args.max_clips, args.seed, val=set(val))
    check_sources(items[shard[0]::shard[1]], st)
    check_lists(args.out)
    # every input checked: from here on the folder is written, one record per clip (plumbing/records.py)
    flags = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in vars(args).items() if k in SAME_FLAGS}
    ranks = Ranks()
    st = replace(st, device=str(ranks.device))           # every Split model of this rank lives there
    job = Job(args.out, "metadata", items, settings=flags, ranks=ranks, shard=shard, what="clip",
              inputs=lambda it: [it["source"], it.get("mask_file"), {"caption": caption_of(it, st)}])
    if ranks.rank == 0:
        print("".join(n + "\n" for n in notes), end="", file=sys.stderr)
    todo = job.todo()
    for it in [it for it in todo if it.get("error")]:              # sources that cannot be read at all
        job.skip(it["id"], it["error"], status="unreadable", source=it["source"])
    todo = [it for it in todo if not it.get("error")]
    print(f"{len(sources)} videos, {len(items)} clips; shard {shard[0]}/{shard[1]}: {len(job.left)} to do -> "
          f"{args.out}" + (f"; rank {ranks.rank}/{ranks.world}: {len(todo)}" if ranks.world > 1 else ""))
    pool = Pool(args.workers) if args.workers > 1 and len(todo) > 1 else None
    try:
        for rec in (pool.imap_unordered if pool else map)(process_clip, [(st, it) for it in todo]):
            if rec["status"] == "error":                           # said, and recorded with its reason
                job.skip(rec["id"], rec.pop("error"), **{k: v for k, v in rec.items() if k not in ("id", "status")})
            else:                                                  # kept, or left out by a rule (static, fg ratio)
                job.done(rec["id"], rec, outputs=[Path(args.out) / rec[k] for k in LAYERS if k in rec])
    except KeyboardInterrupt:
        sys.exit("interrupted: the clips finished in this run are kept; rerun the same command to resume")
    finally:
        if pool:
            pool.terminate()
    if job.finish() is not None and shard[1] == 1:
        LayeredWriter(args.out).finalize()
        write_release_csv(args.out)
        n = len(job.left)
        print(f"{summary(args.out)}\n{n} clips in {job.seconds:.1f}s ({n / max(job.seconds, 1e-9):.3g} clips/s, "
              f"{ranks.world} process(es) x {args.workers} worker(s))")
    elif ranks.rank == 0:
        print(f"shard {shard[0]}/{shard[1]} done; copy the shards' folders into one and run decompose.py --merge")


LAYERS = ("videos", "fg", "bg", "masks")


def process_clip(job):
    """One clip end to end -> its record (written files first, the record last). job = (Settings, plan item).
    Anything that goes wrong with this clip is its record's error; only a disk that cannot be written stops the run."""
    st, it = job
    torch.set_num_threads(st.threads)
    T, (H, W) = st.frames, st.size
    src, cid, start, stride = Path(it["source"]), it["id"], it["start"], it["stride"]
    base = dict(id=cid, source=str(src), start=start, stride=stride, source_fps=it["source_fps"],
                is_training=it["is_training"], dataset_type=it["dataset_type"])
    try:
        video = fit_video(read_frames(src, start + stride * np.arange(T)), T, H, W, mode=RESIZE[st.resize],
                          name=str(src))
        motion = motion_score(video) if st.static_rule == "release" else adjacent_motion(video)
        if motion < st.static:
            return dict(base, status="static", motion=motion)
        G = global_motion(video) if st.segmenter not in ("gt", "segmo") or st.inpainter == "temporal" else None
        mask, objects = clip_mask(video, G, st, src, it["key"], it["frames"], start, stride)
        if objects == 0:                                  # segmo: nothing moves in this clip
            return dict(base, status="no_dynamic_object", fg_ratio=0.0, objects=0)
        ratio = float(mask.mean())
        if not st.min_fg <= ratio <= st.max_fg:
            return dict(base, status="fg_small" if ratio < st.min_fg else "fg_large", fg_ratio=ratio,
                        **({"objects": objects} if objects is not None else {}))
        caption = clip_caption(video, st, cid, it["key"], src.stem if src.is_file() else src.name)
        rec = LayeredWriter(st.out, records=False).add(
            cid, caption, video, video * mask[..., None], clip_bg(video, mask, G, st), mask, fps=st.fps,
            source=str(src), start=start, stride=stride, source_fps=it["source_fps"], segmenter=st.segmenter,
            inpainter=st.inpainter, is_training=it["is_training"], dataset_type=it["dataset_type"],
            **({"objects": objects} if objects is not None else {}))
        return rec
    except OSError as e:
        if e.errno in WRITE_ERRORS:
            raise
        return dict(base, status="error", error=f"{type(e).__name__}: {e}".splitlines()[0])
    except Exception as e:                 # one bad clip (unreadable frames, a failing inpainter) never stops the job
        return dict(base, status="error", error=f"{type(e).__name__}: {e}".splitlines()[0])


def clip_mask(video, G, st, src, key, n, start, stride):
    """The subject mask of one clip: the given one (gt, resampled like the clip), or the segmenter's -> (mask,
    number of moving objects: segmo's count, None for the other segmenters)."""
    T, (H, W) = st.frames, st.size
    if st.segmenter == "gt":
        m = read_mask(find_mask(st.masks, src, key))
        if len(m) != n:
            raise ValueError(f"mask for {src} has {len(m)} frames, the video {n}")
        return fit_video(m, T, H, W, stride=stride, start=start, mode=RESIZE[st.resize], mask=True,
                         name=f"mask of {src}"), None
    if st.segmenter == "segmo":                           # all five models resident on this rank's device
        mask, objects = segmo.resident(st.segmo, st.device).seg(video)
        return mask.numpy(), objects
    mask = motion_mask(video, G)
    return (sam2_mask(video, mask, st.sam2, device=st.device) if st.segmenter == "sam2" else mask), None


def caption_of(it, st):
    """The caption --captions gives this clip (part of what its record depends on), or None."""
    if st.captioner != "file" or it.get("error"):
        return None
    stem = Path(it["source"]).stem if Path(it["source"]).is_file() else Path(it["source"]).name
    return next((st.caption_map[k] for k in (it["id"], it["key"], stem) if k in st.caption_map), None)


def clip_caption(video, st, cid, key, stem):
    """The caption of one clip, from --captions (by clip id, source key or stem), the VLM or the template."""
    if st.captioner == "file":
        caption = st.caption_map.get(cid) or st.caption_map.get(key) or st.caption_map.get(stem)
        if caption is None:
            raise KeyError(f"--captions {st.captions}: no caption for {stem}")
        return caption
    if st.captioner == "vlm":           # sampled, seeded per clip: a rerun of the same clip writes the same caption
        return vlm_caption(video, st.vlm, n=st.vlm_frames, max_new_tokens=st.vlm_tokens, sample=not st.vlm_greedy,
                           seed=zlib.crc32(f"{st.seed}:{cid}".encode()), device=st.device)
    return st.template.format(stem=stem)


def clip_bg(video, mask, G, st):
    """The bg layer: the mask's hole, grown by st.dilate, filled by the chosen inpainter."""
    hole = dilate(torch.from_numpy(mask), st.dilate).numpy()
    if st.inpainter == "temporal":
        return inpaint.inpaint_temporal(video, hole, G)
    if st.inpainter == "cmd":
        return inpaint.inpaint_cmd(st.inpaint_cmd, video, hole, st.fps)
    if st.inpainter == "minimax":  # grows the mask itself, by a diamond of --dilate, as MiniMax-Remover's pipeline
        remover = load_remover(st.remover, st.device, st.remover_sampler)     # loaded once, kept resident
        return remover(video, mask, steps=st.remover_steps, dilate=st.dilate)
    return video * ~hole[..., None]


# ---- The StM release's data rules where the paper is silent (docs/split.md) ---------------------------------

RESIZE = {"crop": "cover", "stretch": "stretch"}   # --resize -> plumbing.video.fit_video's mode


def area_weights(n, m):
    """(m, n) matrix that resizes an axis of n pixels to m by pixel-area averaging: output pixel o covers input
    [o n/m, (o+1) n/m) and takes each input pixel in proportion to the overlap (OpenCV's INTER_AREA, shrinking or
    growing both axes)."""
    edges = np.arange(m + 1) * (n / m)
    i = np.arange(n)
    overlap = np.minimum(edges[1:, None], i + 1) - np.maximum(edges[:-1, None], i)
    return np.clip(overlap, 0, None) / (n / m)


def motion_score(video, step=4, size=128):
    """The StM release's static-clip score: uint8 (T, H, W, 3) -> mean |g[t+step] - g[t]| of a size x size grey
    copy g (0-255; 0 for a clip of `step` frames or fewer). As the release computes it with OpenCV: grey in
    14-bit fixed point (RGB2GRAY), the square resize ignoring the aspect ratio, rounded back to uint8."""
    if len(video) <= step:
        return 0.0
    v = np.asarray(video).astype(np.int64)
    grey = (v[..., 0] * 4899 + v[..., 1] * 9617 + v[..., 2] * 1868 + 8192) >> 14      # 0.299 R + 0.587 G + 0.114 B
    H, W = grey.shape[1:]
    small = np.floor(area_weights(H, size) @ grey @ area_weights(W, size).T + 0.5).clip(0, 255)
    return float(np.abs(small[step:] - small[:-step]).mean())


def adjacent_motion(video):
    """The earlier rule (--static-rule adjacent): mean |difference| of neighbouring frames, full size, RGB."""
    return float(np.abs(np.diff(np.asarray(video).astype(np.int16), axis=0)).mean())


# The release's metadata.csv columns (stm/data_generation/manifest.py), one row per kept clip
CSV_COLUMNS = ("vid_name", "num_frames", "foreground_num", "dataset_type", "height", "width", "is_training",
               "1fg-1bg", "foreground_ratio", "num_objects", "main_train", "main_train_foreground_volume",
               "mask_source")


def write_release_csv(root):
    """<root>/metadata.csv as the StM release writes it, its rows aligned with the five lists (the kept clips of
    metadata.jsonl in the order LayeredWriter.finalize lists them), so plumbing.dataset reads the train/val split.
    Where the release tests `num_frames > 35` (a full 49-frame clip) every clip here is full length (--frames), so
    1fg-1bg is True and main_train is is_training; the fg gate already passed (--min-fg/--max-fg)."""
    rows = []
    for r in [r for r in read_records(Path(root) / "metadata.jsonl").values() if r.get("status") == "ok"]:
        train = bool(r.get("is_training", True))
        rows.append({"vid_name": r["id"], "num_frames": r["frames"], "foreground_num": 1,
                     "dataset_type": r.get("dataset_type", ""), "height": r["size"][0], "width": r["size"][1],
                     "is_training": train, "1fg-1bg": True, "foreground_ratio": r["fg_ratio"],
                     "num_objects": r.get("objects", 1),
                     "main_train": train, "main_train_foreground_volume": train,
                     "mask_source": r.get("segmenter", "")})
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(root) / "metadata.csv", text.getvalue())
    return len(rows)


# ---- The plan (deterministic), and checking every input before the first clip ------------------


def list_sources(pattern, flag):
    try:
        return video_paths(pattern)
    except FileNotFoundError as e:
        raise BadInput(f"{flag} {e}") from None


@dataclass(frozen=True)
class Settings:
    """How every clip is split: the flags of the same names, plus caption_map (--captions, read), threads (torch
    threads per worker, resolved), out (where clips are written: the shard's own folder with --shard) and device
    (this rank's: where its models live)."""
    out: str
    frames: int
    size: tuple
    resize: str
    static: float
    static_rule: str
    segmenter: str
    masks: str
    sam2: str
    min_fg: float
    max_fg: float
    captioner: str
    captions: str
    caption_map: dict
    template: str
    vlm: str
    vlm_frames: int
    vlm_tokens: int
    vlm_greedy: bool
    inpainter: str
    inpaint_cmd: str
    remover: str
    remover_steps: int
    remover_sampler: str
    dilate: int
    fps: int
    seed: int
    threads: int
    device: str
    segmo: object = None          # others.segmo.SegAnyMoSpec: the five models of --segmenter segmo


def source_keys(paths):
    """Names for sources, used in clip ids and so in file names: the stem (or as many parent folders as it takes to
    be unique) in letters, digits and . _ - only; sources whose names still collide ('a b.mp4' and 'a_b.mp4', 'a.mp4'
    and 'a.mov') each get a digest of their full path, so no source is ever lost to another's name."""
    clean = lambda s: re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._") or "video"
    parts = [Path(p).with_suffix("").parts if not Path(p).is_dir() else Path(p).parts for p in paths]
    for depth in range(1, 8):
        keys = [clean("_".join(x[-depth:])) for x in parts]
        if len(set(keys)) == len(keys):
            return keys
    keys = [clean("_".join(x[-1:])) for x in parts]
    counts = Counter(keys)
    return [k if counts[k] == 1 else f"{k}-{hashlib.sha1(str(Path(p).absolute()).encode()).hexdigest()[:8]}"
            for k, p in zip(keys, paths)]


def plan_clips(key, n, T, strides, max_clips, seed=42):
    """Consecutive, non-overlapping windows, each at a stride drawn (seeded by `key`) from those
    that still fit -> list of (start, stride)."""
    rng, start, out = np.random.default_rng([seed, zlib.crc32(key.encode())]), 0, []
    while len(out) < max_clips:
        fits = [s for s in strides if start + (T - 1) * s + 1 <= n]
        if not fits:
            break
        s = int(rng.choice(fits))
        out.append((start, s))
        start += (T - 1) * s + 1
    return out


def plan_items(sources, st, strides, max_clips, seed, val=()):
    """Every clip of every source, in a fixed order -> (plan items, notes on sources too short for a clip). An item is
    {id, source, key, start, stride, frames, source_fps, is_training, dataset_type[, mask_file]} (is_training: the
    source is not in `val`; dataset_type: the name of the folder it was listed from, the release's column); a source
    that cannot be read is one item {id, source, error}, recorded as "unreadable". Reads only the containers'
    headers."""
    items, notes, longest, bad = [], [], 0, []
    for src, key in zip(sources, source_keys(sources)):
        try:
            n, fps = probe(src)
        except ValueError as e:
            bad.append(str(e))
            items.append({"id": key, "source": str(src), "error": str(e)})
            continue
        plan = plan_clips(key, n, st.frames, strides, max_clips, seed)
        longest = max(longest, n)
        if not plan:
            notes.append(f"skipping {src}: {n} frames, too short for {st.frames} frames")
        mask_file = _mask_file(st.masks, src, key) if st.segmenter == "gt" else None
        for start, stride in plan:
            items.append({"id": f"{key}_{start:06d}_s{stride}", "source": str(src), "key": key, "start": start,
                          "stride": stride, "frames": n, "source_fps": fps, "mask_file": mask_file,
                          "is_training": src not in val, "dataset_type": Path(src).absolute().parent.name})
    if len(bad) == len(sources):
        raise BadInput(f"--videos: none of the {len(sources)} videos could be read (e.g. {bad[0]}); "
                       "give mp4/mov/webm/gif/mkv/avi files or folders of JPEG/PNG frames")
    if len(items) == len(bad):
        raise BadInput(f"--frames {st.frames}: longer than every readable video (the longest has {longest} "
                       "frames); lower --frames")
    return items, notes


def _mask_file(spec, src, key):
    """find_mask's path as a string, or None where the source has no mask (check_sources names them all)."""
    try:
        return str(find_mask(spec, src, key))
    except FileNotFoundError:
        return None


def find_mask(spec, source, key):
    """--masks: a folder holding <stem>/ (PNG frames) or <stem>.<ext>, or a template with {dir}/{stem}."""
    src = Path(source)
    if "{" in spec:
        p = Path(spec.format(dir=src.parent, stem=src.stem if src.is_file() else src.name, key=key))
        if p.exists():
            return p
    else:
        for name in (src.stem if src.is_file() else src.name, key):
            for p in [Path(spec) / name] + [Path(spec) / (name + e) for e in VIDEO_EXTS]:
                if p.exists():
                    return p
    raise FileNotFoundError(f"--masks {spec}: no mask folder or video for {source}")


def check_sources(items, st):
    """Before any clip: every clip's caption (--captioner file) and every source's mask (--segmenter gt) exist."""
    items = [it for it in items if not it.get("error")]
    missing = []
    if st.captioner == "file":
        for it in items:
            src = Path(it["source"])
            stem = src.stem if src.is_file() else src.name
            if not any(k in st.caption_map for k in (it["id"], it["key"], stem)):
                missing.append(stem)
        what = f"--captions {st.captions}: no caption for"
    if st.segmenter == "gt" and not missing:
        missing = [it["source"] for it in items if not it["mask_file"]]
        what = f"--masks {st.masks}: no mask folder or video for"
    if missing:
        missing = list(dict.fromkeys(missing))
        raise BadInput(f"{what} {len(missing)} source(s): {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
                       "; add them, or leave those videos out of --videos")


REMOVER_FILES = ("vae/config.json", "transformer/config.json", "scheduler/scheduler_config.json")


def parse_shard(spec):
    """--shard I/N -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        i = n = -1
    if not 0 <= i < n:
        raise BadInput(f"--shard {spec}: expected I/N with 0 <= I < N (e.g. 0/4, 1/4, 2/4, 3/4 for 4 nodes)")
    return i, n


def check_flags(args):
    """Flag values and combinations that cannot work end the run here, in one line, before any clip is read."""
    if not args.videos:
        raise BadInput("--videos is required (a folder of videos, a quoted glob or one file), unless --merge")
    for flag, got, need, val in (("--masks", args.segmenter, "gt", args.masks),
                                 ("--inpaint-cmd", args.inpainter, "cmd", args.inpaint_cmd),
                                 ("--captions", args.captioner, "file", args.captions)):
        if got == need and not val:
            raise BadInput(f"{flag} is required with '{need}'")
    a = args
    check_ranges(
            ("--frames", a.frames, a.frames >= 2, "at least 2 (4k+1 for CogVideoX: 49)"),
            ("--static", a.static, 0 <= a.static < 255, "a mean |frame difference| in [0, 255) (0: keep all)"),
            ("--size", " ".join(map(str, a.size)), min(a.size) >= 16, "H W of at least 16 pixels each"),
            ("--strides", " ".join(map(str, a.strides)), min(a.strides) >= 1, "strides of at least 1"),
            ("--max-clips", a.max_clips, a.max_clips >= 1, "at least 1"),
            ("--fps", a.fps, 1 <= a.fps <= 240, "in [1, 240]"),
            ("--seed", a.seed, a.seed >= 0, "at least 0"),
            ("--min-fg/--max-fg", f"{a.min_fg}/{a.max_fg}", 0 <= a.min_fg <= a.max_fg <= 1,
             "0 <= min <= max <= 1 (shares of the frame)"),
            ("--dilate", a.dilate, a.dilate >= 0, "at least 0 pixels"),
            ("--remover-steps", a.remover_steps, a.remover_steps >= 1, "at least 1"),
            ("--vlm-frames", a.vlm_frames, a.vlm_frames >= 1, "at least 1"),
            ("--vlm-tokens", a.vlm_tokens, 1 <= a.vlm_tokens <= 32768, "in [1, 32768] (StM: 1024)"),
            ("--resize", a.resize, a.resize in RESIZE, "crop or stretch"),
            ("--static-rule", a.static_rule, a.static_rule in ("release", "adjacent"), "release or adjacent"),
            ("--remover-sampler", a.remover_sampler, a.remover_sampler in ("unipc", "euler"), "unipc or euler"),
            ("--workers", a.workers, a.workers >= 1, "at least 1"),
            ("--threads", a.threads, 0 <= a.threads <= 1024, "in [0, 1024] (0: cores / workers)"),
            ("--workers", a.workers, a.workers <= 1024, "at most 1024"))
    parse_shard(args.shard)
    check_out_dir(args.out)
    if args.captioner == "template":
        try:
            args.template.format(stem="x")
        except (KeyError, IndexError, ValueError) as e:
            raise BadInput(f"--template {args.template!r}: cannot be filled in ({type(e).__name__}: {e}); "
                           "{stem} is the only field (write {{ and }} for braces)") from None
    if args.segmenter == "gt" and "{" not in args.masks and not Path(args.masks).is_dir():
        raise BadInput(f"--masks {args.masks}: no such folder; give the folder of <stem>/ or <stem>.mp4 masks, "
                       "or a template such as '{dir}/mask.mp4'")
    if args.inpainter == "cmd":
        inpaint.check_inpaint_cmd(args.inpaint_cmd)
    if args.inpainter == "minimax":                 # a folder laid out like zibojia/minimax-remover, or that hub id
        weights.check_weights(args.remover, "--remover", "--inpainter temporal", need=REMOVER_FILES,
                      patterns=["vae/*", "transformer/*", "scheduler/*"], library=None)
    if args.captioner == "vlm":
        weights.check_weights(args.vlm, "--captioner vlm --vlm", "--captioner file --captions F (your own captions)")
    if args.segmenter == "sam2":
        weights.check_weights(args.sam2, "--segmenter sam2 --sam2", "--segmenter motion, or --segmenter gt --masks DIR")
    if args.segmenter == "segmo":
        segmo.check_flags(args, "--segmenter motion, or --segmenter gt --masks DIR")
    msg = check_shape(args.frames, *args.size, "CogVideoX")
    if msg:
        print(f"warning: {msg}", file=sys.stderr)


# ---- The folder: what it holds, and joining shards -------------------------------------------------


def summary(root):
    recs = read_records(Path(root) / "metadata.jsonl").values()
    status = Counter(r.get("status", "?") for r in recs)
    lines = [f"{root}: {status.pop('ok', 0)} clips kept; skipped: " +
             (", ".join(f"{k} {v}" for k, v in status.most_common()) or "none")]
    ratios = np.array([r["fg_ratio"] for r in recs if r.get("status") == "ok"])
    if len(ratios):
        edges = [0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.45, 1.0]
        hist = np.histogram(ratios, edges)[0]
        lines.append("fg ratio  " + "  ".join(f"{lo:.0%}-{hi:.0%}: {c}" for lo, hi, c in zip(edges, edges[1:], hist)))
    return "\n".join(lines)


# The flags a folder's clips depend on: a rerun (resume) or a merge must not mix clips made with other values.
# (Paths such as --masks or --captions may move between runs, and --workers / --threads change no clip.)
SAME_FLAGS = ("frames", "size", "strides", "max_clips", "static", "fps", "seed", "segmenter", "min_fg", "max_fg",
              "inpainter", "remover_steps", "dilate", "captioner", "template", "resize", "static_rule",
              "remover_sampler", "vlm_frames", "vlm_tokens", "vlm_greedy")


if __name__ == "__main__":
    run_cli(main, parser)
