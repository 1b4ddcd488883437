"""augment.py: the properties the paper relies on, not just shapes."""
import torch

import augment
from augment import Augment


def toy(seed=0, T=5, H=48, W=48):
    """A moving elliptic subject with a textured colour that is nowhere black: fg (3, T, H, W) in [-1, 1]
    (-1 outside the subject), mask (1, T, H, W) in {0, 1}. Made here so the test depends on no renderer."""
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()  # noqa: E731
    cy, cx, ry, rx, vy, vx = r(14, 34), r(14, 34), r(4, 9), r(4, 9), r(-1, 1), r(-2, 2)
    t, y, x = torch.meshgrid(torch.arange(T) * 1.0, torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    m = (((y - cy - vy * t) / ry) ** 2 + ((x - cx - vx * t) / rx) ** 2 < 1).float()[None]
    colour = -0.6 + 1.5 * torch.rand(3, T, H, W, generator=g)                  # in [-0.6, 0.9]: never black
    return colour * m + (m - 1), m


def g(seed):
    return torch.Generator().manual_seed(seed)


def test_all_off_is_identity():
    fg, m = toy()
    off = Augment(flip_p=0, crop_p=0, jitter_p=0)
    fg2, m2 = off(fg, m, g(0))
    assert torch.equal(fg2, fg) and torch.equal(m2, m)


def test_flip_mirrors_fg_and_mask_together():
    fg, m = toy()
    fg2, m2 = Augment(flip_p=1, crop_p=0, jitter_p=0)(fg, m, g(0))
    assert torch.equal(m2, m.flip(-1)) and torch.equal(fg2, fg.flip(-1))


def recorded_windows(monkeypatch):
    """Record the affine window of every warp (mode, theta): the crop's accepted window is the one the
    bilinear fg warp used."""
    calls, warp = [], augment._warp
    monkeypatch.setattr(augment, "_warp", lambda x, theta, mode: calls.append((mode, theta.clone())) or
                        warp(x, theta, mode))
    return calls


def source_coords(theta, n):
    """Source pixel coordinate (0 = left edge of pixel 0) sampled at each of the n output pixel centres along
    one axis, given that axis' (scale, shift) from an affine_grid theta (align_corners=False), in float64."""
    s, t = theta[0].double(), theta[1].double()
    out = (2 * (torch.arange(n, dtype=torch.float64) + 0.5) / n - 1)        # output centres, normalised
    return (s * out + t + 1) * n / 2


def reference_warp(src, theta, H, W, mode):
    """src (C, T, H, W) resampled by hand through the window theta (zeros outside), written from the definition
    of the window -- not through affine_grid / grid_sample. Returns (out, ambiguous): for nearest, pixels whose
    source coordinate lies within 1e-4 of a pixel edge, where rounding may legitimately go either way."""
    ys, xs = source_coords(theta[1, [1, 2]], H), source_coords(theta[0, [0, 2]], W)
    if mode == "nearest":
        iy, ix = ys.floor().long(), xs.floor().long()                      # the pixel the centre falls in
        near_edge = lambda c: (c - c.round()).abs() < 1e-4                   # noqa: E731
        amb = near_edge(ys)[:, None] | near_edge(xs)[None]
        ok = ((iy >= 0) & (iy < H))[:, None] & ((ix >= 0) & (ix < W))[None]
        out = src[..., iy.clamp(0, H - 1)[:, None], ix.clamp(0, W - 1)[None]] * ok
        return out, amb
    out = torch.zeros(src.shape[:2] + (H, W), dtype=torch.float64)
    y0, x0 = (ys - 0.5).floor(), (xs - 0.5).floor()                        # neighbour pixel centres below
    for dy in (0, 1):
        for dx in (0, 1):
            iy, ix = (y0 + dy).long(), (x0 + dx).long()
            wy, wx = 1 - (ys - 0.5 - (y0 + dy)).abs(), 1 - (xs - 0.5 - (x0 + dx)).abs()
            ok = ((iy >= 0) & (iy < H))[:, None] & ((ix >= 0) & (ix < W))[None]
            val = src.double()[..., iy.clamp(0, H - 1)[:, None], ix.clamp(0, W - 1)[None]]
            out += val * (wy[:, None] * wx[None] * ok)
    return out.float(), None


def test_crop_keeps_90_percent_of_fg(monkeypatch):
    """Over many seeds, the accepted window holds >= 90% of the source subject, counted here from the
    window the warp really used (theta) -- not from augment's own _window_share."""
    calls = recorded_windows(monkeypatch)
    aug = Augment(flip_p=0, crop_p=1, jitter_p=0)
    shares, cropped = [], 0
    for seed in range(60):
        fg, m = toy(seed % 12)
        H, W = m.shape[-2:]
        calls.clear()
        aug(fg, m, g(seed))
        fg_calls = [th for mode, th in calls if mode == "bilinear"]
        if not fg_calls:
            continue                                   # no acceptable window in max_attempts: unchanged
        cropped += 1
        theta = fg_calls[0]
        # the window's extent in source pixels = where the output frame's edges (-1, +1) map
        top, bottom = ((theta[1, 2] + s * theta[1, 1] + 1) * H / 2 for s in (-1, 1))
        left, right = ((theta[0, 2] + s * theta[0, 0] + 1) * W / 2 for s in (-1, 1))
        cy, cx = torch.arange(H) + 0.5, torch.arange(W) + 0.5
        inside = ((cy >= top) & (cy < bottom))[:, None] & ((cx >= left) & (cx < right))[None]
        shares.append((m[0] * inside).sum().item() / m.sum().item())
    assert cropped >= 50 and min(shares) >= 0.9, (cropped, min(shares))
    assert min(shares) < 0.99                          # the bound is reached, not vacuous: some crops cut the subject


def test_warped_fg_and_mask_stay_registered(monkeypatch):
    """Flip + crop: the mask equals the source mask resampled (nearest) through the accepted window and the fg
    equals the source fg resampled (bilinear) through the same window, both computed by hand; and on a subject
    that is nowhere black, the fg is black exactly where the new mask is 0."""
    calls = recorded_windows(monkeypatch)
    checked = 0
    for seed in range(40):
        flip = seed % 2                                # flip every other seed (flip_p 0 or 1: known here)
        aug = Augment(flip_p=flip, crop_p=1, jitter_p=0)
        fg, m = toy(seed % 10)
        H, W = m.shape[-2:]
        calls.clear()
        fg2, m2 = aug(fg, m, g(seed))
        assert m2.sum() > 0
        # registration seen in the output alone: subject pixels (non-black) are exactly the new mask
        assert torch.equal((fg2 > -1).any(0), m2[0].bool()), seed
        bil = [th for mode, th in calls if mode == "bilinear"]
        if not bil:
            continue
        checked += 1
        near = [th for mode, th in calls if mode == "nearest"]
        assert torch.equal(near[-1], bil[0])           # the accepted mask window is the fg's window
        src_fg, src_m = (fg.flip(-1), m.flip(-1)) if flip else (fg, m)
        want_m, amb = reference_warp(src_m, bil[0], H, W, "nearest")
        assert torch.equal(want_m[..., ~amb], m2[..., ~amb]), seed
        want_fg = reference_warp(src_fg + 1, bil[0], H, W, "bilinear")[0] - 1
        want_fg = want_fg * m2 + (m2 - 1)
        keep = ~amb                                    # (a pixel whose mask is ambiguous may be in or out)
        assert (want_fg - fg2)[..., keep].abs().max() < 1e-5, seed
    assert checked >= 30


def test_zoom_goes_both_ways():
    zooms = []
    for seed in range(40):
        fg, m = toy(seed % 8)
        fg2, m2 = Augment(flip_p=0, crop_p=1, jitter_p=0)(fg, m, g(seed))
        zooms.append(m2.sum().item() / m.sum().item())
    # zooming in grows the subject, zooming out shrinks it: both happen
    assert min(zooms) < 0.6 and max(zooms) > 1.5


def test_no_augment_is_identity_and_default_is_not():
    """train.py --no-augment builds Augment(flip_p=0, crop_p=0, jitter_p=0): fg and mask come back as they
    are. The default (the paper's settings) changes them for most seeds."""
    off, default, changed = Augment(flip_p=0, crop_p=0, jitter_p=0), Augment(), 0
    for seed in range(20):
        fg, m = toy(seed)
        fg2, m2 = off(fg, m, g(seed))
        assert torch.equal(fg2, fg) and torch.equal(m2, m)
        fg3, m3 = default(fg, m, g(seed))
        changed += not (torch.equal(fg3, fg) and torch.equal(m3, m))
    # P(no flip, no crop, no jitter) = 0.3 * 0.3 * 0.8 = 0.072 per seed
    assert changed >= 15, changed


def test_jitter_only_inside_mask():
    fg, m = toy(2)
    fg = fg.clone()
    fg[:, ~m[0].bool()] = 0.3                           # make "outside" visible
    aug = Augment(flip_p=0, crop_p=0, jitter_p=1)
    changed = 0
    for seed in range(5):
        out = aug.jitter(fg, m, g(seed))
        assert torch.equal(out[:, ~m[0].bool()], fg[:, ~m[0].bool()])
        changed += (out[:, m[0].bool()] - fg[:, m[0].bool()]).abs().max() > 1e-3
        assert out.min() >= -1 and out.max() <= 1
    assert changed == 5


def test_reproducible_from_seed():
    fg, m = toy(4)
    a = Augment()(fg, m, g(7))
    b = Augment()(fg, m, g(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_empty_mask_is_safe():
    fg = -torch.ones(3, 5, 16, 16)
    m = torch.zeros(1, 5, 16, 16)
    fg2, m2 = Augment(flip_p=1, crop_p=1, jitter_p=1)(fg, m, g(0))
    assert torch.equal(m2, m) and torch.equal(fg2, fg)


def test_crop_shift_with_no_zoom_is_a_pure_translation():
    """--crop-scale 1 1 --crop-shift F: the subject moves (up to F of the frame each way) and keeps its size and
    shape; with crop_shift 0 the draws of the paper's re-framing are unchanged."""
    moved, limit = 0, 0.25
    for seed in range(40):
        fg, m = toy(seed % 8)
        H, W = m.shape[-2:]
        fg2, m2 = Augment(flip_p=0, crop_p=1, jitter_p=0, crop_scale=(1, 1), crop_shift=limit)(fg, m, g(seed))
        if torch.equal(m2, m):
            continue
        # the moved mask is the source mask rolled by one whole-pixel offset up to the nearest-sampling edge
        before, after = (torch.nonzero(v[0, 0]).float().mean(0) for v in (m, m2))   # (y, x) centroids
        dy, dx = (after - before).round().long().tolist()
        assert abs(dy) <= limit * H + 1 and abs(dx) <= limit * W + 1, (seed, dy, dx)
        assert 0.89 <= m2.sum() / m.sum() <= 1.01, seed          # no zoom (a frame edge may cut up to 10%)
        rolled = torch.roll(m2, (-dy, -dx), (-2, -1))
        assert (rolled * (1 - m)).sum() / m.sum() < 0.05, seed    # moved back, it lies on the source's shape
        moved += max(abs(dy), abs(dx)) >= 3
    assert moved >= 25, moved
    fg, m = toy(3)
    for seed in range(10):                                                    # shift 0: the paper's draws
        a = Augment(crop_scale=(0.8, 1.25))(fg, m, g(seed))
        b = Augment(crop_scale=(0.8, 1.25), crop_shift=0.0)(fg, m, g(seed))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
