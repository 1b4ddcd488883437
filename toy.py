"""
The toy world: its rendering, its layered datasets and test triplets, the exact answers and the scores of a
composite against them (toy.metrics: evaluate.py's toy_* columns), and the toy base model (a folder laid out like
`THUDM/CogVideoX-5b-I2V`, so the very same loaders and train.py / sample.py code paths run on the CPU).

    python toy.py data --out data/toy --clips 2048                    # a layered training set (1 min)
    python toy.py triplets --out data/toy-test --n 32                 # held-out cross-combination test triplets
    python toy.py ceiling --triplets data/toy-test/triplets.jsonl --vae assets/toy-base --out results/ceil
                                                                      # their correct composites through the toy VAE
    python toy.py base --out /tmp/tb --vae-steps 2                    # a smoke build of the base model in seconds

(`python toy.py data|triplets ...` are aliases of the first two.) The shipped assets/toy-base, in three runs
(140 min on a 2-core CPU; killed? the same command + --resume):

    python toy.py base --out runs/toy-base-v2 --sprite-margin 0 --batch 4 --vae-steps 2000 --minutes 24 --threads 2
    python toy.py base --out runs/toy-base-v3 --init runs/toy-base-v2 --sprite-margin 0 --lr 5e-4 --warmup 50 \\
        --batch 4 --vae-steps 100000 --minutes 45 --threads 2             # trained on (+45 min)
    python toy.py base --out assets/toy-base --init runs/toy-base-v3 --lr 3e-4 --warmup 50 --batch 4 \\
        --vae-steps 40000 --minutes 75 --threads 2                        # + the 3-px sprite margin (+75 min)

The world. A scene is three horizontal bands (sky / water / land) whose boundaries vary per clip, with
texture, a camera pan and a global light tint. A sprite (bird, boat or car; one of several colours) moves
inside the band it belongs to, is lit by the scene tint and casts a shadow (boats and cars). Because every
layer is rendered separately, fg, bg and mask are exact, and a cross-combination (sprite of clip A into
scene B) has a known set of correct answers: the sprite's geometry, shading and shadow below are public, and
toy.metrics scores a generated composite against the renderer itself, not a copy of it.

The base model folder:
<out>/tokenizer/spiece.model       SentencePiece trained on every toy caption (colour x kind x verb x tint) + a few
                                   words
<out>/text_encoder/                toy T5 (text.PRESETS["toy"]), random init with a fixed seed, never trained: a
                                   random T5 still maps different captions to different embeddings, which is all the
                                   toy composer needs (it learns what those embeddings mean)
<out>/vae/                         toy VAE (vae.PRESETS["toy"]) trained here on fresh toy clips, sprite pixels and 3 px
                                   around them weighted (--sprite-weight, --sprite-margin); its scaling_factor = 1 / std
                                   of the latent means, so scaled latents have unit variance (as CogVideoX's 0.7)
<out>/scheduler/scheduler_config.json   CogVideoX-5B's DDIM scheduler config
<out>/model_index.json             the component names, as diffusers writes them
There is no transformer/: train.py builds the composer from a toy preset (dit.PRESETS["toy"] or ["toy-l"]).
"""
import argparse
import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from plumbing.cli import BadInput, check_ranges, run_cli
from plumbing.dataset import LayeredWriter, input_stamps, read_metadata, read_triplets
from plumbing.files import atomic_write_text
from plumbing.records import Job
from plumbing.video import LUMA, dilate, mask_to_rgb, read_video, to_tensor, to_uint8, write_video
from others.metrics import masked_psnr
from others.segment import largest_component, shadow_like
import text
import vae as V

# ---------------------------------------------------------------------------------------------
# The world: scenes, sprites, rendering
# ---------------------------------------------------------------------------------------------

KINDS = {"bird": "sky", "boat": "water", "car": "land"}
VERBS = {"bird": "flying in the sky", "boat": "sailing on the water", "car": "driving along the shore"}
COLOURS = {"red": (220, 40, 40), "yellow": (235, 210, 40), "white": (240, 240, 240),
           "orange": (240, 130, 30), "purple": (150, 60, 200), "black": (35, 35, 35)}
TINTS = {"at noon": (1.0, 1.0, 1.0), "at sunset": (1.2, 0.82, 0.6),
         "at night": (0.5, 0.6, 0.95), "in green fog": (0.8, 1.05, 0.85)}
BAND_RGB = {"sky": (120, 170, 235), "water": (30, 90, 150), "land": (90, 150, 60)}
# Never drawn: a colour and a light outside the world the shipped models were trained on, for tuning a composer
# toward something new (`toy.py data --colour cyan`; docs/lora.md)
NOVEL_COLOURS = {"cyan": (40, 200, 210)}
NOVEL_TINTS = {"under violet light": (1.1, 0.7, 1.3)}
SHADOW_GAIN = 0.5           # a shadow halves the surface's brightness


def random_scene(rng, H, W):
    """Random scene parameters (json-able)."""
    sky = rng.uniform(0.25, 0.5)
    water = sky + rng.uniform(0.2, 0.3)
    tint = list(TINTS)[rng.integers(len(TINTS))]
    return {"bands": {"sky": [0, round(sky * H)], "water": [round(sky * H), round(water * H)],
                      "land": [round(water * H), H]},
            "tint_name": tint, "tint": TINTS[tint], "pan": float(rng.uniform(-1.5, 1.5)),
            "seed": int(rng.integers(1 << 31))}


def random_sprite(rng, scene, H, W, T, kind=None):
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


def sprite_mask(kind, dx, dy, s):
    """Shape of a sprite of size s: dx, dy are offsets from its centre (arrays) -> bool."""
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


def shading(dy, s):
    """Brightness factor of a sprite pixel dy below the centre of a sprite of size s: lit from above."""
    return np.clip(1.15 - 0.5 * dy / s, 0.7, 1.2)


def lit(rgb, tint, shade):
    """A sprite's colour under the scene's light: base rgb x tint x shading (float, before clipping)."""
    return np.float32(rgb) * np.float32(tint) * shade


def shadow_ellipse(dx, dy, s):
    """Where a boat or car darkens the surface below it (offsets from its centre), the sprite not yet cut out."""
    return ((dx - 0.15 * s) / (0.55 * s)) ** 2 + ((dy - 0.32 * s) / (0.12 * s)) ** 2 < 1


def panorama(scene, T, H, W):
    """The textured, untinted background (H, W') float32 that the camera pans over."""
    rng = np.random.default_rng(scene["seed"])
    Wp = W + int(abs(scene["pan"]) * T) + 2
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
    return pano


def render(scene, sprite, T, H, W):
    """-> video, fg, bg uint8 (T,H,W,3), mask bool (T,H,W), and the shadow mask."""
    pano, tint, pan = panorama(scene, T, H, W), np.float32(scene["tint"]), scene["pan"]
    xs, ys = sprite_track(sprite, T)
    s = sprite["size"]
    video, bg, mask, shadow = [], [], np.zeros((T, H, W), bool), np.zeros((T, H, W), bool)
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    shade = shading(gy - ys[:, None, None], s)
    for t in range(T):
        off = int(round(abs(pan) * t)) if pan >= 0 else int(round(abs(pan) * (T - 1 - t)))
        frame = pano[:, off:off + W] * tint
        bg.append(frame)
        dx, dy = gx - xs[t], gy - ys[t]
        mask[t] = sprite_mask(sprite["kind"], dx, dy, s)
        if sprite["kind"] != "bird":                                          # a shadow on the surface below
            shadow[t] = shadow_ellipse(dx, dy, s) & ~mask[t]
        f = frame * np.where(shadow[t], SHADOW_GAIN, 1.0)[..., None]
        video.append(np.where(mask[t][..., None], lit(sprite["rgb"], tint, shade[t][..., None]), f))
    u8 = lambda a: np.clip(np.stack(a), 0, 255).round().astype(np.uint8)
    video, bg = u8(video), u8(bg)
    return video, video * mask[..., None], bg, mask, shadow


def caption(sprite, scene):
    art = "an" if sprite["colour"][0] in "aeiou" else "a"
    return f"{art} {sprite['colour']} {sprite['kind']} {VERBS[sprite['kind']]} {scene['tint_name']}"


def clip(seed, T=9, H=64, W=64, colour=None, tint=None):
    """One toy clip, a pure function of `seed`: video, fg, bg, mask, caption and the scene and sprite drawn.
    colour / tint: this sprite colour / scene light instead of the drawn one (every other draw is the same)."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, H, W)
    if tint:
        scene = {**scene, "tint_name": tint, "tint": {**TINTS, **NOVEL_TINTS}[tint]}
    sprite = random_sprite(rng, scene, H, W, T)
    if colour:
        sprite = {**sprite, "colour": colour, "rgb": {**COLOURS, **NOVEL_COLOURS}[colour]}
    video, fg, bg, mask, _ = render(scene, sprite, T, H, W)
    return {"video": video, "fg": fg, "bg": bg, "mask": mask, "caption": caption(sprite, scene),
            "scene": scene, "sprite": sprite}


# ---------------------------------------------------------------------------------------------
# Exact answers: what a correct composite of a sprite looks like (evaluate.py scores with these)
# ---------------------------------------------------------------------------------------------


def sprite_model(kind, size, rgb, tints, step=0.25):
    """Exact facts of a rendered sprite of this kind and size: the centroid of its mask relative to
    the sprite centre, and its mean colour under each tint (render's shading, clipped)."""
    r = np.arange(-size, size, step, dtype=np.float32)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    m = sprite_mask(kind, dx, dy, size)
    shade = shading(dy[m], size)[:, None]
    cols = [np.clip(lit(rgb, t, shade), 0, 255).mean(0) for t in tints]
    return np.array([dx[m].mean(), dy[m].mean()]), cols


def expected_shadow(kind, centres, size, H, W):
    """bool (T,H,W): where render darkens the surface under a boat or car of this size centred at `centres`
    (T, 2) (x, y) -- its shadow ellipse minus the sprite itself; empty in frames whose centre is NaN."""
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = np.zeros((len(centres), H, W), bool)
    for t in np.flatnonzero(~np.isnan(centres[:, 0])):
        xc, yc = centres[t]
        dx, dy = gx - xc, gy - yc
        out[t] = shadow_ellipse(dx, dy, size) & ~sprite_mask(kind, dx, dy, size)
    return out


# ---------------------------------------------------------------------------------------------
# Scores of a generated composite against the exact answers (evaluate.py's toy_* columns)
# ---------------------------------------------------------------------------------------------
# The toy world renders the bg exactly, so the generated subject is found as |gen - input bg| > threshold (max over
# RGB, 0-255; evaluate.py --toy-threshold) minus cast-shadow-like pixels (uniform darkening), largest space-time
# component. The expected sprite shape, colour and shadow come from the renderer (sprite_model, expected_shadow):
#   shape IoU      mean over frames of IoU(input sprite mask, gen subject mask moved onto the input's centroid;
#                  best of the 3x3 whole-pixel shifts there). Sub-pixel rasterisation keeps a perfect one ~0.6-0.8
#   size ratio     median over frames of gen subject area / input sprite area (> 1: drawn larger or blurrier)
#   colour err     RGB distance of the subject's mean colour (over its core: the half of its pixels most unlike
#                  the bg, as H.264's 4:2:0 chroma smears edges) to the exact expected one, rgb x tint x shading
#   track err      RMS over frames of (gen centroid track - its mean) - (expected track - its mean), pixels
#   bg PSNR        gen vs input bg outside the subject (dilated 1) and its expected shadow
#   affordance     share of frames whose subject centroid row lies in allowed_rows (missing subject = fail)
#   aff. (moved)   the same, over the records whose input fg lies outside allowed_rows (most frames), so the
#                  subject has to move; the others count as None. Copying the fg scores 0 here
#   copy-paste     share of frames whose subject centroid is within cp_radius (evaluate.py --cp-radius) of the
#                  input fg's centroid
#   tint match     1 if the subject's colour is closer to rgb x target tint than to rgb x source tint; null where
#                  the two differ by < 20 (black or saturated sprites), so those records do not count
#   shadow ok      darkening of the bg in the expected shadow ellipse > 0.2 where a shadow is expected, < 0.2 else


def centroids(mask):
    """bool (T,H,W) -> float (T,2) (x, y) per frame; nan where the frame is empty."""
    m = torch.as_tensor(np.asarray(mask)).float()
    n = m.sum((1, 2))
    ys, xs = torch.arange(m.shape[1]).float(), torch.arange(m.shape[2]).float()
    c = torch.stack([(m.sum(1) * xs).sum(1), (m.sum(2) * ys).sum(1)], 1) / n[:, None]
    return torch.where(n[:, None] > 0, c, torch.tensor(float("nan"))).numpy()


def subject(gen, bg, threshold):
    """The generated subject: pixels far from the input bg that are not a uniform darkening (shadow)."""
    g, b = (torch.as_tensor(np.asarray(v)).float() for v in (gen, bg))
    return largest_component(((g - b).abs().amax(-1) > threshold) & ~shadow_like(g, b, -1)).numpy()


def shape_iou(subj, mask, c_gen, c_in):
    """Mean over frames of IoU(input mask, gen subject moved so that its centroid sits on the input's; the best
    of the 3x3 whole-pixel shifts around it); 0 when no frame holds both."""
    ious = []
    for t in np.flatnonzero(~np.isnan(c_gen[:, 0]) & ~np.isnan(c_in[:, 0])):
        dx, dy = np.round(c_in[t] - c_gen[t]).astype(int)
        moved = [np.roll(subj[t], (dy + i, dx + j), (0, 1)) for i in (-1, 0, 1) for j in (-1, 0, 1)]
        ious.append(max((m & mask[t]).sum() / max(1, (m | mask[t]).sum()) for m in moved))
    return float(np.mean(ious)) if ious else 0.0


def size_ratio(subj, mask):
    """Median over the frames holding both of (gen subject area / input sprite area): a subject drawn larger or
    blurred wider than its source scores above 1 (the correct composite ~1.3 as H.264 softens edges); nan if none."""
    a, b = subj.sum((1, 2)).astype(np.float64), mask.sum((1, 2)).astype(np.float64)
    ok = (a > 0) & (b > 0)
    return float(np.median(a[ok] / b[ok])) if ok.any() else float("nan")


def colour_scores(gen, bg, subj, col_target, col_source):
    """The subject's mean colour vs the exact one under the target scene's light and under the source's."""
    if not subj.any():
        return {"toy_colour_err": float("nan"), "toy_tint_match": 0.0}
    # core pixels: the half most unlike the bg (edges are smeared by the codec's 4:2:0 chroma)
    diff = np.abs(gen.astype(np.float32) - bg).max(-1)
    mean = gen[subj & (diff >= np.median(diff[subj]))].astype(np.float64).mean(0)
    d_t, d_s = float(np.linalg.norm(mean - col_target)), float(np.linalg.norm(mean - col_source))
    return {"toy_colour_err": d_t, "toy_colour_err_source": d_s, "toy_subject_rgb": [round(float(v), 1) for v in mean],
            # undecidable where the two tints give nearly the same colour (e.g. a black or saturated sprite)
            "toy_tint_match": None if np.linalg.norm(col_target - col_source) < 20 else float(d_t < d_s)}


def placement_scores(c_gen, c_in, expect, geom, cp_radius):
    """Motion up to placement, affordance and the copy-paste shortcut (frames without a subject count as failures)."""
    s, _, top = geom
    found, out = ~np.isnan(c_gen[:, 0]), {}
    track = np.asarray(expect["track"], np.float64)
    track = track[np.linspace(0, len(track) - 1, len(c_gen)).round().astype(int)] * s
    if found.sum() >= 1:
        a, b = c_gen[found] - c_gen[found].mean(0), track[found] - track[found].mean(0)
        out["toy_track_err"] = float(np.sqrt(((a - b) ** 2).sum(1).mean()))
    else:
        out["toy_track_err"] = float("nan")
    y0, y1 = [v * s - top for v in expect["allowed_rows"]]
    in_rows = lambda y: (y >= y0) & (y < y1)                                # NaN (no subject) -> False
    out["toy_affordance"] = float(np.mean(found & in_rows(c_gen[:, 1])))
    # the same, only where the input fg sits outside its band (copying it cannot be right): None elsewhere;
    # judged on the frames where the input fg is present
    y_in = c_in[~np.isnan(c_in[:, 1]), 1]
    in_band = np.mean(in_rows(y_in)) if len(y_in) else 1.0
    out["toy_affordance_moved"] = out["toy_affordance"] if in_band < 0.5 else None
    near = np.linalg.norm(np.nan_to_num(c_gen - c_in, nan=1e9), axis=1) <= cp_radius
    out["toy_copy_paste"] = float(np.mean(found & near))
    return out


def metrics(gen, fg, bg, mask, expect, geom, threshold=40.0, cp_radius=None):
    """The exact toy-world scores of one composite (see above): gen, fg, bg uint8 (T,H,W,3) and the input mask
    (T,H,W) at the generated video's size, `expect` as write_triplets records it, and geom = (s, left, top) mapping
    input pixel coordinates to the generated video's (x_gen = x_in * s - left; evaluate.load_record)."""
    s = geom[0]
    T, H, W = gen.shape[:3]
    size = expect["size"] * s
    cp_radius = cp_radius if cp_radius is not None else max(2.0, 0.05 * min(H, W))
    subj = subject(gen, bg, threshold)
    c_gen, c_in = centroids(subj), centroids(mask)
    offset, (col_target, col_source) = sprite_model(expect["kind"], size, expect["rgb"],
                                                    [expect["tint"], expect["source_tint"]])
    out = {"toy_found": float((~np.isnan(c_gen[:, 0])).mean()), "toy_shape_iou": shape_iou(subj, mask, c_gen, c_in),
           "toy_size_ratio": size_ratio(subj, mask)}
    out.update(colour_scores(gen, bg, subj, col_target, col_source))
    out.update(placement_scores(c_gen, c_in, expect, geom, cp_radius))
    # shadow: darkening of the bg where render would cast it, placed by the subject's centroid
    ell = expected_shadow(expect["kind"], c_gen - offset, size, H, W)
    lum = lambda v: (v.astype(np.float64) * LUMA).sum(-1)
    dark = float(1 - lum(gen)[ell].mean() / max(1e-6, lum(bg)[ell].mean())) if ell.any() else float("nan")
    out["toy_shadow_darkening"] = dark
    out["toy_shadow_ok"] = float(dark > 0.2) if expect["shadow"] else float(not dark > 0.2)
    keep = ~dilate(torch.as_tensor(subj), 1).numpy() & ~(ell if expect["shadow"] else False)
    out["toy_bg_psnr"] = masked_psnr(gen, bg, keep)
    return out


# ---------------------------------------------------------------------------------------------
# Datasets: a layered training set, cross-combination test triplets
# ---------------------------------------------------------------------------------------------


def data_seed(seed, i):
    """The clip() seed of clip i of `toy.py data --seed seed` (seed 0: 0, 1, 2, ...)."""
    return seed * 1_000_003 + i


def triplet_seeds(seed, i):
    """The clip() seeds of triplet i of `toy.py triplets --seed seed`: (its sprite's clip, its scene's clip). Held-out
    sets must not share a seed with any training set (tests/test_heldout.py checks the documented ones)."""
    return seed + 2 * i, seed + 2 * i + 1


def write_data(out, clips, T=9, H=64, W=64, seed=0, fps=8, colour=None, tint=None):
    """A layered-clip dataset (LayeredClips reads it) of `clips` toy clips; resumable. colour / tint: every
    sprite in this colour / every scene under this light (see clip)."""
    w = LayeredWriter(out)
    other = [r for r in read_metadata(out) if r.get("status") == "ok" and (r.get("frames") != T or
                                                                          list(r.get("size", [])) != [H, W])]
    if other:
        raise BadInput(f"--out {out}: holds clips of {other[0].get('frames')} frames of {other[0].get('size')}; "
                       f"this run makes {T} frames of {[H, W]}: use another --out (resuming adds to a dataset of "
                       "one shape)")
    for i in tqdm(range(clips), desc=f"toy world -> {out}"):
        cid = f"toy{seed:03d}_{i:06d}"
        if cid in w.done:
            continue
        c = clip(data_seed(seed, i), T, H, W, colour, tint)
        w.add(cid, c["caption"], c["video"], c["fg"], c["bg"], c["mask"], fps=fps, source="toy",
              scene=c["scene"], sprite=c["sprite"])
    return w.finalize()


def write_triplets(out, n, T=9, H=64, W=64, seed=10_000, fps=8, colour=None, tint=None):
    """Cross-combination test triplets: the sprite (fg + mask) of clip A, the background of an
    unrelated clip B, a prompt, and what a correct composite must satisfy (`expect`), plus one
    correct composite for reference. Writes <out>/triplets.jsonl and <out>/<id>/*.mp4.
    colour / tint: every sprite A in this colour / every scene B under this light."""
    out = Path(out)
    lines = []
    for i in tqdm(range(n), desc=f"toy triplets -> {out}"):
        sa, sb = triplet_seeds(seed, i)
        a, b = clip(sa, T, H, W, colour=colour), clip(sb, T, H, W, tint=tint)
        rng = np.random.default_rng(sa)
        ref_sprite = place_sprite(rng, a["sprite"], b["scene"], H, W, T)
        ref = render(b["scene"], ref_sprite, T, H, W)[0]
        d = out / f"t{i:04d}"
        files = {"fg": a["fg"], "mask": mask_to_rgb(a["mask"]), "bg": b["bg"], "reference": ref,
                 "source": a["video"]}
        for k, v in files.items():
            write_video(d / f"{k}.mp4", v, fps)
        lines.append({"id": d.name, **{k: f"{d.name}/{k}.mp4" for k in ("fg", "mask", "bg")},
                      "prompt": caption(a["sprite"], b["scene"]), "reference": f"{d.name}/reference.mp4",
                      "expect": expectation(a, b, T)})
    atomic_write_text(out / "triplets.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return lines


def write_ceiling(triplets, out, base=None):
    """The best a composer can score on `triplets`: each one's correct composite (its `reference`) as the result,
    exact (base None) or through base's VAE (encode + decode: the sharpest any composer decoded by that VAE can
    draw). Writes a results folder as sample.py does, so evaluate.py results scores it; resumable."""
    items, bad = read_triplets(triplets)
    vae = V.VAE.from_pretrained(base).float().eval() if base else None
    settings = {"ceiling": "vae round trip" if base else "exact", "base": str(Path(base).resolve()) if base else None}
    job = Job(out, "results", items, settings=settings, what="ceiling", inputs=lambda j: [
        *([Path(base) / "vae"] if base else []), *(j.get(k) for k in ("fg", "bg", "mask", "reference"))])
    for j in job.todo():
        why = bad.get(j["id"]) or (None if j.get("reference") else "no reference video (toy.py triplets write one)")
        if why:
            job.skip(j["id"], why)
            continue
        ref, fps = read_video(j["reference"])[:2]                          # uint8 (T, H, W, 3)
        if vae is not None:
            with torch.no_grad():
                ref = to_uint8(vae.decode(vae.encode(to_tensor(ref)[None])[0])[0])
        name = Path(out) / f"{j['id']}.mp4"
        write_video(name, ref, fps)
        job.done(j["id"], {**j, "result": str(name.resolve()), "fps": fps, "settings": settings,
                           "input_stamps": input_stamps(j)},
                 outputs=[name])
    return job.finish()


def expectation(a, b, T):
    """What a correct composite of clip a's sprite into clip b's scene satisfies (triplets.jsonl `expect`)."""
    sp = a["sprite"]
    xs, ys = sprite_track(sp, T)
    return {"kind": sp["kind"], "colour": sp["colour"], "rgb": sp["rgb"], "size": sp["size"],
            "allowed_rows": b["scene"]["bands"][KINDS[sp["kind"]]],
            "tint": b["scene"]["tint"], "source_tint": a["scene"]["tint"], "shadow": sp["kind"] != "bird",
            "track": [[float(x), float(y)] for x, y in zip(xs, ys)],
            "source_rows": a["scene"]["bands"][KINDS[sp["kind"]]]}


# ---------------------------------------------------------------------------------------------
# The toy base model: tokenizer, random T5, a VAE trained on toy clips, the scheduler config
# ---------------------------------------------------------------------------------------------

SCHEDULER = {"_class_name": "CogVideoXDDIMScheduler", "_diffusers_version": "0.31.0",
             "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "trained_betas": None, "prediction_type": "v_prediction",
             "rescale_betas_zero_snr": True, "snr_shift_scale": 1.0, "timestep_spacing": "trailing",
             "set_alpha_to_one": True, "clip_sample": False, "clip_sample_range": 1.0, "sample_max_value": 1.0,
             "steps_offset": 0}
MODEL_INDEX = {"_class_name": "CogVideoXImageToVideoPipeline", "_diffusers_version": "0.31.0",
               "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
               "text_encoder": ["transformers", "T5EncoderModel"],
               "tokenizer": ["transformers", "T5Tokenizer"], "vae": ["diffusers", "AutoencoderKLCogVideoX"]}
GENERIC = ["a video of", "the scene", "and", "with", "in front of", "behind", "moving", "left", "right", "slowly",
           "fast"]
TRAIN_SEED0, HELDOUT_SEED0, SCALE_SEED0 = 10**6, 900_000, 800_000  # disjoint seed ranges for clip()


def batch(seeds, T, H, W, masks=False):
    """-> videos (B, 3, T, H, W) in [-1, 1] [, sprite masks (B, 1, T, H, W) in {0, 1}]."""
    cs = [clip(s, T, H, W) for s in seeds]
    x = torch.stack([to_tensor(c["video"]) for c in cs])
    return (x, torch.stack([torch.from_numpy(c["mask"]).float()[None] for c in cs])) if masks else x


def psnr(a, b, where=None):
    """Videos in [-1, 1] (peak-to-peak 2); `where` (B, 1, T, H, W) restricts it to those pixels."""
    se = (a.clamp(-1, 1) - b) ** 2
    mse = se.mean() if where is None else (se * where).sum() / (3 * where.sum()).clamp(min=1)
    return 10 * math.log10(4 / max(mse.item(), 1e-12))


def write_text_model(folder, vocab):
    """<folder>/tokenizer: every caption the toy world can say, so no toy prompt ever hits <unk>;
    <folder>/text_encoder: a random frozen T5 (ids = SentencePiece ids + 100 sentinels, as T5Tokenizer)."""
    captions = [caption({"colour": c, "kind": k}, {"tint_name": t}) for c in COLOURS for k in KINDS for t in TINTS]
    text.train_spiece(captions + GENERIC, folder / "tokenizer" / "spiece.model", vocab)
    tok = text.Tokenizer(folder / "tokenizer" / "spiece.model")
    t5 = text.T5Encoder(dataclasses.replace(text.PRESETS["toy"], vocab_size=tok.sp.get_piece_size() + 100))
    t5.save_pretrained(folder / "text_encoder")
    return tok.sp.get_piece_size()


def lr_at(step, progress, lr, warmup):
    """Linear warm-up over `warmup` steps, then a cosine from lr to 10% of it as progress goes 0 -> 1."""
    return lr * min(1, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1))))


def save_ckpt(path, vae, opt, step, seconds):
    """Weights, optimizer, step, time used and the noise RNG, so a resumed run continues exactly."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": seconds,
                "rng": torch.get_rng_state(), "config": dataclasses.asdict(vae.config)}, tmp)
    tmp.replace(path)                                                   # atomic: a kill mid-save keeps the last one


def load_ckpt(path, vae, opt):
    """-> (step, seconds used) of the checkpoint a killed build left; restores vae, opt and the RNG."""
    if not path.exists():
        raise SystemExit(f"--resume: no checkpoint {path} (it is written every --ckpt-every steps and removed "
                         "when a build completes)")
    try:                                  # plain data only: a crafted file in the run folder cannot run code
        st = torch.load(path, weights_only=True)
    except Exception as e:
        raise SystemExit(f"--resume: {path} is not a checkpoint this script wrote ({type(e).__name__}); delete it to "
                         "start over") from None
    if not isinstance(st, dict) or not {"config", "vae", "opt", "rng", "step", "seconds"} <= set(st):
        raise SystemExit(f"--resume: {path} is not a checkpoint this script wrote (it lacks the VAE, optimiser or "
                         "step); delete it to start over")
    if st["config"] != dataclasses.asdict(vae.config):
        raise SystemExit(f"--resume: {path} holds a VAE with another config; pass the same --vae-channels / "
                         "--init as the killed run")
    vae.load_state_dict(st["vae"])
    opt.load_state_dict(st["opt"])
    torch.set_rng_state(st["rng"])
    print(f"resuming the VAE at step {st['step']} ({st['seconds'] / 60:.1f} min used)")
    return st["step"], st["seconds"]


def train_vae(vae, T, H, W, *, steps, minutes, batch_size, lr, warmup, kl, sprite_weight, sprite_margin, seed,
              ckpt, ckpt_every=200, resume=False):
    """Train encoder + decoder on fresh toy clips every step (no overfitting), through VAE.forward: the same
    time windows encode/decode use. Stops at `steps` or after `minutes`, whichever first."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=1e-4)
    start, used = load_ckpt(ckpt, vae, opt) if resume else (0, 0.0)
    t_train = time.time() - used
    # the cosine runs on progress = steps or time used, whichever is further along: on a busy shared CPU the
    # build still ends in `minutes`, with a fully decayed learning rate
    progress = lambda s: max(s / steps, (time.time() - t_train) / (60 * minutes))
    bar = tqdm(range(start, steps), desc="vae", dynamic_ncols=True)
    for step in bar:
        if progress(step) >= 1:
            break
        if step > start and step % ckpt_every == 0:
            save_ckpt(ckpt, vae, opt, step, time.time() - t_train)
        s0 = TRAIN_SEED0 + seed * 10**7 + step * batch_size
        x, m = batch(range(s0, s0 + batch_size), T, H, W, masks=True)
        y, mean, logvar = vae(x)                                    # the decoder must tolerate posterior noise
        kl_loss = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
        w = 1 + sprite_weight * dilate(m, sprite_margin)          # (B, 1, T, H, W) per-pixel weight
        loss = (w * ((y - x).abs() + (y - x) ** 2)).mean() / w.mean() + kl * kl_loss
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress(step), lr, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)  # a few bad early steps at lr 2e-3 otherwise
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr(y.detach(), x):.2f}",
                        lr=f"{lr_at(step, progress(step), lr, warmup):.1e}")
    return vae.eval()


@torch.no_grad()
def calibrate(vae, T, H, W, scale_clips, eval_clips):
    """Set scaling_factor = 1 / std of the latent means (the DiT then sees unit-variance latents); -> held-out
    PSNRs per clip: whole frames, sprite pixels, the sprite and 3 px around it."""
    means = [vae.encode(batch(range(s, min(s + 16, SCALE_SEED0 + scale_clips)), T, H, W))[0]
             for s in range(SCALE_SEED0, SCALE_SEED0 + scale_clips, 16)]
    vae.config.scaling_factor = float(1 / torch.cat(means).std())
    scores, sprite, near = [], [], []
    for s in range(HELDOUT_SEED0, HELDOUT_SEED0 + eval_clips, 8):
        x, m = batch(range(s, min(s + 8, HELDOUT_SEED0 + eval_clips)), T, H, W, masks=True)
        y = vae.decode(vae.encode(x)[0])                                # decode the mean
        scores += [psnr(yi[None], xi[None]) for yi, xi in zip(y, x)]
        sprite += [psnr(yi[None], xi[None], mi[None]) for yi, xi, mi in zip(y, x, m)]
        # each sprite and 3 px around it: scored inside only, a VAE that dilates sprites would look good
        near += [psnr(yi[None], xi[None], di[None]) for yi, xi, di in zip(y, x, dilate(m, 3))]
    return scores, sprite, near


def swap_in(tmp, out):
    """Rename the finished folder to `out`: the old one (if any) moves aside first, so `out` is never half-written."""
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_configs(folder):
    """<folder>/scheduler/scheduler_config.json and model_index.json, as the CogVideoX-5B-I2V folder has them."""
    atomic_write_text(folder / "scheduler" / "scheduler_config.json", json.dumps(SCHEDULER, indent=2) + "\n")
    atomic_write_text(folder / "model_index.json", json.dumps(MODEL_INDEX, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
sub = parser.add_subparsers(dest="cmd", required=True)
for name in ("data", "triplets"):
    p = sub.add_parser(name, help="write a layered toy dataset" if name == "data" else "write toy test triplets")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clips" if name == "data" else "--n", type=int, default=512 if name == "data" else 32,
                   help="how many clips / triplets")
    p.add_argument("--frames", type=int, default=9, help="frames per clip (4k+1)")
    p.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="frame size")
    p.add_argument("--seed", type=int, default=0 if name == "data" else 10_000,
                   help="random seed (clips are a pure function of it)")
    p.add_argument("--fps", type=int, default=8, help="frame rate of the written videos")
    p.add_argument("--colour", choices=list(COLOURS) + list(NOVEL_COLOURS), default=None,
                   help="every sprite in this colour (cyan: never in the shipped models' training)")
    p.add_argument("--tint", choices=list(TINTS) + list(NOVEL_TINTS), default=None,
                   help="every scene under this light (" + ", ".join(f"'{t}'" for t in NOVEL_TINTS) + ": never in the "
                        "shipped models' training)")
p = sub.add_parser("ceiling", help="the correct composites of toy triplets as a results folder (the scores' "
                                  "ceiling; with --vae, through that VAE)")
p.add_argument("--triplets", required=True, help="a triplets.jsonl written by toy.py triplets")
p.add_argument("--out", required=True, help="results folder to write (evaluate.py results OUT scores it)")
p.add_argument("--vae", default=None, metavar="BASE",
               help="a base model folder (e.g. assets/toy-base): its VAE's round trip of each correct composite, the "
                    "best any composer decoded by it can do (default: the exact composites)")
p = sub.add_parser("base", help="build the toy base model folder (tokenizer, T5, VAE, scheduler)")
p.add_argument("--out", required=True, help="folder to write (replaced atomically if it exists)")
p.add_argument("--vae-steps", type=int, default=1200, help="VAE training steps")
p.add_argument("--minutes", type=float, default=8.0,
               help="VAE training time budget: stop at --vae-steps or this, whichever first")
p.add_argument("--batch", type=int, default=8, help="toy clips per VAE step")
p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay to 10%%)")
p.add_argument("--warmup", type=int, default=20, help="linear warm-up steps")
p.add_argument("--sprite-weight", type=float, default=20.0,
               help="extra loss weight on sprite pixels: sprites cover ~3%% of a frame but are all the composer "
                    "is about; unweighted, the VAE spends itself on background texture and blurs them away")
p.add_argument("--sprite-margin", type=int, default=3,
               help="the sprite weight also covers this many pixels around each sprite: weighted inside only, "
                    "spilling sprite colour outwards is 20x cheaper than missing it, and the VAE learns to dilate "
                    "(a bird's chevron becomes a dome)")
p.add_argument("--vae-channels", type=int, nargs=3, default=list(V.PRESETS["toy"].block_out_channels),
               metavar="C", help="VAE widths at full, 1/2 and 1/4 resolution (the toy preset: 8 16 32)")
p.add_argument("--init", default=None,
               help="start the VAE from this base folder's vae/ (to train it longer) instead of random weights")
p.add_argument("--ckpt-every", type=int, default=200,
               help="VAE steps between resumable checkpoints (<out>.ckpt.pt, removed when done)")
p.add_argument("--resume", action="store_true",
               help="continue the VAE training from <out>.ckpt.pt where a killed run left it")
p.add_argument("--kl", type=float, default=1e-6, help="KL weight (per latent element, vs per-pixel L1 + MSE)")
p.add_argument("--seed", type=int, default=0, help="seed for weights, noise and the training clips")
p.add_argument("--frames", type=int, default=9, help="frames per clip (4k+1)")
p.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="clip height and width")
p.add_argument("--scale-clips", type=int, default=256, help="clips whose latent means set scaling_factor")
p.add_argument("--eval-clips", type=int, default=32, help="held-out clips for the final PSNR")
p.add_argument("--spiece-vocab", type=int, default=120,
               help="SentencePiece vocab size asked for (may come out smaller)")
p.add_argument("--threads", type=int, default=1,
               help="torch CPU threads (1: on a shared 2-core box, 2 threads spin-wait and run ~5x slower)")


def check_flags(a):
    """Every value that cannot work ends the run here, in one line, before anything is written."""
    if a.cmd == "ceiling":
        if not Path(a.triplets).is_file():
            raise BadInput(f"--triplets {a.triplets}: no such file (toy.py triplets --out DIR writes "
                           "DIR/triplets.jsonl)")
        if a.vae and not (Path(a.vae) / "vae" / "config.json").is_file():
            raise BadInput(f"--vae {a.vae}: not a base model folder (no vae/config.json); e.g. assets/toy-base")
        return
    rules = [("--frames", a.frames, a.frames >= 1 and (a.frames - 1) % 4 == 0, "4k+1 (9, 13, 49, ...)"),
             ("--size", " ".join(map(str, a.size)), min(a.size) >= 16 and all(v % 16 == 0 for v in a.size),
              "H W, multiples of 16"),
             ("--seed", a.seed, 0 <= a.seed < 2**31, "in [0, 2^31)")]
    if a.cmd in ("data", "triplets"):
        n = a.clips if a.cmd == "data" else a.n
        rules += [("--clips" if a.cmd == "data" else "--n", n, n >= 1, "at least 1"),
                  ("--fps", a.fps, 1 <= a.fps <= 240, "in [1, 240]")]
    else:
        rules += [("--batch", a.batch, a.batch >= 1, "at least 1"),
                  ("--vae-steps", a.vae_steps, a.vae_steps >= 0, "at least 0 (0: keep --init's VAE as it is)"),
                  ("--threads", a.threads, 1 <= a.threads <= 1024, "in [1, 1024]"),
                  ("--scale-clips", a.scale_clips, a.scale_clips >= 1, "at least 1"),
                  ("--eval-clips", a.eval_clips, a.eval_clips >= 1, "at least 1"),
                  ("--ckpt-every", a.ckpt_every, a.ckpt_every >= 1, "at least 1"),
                  ("--lr", a.lr, math.isfinite(a.lr) and a.lr > 0, "a finite number above 0"),
                  ("--minutes", a.minutes, a.minutes > 0, "above 0")]
    check_ranges(*rules)
    out = Path(a.out)
    if a.cmd == "base" and out.exists() and any(out.iterdir()) and not (out / "model_index.json").exists():
        raise BadInput(f"--out {out}: a folder that is not a toy base (no model_index.json); base replaces its --out "
                       "whole, so name a new folder or an earlier base")
    if a.cmd == "base" and a.init:
        try:
            V.VAE.from_pretrained(a.init)
        except (FileNotFoundError, RuntimeError, ValueError, KeyError, TypeError, OSError) as e:
            raise BadInput(f"--init {a.init}: not a base folder whose vae/ loads ({str(e).splitlines()[0]})") from None


def main(args):
    check_flags(args)
    if args.cmd == "data":
        n = write_data(args.out, args.clips, args.frames, *args.size, seed=args.seed, fps=args.fps,
                       colour=args.colour, tint=args.tint)
        print(f"wrote {n} clips to {args.out}")
        return n
    if args.cmd == "ceiling":
        recs = write_ceiling(args.triplets, args.out, args.vae)
        print(f"wrote {sum(r.get('status') == 'ok' for r in recs)} correct composites"
              + (f" through {args.vae}'s VAE" if args.vae else "") + f" to {args.out}")
        return recs
    if args.cmd == "triplets":
        lines = write_triplets(args.out, args.n, args.frames, *args.size, seed=args.seed, fps=args.fps,
                               colour=args.colour, tint=args.tint)
        print(f"wrote {args.n} triplets to {args.out}/triplets.jsonl")
        return lines
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0, (H, W), T = time.time(), args.size, args.frames
    out = Path(args.out).resolve()
    ckpt = out.with_name(out.name + ".ckpt.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))  # beside --out, so the rename is atomic
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is a shared asset
    try:
        vocab = write_text_model(tmp, args.spiece_vocab)                    # (the T5 draws from the seed first)
        vae = V.VAE.from_pretrained(args.init).float().train() if args.init else \
            V.VAE(dataclasses.replace(V.PRESETS["toy"], block_out_channels=tuple(args.vae_channels))).train()
        train_vae(vae, T, H, W, steps=args.vae_steps, minutes=args.minutes, batch_size=args.batch, lr=args.lr,
                  warmup=args.warmup, kl=args.kl, sprite_weight=args.sprite_weight, sprite_margin=args.sprite_margin,
                  seed=args.seed, ckpt=ckpt, ckpt_every=args.ckpt_every, resume=args.resume)
        scores, sprite, near = calibrate(vae, T, H, W, args.scale_clips, args.eval_clips)
        vae.save_pretrained(tmp / "vae")
        write_configs(tmp)
        swap_in(tmp, out)
    except BaseException:                                                   # killed or failed: no temp folder left
        shutil.rmtree(tmp, ignore_errors=True)                             # (the VAE checkpoint stays for --resume)
        raise
    ckpt.unlink(missing_ok=True)                                            # the build is complete
    mean = lambda v: sum(v) / len(v)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB) in {time.time() - t0:.0f} s: spiece vocab {vocab}, "
          f"VAE held-out PSNR {mean(scores):.2f} dB on {len(scores)} clips (min {min(scores):.2f}), "
          f"on the sprites {mean(sprite):.2f} dB (min {min(sprite):.2f}), on them + 3 px around {mean(near):.2f} dB, "
          f"scaling_factor {vae.config.scaling_factor:.4f}")
    return {"psnr": mean(scores), "sprite_psnr": mean(sprite), "near_psnr": mean(near),
            "scaling_factor": vae.config.scaling_factor, "seconds": time.time() - t0}


if __name__ == "__main__":
    run_cli(main, parser)
