"""
Transformation-aware augmentation of the foreground layer (paper §3.4, Table 4).

Without it the composer learns a shortcut: the fg layer already shows the subject at the
right place, size and colour in the target video, so copy-pasting it is a perfect answer.
Flipping, re-framing and re-colouring the fg (and its mask, identically) takes that answer
away; the model has to learn where the subject belongs and how the scene lights it.

    from augment import Augment
    aug = Augment()                                    # the paper's settings
    fg2, mask2 = aug(fg, mask, generator=torch.Generator().manual_seed(0))
    python augment.py data/toy/fg/toy000_000000.mp4 data/toy/masks/toy000_000000.mp4 out.mp4

fg (3, T, H, W) in [-1, 1] with black (-1) outside the subject; mask (1, T, H, W) in {0, 1}.
One set of random parameters per call, applied to every frame (the motion stays coherent).
"""
import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plumbing.video import LUMA, check_aligned, read_mask, read_video, to_tensor, to_uint8, write_video


@dataclass
class Augment:
    flip_p: float = 0.7            # horizontal flip
    crop_p: float = 0.7            # random resized crop ("re-framing")
    crop_scale: tuple = (0.5, 2.0)  # zoom range: >1 crops in (subject grows), <1 zooms out (subject shrinks)
    crop_shift: float = 0.0        # extra shift of the window, up to this share of the frame each way (paper: 0);
                                   # with crop_scale (1, 1) the re-framing is a pure translation
    min_fg_kept: float = 0.9       # a crop must keep this share of the foreground pixels ...
    max_attempts: int = 20         # ... or, after this many tries, no crop is applied
    jitter_p: float = 0.2          # colour jitter, inside the mask only
    brightness: float = 0.2        # factor drawn in [1-b, 1+b]
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.2               # hue rotation drawn in [-h, h] turns of the colour wheel

    def __call__(self, fg, mask, generator=None):
        u = lambda: torch.rand((), generator=generator).item()
        if u() < self.flip_p:
            fg, mask = fg.flip(-1), mask.flip(-1)
        if u() < self.crop_p:
            fg, mask = self.crop(fg, mask, generator)
        if u() < self.jitter_p:
            fg = self.jitter(fg, mask, generator)
        return fg * mask + (mask - 1), mask          # black outside the (new) mask

    def crop(self, fg, mask, generator=None):
        """Zoom by z (log-uniform in crop_scale) around a random window that keeps >= min_fg_kept
        of the foreground; the window may extend past the frame when zooming out or shifted by crop_shift
        (black there)."""
        u = lambda: torch.rand((), generator=generator).item()
        H, W = fg.shape[-2:]
        total = mask.sum()
        if total == 0:
            return fg, mask
        lo, hi = (math.log(s) for s in self.crop_scale)
        for _ in range(self.max_attempts):
            z = math.exp(lo + (hi - lo) * u())
            h, w = H / z, W / z                                       # window size in pixels
            top = (H - h) * u() if z >= 1 else -(h - H) * u()           # window inside / around the frame
            left = (W - w) * u() if z >= 1 else -(w - W) * u()
            if self.crop_shift > 0:                                     # drawn only when asked: the paper's
                top += (2 * u() - 1) * self.crop_shift * H              # draws stay as they were
                left += (2 * u() - 1) * self.crop_shift * W
            theta = torch.tensor([[w / W, 0, (2 * left + w) / W - 1], [0, h / H, (2 * top + h) / H - 1]])
            m2 = _warp(mask, theta, "nearest")
            kept = _window_share(mask, top, left, h, w)
            if kept >= self.min_fg_kept * total and m2.sum() > 0:
                return _warp(fg + 1, theta, "bilinear") - 1, m2
        return fg, mask

    def jitter(self, fg, mask, generator=None):
        """Brightness, contrast, saturation and hue of the subject, in random order, inside the mask."""
        u = lambda: torch.rand((), generator=generator).item()
        if mask.sum() == 0:
            return fg
        x = (fg + 1) / 2                                          # [0, 1]
        m = mask.bool().expand_as(x)
        gray = lambda y: (LUMA[0] * y[0] + LUMA[1] * y[1] + LUMA[2] * y[2])[None]
        ops = {
            "brightness": lambda y, f: y * f,
            "contrast": lambda y, f: (y - gray(y)[m[:1]].mean()) * f + gray(y)[m[:1]].mean(),
            "saturation": lambda y, f: (y - gray(y)) * f + gray(y),
            "hue": lambda y, f: _hue_rotate(y, f),
        }
        for i in torch.randperm(4, generator=generator).tolist():
            name = list(ops)[i]
            r = getattr(self, name)
            if r > 0:
                f = (2 * u() - 1) * r + (0.0 if name == "hue" else 1.0)
                x = ops[name](x, f).clamp(0, 1)
        return torch.where(m, x * 2 - 1, fg)


def _warp(x, theta, mode):
    """Resample every frame of x (C, T, H, W) through the affine window theta (zeros outside)."""
    C, T, H, W = x.shape
    frames = x.permute(1, 0, 2, 3)                                    # (T, C, H, W)
    grid = F.affine_grid(theta[None].expand(T, 2, 3).to(x), (T, C, H, W), align_corners=False)
    out = F.grid_sample(frames, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.permute(1, 0, 2, 3)


def _window_share(mask, top, left, h, w):
    """Foreground pixels inside the window [top, top+h) x [left, left+w) (pixel centres)."""
    H, W = mask.shape[-2:]
    ys, xs = torch.arange(H) + 0.5, torch.arange(W) + 0.5
    inside = ((ys >= top) & (ys < top + h))[:, None] & ((xs >= left) & (xs < left + w))[None]
    return (mask * inside).sum()


def _hue_rotate(x, turns):
    """Rotate hue by `turns` of a full circle about the grey axis (YIQ rotation; luma kept)."""
    a = 2 * math.pi * turns
    to_yiq = torch.tensor([LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])     # Y = luma
    rot = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    M = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,jthw->ithw", M.to(x), x)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Augment one fg layer + mask and write the result (for a look).")
    ap.add_argument("fg", help="foreground video (subject on black)")
    ap.add_argument("mask", help="mask video or PNG folder")
    ap.add_argument("out", help="output mp4/gif: original | augmented, side by side")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    a = ap.parse_args()
    fg, fps = read_video(a.fg)
    mask = read_mask(a.mask)
    check_aligned(fg, mask, a.fg, a.mask)
    x, m = to_tensor(fg), torch.from_numpy(mask).float()[None]
    y, _ = Augment(flip_p=1, crop_p=1, jitter_p=1)(x, m, torch.Generator().manual_seed(a.seed))
    write_video(a.out, to_uint8(torch.cat([x, y], -1)), fps)
    print(f"wrote {a.out}")
