"""
Filling the hole a subject leaves in its clip (Split's bg layer): the weight-free temporal inpainter (the hole's
pixels taken from the frames where the scene shows through, after camera motion), an external command (ProPainter,
say), or MiniMax-Remover (remover.py, as the StM release).
"""
import functools
import os
import shlex
import shutil
import subprocess
import tempfile

import numpy as np
import torch

from plumbing.cli import BadInput
from plumbing.video import fit_video, mask_to_rgb, read_video, write_video

from .hf import placement
from .segment import global_motion, mosaic, push_pull, unmosaic


@functools.lru_cache
def load_remover(path, device="cpu", sampler="unipc"):
    """MiniMax-Remover (remover.py), loaded once per worker and kept resident on `device` (this rank's GPU: fp16,
    as minimax-remover and the StM release run it; a CPU: fp32). sampler: "unipc" (upstream's) or "euler"."""
    from . import remover
    device, dtype = placement("remover", device)
    return remover.Remover.from_pretrained(path, dtype=dtype, device=device, sampler=sampler)


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
