"""write_video (plumbing/video.py): the same frames give the same bytes (in one process whatever its heap holds, and
across processes whatever CPUs they may use), colours survive a write / read round trip as well as they can in
yuv420p, the frame rate is stored as the exact fraction asked for, and a bad fps is refused before anything is
written. Why the writer needed the first: the comment above _yuv_coefficients in plumbing/video.py."""
import ctypes
import ctypes.util
import hashlib
import inspect
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from plumbing.video import LUMA, _frame_rate, _rgb_to_yuv420p, read_video, write_video
import toy

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"toy": (17, 64, 64), "larger": (17, 120, 180)}      # (T, H, W)


def clip(T, H, W, seed=0):
    """Smooth colour waves that move, plus a little noise: what real footage looks like to x264's rate control
    (a flat or blocky clip leaves it little to decide, and did not show the nondeterminism as often)."""
    rng = np.random.default_rng(seed)
    t, y, x = (a[..., None] for a in np.ogrid[:T, :H, :W])
    ph = rng.uniform(0, 6, 3)
    v = 127 + 100 * np.sin(x / 37 + y / 23 + t / 5 + ph) * np.cos(y / 41 - x / 53 + ph)
    return np.clip(v + rng.normal(0, 3, v.shape), 0, 255).astype(np.uint8)


def blocks(T=9, H=32, W=48, seed=0):
    """test_data.py's clip: random colours in 8x8 blocks (hard on chroma subsampling at every block edge)."""
    base = np.random.default_rng(seed).integers(0, 255, (T, H // 8, W // 8, 3)).astype(np.uint8)
    return np.repeat(np.repeat(base, 8, 1), 8, 2)


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_LIBC = ctypes.util.find_library("c")


def stir_heap(i):
    """Allocate some C heap (1 .. 256 KiB blocks), fill it with a pattern that changes with i and free it: a
    writer that reads memory it never wrote then gives a different file each time (x264's AVX-512 MB-tree code
    did: 0x00 vs 0xff here changed the file). No-op where libc cannot be loaded."""
    if not _LIBC:
        return
    libc = ctypes.CDLL(_LIBC)
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    held = [(libc.malloc(1 << (10 + k % 9)), 1 << (10 + k % 9)) for k in range(100)]
    for k, (p, n) in enumerate(held):
        if p:
            ctypes.memset(p, (i * 37 + k) % 256, n)
    for p, _ in held:
        libc.free(p)


# ---------------------------------------------------------------------------------------------------------------
# (1) the same frames -> the same bytes
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_twenty_writes_one_file(tmp_path, size):
    v = clip(*SIZES[size])
    digests = set()
    for i in range(20):
        stir_heap(i)
        write_video(tmp_path / "a.mp4", v, fps=8)
        digests.add(sha(tmp_path / "a.mp4"))
    assert len(digests) == 1, f"{size}: 20 writes of one clip gave {len(digests)} different files"
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert not any("time" in k for k in c.metadata), c.metadata          # no creation time in the file
        s = c.streams.video[0]
        assert (s.codec_context.colorspace, s.codec_context.color_range) == (6, 1)     # tagged BT.601, limited


def test_gif_five_writes_one_file(tmp_path):
    v = toy.clip(0)["video"]
    digests = set()
    for i in range(5):
        write_video(tmp_path / "a.gif", v, fps=8)
        digests.add(sha(tmp_path / "a.gif"))
    assert len(digests) == 1


CHILD = """
import os, sys
sys.path.insert(0, {root!r})
if {pin} and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
    os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})      # one CPU: x264 left to itself picks fewer threads
import numpy as np
from plumbing.video import write_video
{clip}
for name, size in {sizes!r}.items():
    write_video(os.path.join({out!r}, name + ".mp4"), clip(*size), fps=8)
"""


@pytest.mark.slow
def test_two_processes_write_the_same_bytes(tmp_path):
    """Two fresh interpreters, one of them held to a single CPU, write the clips; so does this process."""
    procs = []
    for k in range(2):
        out = tmp_path / f"p{k}"
        out.mkdir()
        code = CHILD.format(root=str(ROOT), pin=k == 0, clip=inspect.getsource(clip), sizes=SIZES, out=str(out))
        procs.append(subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True))
    for name, size in SIZES.items():
        write_video(tmp_path / f"{name}.mp4", clip(*size), fps=8)
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    for name in SIZES:
        here, a, b = (sha(d / f"{name}.mp4") for d in (tmp_path, tmp_path / "p0", tmp_path / "p1"))
        assert here == a == b, f"{name}: this process, a 1-CPU child and a free child wrote different files"


# ---------------------------------------------------------------------------------------------------------------
# (2) colours
# ---------------------------------------------------------------------------------------------------------------

def test_rgb_to_yuv420p_is_bt601_limited_range():
    rng = np.random.default_rng(1)
    f = rng.integers(0, 256, (16, 24, 3)).astype(np.uint8)
    f[:2, :2], f[:2, 2:4], f[:2, 4:6] = 255, 0, 77                    # white, black and grey 2x2 blocks
    yuv = _rgb_to_yuv420p(f).astype(int)
    assert yuv.shape == (24, 24)
    y, u, v = yuv[:16], yuv[16:20].reshape(8, 12), yuv[20:].reshape(8, 12)
    x = f.astype(float)
    kr, kg, kb = LUMA
    Y = 16 + 219 / 255 * (x @ np.array(LUMA))
    Cb = 128 + 224 / 255 * (x[..., 2] - x @ np.array(LUMA)) / (2 - 2 * kb)
    Cr = 128 + 224 / 255 * (x[..., 0] - x @ np.array(LUMA)) / (2 - 2 * kr)
    pool = lambda c: c.reshape(8, 2, 12, 2).mean((1, 3))                  # noqa: E731  (2x2 average)
    assert np.abs(y - Y).max() <= 0.51 and np.abs(u - pool(Cb)).max() <= 0.51 and np.abs(v - pool(Cr)).max() <= 0.51
    assert (y[0, 0], u[0, 0], v[0, 0]) == (235, 128, 128) and (y[0, 2], u[0, 1], v[0, 1]) == (16, 128, 128)
    assert (u[0, 2], v[0, 2]) == (128, 128)                               # grey has no chroma, exactly
    assert y.min() >= 16 and y.max() <= 235 and u.min() >= 16 and u.max() <= 240


# mean |decoded - source| of a write (crf 18) / read_video round trip; `before` is what the writer gave before it
# converted to yuv420p itself (swscale's conversion inside PyAV's encode), measured on the same clips
ROUND_TRIP = [("toy.clip(0)", lambda: toy.clip(0)["video"], 3.9, 3.95),
              ("blocks", blocks, 2.0, 4.50),
              ("smooth 17x120x180", lambda: clip(17, 120, 180), 3.1, 2.98)]


@pytest.mark.parametrize("name,make,bound,before", ROUND_TRIP, ids=[r[0] for r in ROUND_TRIP])
def test_round_trip_colour_error(tmp_path, name, make, bound, before):
    v = make()
    write_video(tmp_path / "a.mp4", v)
    r, _ = read_video(tmp_path / "a.mp4")
    err = np.abs(r.astype(int) - v).mean()
    assert r.shape == v.shape and err < bound, f"{name}: mean |error| {err:.3f} (was {before} before)"


# ---------------------------------------------------------------------------------------------------------------
# (3) frame rates, (4) bad fps
# ---------------------------------------------------------------------------------------------------------------

NTSC = Fraction(24000, 1001)
RATES = [(2.7, Fraction(27, 10)), (23.976, NTSC), (8, Fraction(8)), (24, Fraction(24)), (0.5, Fraction(1, 2)),
         (29.97, Fraction(30000, 1001)), (Fraction(30000, 1001), Fraction(30000, 1001)), (12.5, Fraction(25, 2)),
         (np.float32(12.5), Fraction(25, 2)), (float(NTSC), NTSC)]               # float(NTSC): what read_video gives


@pytest.mark.parametrize("fps,exact", RATES, ids=[str(r[0]) for r in RATES])
def test_frame_rate_is_stored_exactly(tmp_path, fps, exact):
    assert _frame_rate(fps) == exact
    v = toy.clip(0, T=3, H=32, W=32)["video"]
    write_video(tmp_path / "a.mp4", v, fps=fps)
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert c.streams.video[0].average_rate == exact
    r, got = read_video(tmp_path / "a.mp4")
    assert len(r) == 3 and got == pytest.approx(float(exact), rel=1e-9)


def test_gif_keeps_slow_rates(tmp_path):
    v = toy.clip(0, T=3, H=32, W=32)["video"]
    write_video(tmp_path / "a.gif", v, fps=0.5)                  # was written as round(0.5) = 0 fps
    with av.open(str(tmp_path / "a.gif")) as c:
        assert c.streams.video[0].average_rate == Fraction(1, 2)
    with pytest.raises(ValueError, match=r"b\.gif: .*at most 100 fps, got 120"):
        write_video(tmp_path / "b.gif", v, fps=120)
    assert not (tmp_path / "b.gif").exists()


BAD_FPS = [0, -8, 0.0, float("nan"), float("inf"), -float("inf"), 1001, 1e9, 1e-4, "8", None, True]


@pytest.mark.parametrize("fps", BAD_FPS, ids=repr)
def test_bad_fps_is_refused(tmp_path, fps):
    v = toy.clip(0, T=3, H=32, W=32)["video"]
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'x.mp4'}: fps must be") + ".*" + re.escape(repr(fps))):
        write_video(tmp_path / "x.mp4", v, fps=fps)
    assert list(tmp_path.iterdir()) == []                       # nothing written, no temporary file left
