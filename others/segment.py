"""
Subject masks without labels, shared by Split (decompose.py) and Evaluate (evaluate.py re-segments every generated
video the same way): the camera-motion model (one affine map per frame, a mosaic of the static scene), mask
morphology, the weight-free motion segmenter, and SAM 2 video propagation prompted with its box.

    python -c "import segment as s, toy; c = toy.clip(3, 17); print((s.motion_mask(c['video']) == c['mask']).mean())"

(the share of pixels it gets right on a 17-frame toy clip whose true mask is known: 0.99)

The weight-free motion segmenter needs the subject to move relative to the scene: it fits the camera's motion,
takes the per-pixel median of the aligned frames as the static scene, and thresholds each frame's difference from
it. A subject that moves less than about its own size over the clip leaks into that median and comes out partial;
one that stands still is invisible.
"""

import numpy as np
import torch
import torch.nn.functional as F

from plumbing.video import LUMA, dilate

from .hf import cached_model, placement

# ---- Global (camera) motion: one affine map per frame, in grid_sample's normalized coordinates ---
# Coordinates are normalized to [-1, 1] (align_corners=False), so a warp found on a small copy
# holds at any resolution. G[t] (3x3) maps frame-t coordinates to those of the reference (middle)
# frame; every frame is then a window onto one "mosaic" of the static scene.


def _small_gray(frames, side):
    """uint8 (T,H,W,3) -> float (T,1,h,w) luminance, longest side <= side."""
    x = torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2).float()
    x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    s = min(1.0, side / max(x.shape[-2:]))
    return F.interpolate(x, scale_factor=s, mode="area") if s < 1 else x


def _phase_shift(a, b):
    """Translation (dx, dy) in pixels with a(x) ~ b(x + d), by phase correlation."""
    h, w = a.shape
    win = torch.outer(torch.hann_window(h, periodic=False), torch.hann_window(w, periodic=False))
    fa, fb = torch.fft.rfft2((a - a.mean()) * win), torch.fft.rfft2((b - b.mean()) * win)
    r = fa.conj() * fb
    c = torch.fft.irfft2(r / (r.abs() + 1e-8), s=(h, w))
    i = int(c.argmax())
    dy, dx = divmod(i, w)
    return (dx - w if dx > w // 2 else dx), (dy - h if dy > h // 2 else dy)


def _affine_fit(src, dst, A, iters=30):
    """Refine A (2x3) so that src sampled at A @ [x, y, 1] matches dst: Gauss-Newton on image
    gradients with robust (Cauchy) weights, so a moving subject barely pulls on the fit."""
    _, _, h, w = src.shape
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h * 2 - 1, (torch.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
    gx = F.pad(src[..., :, 2:] - src[..., :, :-2], (1, 1)) / 2 * (w / 2)       # d src / d x_normalized
    gy = F.pad(src[..., 2:, :] - src[..., :-2, :], (0, 0, 1, 1)) / 2 * (h / 2)
    stack = torch.cat([src, gx, gy, torch.ones_like(src)], 1)
    for _ in range(iters):
        grid = F.affine_grid(A[None], (1, 1, h, w), align_corners=False)
        s = F.grid_sample(stack, grid, align_corners=False)[0]
        ok = (s[3] > 0.999) & (xs.abs() < 0.97) & (ys.abs() < 0.97)
        r, Ix, Iy = (s[0] - dst[0, 0])[ok], s[1][ok], s[2][ok]
        xo, yo = xs[ok], ys[ok]
        J = torch.stack([Ix * xo, Ix * yo, Ix, Iy * xo, Iy * yo, Iy], 1)
        sigma = 1.4826 * r.abs().median() + 1.0
        wgt = 1 / (1 + (r / (2 * sigma)) ** 2)
        H = (J * wgt[:, None]).T @ J + 1e-3 * torch.eye(6)
        step = torch.linalg.solve(H, -(J * wgt[:, None]).T @ r)
        A = A + step.view(2, 3)
        if step.abs().max() < 1e-5:
            break
    return A


def global_motion(frames, side=160):
    """uint8 (T,H,W,3) -> G float (T,3,3): frame-t normalized coords -> reference-frame coords."""
    g = _small_gray(frames, side)
    T, _, h, w = g.shape
    P = [torch.eye(3)]
    for t in range(T - 1):                       # P_t: frame t+1 coords -> frame t coords
        dx, dy = _phase_shift(g[t, 0], g[t + 1, 0])
        A = torch.tensor([[1.0, 0, 2 * dx / w], [0, 1.0, 2 * dy / h]])
        A = _affine_fit(g[t:t + 1], g[t + 1:t + 2], A)
        P.append(torch.cat([A, torch.tensor([[0.0, 0, 1]])]))
    G = [P[0]]
    for t in range(1, T):
        G.append(G[-1] @ P[t])
    G = torch.stack(G)
    return torch.linalg.inv(G[T // 2]) @ G


def _canvas(G, H, W, limit=4.0):
    """Box (x0, y0, x1, y1) in reference coords covering every frame, and the canvas size."""
    c = torch.tensor([[-1.0, -1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]]).T
    p = (G @ c)[:, :2].permute(1, 0, 2).reshape(2, -1)
    x0, x1 = float(p[0].min().clamp(min=-limit)), float(p[0].max().clamp(max=limit))
    y0, y1 = float(p[1].min().clamp(min=-limit)), float(p[1].max().clamp(max=limit))
    return (x0, y0, x1, y1), (max(1, round((y1 - y0) / 2 * H)), max(1, round((x1 - x0) / 2 * W)))


def mosaic(video, G, keep=None, band=48):
    """Per-pixel median of all frames where a canvas pixel is visible (and `keep` is set):
    video float (T,C,H,W), keep bool (T,H,W) -> canvas (C,Hc,Wc) with NaN where never seen, box."""
    T, C, H, W = video.shape
    box, (Hc, Wc) = _canvas(G, H, W)
    x0, y0, x1, y1 = box
    ones = torch.ones(T, 1, H, W) if keep is None else torch.from_numpy(np.asarray(keep)).float()[:, None]
    stack = torch.cat([video, ones], 1)
    Ginv = torch.linalg.inv(G)
    out = torch.empty(C, Hc, Wc)
    xs = x0 + (torch.arange(Wc) + 0.5) / Wc * (x1 - x0)
    for r0 in range(0, Hc, band):
        ys = y0 + (torch.arange(r0, min(Hc, r0 + band)) + 0.5) / Hc * (y1 - y0)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        q = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3)          # reference coords
        grid = (Ginv @ q.T)[:, :2].transpose(1, 2).reshape(T, len(ys), Wc, 2)
        s = F.grid_sample(stack, grid, align_corners=False)
        v = s[:, :C].masked_fill(s[:, C:] < 0.999, float("nan"))
        out[:, r0:r0 + len(ys)] = v.nanmedian(0).values
    return out, box


def push_pull(img):
    """Fill NaN pixels of (C,H,W) from coarser averages of the known ones (smooth, never-seen fill)."""
    known = ~img[:1].isnan()
    if known.all() or not known.any():
        return img.nan_to_num(0.0)
    v, k = img.nan_to_num(0.0) * known, known.float()
    if min(img.shape[-2:]) <= 1:
        return torch.where(known, img, (v.sum((1, 2), keepdim=True) / k.sum()).expand_as(img))
    vs, ks = F.avg_pool2d(v[None], 2, ceil_mode=True)[0], F.avg_pool2d(k[None], 2, ceil_mode=True)[0]
    coarse = push_pull(torch.where(ks > 0, vs / ks.clamp(min=1e-8), torch.tensor(float("nan"))))
    up = F.interpolate(coarse[None], size=img.shape[-2:], mode="bilinear", align_corners=False)[0]
    return torch.where(known, img, up)


def unmosaic(canvas, box, G, H, W, chunk=8):
    """Canvas (C,Hc,Wc) -> the view of every frame (T,C,H,W)."""
    x0, y0, x1, y1 = box
    ys, xs = torch.meshgrid((torch.arange(H) + 0.5) / H * 2 - 1, (torch.arange(W) + 0.5) / W * 2 - 1, indexing="ij")
    p = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3).T
    out = []
    for Gc in G.split(chunk):
        q = (Gc @ p)[:, :2]                                                        # reference coords
        gx, gy = (q[:, 0] - x0) / (x1 - x0) * 2 - 1, (q[:, 1] - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([gx, gy], -1).reshape(len(Gc), H, W, 2)
        out.append(F.grid_sample(canvas[None].expand(len(Gc), -1, -1, -1), grid, align_corners=False,
                                 padding_mode="border"))
    return torch.cat(out)


# ---- Masks: morphology, connected components, the weight-free motion segmenter ---------------
# (dilate is data.dilate: the toy's loss margin and evaluate.py grow masks with it too)


def erode(m, r):
    return ~dilate(~m, r)


def fill_holes(m):
    """bool (T,H,W): background = what the frame border reaches through ~m (reconstruction by dilation)."""
    free = ~m
    out = torch.zeros_like(m)
    out[:, 0], out[:, -1], out[:, :, 0], out[:, :, -1] = free[:, 0], free[:, -1], free[:, :, 0], free[:, :, -1]
    while True:
        nxt = dilate(out, 1) & free
        if torch.equal(nxt, out):
            return ~out
        out = nxt


def components(m):
    """bool (T,H,W) -> int labels (0 = none) of 26-connected components in space-time, so one
    subject moving through the clip is one component."""
    T, H, W = m.shape
    lab = torch.where(m, torch.arange(1, m.numel() + 1, dtype=torch.float32).view(T, H, W), torch.zeros(()))
    while True:                        # every pixel takes the largest label in reach until stable
        nxt = F.max_pool3d(lab[None, None], 3, 1, 1)[0, 0] * m
        if torch.equal(nxt, lab):
            return lab.long()
        lab = nxt


def largest_component(m):
    """bool (T,H,W) -> only its largest space-time component (the most persistent subject); empty stays empty."""
    lab = components(m)
    if lab.max() > 0:
        ids, counts = lab[lab > 0].unique(return_counts=True)
        m = lab == ids[counts.argmax()]
    return m


def shadow_like(frames, bg, dim):
    """Pixels that are a uniform darkening of `bg` (a cast shadow: darker, same hue); colour channels in `dim`."""
    ratio = (frames + 1) / (bg + 1)
    hi, lo = ratio.amax(dim), ratio.amin(dim)
    return (hi < 0.85) & (lo > 0.35) & (hi - lo < 0.15)


def otsu(x, bins=256):
    """Otsu threshold of a 1D tensor of values in [0, bins)."""
    h = torch.histc(x, bins, 0, bins).double()
    p, c = h / h.sum(), torch.arange(bins).double() + 0.5
    w0, mu = p.cumsum(0), (p * c).cumsum(0)
    between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0)).clamp(min=1e-12)
    return float(c[between.argmax()])


def motion_mask(video, G=None, side=256, min_diff=20.0):
    """uint8 (T,H,W,3) -> bool (T,H,W): the main moving subject, with a moving camera.
    1. camera motion G; 2. the static scene = per-pixel median of the aligned frames (mosaic);
    3. residual = how far each frame is from that scene; 4. threshold (Otsu, at least `min_diff`),
    drop cast shadows (darker, same hue), open/close, fill holes; 5. keep the largest space-time
    component (the most persistent subject); 6. back to full size."""
    T, H, W, _ = video.shape
    G = global_motion(video) if G is None else G
    v = torch.from_numpy(np.asarray(video)).permute(0, 3, 1, 2).float()
    s = min(1.0, side / max(H, W))
    if s < 1:
        v = F.interpolate(v, scale_factor=s, mode="area")
    h, w = v.shape[-2:]
    canvas, box = mosaic(v, G)
    bg = unmosaic(push_pull(canvas), box, G, h, w)
    res = (v - bg).abs().amax(1)                                                   # (T, h, w)
    m = (res > max(min_diff, otsu(res.flatten().clamp(0, 255)))) & ~shadow_like(v, bg, 1)
    r = max(1, round(min(h, w) / 100))
    m = erode(dilate(dilate(erode(m, r), r), 2 * r), 2 * r)                         # open, then close
    m = largest_component(fill_holes(m))
    if s < 1:
        m = F.interpolate(m.float()[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0] > 0.5
    return m.numpy()


def sam2_mask(video, prompt, model_path, device="cpu"):
    """SAM 2 video propagation (transformers' Sam2VideoModel, optional): the box of `prompt` (bool
    (T,H,W)) on the frame where it is largest, propagated forward and backward -> bool (T,H,W).
    Frames are prepared here as SAM 2's processor does (square resize, ImageNet mean/std), because
    transformers' image and video processors need torchvision, which stm does not. The model stays resident on
    `device` (this rank's GPU: bf16, as SegAnyMo runs it; a CPU: fp32), and so does the propagation."""
    try:
        from transformers import Sam2VideoInferenceSession, Sam2VideoModel, Sam2VideoProcessor
    except ImportError:
        raise SystemExit("--segmenter sam2 needs transformers>=4.56 (pip install transformers)") from None
    model = cached_model(Sam2VideoModel, model_path, *placement("sam2", device))
    device, dtype = model.device, model.dtype
    S, (T, H, W) = model.config.image_size, prompt.shape
    t = int(prompt.reshape(T, -1).sum(1).argmax())
    ys, xs = np.nonzero(prompt[t])
    if len(ys) == 0:
        return prompt
    x = torch.from_numpy(np.asarray(video)).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])      # ImageNet's
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    proc = Sam2VideoProcessor.__new__(Sam2VideoProcessor)         # only its prompt-coordinate helpers
    proc.target_size, proc.point_pad_value = S, -10
    # frames stay in host memory (a 49x1024x1024 clip is 600 MB in fp32); each is moved over when SAM 2 reads it
    session = Sam2VideoInferenceSession(video=x, video_height=H, video_width=W, inference_device=device,
                                        inference_state_device=device, dtype=dtype)
    box = [[[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]]]
    out = np.zeros(prompt.shape, bool)
    with torch.no_grad():
        proc.add_inputs_to_inference_session(session, frame_idx=t, obj_ids=1, input_boxes=box, original_size=(H, W))
        for reverse in (False, True):
            for o in model.propagate_in_video_iterator(session, start_frame_idx=t, reverse=reverse):
                m = F.interpolate(o.pred_masks.float(), size=(H, W), mode="bilinear", align_corners=False)
                out[o.frame_idx] = (m[0, 0] > 0).cpu().numpy()
    return out
