"""
Video I/O, the image / video helpers the stages share, and the layered-clip dataset.

    python data.py show data/toy                                  # count and check a dataset
    python data.py toy ... / python data.py triplets ...          # aliases of `python toy.py data|triplets ...`

The toy world (its rendering, datasets and test triplets) lives in toy.py.

Conventions (DESIGN.md): at the I/O edge a video is uint8 (T, H, W, 3) and a mask bool (T, H, W);
a dataset item is float (C, T, H, W) in [-1, 1] and a mask (1, T, H, W) in {0, 1}.

Layered-clip dataset: <root>/{prompts,videos,fg,bg,masks}.txt, aligned line by line, paths
relative to <root>, plus metadata.jsonl (one record per clip, skipped ones too). The
metadata is the source of truth: it is appended one line per clip, and the five lists are
rewritten from it (atomically) by `LayeredWriter.finalize`, so a killed writer never leaves
them misaligned.
"""
import argparse
import atexit
import csv
import glob
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from weights import atomic_write_text

class BadInput(Exception):
    """An input the user named (a file, a flag's value, a line of a list) that cannot be used. Every CLI reports
    it the same way, as one line `<script>: error: <message>` and exit code 2 (argparse's code for usage errors),
    through `run_cli`. The message names the input, says what is wrong and what would work."""


def run_cli(main, parser):
    """`main(parser.parse_args())`, with a BadInput turned into its one line and exit code 2 (no traceback)."""
    args = parser.parse_args()
    try:
        return main(args)
    except BadInput as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


# ---------------------------------------------------------------------------------------------
# Batch jobs on many processes: `torchrun --nproc_per_node=8 X.py ...` for decompose, sample --triplets, evaluate


class Ranks:
    """This process's share of a batch job. torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (one process per GPU, any
    number of nodes); a plain `python X.py` is rank 0 of 1 and starts no process group. Every rank plans the same
    item list and takes `mine(items)`; it writes only per-item files and its own record file (`record_file`), and
    rank 0 joins the record files once all have finished (`wait`). The processes only wait for each other: gloo
    does that on any machine, and unlike NCCL's watchdog its barrier may wait for hours while others work."""

    def __init__(self):
        import datetime
        import torch.distributed as dist
        self.dist, env = dist, os.environ
        self.rank, self.world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
        gpus = torch.cuda.device_count()
        # more processes than GPUs on a node (small models: --nproc_per_node=4x the GPUs) share them in turn
        self.device = torch.device("cuda", int(env.get("LOCAL_RANK", 0)) % gpus) if gpus else torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
            atexit.register(self.close)

    def close(self):
        """Leave the process group; run at exit. A rank that ends while rank 0 still writes the summary must stop its
        gloo threads itself: left to the interpreter's teardown they can abort the process ("terminate called without
        an active exception", exit -6), and torchrun then fails the whole job (seen once in CI; pytorch#179291)."""
        if self.dist.is_initialized():
            self.dist.destroy_process_group()

    def mine(self, items):
        """Items i with i % world == rank: the same list on every rank gives each item to exactly one."""
        return items[self.rank::self.world]

    def record_file(self, folder, stem):
        """Where this rank appends its records: <stem>.jsonl alone, <stem>.rank-R.jsonl among several."""
        return Path(folder) / (f"{stem}.jsonl" if self.world == 1 else f"{stem}.rank-{self.rank}.jsonl")

    def gather(self, obj):
        """-> [obj of rank 0, obj of rank 1, ...] (small, picklable) on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def wait(self, progress=None, every=2.0):
        """Barrier; while rank 0 waits for the others it calls progress() every `every` seconds."""
        if self.world > 1:
            work, shown = self.dist.barrier(async_op=True), time.time()
            while progress is not None and self.rank == 0 and not work.is_completed():
                if time.time() - shown > every:
                    progress()
                    shown = time.time()
                time.sleep(0.05)
            work.wait()


def rank_records(folder, stem):
    """(records of every <stem>.rank-*.jsonl in folder, those files): what the ranks of a run wrote and rank 0 has
    not joined yet (a killed run leaves them). A torn last line (its writer was killed mid-line) is left out."""
    files = sorted(Path(folder).glob(f"{stem}.rank-*.jsonl"))
    recs = []
    for f in files:
        for line in f.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return [r for r in recs if isinstance(r, dict)], files


def append_jsonl(path, rec):
    """Append one record as one write of one line (fsync'd), so a kill leaves at most a torn last line; a torn
    line left by an earlier kill is ended first, so it never swallows this record."""
    p = Path(path)
    torn = p.exists() and p.stat().st_size > 0 and p.read_bytes()[-1:] != b"\n"
    with open(p, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path):
    """A JSON-lines file -> (objects as (line number, dict), problems as (line number, one-line message)). A torn
    last line (its writer stopped mid-line) and lines that are not JSON objects are reported and left out."""
    try:
        lines = Path(path).read_text().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: cannot be read ({type(e).__name__}); give a JSON-lines file") from None
    rows, problems = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            rows.append((i, obj))
        elif i == len(lines):                                 # no newline after it: the writer was stopped
            problems.append((i, f"{path}:{i}: torn last line (its writer was stopped mid-line), left out"))
        else:
            problems.append((i, f"{path}:{i}: not a JSON object, left out"))
    return rows, problems



def json_safe(v):
    """NaN / inf -> None (JSON's null), through dicts and lists: json.dumps would write a bare NaN, not JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    return [json_safe(x) for x in v] if isinstance(v, (list, tuple)) else v


def drop_problem_lines(path, rows, problems):
    """Before a resumed job appends to `path`: warn about each line read_jsonl left out (a torn last line, a line
    that is not a JSON object) and rewrite the file as `rows` (its good objects), so the next record starts on a
    line of its own and every later read is clean."""
    for _, msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    if problems:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


class Progress:
    """A batch job's progress: one tqdm bar on rank 0 for the items of every rank (rank 0 reads `count()`, the
    items done so far on all ranks, from the record files every few seconds), a log line per rank every `every` of
    its own items, and `close()` -> seconds, after every rank has finished."""

    def __init__(self, ranks, desc, total, mine, count, every=10, bar=True):
        from tqdm import tqdm
        self.ranks, self.desc, self.count, self.every, self.mine, self.n = ranks, desc, count, every, mine, 0
        self.bar = tqdm(total=total, desc=desc) if bar and ranks.rank == 0 else None
        self.t0 = self.shown = time.time()

    def step(self):
        """One of this rank's items is done (its record written)."""
        self.n += 1
        if self.ranks.world == 1:
            self.bar and self.bar.update(1)
            return
        if self.bar is not None and time.time() - self.shown > 2:
            self.refresh()
        if self.n % self.every == 0 or self.n == self.mine:
            rate = self.n / max(time.time() - self.t0, 1e-9)
            print(f"[rank {self.ranks.rank}/{self.ranks.world}] {self.desc}: {self.n}/{self.mine} items, "
                  f"{rate:.3g} items/s", flush=True)

    def refresh(self):
        if self.bar is not None:
            self.bar.n, self.shown = min(self.bar.total, self.count()), time.time()
            self.bar.refresh()

    def close(self):
        self.ranks.wait(self.refresh)
        if self.bar is not None:
            self.refresh() if self.ranks.world > 1 else None
            self.bar.close()
        return time.time() - self.t0


def check_out_dir(path, flag="--out"):
    """Before any compute: `path` must be (or can become) a writable folder. Creates nothing, so a run refused
    later leaves no trace; raises BadInput naming `flag` otherwise."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise BadInput(f"{flag} {path}: is a file, not a folder; name a folder (it is created if missing)")
    q = p
    while not q.exists():                          # the nearest existing ancestor is where mkdir will write
        q = q.parent
    if not q.is_dir() or not os.access(q, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {path}: {q} is not a writable folder; name a folder you can write to")


VIDEO_EXTS = (".mp4", ".mov", ".webm", ".gif", ".mkv", ".avi")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
# A source with no frame rate of its own (a folder of frames, a container that does not say) is taken
# as 24 fps: DAVIS' rate and film's. 8 fps is only the rate the toy world is *written* at (write_video).
DEFAULT_FPS = 24.0
LUMA = (0.299, 0.587, 0.114)      # ITU-R BT.601 luma weights of R, G, B: every "gray" / "brightness" in stm

# ---------------------------------------------------------------------------------------------
# Video I/O
# ---------------------------------------------------------------------------------------------


def _image_files(folder):
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"{folder}: folder holds no .jpg/.png frames")
    return files


def _stream(c, path):
    """The first video stream of an open container, and its frame rate (DEFAULT_FPS when unknown)."""
    if not c.streams.video:
        raise ValueError(f"{path}: has no video stream")
    s = c.streams.video[0]
    return s, float(s.average_rate or s.guessed_rate or 0) or DEFAULT_FPS


def _decode(path, fmt):
    """All frames of a video or image file, each as fmt ('rgb24', 'gray' or 'pal8' -> indices)."""
    try:
        with av.open(str(path)) as c:
            s, fps = _stream(c, path)
            out, indexed = [], False
            for f in c.decode(s):
                if fmt == "pal8" and f.format.name == "pal8":
                    out.append(f.to_ndarray()[0])          # palette indices, as DAVIS stores object ids
                    indexed = True
                else:
                    out.append(f.to_ndarray(format="gray" if fmt == "pal8" else fmt))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable video or image ({e})") from None
    if not out:
        raise ValueError(f"{path}: no frames could be decoded (empty or truncated file)")
    return out, fps, indexed


def read_video(path, fps=None):
    """mp4/mov/webm/gif file, or a folder of JPEG/PNG frames (DAVIS layout) -> (uint8 (T,H,W,3), fps).
    A folder has no frame rate of its own: `fps` (default DEFAULT_FPS, DAVIS' rate) is returned."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file or frame folder")
    if path.is_dir():
        frames = [_decode(p, "rgb24")[0][0] for p in _image_files(path)]
        fps = fps or DEFAULT_FPS
    else:
        frames, fps, _ = _decode(path, "rgb24")
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"{path}: frames change size mid-video")
    return np.stack(frames), fps


def read_mask(path, obj_id=None):
    """Mask video (white = subject) or folder of PNGs -> bool (T, H, W).
    Palette PNGs (DAVIS / YouTube-VOS) hold object ids: the union of all objects, or only `obj_id`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such mask video or folder")
    decoded = [_decode(p, "pal8") for p in _image_files(path)] if path.is_dir() else [_decode(path, "gray")]
    frames = [f for d in decoded for f in d[0]]
    palette = any(d[2] for d in decoded)
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"{path}: mask frames change size")
    m = np.stack(frames)
    if palette or obj_id is not None:       # indexed ids: 0 = background, 255 = "void" border in DAVIS
        return (m == obj_id) if obj_id is not None else ((m > 0) & (m != 255))
    return m > 127


def probe(path):
    """-> (frame count, fps) of a video file or frame folder, without decoding pixels where the container knows."""
    p = Path(path)
    if p.is_dir():
        return len([f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS]), DEFAULT_FPS
    try:
        with av.open(str(p)) as c:
            s, fps = _stream(c, p)
            n = s.frames or sum(1 for pk in c.demux(s) if pk.size)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a readable video ({e})") from None
    if n == 0:
        raise ValueError(f"{p}: no frames (empty or truncated file)")
    return n, fps


def read_frames(path, idx):
    """uint8 (len(idx),H,W,3): only the frames `idx` (sorted), decoding no further than the last."""
    p, want = Path(path), {int(i): k for k, i in enumerate(idx)}
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        return np.stack([read_frames(files[i], [0])[0] for i in idx])
    out = [None] * len(idx)
    with av.open(str(p)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in want:
                out[want[i]] = f.to_ndarray(format="rgb24")
            if i >= max(want):
                break
    if any(o is None for o in out):
        raise ValueError(f"{p}: ended before frame {max(want)}")
    return np.stack(out)


def write_video(path, frames, fps=8, crf=18):
    """uint8 (T,H,W,3) -> H.264 mp4 (yuv420p) or GIF, chosen by the suffix; written atomically.
    H.264 in yuv420p needs even sizes: an odd edge is padded by repeating the last row/column."""
    path, frames = Path(path), np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{path}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            _write_gif(tmp, frames, fps)
        else:
            T, H, W, _ = frames.shape
            frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
            with av.open(tmp, "w", format="mp4") as c:
                s = c.add_stream("libx264", rate=round(fps))
                s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
                s.options = {"crf": str(crf)}
                for f in frames:
                    c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
                c.mux(s.encode())
        os.chmod(tmp, 0o644)                      # mkstemp makes 0600; outputs are for everyone to read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_gif(path, frames, fps):
    # GIF is 256 colours: take the most frequent colours of the whole clip (at 5 bits/channel)
    # as one palette and map every pixel to its nearest entry.
    q = torch.from_numpy(frames.reshape(-1, 3)).int() >> 3
    codes, counts = torch.unique(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2], return_counts=True)
    top = codes[counts.argsort(descending=True)[:256]]
    pal = torch.stack([top // 1024, top // 32 % 32, top % 32], 1).float() * 8 + 4
    px = torch.from_numpy(frames.reshape(-1, 3)).float()
    idx = torch.cat([torch.cdist(c, pal).argmin(1) for c in px.split(65536)]).to(torch.uint8)
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255                     # PyAV's pal8 rows are (A, R, G, B)
    palette[: len(pal), 1:] = pal.clamp(0, 255).byte().numpy()
    idx = idx.numpy().reshape(frames.shape[:3])
    with av.open(path, "w", format="gif") as c:
        s = c.add_stream("gif", rate=round(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "pal8"
        for i in idx:
            c.mux(s.encode(av.VideoFrame.from_ndarray((np.ascontiguousarray(i), palette), format="pal8")))
        c.mux(s.encode())


def frame_indices(n, T, stride=None, start=0, name="video"):
    """Which source frames make a T-frame clip: every `stride`-th from `start`, or, with stride
    None, T frames spread evenly over the whole video (resampling to another length/rate)."""
    if stride is None:
        return np.linspace(0, n - 1, T).round().astype(int)
    need = start + (T - 1) * stride + 1
    if n < need:
        raise ValueError(f"{name}: has {n} frames, needs {need} for {T} frames at stride {stride}")
    return start + stride * np.arange(T)


def resize_video(x, H, W, mode="cover", nearest=False):
    """float/uint8 tensor (..., h, w) -> (..., H, W). cover: scale to fill, centre-crop the rest;
    contain: scale to fit, pad black; stretch: ignore the aspect ratio."""
    h, w = x.shape[-2:]
    if (h, w) == (H, W):
        return x
    lead, dtype = x.shape[:-2], x.dtype
    x = x.reshape(-1, 1, h, w).float()
    if mode == "stretch":
        size = (H, W)
    else:
        s = (max if mode == "cover" else min)(H / h, W / w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
    x = F.interpolate(x, size=size, mode="nearest") if nearest else \
        F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - H) // 2, (size[1] - W) // 2
    if mode == "contain":
        x = F.pad(x, (-left, W - size[1] + left, -top, H - size[0] + top))
    else:
        x = x[..., top:top + H, left:left + W]
    x = x.reshape(*lead, H, W)
    return x.round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else x.to(dtype)


def fit_video(frames, T, H, W, stride=None, start=0, mode="cover", name="video", mask=False):
    """uint8 (t,h,w,3) [or bool (t,h,w) with mask=True] -> the same at (T, H, W)."""
    idx = frame_indices(len(frames), T, stride, start, name)
    x = torch.from_numpy(np.asarray(frames)[idx])
    if mask:
        return resize_video(x.to(torch.uint8), H, W, mode, nearest=True).bool().numpy()
    x = resize_video(x.permute(0, 3, 1, 2), H, W, mode)            # (T, 3, H, W)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def check_aligned(a, b, name_a, name_b):
    """fg/mask (or any two layers) must agree in length and size, frame for frame."""
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} frames but {name_b} has {len(b)}")
    if a.shape[1:3] != b.shape[1:3]:
        raise ValueError(f"{name_a} is {a.shape[2]}x{a.shape[1]} but {name_b} is {b.shape[2]}x{b.shape[1]}")


def to_tensor(frames):
    """uint8 (T,H,W,3) -> float (3,T,H,W) in [-1,1]."""
    return torch.from_numpy(np.asarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1


def to_uint8(x):
    """float (3,T,H,W) in [-1,1] -> uint8 (T,H,W,3)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


def mask_to_rgb(mask):
    """bool (T,H,W) -> uint8 (T,H,W,3), white = subject: how a mask is stored as a video."""
    return np.repeat(np.asarray(mask)[..., None].astype(np.uint8) * 255, 3, -1)


def dilate(m, r):
    """bool or {0,1} float tensor (..., H, W), each frame grown by a (2r+1)^2 square -> bool (r <= 0: m as is)."""
    if r <= 0:
        return m
    x = m.float().reshape(-1, 1, *m.shape[-2:])
    return (F.max_pool2d(x, 2 * r + 1, 1, r) > 0).reshape(m.shape)


def check_shape(frames, H, W, what="clip"):
    """CogVideoX's grid: 4k+1 frames (the VAE keeps frame 0 apart, then compresses time 4x) and sides that are
    multiples of 16 (VAE x8, then 2x2 patches). -> None if (frames, H, W) fits, else a one-line message."""
    if frames < 1 or H < 16 or W < 16 or (frames - 1) % 4 or H % 16 or W % 16:
        return f"{what}: need 4k+1 frames and sizes that are multiples of 16, got {frames} frames of {H}x{W}"
    return None


# ---------------------------------------------------------------------------------------------
# The layered-clip dataset
# ---------------------------------------------------------------------------------------------

LISTS = {"caption": "prompts.txt", "video": "videos.txt", "fg": "fg.txt", "bg": "bg.txt", "mask": "masks.txt"}


def read_lists(root):
    """-> list of dicts {caption, video, fg, bg, mask} (absolute paths; layers None if absent).
    Reads our layout, the StM release's (`fg-black.txt` as the fg list) and the plain CogVideoX
    fine-tuning layout (prompts.txt + videos.txt only)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    cols = {}
    for key, name in LISTS.items():
        p = root / name
        if key == "fg" and (root / "fg-black.txt").exists():
            p = root / "fg-black.txt"
        if p.exists():
            cols[key] = p.read_text().splitlines()
    for key in ("caption", "video"):
        if key not in cols:
            raise FileNotFoundError(f"{root}: missing {LISTS[key]} (need at least prompts.txt and videos.txt)")
    n = len(cols["video"])
    for key, lines in cols.items():
        if len(lines) != n:
            raise ValueError(f"{root}: {LISTS[key]} has {len(lines)} lines but videos.txt has {n}; "
                             "the lists must align")
    items = [{k: (cols[k][i] if k == "caption" else str(root / cols[k][i].strip())) if k in cols else None
              for k in LISTS} for i in range(n)]
    for it, split in zip(items, release_splits(root, n)):
        it["split"] = split
        if it["bg"]:    # the release's loader prefers the inpainted clean plate beside the holed bg
            inpainted = Path(it["bg"]).parent.parent / "bg-inpainted" / Path(it["bg"]).name
            it["bg"] = str(inpainted) if inpainted.exists() else it["bg"]
    return items


def release_splits(root, n):
    """Per clip "train", "val" or "filtered" from the StM release's metadata.csv (rows aligned with the lists):
    validation-only clips have is_training False (DAVIS); training uses the `main_train_foreground_volume` gate
    (one subject, > 35 frames, fg ratio in [0.01, 0.45]) where the column exists. No metadata.csv: all "train"."""
    p = Path(root) / "metadata.csv"
    if not p.exists():
        return ["train"] * n
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != n:
        raise ValueError(f"{p}: {len(rows)} rows but videos.txt has {n} lines; they must align")
    yes = lambda r, k, default: str(r.get(k, default)).strip().lower() in ("true", "1", "yes")
    return ["val" if not yes(r, "is_training", True) else
            "train" if yes(r, "main_train_foreground_volume", True) else "filtered" for r in rows]


def read_metadata(root):
    """Records of metadata.jsonl; a torn last line (a killed writer) is ignored."""
    p, out = Path(root) / "metadata.jsonl", []
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


class LayeredWriter:
    """Writes a layered-clip dataset clip by clip; resumable (`done` holds the finished ids)."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.done = {r["id"] for r in read_metadata(root)}

    def add(self, id, caption, video, fg, bg, mask, fps=8, source="", crf=12, **extra):
        check_aligned(video, fg, f"{id} video", "fg")
        check_aligned(video, bg, f"{id} video", "bg")
        check_aligned(video, mask, f"{id} video", "mask")
        rel = {k: f"{k}/{id}.mp4" for k in ("videos", "fg", "bg", "masks")}
        for k, arr in zip(rel, (video, fg, bg, mask_to_rgb(mask))):
            write_video(self.root / rel[k], arr, fps, crf=crf)
        T, H, W = mask.shape
        self.record(id=id, source=source, frames=T, fps=fps, size=[H, W], fg_ratio=float(mask.mean()),
                    status="ok", caption=caption, **rel, **extra)

    def record(self, **rec):
        """Append one record; one write of one line, so a kill leaves at most a torn last line."""
        p = self.root / "metadata.jsonl"
        torn = p.exists() and p.stat().st_size > 0 and p.read_bytes()[-1:] != b"\n"
        with open(p, "a") as f:
            f.write(("\n" if torn else "") + json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(rec["id"])

    def finalize(self):
        """Rewrite the five aligned lists from metadata.jsonl (kept clips, first record per id)."""
        seen, recs = set(), []
        for r in read_metadata(self.root):
            if r["id"] not in seen and r.get("status") == "ok":
                recs.append(r)
            seen.add(r["id"])
        cols = {"prompts.txt": [r["caption"].replace("\n", " ") for r in recs],
                "videos.txt": [r["videos"] for r in recs], "fg.txt": [r["fg"] for r in recs],
                "bg.txt": [r["bg"] for r in recs], "masks.txt": [r["masks"] for r in recs]}
        for name, lines in cols.items():
            atomic_write_text(self.root / name, "".join(line + "\n" for line in lines))
        return len(recs)


class LayeredClips(torch.utils.data.Dataset):
    """Items {video, fg, bg: (3,T,H,W) in [-1,1], mask: (1,T,H,W) in {0,1}, caption, index}.
    With `frames/size` each clip is resampled (stride) and cover-cropped to that shape."""

    def __init__(self, root, frames=None, size=None, stride=1, layers=True, skip=(), split="train"):
        # split: "train" (the clips training may use), "val" (the release's validation-only clips) or "all"
        items = read_lists(root)
        self.items = [it for it in items if split == "all" or it["split"] == split]
        self.frames, self.size, self.stride = frames, size, stride
        self.skip = set(skip)                                  # e.g. {"video", "bg"} when their latents are cached
        if layers:
            for key in ("fg", "bg", "mask"):
                if self.items and self.items[0][key] is None:
                    raise FileNotFoundError(f"{root}: no {LISTS[key]}; this is a plain video list — run "
                                            "decompose.py on it first to make the layers")
        self.layers = layers

    def __len__(self):
        return len(self.items)

    def _fit(self, x, name, mask=False):
        if self.frames is None:
            return x
        H, W = self.size
        return fit_video(x, self.frames, H, W, stride=self.stride, name=name, mask=mask)

    def __getitem__(self, i):
        it = self.items[i]
        out = {"caption": it["caption"], "index": i}
        if "video" not in self.skip:
            out["video"] = to_tensor(self._fit(read_video(it["video"])[0], it["video"]))
        if self.layers:
            fg, mask = read_video(it["fg"])[0], read_mask(it["mask"])
            check_aligned(fg, mask, it["fg"], it["mask"])
            fg = fg * mask[..., None]                     # lossy codecs bleed colour past the edge
            out["fg"] = to_tensor(self._fit(fg, it["fg"]))
            if "bg" not in self.skip:
                out["bg"] = to_tensor(self._fit(read_video(it["bg"])[0], it["bg"]))
            out["mask"] = torch.from_numpy(self._fit(mask, it["mask"], mask=True)).float()[None]
        return out


def video_paths(pattern):
    """A folder (its videos and frame folders), a glob, or one file -> sorted list of paths."""
    p = Path(pattern)
    if p.is_file():
        return [p]
    if p.is_dir():
        kids = sorted(p.iterdir())
        vids = [k for k in kids if k.suffix.lower() in VIDEO_EXTS]
        frames = [k for k in kids if k.is_dir() and any(f.suffix.lower() in IMAGE_EXTS for f in k.iterdir())]
        found = vids + frames
    else:
        found = [Path(f) for f in sorted(glob.glob(pattern))
                 if Path(f).suffix.lower() in VIDEO_EXTS or Path(f).is_dir()]
    if not found:
        raise FileNotFoundError(f"{pattern}: no videos ({', '.join(VIDEO_EXTS)}) or frame folders found")
    return found


# The toy world moved to toy.py; these names keep old callers (`data.toy_clip`, ...) working meanwhile.
MOVED_TO_TOY = {"KINDS": "KINDS", "VERBS": "VERBS", "COLOURS": "COLOURS", "TINTS": "TINTS", "BAND_RGB": "BAND_RGB",
                "toy_scene": "random_scene", "toy_sprite": "random_sprite", "place_sprite": "place_sprite",
                "sprite_track": "sprite_track", "render_toy": "render", "toy_caption": "caption", "toy_clip": "clip",
                "write_toy": "write_data", "write_triplets": "write_triplets"}


def __getattr__(name):
    if name in MOVED_TO_TOY:
        import toy                                     # toy.py imports this module: import it only when asked
        return getattr(toy, MOVED_TO_TOY[name])
    raise AttributeError(f"module 'data' has no attribute {name!r}")


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
sub = parser.add_subparsers(dest="cmd", required=True)
p = sub.add_parser("show", help="check a dataset folder and print a summary")
p.add_argument("root", help="dataset folder")
ALIASES = {"toy": "data", "triplets": "triplets"}    # python data.py toy ... = python toy.py data ...
for old, new in ALIASES.items():
    sub.add_parser(old, help=f"alias of `python toy.py {new}` (same flags)")


def main(args):
    ds = LayeredClips(args.root, layers=False)
    recs = read_metadata(args.root)
    x = ds[0]["video"] if len(ds) else None
    print(f"{args.root}: {len(ds)} clips, {len(recs)} metadata records, "
          f"first clip {tuple(x.shape) if x is not None else '-'}")
    return len(ds)


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in ALIASES:     # the old toy commands: hand every flag to toy.py as it is
        import toy
        toy.main(toy.parser.parse_args([ALIASES[sys.argv[1]], *sys.argv[2:]]))
    else:
        main(parser.parse_args())
