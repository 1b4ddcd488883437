"""
Video I/O and the image / video helpers every stage shares.

Conventions: at the I/O edge a video is uint8 (T, H, W, 3) and a mask bool (T, H, W); inside the models a video is
float (C, T, H, W) in [-1, 1] and a mask (1, T, H, W) in {0, 1}.
"""
import glob
import math
import numbers
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F


VIDEO_EXTS = (".mp4", ".mov", ".webm", ".gif", ".mkv", ".avi")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
# A source with no frame rate of its own (a folder of frames, a container that does not say) is taken
# as 24 fps: DAVIS' rate and film's. 8 fps is only the rate the toy world is *written* at (write_video).
DEFAULT_FPS = 24.0
STILL_FPS = 8.0      # a still image made into a clip plays at CogVideoX's rate (49 frames = 6.1 s)
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


def _decode(path, fmt, times=None):
    """All frames of a video or image file, each as fmt ('rgb24', 'gray' or 'pal8' -> indices); with a list
    `times`, each frame's presentation time in seconds (None where the container gives none) is appended to it."""
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
                if times is not None:
                    times.append(f.time)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable video or image ({e})") from None
    if not out:
        raise ValueError(f"{path}: no frames could be decoded (empty or truncated file)")
    return out, fps, indexed


def read_video(path, fps=None, duration=False):
    """mp4/mov/webm/gif file, or a folder of JPEG/PNG frames (DAVIS layout) -> (uint8 (T,H,W,3), fps), and with
    duration=True also the seconds the video lasts, from the frames' own timestamps (a variable-frame-rate video's
    nominal rate says little about its length): T frames spread over (last - first) * T / (T - 1).
    A folder has no frame rate of its own: `fps` (default DEFAULT_FPS, DAVIS' rate) is returned."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file or frame folder")
    times = []
    if path.is_dir():
        frames = [_decode(p, "rgb24")[0][0] for p in _image_files(path)]
        fps = fps or DEFAULT_FPS
    else:
        frames, fps, _ = _decode(path, "rgb24", times)
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"{path}: frames change size mid-video")
    if not duration:
        return np.stack(frames), fps
    n, t = len(frames), [x for x in times if x is not None]
    # timestamps all equal or missing (a broken container): the nominal rate, unless it is no rate a camera films at
    span = (max(t) - min(t)) * n / (n - 1) if n > 1 and len(t) == n and max(t) > min(t) else \
        n / (fps if 0 < fps <= 240 else DEFAULT_FPS)
    return np.stack(frames), fps, span


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


# H.264 in an mp4 is written so that the same frames give the same bytes, in any process on any machine with the same
# PyAV build. Two things stood in the way (measured with PyAV 18.1 / FFmpeg 8.1 / x264 core 165):
#   * x264's AVX-512 code reads memory it never wrote when MB-tree rate control runs: with identical yuv420p input and
#     threads=1, successive writes in one process differ (17 frames of 360x240: 13 different files out of 40), and
#     filling freed heap memory with 0x00 or 0xff before a write changes the file. Capped at SSSE3..AVX2 code, or with
#     MB-tree off, it does not happen. x264 is therefore told which instruction sets to use (_X264_ASM) instead of
#     detecting them: SSSE3 on x86 (bit-identical to its SSE4/AVX/AVX2 code, about as fast), plain C elsewhere.
#   * swscale's rgb24 -> yuv420p (what PyAV runs inside encode) is deterministic on one machine but depends on the
#     CPU's SIMD (1 level apart in ~2% of samples with SIMD forced off): the conversion is done here, in integers.
# x264 runs on one thread (its output depends on its thread count, which would follow the machine's cores), and the
# mp4 muxer writes no creation time unless asked.
_YUV_SHIFT = 16          # fixed-point bits of the RGB -> YCbCr coefficients


def _yuv_coefficients():
    """BT.601 limited-range ("TV", Y' in 16..235, Cb/Cr in 16..240) R'G'B' -> Y'CbCr as integers scaled by 2^16:
    the matrix every decoder assumes for standard-definition H.264 and the one the stream is tagged with. The
    Cb and Cr rows sum to exactly 0, so a grey pixel gets chroma 128 exactly."""
    kr, kg, kb = LUMA
    one = 1 << _YUV_SHIFT
    y = [round(k * 219 / 255 * one) for k in (kr, kg, kb)]
    cb_r, cb_b = round(-kr / (2 - 2 * kb) * 224 / 255 * one), round(224 / 255 / 2 * one)
    cr_r, cr_b = round(224 / 255 / 2 * one), round(-kb / (2 - 2 * kr) * 224 / 255 * one)
    return y, [cb_r, -cb_r - cb_b, cb_b], [cr_r, -cr_r - cr_b, cr_b]


_YUV = _yuv_coefficients()


def _rgb_to_yuv420p(frame):
    """uint8 (H, W, 3), H and W even -> uint8 (H*3//2, W): the Y plane, then the Cb and Cr planes at half size,
    each 2x2 block of chroma averaged (PyAV's yuv420p array layout). Integer arithmetic only: the same bytes on
    every machine. Rounding is half up, so the result stays within 16..235 (Y) and 16..240 (Cb, Cr)."""
    H, W, _ = frame.shape
    x = frame.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    s = _YUV_SHIFT
    y = (_YUV[0][0] * r + _YUV[0][1] * g + _YUV[0][2] * b + (16 << s) + (1 << (s - 1))) >> s

    def chroma(k):                                   # 2x2 sums of 2^16-scaled values: 2^18 per unit
        c = k[0] * r + k[1] * g + k[2] * b
        c = c[0::2, 0::2] + c[0::2, 1::2] + c[1::2, 0::2] + c[1::2, 1::2]
        return (c + (128 << (s + 2)) + (1 << (s + 1))) >> (s + 2)

    planes = (y, chroma(_YUV[1]), chroma(_YUV[2]))
    return np.concatenate([p.astype(np.uint8).ravel() for p in planes]).reshape(H * 3 // 2, W)


def _x264_asm():
    """Which of x264's instruction sets to use (its `asm` parameter), never its own detection: see above."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "0"
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpu      # numpy >= 2
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as cpu
        except ImportError:
            cpu = {}
    return "SSSE3" if cpu.get("SSSE3") else "0"


_X264_ASM = _x264_asm()
MAX_FPS = 1000


def _frame_rate(fps, path="video"):
    """A frame rate as the exact fraction a video file stores: an int or Fraction as is; a float snapped to the NTSC
    rate k*1000/1001 it spells (29.97 -> 30000/1001, 23.976 -> 24000/1001), else the nearest fraction over at most
    1001 (2.7 -> 27/10, 12.5 -> 25/2). ValueError naming `path` and the value unless finite and in [1/1001, 1000]."""
    bad = ValueError(f"{path}: fps must be a finite number from 1/1001 to {MAX_FPS}, got {fps!r}")
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise bad
    if isinstance(fps, numbers.Rational):
        r = Fraction(int(fps.numerator), int(fps.denominator))
    else:
        x = float(fps)
        if not math.isfinite(x) or x <= 0:
            raise bad
        k = round(x * 1.001)                       # NTSC: k frames per 1.001 s
        ntsc = k >= 1 and abs(x * 1.001 / k - 1) < 1e-5
        r = Fraction(k * 1000, 1001) if ntsc else Fraction(x).limit_denominator(1001)
    if not Fraction(1, 1001) <= r <= MAX_FPS:
        raise bad
    return r


def write_video(path, frames, fps=8, crf=18):
    """uint8 (T,H,W,3) -> H.264 mp4 (yuv420p, BT.601 limited range) or GIF, chosen by the suffix; written atomically.
    The same frames give the same bytes (see above). `fps` (int, float or Fraction) is stored exactly (_frame_rate).
    H.264 in yuv420p needs even sizes: an odd edge is padded by repeating the last row/column."""
    path, frames = Path(path), np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{path}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    rate = _frame_rate(fps, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            if rate > 100:
                raise ValueError(f"{path}: a GIF's frame delays are whole 1/100 s, so at most 100 fps, got {fps!r}")
            _write_gif(tmp, frames, rate)
        else:
            T, H, W, _ = frames.shape
            frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
            with av.open(tmp, "w", format="mp4") as c:
                s = c.add_stream("libx264", rate=rate)
                s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
                s.codec_context.colorspace, s.codec_context.color_range = 6, 1     # AVCOL_SPC_SMPTE170M, _RANGE_MPEG
                s.options = {"crf": str(crf), "threads": "1", "x264-params": f"asm={_X264_ASM}"}
                for f in frames:
                    yuv = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(f), format="yuv420p")
                    yuv.colorspace, yuv.color_range = 6, 1
                    c.mux(s.encode(yuv))
                c.mux(s.encode())
        os.chmod(tmp, 0o644)                      # mkstemp makes 0600; outputs are for everyone to read
        os.replace(tmp, path)
    except OSError as e:                          # a full disk: name the file the user asked for, not the temporary
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_gif(path, frames, fps):
    # GIF is 256 colours: take the most frequent colours of the whole clip (at 5 bits/channel)
    # as one palette and map every pixel to its nearest entry. Deterministic: colours that are as frequent keep
    # their code order (stable sort), and the distances are integers, exact in float32 however cdist sums them.
    # `fps` is a Fraction: each frame's delay is its time rounded to 1/100 s, so the clip keeps its length.
    q = torch.from_numpy(frames.reshape(-1, 3)).int() >> 3
    codes, counts = torch.unique(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2], return_counts=True)
    top = codes[counts.argsort(descending=True, stable=True)[:256]]
    pal = torch.stack([top // 1024, top // 32 % 32, top % 32], 1).float() * 8 + 4
    px = torch.from_numpy(frames.reshape(-1, 3)).float()
    idx = torch.cat([torch.cdist(c, pal).argmin(1) for c in px.split(65536)]).to(torch.uint8)
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255                     # PyAV's pal8 rows are (A, R, G, B)
    palette[: len(pal), 1:] = pal.clamp(0, 255).byte().numpy()
    idx = idx.numpy().reshape(frames.shape[:3])
    with av.open(path, "w", format="gif") as c:
        s = c.add_stream("gif", rate=fps)
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

