"""
Split: any folder of videos -> a layered-clip training set (caption, mask, fg layer, bg layer).

    python decompose.py --videos "clips/*.mp4" --out data/mine                      # motion masks, temporal inpainting
    python decompose.py --videos DAVIS/JPEGImages/480p --masks DAVIS/Annotations/480p --segmenter gt --out data/davis
    python decompose.py --videos clips --out data/mine --segmenter sam2 --sam2 facebook/sam2.1-hiera-tiny \\
        --captioner vlm --vlm OpenGVLab/InternVL3-1B-hf --inpainter minimax --remover zibojia/minimax-remover
    python decompose.py --videos clips --out data/mine --inpainter cmd --inpaint-cmd "propainter {video} {mask} {out}"
    torchrun --nproc_per_node=8 decompose.py --videos clips --out data/mine --segmenter sam2   # one process per GPU
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 decompose.py ...  # 4 nodes
    python decompose.py --videos clips --out data/mine --shard 3/8 --workers 4   # machine 3 of 8, no network between
    python decompose.py --merge --out data/mine                                      # then join the shard folders

Stages (paper Sec. 3.3, App. A; StM release settings where they apply):
1. clips: each source is cut into consecutive, non-overlapping `--frames`-frame windows, each at a
   stride drawn (seeded by the source name) from `--strides` among those that still fit, at most
   `--max-clips` per source, cover-cropped to `--size`; a clip whose mean |frame difference| is
   below `--static` (0-255 scale) is recorded as skipped "static".
2. mask: `gt` (your masks), `motion` (weight-free, below) or `sam2` (SAM 2 video propagation via
   transformers, prompted with the motion mask's box). fg ratio outside [1%, 45%] -> skipped.
3. caption: `file`, `vlm` (a video-capable VLM via transformers) or `template`.
4. layers: fg = clip x mask on black; bg = the (dilated) hole filled by `temporal` (weight-free),
   `minimax` (MiniMax-Remover, remover.py: 12 steps, as the StM release), `none` (black hole) or `cmd` (an
   external inpainter such as ProPainter).

The masks (the weight-free motion segmenter, SAM 2) and the camera-motion model the temporal inpainter shares
with it live in segment.py; evaluate.py re-segments generated videos with the same code.

Resume and scale: one metadata.jsonl record per clip (kept or skipped), appended only by the main
process after a clip's files are written atomically, so a rerun skips finished clips and a kill
loses at most the clips in progress. Under torchrun, rank R of W takes every W-th clip still to do of
the (deterministic) clip list, keeps its models on cuda:LOCAL_RANK, and appends its records to its own
metadata.rank-R.jsonl; rank 0 joins those into metadata.jsonl (in plan order: the dataset one process
writes) once every rank has finished, and at the start of a rerun after a kill. `--workers` adds
processes inside each rank (CPU-only machines, no torchrun needed). `--shard I/N` is the same rule for
machines that share no network: it takes every N-th clip and writes its own folder <out>/shard-I-of-N,
so shards never share a file, even on NFS; `--merge` joins them into <out> without copying videos,
adding to the clips <out> already holds.
A rerun must use the same flags as the run that began the folder (settings.json): clips made another way
are never mixed in. Every flag and input file is checked before the first clip (one line, exit code 2).
"""
import argparse
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, fields
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from others import pages
from others.hf import vlm_caption
from others.segment import global_motion, mosaic, motion_mask, push_pull, sam2_mask, unmosaic
from plumbing import weights
from plumbing.cli import BadInput, check_out_dir, run_cli
from plumbing.dataset import LayeredWriter, read_metadata
from plumbing.files import atomic_write_text
from plumbing.ranks import Progress, Ranks
from plumbing.records import append_jsonl, rank_records
from plumbing.video import (VIDEO_EXTS, check_shape, dilate, fit_video, mask_to_rgb, probe, read_frames, read_mask,
    read_video,  video_paths, write_video)

@functools.lru_cache
def _load_remover(path):
    """MiniMax-Remover (remover.py), loaded once per worker: bf16 on a GPU (StM runs fp16), fp32 on CPU."""
    from others import remover
    cuda = torch.cuda.is_available()
    return remover.Remover.from_pretrained(path, dtype=torch.bfloat16 if cuda else None,
                                           device="cuda" if cuda else None)


# ---- Inpainters and captioners ---------------------------------------------------------------


def inpaint_temporal(video, hole, G=None):
    """Fill each hole pixel from the frames where it is visible (after camera motion compensation:
    median of the aligned visible samples), then push-pull for pixels never seen -> uint8 (T,H,W,3)."""
    T, H, W, _ = video.shape
    G = global_motion(video) if G is None else G
    v = torch.from_numpy(np.asarray(video)).permute(0, 3, 1, 2).float()
    canvas, box = mosaic(v, G, keep=~hole)
    view = unmosaic(push_pull(canvas), box, G, H, W)
    bg = torch.where(torch.from_numpy(hole)[:, None], view, v)
    return bg.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def inpaint_cmd(cmd, video, hole, fps):
    """Run `cmd` with {video} {mask} {out} replaced by temporary mp4 paths; read back {out}."""
    with tempfile.TemporaryDirectory() as d:
        paths = {k: os.path.join(d, f"{k}.mp4") for k in ("video", "mask", "out")}
        write_video(paths["video"], video, fps)
        write_video(paths["mask"], mask_to_rgb(hole), fps)
        r = subprocess.run([a.format(**paths) for a in shlex.split(cmd)], capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(paths["out"]):
            raise RuntimeError(f"--inpaint-cmd failed (exit {r.returncode}): {cmd}\n{r.stderr[-2000:]}")
        bg = read_video(paths["out"])[0]
    if bg.shape != video.shape:
        bg = fit_video(bg, len(video), *video.shape[1:3], name="--inpaint-cmd output")
    return bg


def read_captions(path):
    """jsonl ({"video"|"id": stem, "caption"|"text": ...}) or tsv (stem<TAB>caption) -> dict."""
    out = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"--captions {path}: cannot be read ({type(e).__name__}); give a jsonl or tsv file") from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInput(f"--captions {path}:{i + 1}: not a JSON object ({e.msg}); "
                               'expected {"video": stem, "caption": text}') from None
            key, cap = r.get("video", r.get("id")), r.get("caption", r.get("text"))
        else:
            key, _, cap = line.partition("\t")
        if key is None or not isinstance(cap, str) or not cap.strip():
            raise BadInput(f"--captions {path}:{i + 1}: expected a video stem and a caption")
        out[Path(str(key)).stem if str(key).endswith(VIDEO_EXTS) else str(key)] = cap.strip()
    return out


# ---- Clips: the plan (deterministic), reading only the frames a clip needs, one clip end to end ---


REMOVER_FILES = ("vae/config.json", "transformer/config.json", "scheduler/scheduler_config.json")


def source_keys(paths):
    """Names for sources: the stem, or as many parent folders as it takes to be unique."""
    for depth in range(1, 64):
        keys = ["_".join(Path(p).with_suffix("").parts[-depth:]) if not Path(p).is_dir() else
                "_".join(Path(p).parts[-depth:]) for p in paths]
        if len(set(keys)) == len(keys):
            return [k.replace(" ", "_") for k in keys]
    raise ValueError("duplicate video paths")


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


class _Collect(LayeredWriter):
    """LayeredWriter whose records go back to the main process instead of into metadata.jsonl."""

    def __init__(self, root):
        self.root, self.recs = Path(root), []

    def record(self, **rec):
        self.recs.append(rec)


@dataclass(frozen=True)
class Settings:
    """How every clip is split: the flags of the same names, plus caption_map (--captions, read), threads (torch
    threads per worker, resolved) and out (where clips are written: the shard's own folder with --shard)."""
    out: str
    frames: int
    size: tuple
    static: float
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
    inpainter: str
    inpaint_cmd: str
    remover: str
    remover_steps: int
    dilate: int
    fps: int
    threads: int


def clip_mask(video, G, st, src, key, n, start, stride):
    """The subject mask of one clip: the given one (gt, resampled like the clip), or the segmenter's."""
    T, (H, W) = st.frames, st.size
    if st.segmenter == "gt":
        m = read_mask(find_mask(st.masks, src, key))
        if len(m) != n:
            raise ValueError(f"mask for {src} has {len(m)} frames, the video {n}")
        return fit_video(m, T, H, W, stride=stride, start=start, mask=True, name=f"mask of {src}")
    mask = motion_mask(video, G)
    return sam2_mask(video, mask, st.sam2) if st.segmenter == "sam2" else mask


def clip_caption(video, st, cid, key, stem):
    """The caption of one clip, from --captions (by clip id, source key or stem), the VLM or the template."""
    if st.captioner == "file":
        caption = st.caption_map.get(cid) or st.caption_map.get(key) or st.caption_map.get(stem)
        if caption is None:
            raise KeyError(f"--captions {st.captions}: no caption for {stem}")
        return caption
    if st.captioner == "vlm":
        return vlm_caption(video, st.vlm, n=st.vlm_frames)
    return st.template.format(stem=stem)


def clip_bg(video, mask, G, st):
    """The bg layer: the mask's hole, grown by st.dilate, filled by the chosen inpainter."""
    hole = dilate(torch.from_numpy(mask), st.dilate).numpy()
    if st.inpainter == "temporal":
        return inpaint_temporal(video, hole, G)
    if st.inpainter == "cmd":
        return inpaint_cmd(st.inpaint_cmd, video, hole, st.fps)
    if st.inpainter == "minimax":  # grows the mask itself, by a diamond of --dilate, as MiniMax-Remover's pipeline
        return _load_remover(st.remover)(video, mask, steps=st.remover_steps, dilate=st.dilate)
    return video * ~hole[..., None]


def process_clip(job):
    """One clip end to end -> its record (written files first, the record last).
    job = (Settings, clip id, source path, source key, start, stride, source frame count, source fps)."""
    st, cid, src, key, start, stride, n, fps = job
    torch.set_num_threads(st.threads)
    T, (H, W) = st.frames, st.size
    base = dict(id=cid, source=str(src), start=start, stride=stride, source_fps=fps)
    try:
        video = fit_video(read_frames(src, start + stride * np.arange(T)), T, H, W, name=str(src))
        motion = float(np.abs(np.diff(video.astype(np.int16), axis=0)).mean())
        if motion < st.static:
            return dict(base, status="static", motion=motion)
        G = global_motion(video) if st.segmenter != "gt" or st.inpainter == "temporal" else None
        mask = clip_mask(video, G, st, src, key, n, start, stride)
        ratio = float(mask.mean())
        if not st.min_fg <= ratio <= st.max_fg:
            return dict(base, status="fg_small" if ratio < st.min_fg else "fg_large", fg_ratio=ratio)
        caption = clip_caption(video, st, cid, key, src.stem if src.is_file() else src.name)
        w = _Collect(st.out)
        w.add(cid, caption, video, video * mask[..., None], clip_bg(video, mask, G, st), mask, fps=st.fps,
              source=str(src), start=start, stride=stride, source_fps=fps, segmenter=st.segmenter,
              inpainter=st.inpainter)
        return w.recs[0]
    except ValueError as e:                # a bad source clip is recorded; bad flags/files abort the run
        return dict(base, status="error", error=str(e))


# ---- The run: plan, shard, process (workers), summary; merging shard folders -----------------


def summary(root):
    recs = {r["id"]: r for r in reversed(read_metadata(root))}.values()
    status = Counter(r["status"] for r in recs)
    lines = [f"{root}: {status.pop('ok', 0)} clips kept; skipped: " +
             (", ".join(f"{k} {v}" for k, v in status.most_common()) or "none")]
    ratios = np.array([r["fg_ratio"] for r in recs if r["status"] == "ok"])
    if len(ratios):
        edges = [0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.45, 1.0]
        hist = np.histogram(ratios, edges)[0]
        lines.append("fg ratio  " + "  ".join(f"{lo:.0%}-{hi:.0%}: {c}" for lo, hi, c in zip(edges, edges[1:], hist)))
    return "\n".join(lines)


def merge(out):
    """Join <out>/shard-*/ into <out> -> (shards, clips added). What <out>/metadata.jsonl already holds is kept and
    each shard record whose id is not there yet is added (its paths made relative to <out>); the lists are then
    rewritten from it. Lists that metadata.jsonl does not account for (another tool's dataset, hand-added lines)
    are refused, as rewriting them would drop those clips."""
    out = Path(out)
    shards = sorted(p for p in out.glob("shard-*") if (p / "metadata.jsonl").exists())
    if not shards:
        raise BadInput(f"--out {out}: no shard-*/metadata.jsonl to merge; write them with decompose.py "
                       f"--shard I/N --out {out}")
    recs = read_metadata(out)
    listed = (out / "videos.txt").read_text().splitlines() if (out / "videos.txt").exists() else []
    unknown = set(filter(None, map(str.strip, listed))) - {r.get("videos") for r in recs}
    if unknown:
        raise BadInput(f"--out {out}: videos.txt lists {len(unknown)} clips that its metadata.jsonl does not hold "
                       f"(e.g. {sorted(unknown)[0]}); merging would rewrite the lists without them: merge the "
                       f"shards into a folder of their own (move them), or add those clips' records first")
    flags = check_settings([out, *shards])
    if flags is not None and not (out / "settings.json").exists():
        atomic_write_text(out / "settings.json", json.dumps(flags, indent=1) + "\n")
    seen, n_old = {r["id"] for r in recs}, len(recs)
    for d in shards:
        for r in read_metadata(d):
            if r["id"] not in seen:
                seen.add(r["id"])
                recs.append({**r, **{k: f"{d.name}/{r[k]}" for k in ("videos", "fg", "bg", "masks") if k in r}})
    atomic_write_text(out / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in recs))
    LayeredWriter(out).finalize()
    return len(shards), len(recs) - n_old


# The flags a folder's clips depend on: a rerun (resume) or a merge must not mix clips made with other values.
# (Paths such as --masks or --captions may move between runs, and --workers / --threads change no clip.)
SAME_FLAGS = ("frames", "size", "strides", "max_clips", "static", "fps", "seed", "segmenter", "min_fg", "max_fg",
              "inpainter", "remover_steps", "dilate", "captioner", "template")


def check_settings(folders, want=None):
    """The settings.json of every folder that has one (and `want`, this run's) must agree -> the agreed settings."""
    have = []
    for f in (Path(d) / "settings.json" for d in folders):
        try:
            have += [(f, json.loads(f.read_text()))] if f.is_file() else []
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadInput(f"{f}: not JSON (decompose.py writes it); delete it to take this run's flags") from None
    ref_name, ref = ("this run's flags", want) if want is not None else (have[0] if have else (None, None))
    for name, got in have:
        diff = [k for k in SAME_FLAGS if k in got and k in ref and got[k] != ref[k]]
        if diff:
            show = lambda s: " ".join(f"--{k.replace('_', '-')} {s[k]}" for k in diff)
            raise BadInput(f"{name}: its clips were made with {show(got)}, {ref_name} say {show(ref)}; mixing "
                           f"them would make a dataset of two kinds: use those flags (to resume) or another --out")
    return ref


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
a_ = parser.add_argument
a_("--videos", help="folder of videos / frame folders, a glob (quote it), or one file")
a_("--out", help="output dataset folder (with --shard: <out>/shard-I-of-N); required but with --preview")
a_("--frames", type=int, default=49, help="frames per clip (4k+1; 49 for CogVideoX)")
a_("--size", type=int, nargs=2, default=[480, 720], metavar=("H", "W"), help="clip size (cover crop)")
a_("--strides", type=int, nargs="+", default=[1, 2, 3, 4], help="frame strides to draw from (App. A)")
a_("--max-clips", type=int, default=4, help="at most this many clips per source video")
a_("--static", type=float, default=1.5, help="skip clips whose mean |frame difference| (0-255) is below this")
a_("--fps", type=int, default=16, help="frame rate the clips are written at")
a_("--seed", type=int, default=42, help="seed of the stride draws")
a_("--segmenter", choices=["motion", "gt", "sam2"], default="motion", help="where masks come from")
a_("--masks", help="--segmenter gt: folder with <stem>/ PNG folders or <stem>.mp4 mask videos, "
                   "or a template such as '{dir}/mask.mp4'")
a_("--sam2", default="facebook/sam2.1-hiera-tiny", help="--segmenter sam2: local folder or hub id")
a_("--min-fg", type=float, default=0.01, help="skip clips whose fg fills less of the video than this")
a_("--max-fg", type=float, default=0.45, help="skip clips whose fg fills more of the video than this")
a_("--inpainter", choices=["temporal", "none", "cmd", "minimax"], default="temporal",
   help="how the bg hole is filled (minimax: MiniMax-Remover, remover.py, as the StM release)")
a_("--inpaint-cmd", help="--inpainter cmd: command with {video} {mask} {out} (mp4 paths)")
a_("--remover", default="zibojia/minimax-remover",
   help="--inpainter minimax: folder with vae/ transformer/ scheduler/, or hub id")
a_("--remover-steps", type=int, default=12, help="--inpainter minimax: sampling steps (StM: 12)")
a_("--dilate", type=int, default=6, help="grow the mask by this many pixels before inpainting")
a_("--captioner", choices=["template", "file", "vlm"], default="template", help="where captions come from")
a_("--captions", help="--captioner file: jsonl ({video, caption}) or tsv (stem<TAB>caption)")
a_("--template", default="a video", help="--captioner template: the caption ({stem} = source name)")
a_("--vlm", default="OpenGVLab/InternVL3-1B-hf", help="--captioner vlm: local folder or hub id")
a_("--vlm-frames", type=int, default=8, help="--captioner vlm: frames shown to the model")
a_("--workers", type=int, default=1, help="processes working on clips in parallel")
a_("--threads", type=int, default=0, help="torch threads per worker (0: cores / workers)")
a_("--shard", default="0/1", help="I/N: process every N-th clip starting at I, into <out>/shard-I-of-N")
a_("--merge", action="store_true", help="join <out>/shard-*/ into <out> and exit")
a_("--preview", metavar="OUT", help="write OUT/preview.html (input | mask | fg | bg of the first clips, captions, "
   "counts) for a Split output folder and exit")


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
    for flag, val, ok, rule in (
            ("--frames", a.frames, a.frames >= 2, "at least 2 (4k+1 for CogVideoX: 49)"),
            ("--size", " ".join(map(str, a.size)), min(a.size) >= 16, "H W of at least 16 pixels each"),
            ("--strides", " ".join(map(str, a.strides)), min(a.strides) >= 1, "strides of at least 1"),
            ("--max-clips", a.max_clips, a.max_clips >= 1, "at least 1"),
            ("--fps", a.fps, a.fps >= 1, "at least 1"),
            ("--seed", a.seed, a.seed >= 0, "at least 0"),
            ("--min-fg/--max-fg", f"{a.min_fg}/{a.max_fg}", 0 <= a.min_fg <= a.max_fg <= 1,
             "0 <= min <= max <= 1 (shares of the frame)"),
            ("--dilate", a.dilate, a.dilate >= 0, "at least 0 pixels"),
            ("--remover-steps", a.remover_steps, a.remover_steps >= 1, "at least 1"),
            ("--vlm-frames", a.vlm_frames, a.vlm_frames >= 1, "at least 1"),
            ("--workers", a.workers, a.workers >= 1, "at least 1"),
            ("--threads", a.threads, a.threads >= 0, "at least 0 (0: cores / workers)")):
        if not ok:
            raise BadInput(f"{flag} {val}: must be {rule}")
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
        check_inpaint_cmd(args.inpaint_cmd)
    if args.inpainter == "minimax":                 # a folder laid out like zibojia/minimax-remover, or that hub id
        weights.check_weights(args.remover, "--remover", "--inpainter temporal", need=REMOVER_FILES,
                      patterns=["vae/*", "transformer/*", "scheduler/*"], library=None)
    if args.captioner == "vlm":
        weights.check_weights(args.vlm, "--captioner vlm --vlm", "--captioner file --captions F (your own captions)")
    if args.segmenter == "sam2":
        weights.check_weights(args.sam2, "--segmenter sam2 --sam2", "--segmenter motion, or --segmenter gt --masks DIR")
    msg = check_shape(args.frames, *args.size, "CogVideoX")
    if msg:
        print(f"warning: {msg}", file=sys.stderr)


def check_inpaint_cmd(cmd):
    """--inpaint-cmd must split into words, fill in {video} {mask} {out} only, name {out}, and name a program
    that exists; otherwise every clip would fail one by one."""
    try:
        words = [w.format(video="v.mp4", mask="m.mp4", out="o.mp4") for w in shlex.split(cmd)]
    except (ValueError, KeyError, IndexError) as e:
        raise BadInput(f"--inpaint-cmd {cmd!r}: cannot be used ({type(e).__name__}: {e}); "
                       "write a command with {video} {mask} {out}") from None
    if not words or "{out}" not in cmd:
        raise BadInput(f"--inpaint-cmd {cmd!r}: must write its result to {{out}}, e.g. 'remover {{video}} {{mask}} "
                       "{out}'")
    if shutil.which(words[0]) is None:
        raise BadInput(f"--inpaint-cmd {cmd!r}: no program {words[0]!r} on PATH; give its full path")


def plan_jobs(sources, st, strides, max_clips, seed):
    """Every clip of every readable source -> (process_clip jobs, unreadable sources as (path, key, error), notes on
    sources too short for a clip). Reads only the containers' headers."""
    jobs, bad, notes, longest = [], [], [], 0
    for src, key in zip(sources, source_keys(sources)):
        try:
            n, fps = probe(src)
        except ValueError as e:
            bad.append((src, key, str(e)))
            continue
        plan = plan_clips(key, n, st.frames, strides, max_clips, seed)
        longest = max(longest, n)
        if not plan:
            notes.append(f"skipping {src}: {n} frames, too short for {st.frames} frames")
        for start, stride in plan:
            jobs.append((st, f"{key}_{start:06d}_s{stride}", src, key, start, stride, n, fps))
    if len(bad) == len(sources):
        raise BadInput(f"--videos: none of the {len(sources)} videos could be read (e.g. {bad[0][2]}); "
                       "give mp4/mov/webm/gif/mkv/avi files or folders of JPEG/PNG frames")
    if not jobs:
        raise BadInput(f"--frames {st.frames}: longer than every readable video (the longest has {longest} "
                       "frames); lower --frames")
    return jobs, bad, notes


def check_sources(jobs, st):
    """Before any clip: every clip's caption (--captioner file) and every source's mask (--segmenter gt) exist."""
    missing = []
    if st.captioner == "file":
        for _, cid, src, key, *_ in jobs:
            stem = src.stem if src.is_file() else src.name
            if not any(k in st.caption_map for k in (cid, key, stem)):
                missing.append(stem)
        what = f"--captions {st.captions}: no caption for"
    if st.segmenter == "gt" and not missing:
        for src, key in dict.fromkeys((j[2], j[3]) for j in jobs):
            try:
                find_mask(st.masks, src, key)
            except FileNotFoundError:
                missing.append(str(src))
        what = f"--masks {st.masks}: no mask folder or video for"
    if missing:
        missing = list(dict.fromkeys(missing))
        raise BadInput(f"{what} {len(missing)} source(s): {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
                       "; add them, or leave those videos out of --videos")


def run_jobs(todo, writer, workers, progress):
    """process_clip over `todo` (in `workers` processes); the main process alone appends the records, so a stop
    here (an error, Ctrl-C) keeps every finished clip and a rerun of the same command resumes."""
    pool = Pool(workers) if workers > 1 and len(todo) > 1 else None
    n0 = len(writer.done)
    try:
        results = pool.imap_unordered(process_clip, todo) if pool else map(process_clip, todo)
        for rec in results:
            writer.record(**rec)
            progress.step()
    except (KeyError, FileNotFoundError, RuntimeError, OSError) as e:
        raise BadInput(f"{str(e).splitlines()[0]} (stopped; the {len(writer.done) - n0} clips finished in this run "
                       f"are kept, rerun the same command to resume)") from None
    except KeyboardInterrupt:
        if progress.ranks.world == 1:                  # among several ranks, rank 0 joins the records on the rerun
            writer.finalize()
        sys.exit(f"interrupted: the {len(writer.done) - n0} clips finished in this run are kept; "
                 "rerun the same command to resume")
    finally:
        if pool:
            pool.terminate()


class RankWriter(LayeredWriter):
    """LayeredWriter whose records go to this rank's own file (metadata.jsonl when it runs alone): ranks never
    append to one file, which NFS could interleave, and rank 0 joins the files (join_ranks)."""

    def __init__(self, root, path):
        super().__init__(root)
        self.path = path

    def record(self, **rec):
        append_jsonl(self.path, rec)
        self.done.add(rec["id"])


def join_ranks(out, order):
    """Rank 0, alone: the records of the per-rank files that metadata.jsonl lacks are added to it in plan `order`
    (ids), so the dataset is the one a single process writes; then the per-rank files go. A kill between the two
    steps is harmless: ids already in metadata.jsonl are not added twice."""
    recs, files = rank_records(out, "metadata")
    if not files:
        return
    have, pos = read_metadata(out), {k: i for i, k in enumerate(order)}
    seen, new = {r["id"] for r in have}, {}
    for r in recs:
        if r["id"] not in seen:
            new.setdefault(r["id"], r)
    add = sorted(new.values(), key=lambda r: pos.get(r["id"], len(pos)))
    atomic_write_text(Path(out) / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in have + add))
    for f in files:
        f.unlink()


def main(args):
    if args.preview:
        print(f"wrote {pages.write_preview(args.preview)}")
        return
    if not args.out:
        raise BadInput("--out is required (the dataset folder to write, or with --merge to join into)")
    if args.merge:
        n, added = merge(args.out)
        print(f"merged {n} shards ({added} new records)\n{summary(args.out)}")
        return
    check_flags(args)
    i, n_shards = parse_shard(args.shard)
    caption_map = read_captions(args.captions) if args.captioner == "file" else {}
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    try:
        sources = video_paths(args.videos)
    except FileNotFoundError as e:
        raise BadInput(f"--videos {e}") from None
    out = str(Path(args.out) / f"shard-{i}-of-{n_shards}") if n_shards > 1 else args.out
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if f.name not in ("out", "caption_map", "threads")}
    st = Settings(**given, out=out, caption_map=caption_map, threads=threads)
    flags = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in vars(args).items() if k in SAME_FLAGS}
    check_settings([out], flags)
    planned, bad, notes = plan_jobs(sources, st, args.strides, args.max_clips, args.seed)
    jobs = planned[i::n_shards]                 # --shard: the ranks' rule, for machines that share no network
    check_sources(jobs, st)
    # every input checked: from here on the folder is written
    ranks = Ranks()
    order = [key for _, key, _ in bad] + [j[1] for j in jobs]
    writer = RankWriter(out, ranks.record_file(out, "metadata"))
    if ranks.rank == 0:
        if not (Path(out) / "settings.json").exists():
            atomic_write_text(Path(out) / "settings.json", json.dumps(flags, indent=1) + "\n")
        join_ranks(out, order)                  # what a killed run's ranks finished counts as done
        writer.done |= {r["id"] for r in read_metadata(out)}
        print("".join(n + "\n" for n in notes), end="", file=sys.stderr)
        for src, key, err in bad:
            print(f"skipping {err}", file=sys.stderr)
            if key not in writer.done:
                writer.record(id=key, source=str(src), status="unreadable", error=err)
    ranks.wait()
    writer.done |= {r["id"] for r in read_metadata(out)}
    left = [j for j in jobs if j[1] not in writer.done]
    todo, left_ids = ranks.mine(left), {j[1] for j in left}
    print(f"{len(sources)} videos, {len(planned)} clips; shard {i}/{n_shards}: {len(left)} to do -> {out}"
          + (f"; rank {ranks.rank}/{ranks.world}: {len(todo)}" if ranks.world > 1 else ""))
    count = lambda: len({r["id"] for r in rank_records(out, "metadata")[0]} & left_ids)
    progress = Progress(ranks, "decompose", len(left), len(todo), count)
    run_jobs(todo, writer, args.workers, progress)
    seconds = progress.close()
    if ranks.rank == 0:
        join_ranks(out, order)
        writer.finalize()
        print(f"{summary(out)}\n{len(left)} clips in {seconds:.1f}s ({len(left) / max(seconds, 1e-9):.3g} clips/s, "
              f"{ranks.world} process(es) x {args.workers} worker(s))")


if __name__ == "__main__":
    run_cli(main, parser)
