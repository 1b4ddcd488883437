"""
Video I/O, the layered-clip dataset, and the toy world.

    python data.py toy --out data/toy --clips 512                 # a layered toy training set
    python data.py triplets --out data/toy-test --n 32           # cross-combination test triplets
    python data.py show data/toy                                  # count and check a dataset

Conventions (DESIGN.md): at the I/O edge a video is uint8 (T, H, W, 3) and a mask bool (T, H, W);
a dataset item is float (C, T, H, W) in [-1, 1] and a mask (1, T, H, W) in {0, 1}.

Layered-clip dataset: <root>/{prompts,videos,fg,bg,masks}.txt, aligned line by line, paths
relative to <root>, plus metadata.jsonl (one record per clip, skipped ones too). The
metadata is the source of truth: it is appended one line per clip, and the five lists are
rewritten from it (atomically) by `LayeredWriter.finalize`, so a killed writer never leaves
them misaligned.
"""
import argparse
import glob
import json
import math
import os
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from weights import atomic_write_text

VIDEO_EXTS = (".mp4", ".mov", ".webm", ".gif", ".mkv", ".avi")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")

# ---------------------------------------------------------------------------------------------
# Video I/O
# ---------------------------------------------------------------------------------------------


def _image_files(folder):
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"{folder}: folder holds no .jpg/.png frames")
    return files


def _decode(path, fmt):
    """All frames of a video or image file, each as fmt ('rgb24', 'gray' or 'pal8' -> indices)."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ValueError(f"{path}: has no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0) or 24.0   # unknown rate: 24, as for frame folders
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
    A folder has no frame rate of its own: `fps` (default 24, DAVIS' rate) is returned."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file or frame folder")
    if path.is_dir():
        frames = [_decode(p, "rgb24")[0][0] for p in _image_files(path)]
        fps = fps or 24.0
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
            raise ValueError(f"{root}: {LISTS[key]} has {len(lines)} lines but videos.txt has {n}; the lists must align")
    return [{k: (cols[k][i] if k == "caption" else str(root / cols[k][i].strip())) if k in cols else None
             for k in LISTS} for i in range(n)]


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
        for k, arr in zip(rel, (video, fg, bg, np.repeat(mask[..., None].astype(np.uint8) * 255, 3, -1))):
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

    def __init__(self, root, frames=None, size=None, stride=1, layers=True, skip=()):
        self.items, self.frames, self.size, self.stride = read_lists(root), frames, size, stride
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


# ---------------------------------------------------------------------------------------------
# The toy world: sprites that belong to one band of a scene, under the scene's light
# ---------------------------------------------------------------------------------------------
# A scene is three horizontal bands (sky / water / land) whose boundaries vary per clip, with
# texture, a camera pan and a global light tint. A sprite (bird, boat or car; one of several
# colours) moves inside the band it belongs to, is lit by the scene tint and casts a shadow
# (boats and cars). Because every layer is rendered separately, fg, bg and mask are exact, and
# a cross-combination (sprite of clip A into scene B) has a known set of correct answers.

KINDS = {"bird": "sky", "boat": "water", "car": "land"}
VERBS = {"bird": "flying in the sky", "boat": "sailing on the water", "car": "driving along the shore"}
COLOURS = {"red": (220, 40, 40), "yellow": (235, 210, 40), "white": (240, 240, 240),
           "orange": (240, 130, 30), "purple": (150, 60, 200), "black": (35, 35, 35)}
TINTS = {"at noon": (1.0, 1.0, 1.0), "at sunset": (1.2, 0.82, 0.6),
         "at night": (0.5, 0.6, 0.95), "in green fog": (0.8, 1.05, 0.85)}
BAND_RGB = {"sky": (120, 170, 235), "water": (30, 90, 150), "land": (90, 150, 60)}


def toy_scene(rng, H, W):
    """Random scene parameters (json-able)."""
    sky = rng.uniform(0.25, 0.5)
    water = sky + rng.uniform(0.2, 0.3)
    tint = list(TINTS)[rng.integers(len(TINTS))]
    return {"bands": {"sky": [0, round(sky * H)], "water": [round(sky * H), round(water * H)],
                      "land": [round(water * H), H]},
            "tint_name": tint, "tint": TINTS[tint], "pan": float(rng.uniform(-1.5, 1.5)),
            "seed": int(rng.integers(1 << 31))}


def toy_sprite(rng, scene, H, W, T, kind=None):
    """Random sprite parameters placed in its band of `scene`: kind, colour, size, motion."""
    kind = kind or list(KINDS)[rng.integers(3)]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    size = float(rng.uniform(0.16, 0.22) * H)
    vx = float(rng.uniform(0.8, 2.0) * rng.choice([-1, 1]))
    sprite = {"kind": kind, "colour": colour, "rgb": COLOURS[colour], "size": size, "vx": vx,
              "bob": {"bird": 1.5, "boat": 0.6, "car": 0.0}[kind], "phase": float(rng.uniform(0, 6.3))}
    return place_sprite(rng, sprite, scene, H, W, T)


def place_sprite(rng, sprite, scene, H, W, T):
    """Anchor (x0, y0) so the whole trajectory stays in the frame and the sprite in its band."""
    y0b, y1b = scene["bands"][KINDS[sprite["kind"]]]
    s = sprite["size"]
    lo, hi = y0b + 0.3 * s + 2, y1b - 0.3 * s - 2          # the sprite's centre row
    travel = sprite["vx"] * (T - 1)
    xlo, xhi = s / 2 + 1 + max(0, -travel), W - s / 2 - 1 - max(0, travel)
    return {**sprite, "x0": float(rng.uniform(xlo, max(xlo, xhi))), "y0": float(rng.uniform(lo, max(lo, hi)))}


def sprite_track(sprite, T):
    """Centre (x, y) per frame, in screen pixels (the sprite keeps pace with the panning camera)."""
    t = np.arange(T)
    return sprite["x0"] + sprite["vx"] * t, sprite["y0"] + sprite["bob"] * np.sin(sprite["phase"] + 1.3 * t)


def _sprite_mask(kind, dx, dy, s):
    """Shape of a sprite of size s: dx, dy are offsets from its centre."""
    if kind == "bird":     # a chevron: two wings
        return (np.abs(dy + 0.25 * s - 0.5 * np.abs(dx)) < 0.13 * s) & (np.abs(dx) < 0.5 * s)
    if kind == "boat":     # a hull wider on top, and a sail
        hull = (dy > 0) & (dy < 0.3 * s) & (np.abs(dx) < 0.5 * s - dy * 0.8)
        sail = (dy <= 0) & (dy > -0.5 * s) & (dx > -0.05 * s) & (dx < 0.05 * s + (dy + 0.5 * s) * 0.6)
        return hull | sail
    body = (np.abs(dx) < 0.5 * s) & (dy > -0.2 * s) & (dy < 0.15 * s)          # car
    cabin = (np.abs(dx) < 0.25 * s) & (dy > -0.4 * s) & (dy <= -0.2 * s)
    wheels = ((np.abs(dx) - 0.3 * s) ** 2 + (dy - 0.18 * s) ** 2) < (0.12 * s) ** 2
    return body | cabin | wheels


def render_toy(scene, sprite, T, H, W):
    """-> video, fg, bg uint8 (T,H,W,3), mask bool (T,H,W), and the shadow mask."""
    rng = np.random.default_rng(scene["seed"])
    Wp = W + int(abs(scene["pan"]) * T) + 2                      # panorama the camera pans over
    yy, xx = np.mgrid[0:H, 0:Wp].astype(np.float32)
    pano = np.zeros((H, Wp, 3), np.float32)
    for band, (y0, y1) in scene["bands"].items():
        pano[y0:y1] = BAND_RGB[band]
    b = scene["bands"]
    noise = np.repeat(np.repeat(rng.normal(0, 1, (H // 4 + 1, Wp // 4 + 1)), 4, 0), 4, 1)[:H, :Wp]
    sky, water, land = (yy < b["sky"][1]), (yy >= b["water"][0]) & (yy < b["water"][1]), yy >= b["land"][0]
    pano[sky] += (20 * noise[sky] + 30 * yy[sky] / H)[:, None]                         # clouds, haze
    pano[water] += (18 * np.sin(xx[water] * 0.7 + 3 * np.sin(yy[water] * 0.9)))[:, None]  # waves
    pano[land] += (14 * noise[land] + 10 * rng.normal(0, 1, land.sum()))[:, None] * np.float32([1, 0.8, 0.5])
    tint = np.float32(scene["tint"])
    xs, ys = sprite_track(sprite, T)
    s = sprite["size"]
    video, bg, mask, shadow = [], [], np.zeros((T, H, W), bool), np.zeros((T, H, W), bool)
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    shade = np.clip(1.15 - 0.5 * (gy - ys[:, None, None]) / s, 0.7, 1.2)     # lit from above
    for t in range(T):
        off = int(round(abs(scene["pan"]) * t)) if scene["pan"] >= 0 else int(round(abs(scene["pan"]) * (T - 1 - t)))
        frame = pano[:, off:off + W] * tint
        bg.append(frame)
        mask[t] = _sprite_mask(sprite["kind"], gx - xs[t], gy - ys[t], s)
        if sprite["kind"] != "bird":                                          # a shadow on the surface below
            shadow[t] = (((gx - xs[t] - 0.15 * s) / (0.55 * s)) ** 2 + ((gy - ys[t] - 0.32 * s) / (0.12 * s)) ** 2 < 1) & ~mask[t]
        f = frame * np.where(shadow[t], 0.5, 1.0)[..., None]
        col = np.float32(sprite["rgb"]) * tint * shade[t][..., None]
        video.append(np.where(mask[t][..., None], col, f))
    u8 = lambda a: np.clip(np.stack(a), 0, 255).round().astype(np.uint8)
    video, bg = u8(video), u8(bg)
    return video, video * mask[..., None], bg, mask, shadow


def toy_caption(sprite, scene):
    art = "an" if sprite["colour"][0] in "aeiou" else "a"
    return f"{art} {sprite['colour']} {sprite['kind']} {VERBS[sprite['kind']]} {scene['tint_name']}"


def toy_clip(seed, T=9, H=64, W=64):
    rng = np.random.default_rng(seed)
    scene = toy_scene(rng, H, W)
    sprite = toy_sprite(rng, scene, H, W, T)
    video, fg, bg, mask, _ = render_toy(scene, sprite, T, H, W)
    return {"video": video, "fg": fg, "bg": bg, "mask": mask, "caption": toy_caption(sprite, scene),
            "scene": scene, "sprite": sprite}


def write_toy(out, clips, T=9, H=64, W=64, seed=0, fps=8):
    w = LayeredWriter(out)
    for i in tqdm(range(clips), desc=f"toy world -> {out}"):
        cid = f"toy{seed:03d}_{i:06d}"
        if cid in w.done:
            continue
        c = toy_clip(seed * 1_000_003 + i, T, H, W)
        w.add(cid, c["caption"], c["video"], c["fg"], c["bg"], c["mask"], fps=fps, source="toy",
              scene=c["scene"], sprite=c["sprite"])
    return w.finalize()


def write_triplets(out, n, T=9, H=64, W=64, seed=10_000, fps=8):
    """Cross-combination test triplets: the sprite (fg + mask) of clip A, the background of an
    unrelated clip B, a prompt, and what a correct composite must satisfy (`expect`), plus one
    correct composite for reference. Writes <out>/triplets.jsonl and <out>/<id>/*.mp4."""
    out = Path(out)
    lines = []
    for i in tqdm(range(n), desc=f"toy triplets -> {out}"):
        a, b = toy_clip(seed + 2 * i, T, H, W), toy_clip(seed + 2 * i + 1, T, H, W)
        rng = np.random.default_rng(seed + 2 * i)
        ref_sprite = place_sprite(rng, a["sprite"], b["scene"], H, W, T)
        ref, _, _, ref_mask, ref_shadow = render_toy(b["scene"], ref_sprite, T, H, W)
        d = out / f"t{i:04d}"
        files = {"fg": a["fg"], "mask": np.repeat(a["mask"][..., None].astype(np.uint8) * 255, 3, -1),
                 "bg": b["bg"], "reference": ref, "source": a["video"]}
        for k, v in files.items():
            write_video(d / f"{k}.mp4", v, fps)
        xs, ys = sprite_track(a["sprite"], T)
        lines.append({"id": d.name, "fg": f"{d.name}/fg.mp4", "mask": f"{d.name}/mask.mp4", "bg": f"{d.name}/bg.mp4",
                      "prompt": toy_caption(a["sprite"], b["scene"]), "reference": f"{d.name}/reference.mp4",
                      "expect": {"kind": a["sprite"]["kind"], "colour": a["sprite"]["colour"],
                                 "rgb": a["sprite"]["rgb"], "size": a["sprite"]["size"],
                                 "allowed_rows": b["scene"]["bands"][KINDS[a["sprite"]["kind"]]],
                                 "tint": b["scene"]["tint"], "source_tint": a["scene"]["tint"],
                                 "shadow": a["sprite"]["kind"] != "bird",
                                 "track": [[float(x), float(y)] for x, y in zip(xs, ys)],
                                 "source_rows": a["scene"]["bands"][KINDS[a["sprite"]["kind"]]]}})
    atomic_write_text(out / "triplets.jsonl", "".join(json.dumps(l) + "\n" for l in lines))
    return lines


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
        found = [Path(f) for f in sorted(glob.glob(pattern)) if Path(f).suffix.lower() in VIDEO_EXTS or Path(f).is_dir()]
    if not found:
        raise FileNotFoundError(f"{pattern}: no videos ({', '.join(VIDEO_EXTS)}) or frame folders found")
    return found


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("toy", "triplets"):
        p = sub.add_parser(name, help="write a toy layered dataset" if name == "toy" else "write toy test triplets")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--clips" if name == "toy" else "--n", type=int, default=512 if name == "toy" else 32,
                       help="how many clips / triplets")
        p.add_argument("--frames", type=int, default=9, help="frames per clip (4k+1)")
        p.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="frame size")
        p.add_argument("--seed", type=int, default=0 if name == "toy" else 10_000, help="random seed (clips are a pure function of it)")
        p.add_argument("--fps", type=int, default=8, help="frame rate of the written videos")
    p = sub.add_parser("show", help="check a dataset folder and print a summary")
    p.add_argument("root", help="dataset folder")
    a = ap.parse_args()
    if a.cmd == "toy":
        n = write_toy(a.out, a.clips, a.frames, *a.size, seed=a.seed, fps=a.fps)
        print(f"wrote {n} clips to {a.out}")
    elif a.cmd == "triplets":
        write_triplets(a.out, a.n, a.frames, *a.size, seed=a.seed, fps=a.fps)
        print(f"wrote {a.n} triplets to {a.out}/triplets.jsonl")
    else:
        ds = LayeredClips(a.root, layers=False)
        recs = read_metadata(a.root)
        x = ds[0]["video"] if len(ds) else None
        print(f"{a.root}: {len(ds)} clips, {len(recs)} metadata records, first clip {tuple(x.shape) if x is not None else '-'}")
