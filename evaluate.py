"""
Evaluate compositions: the paper's metrics (Table 1-2), weight-free fallbacks, exact toy-world metrics.

    python evaluate.py --results results/toy                           # weight-free + toy metrics -> results/toy/eval/
    python evaluate.py --results results/real --viclip OpenGVLab/ViCLIP-L-14-hf \\
        --swin swin3d_b_1k-24f7c7c6.pth --raft raft_large_C_T_SKHT_V2-ff5fadd5.pth   # M1-M4 as in the StM release
    python evaluate.py --compare results/full results/no-aug results/no-aug/eval --out cmp   # runs side by side
    python evaluate.py --results Organized_Results --layout released --method gen-recomposer  # the paper's own outputs
    python evaluate.py --judge results/stm results/copy-paste --judge-model Qwen/Qwen2.5-VL-7B-Instruct --out jd
    GEMINI_API_KEY=... python evaluate.py --judge results/stm results/copy-paste --backend gemini   # as the paper
    python evaluate.py --study results/stm results/copy-paste --study-n 25 --out study   # a static site for people
    python evaluate.py --tally study answers/*.json                    # their exported answers -> win / tie / lose

--results is a folder with results.jsonl as sample.py --triplets writes it: one line per composite with
`fg` (subject on black, or any video with `mask`), `bg`, `prompt`, `result` (the generated video) and,
for toy triplets, `expect` (what a correct composite satisfies). Relative paths are relative to the folder.
Inputs are resampled to the generated video's frames and size (data.fit_video).
--layout released reads the paper's released result folders as they are: sample-*/ holding fg.mp4, bg.mp4,
prompt.txt and one <method>.mp4 per method (--method picks one; two for --judge / --study over the same folder).
--results and --compare (with --out) also write report.html: the table, a bar chart per metric, and per triplet the
input videos, the toy's correct composite and each run's result with its metrics; it opens from disk.
Pairwise preference (the paper's Table 3, Figures 7-8; judge.py, report.py): --judge asks a VLM, per triplet and
criterion, the paper's instruction with only that criterion's references and the two results in a seeded random
order; --study writes the same questions as a web form for people, --tally counts their exported answers. Both give
win / tie / lose of RUN_A against RUN_B per criterion, as a table and a stacked-bar plot (SVG).
Library use: evaluate_record(rec, base, Networks(...), ...) scores one record with explicit settings.
A record whose videos are missing or unreadable is skipped and reported (stderr and summary.md / .json); each
scored record is appended to metrics.jsonl at once, so a stopped run resumes where it stopped; an eval folder
holding scores made with other flags is refused, never overwritten. Unusable flags: one line, exit code 2.

Every generated video is re-segmented into fg / bg layers (video x mask on black) by the same segmenter as the
Split stage (--segmenter: the weight-free segment.motion_mask, or SAM 2 prompted with its box; the report names
it), then, as in the StM release (evaluation/metrics):
  M1 fg / bg identity  cos(ViCLIP(gen fg), ViCLIP(input fg)); cos(ViCLIP(gen bg), ViCLIP(input bg with the gen fg
                       region blacked out))                                              (--viclip)
  M2 action            KL(p(input fg) || p(gen fg)), Kinetics-400 softmax of Swin3D-B      (--swin)
  M3 bg motion         flow MSE between input bg and gen bg layer, pairs every 4th frame, outside the gen fg mask
                       RAFT-large with --raft, else the classical Lucas-Kanade flow (labelled weight-free)
  M4 text              cos(ViCLIP(gen video), ViCLIP(prompt))                             (--viclip)
Weight-free measures, always computed: bg PSNR / SSIM of gen vs input bg outside both masks (each dilated),
fg colour-histogram intersection (8^3 RGB bins over the fg pixels of all frames, input vs re-segmented gen).
Reading them: PSNR / SSIM reward keeping bg pixels, so a copy-paste composite wins them outright; flow has wide
spatial support, so M3 also rises on bg pixels near a subject whose motion disagrees with the scene (on the
real clips in ../shared/real, StM's outputs beat a copy-paste on M3 and lose on PSNR; see tests/test_evaluate.py).

Toy metrics (records with `expect`): the toy world renders the bg exactly, so here the generated subject is
found as |gen - input bg| > --toy-threshold (max over RGB, 0-255) minus cast-shadow-like pixels (uniform
darkening), largest space-time component. The expected sprite shape, colour and shadow come from toy.py's
renderer itself (toy.sprite_model, toy.expected_shadow). Then:
  shape IoU      mean over frames of IoU(input sprite mask, gen subject mask moved onto the input's centroid;
                 best of the 3x3 whole-pixel shifts there). Sub-pixel rasterisation keeps a perfect one ~0.6-0.8
  colour err     RGB distance of the subject's mean colour (over its core: the half of its pixels most unlike
                 the bg, as H.264's 4:2:0 chroma smears edges) to the exact expected one, rgb x tint x shading
  track err      RMS over frames of (gen centroid track - its mean) - (expected track - its mean), pixels
  bg PSNR        gen vs input bg outside the subject (dilated 1) and its expected shadow
  affordance     share of frames whose subject centroid row lies in allowed_rows (missing subject = fail)
  aff. (moved)   the same, over the records whose input fg lies outside allowed_rows (most frames), so the
                 subject has to move; the others count as None. Copying the fg scores 0 here
  copy-paste     share of frames whose subject centroid is within --cp-radius of the input fg's centroid
  tint match     1 if the subject's colour is closer to rgb x target tint than to rgb x source tint; null where
                 the two differ by < 20 (black or saturated sprites), so those records do not count
  shadow ok      darkening of the bg in the expected shadow ellipse > 0.2 where a shadow is expected, < 0.2 else
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

import data
import metrics
import toy
from data import BadInput, json_safe
from segment import largest_component, motion_mask, sam2_mask, shadow_like
from weights import atomic_write_text

# (key, column label, arrow): the order of the summary table
COLUMNS = [
    ("m1_fg", "M1 fg identity (ViCLIP)", "↑"), ("m1_bg", "M1 bg identity (ViCLIP)", "↑"),
    ("m2_action_kl", "M2 action KL (Swin3D)", "↓"), ("m3_flow_mse", "M3 bg flow MSE (RAFT)", "↓"),
    ("m4_text", "M4 text (ViCLIP)", "↑"),
    ("wf_m3_flow_mse", "M3 bg flow MSE (classical, weight-free)", "↓"),
    ("wf_bg_psnr", "bg PSNR (weight-free)", "↑"), ("wf_bg_ssim", "bg SSIM (weight-free)", "↑"),
    ("wf_fg_hist", "fg colour-hist (weight-free)", "↑"),
    ("toy_shape_iou", "toy shape IoU", "↑"), ("toy_colour_err", "toy colour err", "↓"),
    ("toy_track_err", "toy track err (px)", "↓"), ("toy_bg_psnr", "toy bg PSNR", "↑"),
    ("toy_affordance", "toy affordance", "↑"),
    ("toy_affordance_moved", "toy affordance (moved)", "↑"), ("toy_copy_paste", "toy copy-paste", "↓"),
    ("toy_tint_match", "toy tint match", "↑"), ("toy_shadow_ok", "toy shadow ok", "↑"),
]


# ---------------------------------------------------------------------------------------------
# inputs


def _path(p, base):
    p = Path(p)
    return p if p.is_absolute() else base / p


def load_record(rec, base, max_frames=0, max_side=0):
    """-> gen, input fg layer, input bg uint8 (T,H,W,3), input mask bool (T,H,W), geometry (s, left, top)
    mapping input pixel coordinates to the generated video's (x_gen = x_in * s - left)."""
    gen = data.read_video(_path(rec["result"], base))[0]
    T, H, W = gen.shape[:3]
    if max_side and max(H, W) > max_side:
        k = max_side / max(H, W)
        H, W = max(2, round(H * k / 2) * 2), max(2, round(W * k / 2) * 2)
    T = min(T, max_frames) if max_frames else T
    gen = data.fit_video(gen, T, H, W, name="result")
    fg_raw = data.read_video(_path(rec["fg"], base))[0]
    if rec.get("mask"):
        mask = data.fit_video(data.read_mask(_path(rec["mask"], base)), T, H, W, mask=True, name="mask")
    else:
        mask = data.fit_video(fg_raw.max(-1) > 16, T, H, W, mask=True, name="fg")  # non-black = subject
    fg = data.fit_video(fg_raw, T, H, W, name="fg") * mask[..., None]
    bg = data.fit_video(data.read_video(_path(rec["bg"], base))[0], T, H, W, name="bg")
    h, w = fg_raw.shape[1:3]
    s = max(H / h, W / w)
    return gen, fg, bg, mask, (s, (round(w * s) - W) // 2, (round(h * s) - H) // 2)


def check_record(rec, base):
    """Why a results record cannot be scored (one line), or None. Reads only the videos' headers."""
    for k in ("result", "fg", "bg", "mask"):
        if k == "mask" and not rec.get("mask"):
            continue
        if not isinstance(rec.get(k), str) or not rec[k]:
            return f"no '{k}' path (a record needs result, fg, bg and optionally mask)"
        p = _path(rec[k], base)
        if not p.exists():
            return f"{k} {p}: not found"
        try:
            n = data.probe(p)[0]
        except ValueError as e:
            return f"{k} {e}"
        if n == 0:
            return f"{k} {p}: no frames"
    return None


def centroids(mask):
    """bool (T,H,W) -> float (T,2) (x, y) per frame; nan where the frame is empty."""
    m = torch.as_tensor(np.asarray(mask)).float()
    n = m.sum((1, 2))
    ys, xs = torch.arange(m.shape[1]).float(), torch.arange(m.shape[2]).float()
    c = torch.stack([(m.sum(1) * xs).sum(1), (m.sum(2) * ys).sum(1)], 1) / n[:, None]
    return torch.where(n[:, None] > 0, c, torch.tensor(float("nan"))).numpy()


def colour_hist(frames, mask, bins=8):
    px = torch.as_tensor(np.asarray(frames))[torch.as_tensor(np.asarray(mask))].long() * bins // 256
    h = torch.bincount(px[:, 0] * bins * bins + px[:, 1] * bins + px[:, 2], minlength=bins ** 3).float()
    return h / h.sum().clamp(min=1)


def _nanmean(v):
    v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else float("nan")


# ---------------------------------------------------------------------------------------------
# toy-world metrics


def toy_subject(gen, bg, threshold):
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


def toy_metrics(gen, fg, bg, mask, expect, geom, threshold=40.0, cp_radius=None):
    """The exact toy-world scores of one composite (see the module docstring); geom = (s, left, top) of load_record."""
    s = geom[0]
    T, H, W = gen.shape[:3]
    size = expect["size"] * s
    cp_radius = cp_radius if cp_radius is not None else max(2.0, 0.05 * min(H, W))
    subj = toy_subject(gen, bg, threshold)
    c_gen, c_in = centroids(subj), centroids(mask)
    offset, (col_target, col_source) = toy.sprite_model(expect["kind"], size, expect["rgb"],
                                                        [expect["tint"], expect["source_tint"]])
    out = {"toy_found": float((~np.isnan(c_gen[:, 0])).mean()), "toy_shape_iou": shape_iou(subj, mask, c_gen, c_in)}
    out.update(colour_scores(gen, bg, subj, col_target, col_source))
    out.update(placement_scores(c_gen, c_in, expect, geom, cp_radius))
    # shadow: darkening of the bg where toy.render would cast it, placed by the subject's centroid
    ell = toy.expected_shadow(expect["kind"], c_gen - offset, size, H, W)
    lum = lambda v: (v.astype(np.float64) * data.LUMA).sum(-1)
    dark = float(1 - lum(gen)[ell].mean() / max(1e-6, lum(bg)[ell].mean())) if ell.any() else float("nan")
    out["toy_shadow_darkening"] = dark
    out["toy_shadow_ok"] = float(dark > 0.2) if expect["shadow"] else float(not dark > 0.2)
    keep = ~data.dilate(torch.as_tensor(subj), 1).numpy() & ~(ell if expect["shadow"] else False)
    out["toy_bg_psnr"] = metrics.masked_psnr(gen, bg, keep)
    return out


# ---------------------------------------------------------------------------------------------
# the networks


def _config(spec, presets, cls):
    """A preset name or a JSON file of config fields."""
    if spec in presets:
        return presets[spec]
    p = Path(spec)
    if p.is_file():
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(p.read_text()).items()})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
            raise BadInput(f"{spec}: not a JSON object of {cls.__name__} fields ({type(e).__name__}: {e})") from None
    raise BadInput(f"{spec}: neither a preset ({', '.join(presets)}) nor a JSON config file")


class Networks:
    """The metric networks whose weights are given (the others stay None and their metrics are skipped).
    viclip / swin / raft: a weight file, URL or hub id as the --viclip / --swin / --raft flags take them (viclip
    also a folder holding model.safetensors); *_config: a preset name or a JSON file of config fields."""

    def __init__(self, viclip=None, swin=None, raft=None, viclip_config="viclip_l14", swin_config="swin3d_b",
                 raft_config="raft_large", bpe=None, device="cpu"):
        self.device, self.viclip, self.swin, self.raft = device, None, None, None
        if viclip:
            cfg = _config(viclip_config, metrics.VICLIP_PRESETS, metrics.ViCLIPConfig)
            self.viclip = metrics.load_viclip(viclip, cfg).to(device)
            p = Path(viclip)                                           # the BPE merges default to beside the weights
            self.tok = metrics.load_clip_tokenizer(bpe or (p if p.is_dir() else p.parent if p.is_file() else viclip))
        if swin:
            cfg = _config(swin_config, metrics.SWIN3D_PRESETS, metrics.Swin3DConfig)
            self.swin = metrics.load_swin3d(swin, cfg).to(device)
        if raft:
            cfg = _config(raft_config, metrics.RAFT_PRESETS, metrics.RAFTConfig)
            self.raft = metrics.load_raft(raft, cfg).to(device)

    @torch.no_grad()
    def video(self, frames):
        c = self.viclip.config
        return self.viclip.encode_video(metrics.viclip_preprocess(frames, c.num_frames, c.image_size).to(self.device))

    @torch.no_grad()
    def action(self, frames):
        return self.swin(metrics.swin3d_preprocess(frames).to(self.device))

    def __call__(self, gen, fg, bg, gen_mask, prompt):
        gen_fg, gen_bg = gen * gen_mask[..., None], gen * ~gen_mask[..., None]
        out = {}
        if self.viclip is not None:
            out["m1_fg"] = metrics.cosine(self.video(gen_fg), self.video(fg))
            out["m1_bg"] = metrics.cosine(self.video(gen_bg), self.video(bg * ~gen_mask[..., None]))
            if prompt:
                with torch.no_grad():
                    ids = self.tok([prompt], self.viclip.config.context_length).to(self.device)
                    out["m4_text"] = metrics.cosine(self.video(gen), self.viclip.encode_text(ids))
        if self.swin is not None:
            out["m2_action_kl"] = metrics.action_kl(self.action(fg), self.action(gen_fg))
        if self.raft is not None:
            flow = lambda x, y: self.raft.flow(x, y).cpu()
            out["m3_flow_mse"] = metrics.background_flow_mse(bg, gen_bg, gen_mask, flow_fn=flow)
        return out


# ---------------------------------------------------------------------------------------------
# one record, a whole run


def subject_mask(video, segmenter="motion", sam2=None):
    """A generated video's subject mask, by the same segmenter as the Split stage (decompose.clip_mask): the
    weight-free motion segmenter, or SAM 2 prompted with its box (the paper re-segments with its own decomposer)."""
    mask = motion_mask(video)
    return sam2_mask(video, mask, sam2) if segmenter == "sam2" else mask


def evaluate_record(rec, base, nets, max_frames=0, max_side=0, toy_threshold=40.0, cp_radius=None,
                    segmenter="motion", sam2=None):
    """One results.jsonl record (paths relative to `base`) -> its metrics; nets: a Networks.
    max_frames / max_side / toy_threshold / cp_radius / segmenter / sam2: as the flags of the same names."""
    gen, fg, bg, mask, geom = load_record(rec, base, max_frames, max_side)
    gen_mask = subject_mask(gen, segmenter, sam2)
    out = {"id": rec.get("id"), "result": str(_path(rec["result"], base).resolve()), "frames": len(gen),
           "size": list(gen.shape[1:3]), "gen_fg_ratio": float(gen_mask.mean())}
    out.update(nets(gen, fg, bg, gen_mask, rec.get("prompt", "")))
    r = max(1, round(min(gen.shape[1:3]) / 100))
    outside = ~data.dilate(torch.as_tensor(mask | gen_mask), r).numpy()
    out["wf_bg_psnr"] = metrics.masked_psnr(gen, bg, outside)
    out["wf_bg_ssim"] = metrics.masked_ssim(gen, bg, outside)
    if mask.any() and gen_mask.any():
        out["wf_fg_hist"] = float(torch.minimum(colour_hist(fg, mask), colour_hist(gen, gen_mask)).sum())
    else:
        out["wf_fg_hist"] = 0.0
    if nets.raft is None:
        out["wf_m3_flow_mse"] = metrics.background_flow_mse(bg, gen * ~gen_mask[..., None], gen_mask)
    if rec.get("expect"):
        out.update(toy_metrics(gen, fg, bg, mask, rec["expect"], geom, toy_threshold, cp_radius))
    if len(gen) < 2:                           # flow is measured between frames: one frame has none
        out["notes"] = [f"M3 (bg flow) needs at least 2 frames, the result has {len(gen)}: left out (null)"]
    return out


def summarise(rows):
    """Mean of every numeric metric over the records (nan / None skipped)."""
    keys = [k for k, _, _ in COLUMNS if any(k in r for r in rows)]
    return {"n": len(rows), **{k: _nanmean([r.get(k) for r in rows]) for k in keys}}


def table(runs):
    """runs: {name: summary} -> markdown table shaped like the paper's Table 2 (rows = runs)."""
    cols = [(k, lab, arr) for k, lab, arr in COLUMNS if any(k in s for s in runs.values())]
    lines = ["| run | n | " + " | ".join(f"{lab} {arr}" for _, lab, arr in cols) + " |",
             "| --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for name, s in runs.items():
        cell = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
        lines.append(f"| {name} | {s['n']} | " + " | ".join(cell(s.get(k)) for k, _, _ in cols) + " |")
    return "\n".join(lines) + "\n"


def load_run(path):
    """An eval folder (metrics.jsonl) or a results folder (its eval/metrics.jsonl) -> (name, summary, rows); the
    summary keeps where the records came from (summary.json's source). Lines a stopped run left half-written are
    left out, with a warning."""
    p = Path(path)
    for f in (p / "metrics.jsonl", p / "eval" / "metrics.jsonl", p):
        if f.is_file():
            rows, problems = data.read_jsonl(f)
            for _, msg in problems:
                print(f"warning: {msg}", file=sys.stderr)
            name = f.parent.parent.name if f.parent.name == "eval" else f.parent.name
            try:
                old = json.loads((f.parent / "summary.json").read_text())
            except (OSError, ValueError):
                old = {}
            rows = [r for _, r in rows]
            extra = {k: old[k] for k in ("source", "segmenter") if isinstance(old, dict) and k in old}
            return old.get("name", name) if isinstance(old, dict) else name, {**summarise(rows), **extra}, rows
    raise BadInput(f"--compare {path}: no metrics.jsonl there (run python evaluate.py --results {path} first)")


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap = parser.add_argument
ap("--results", help="folder holding results.jsonl (sample.py --triplets ... --out DIR)")
ap("--compare", nargs="+", metavar="RUN", help="eval or results folders: print their summaries side by side")
ap("--out", help="report folder (default RESULTS/eval); with --compare, where compare.md goes")
ap("--name", help="row name of this run in summary.md (default: the results folder's name)")
ap("--viclip", help="ViCLIP weights (.safetensors / .pth, a folder holding model.safetensors, or a hub id such as "
                    "OpenGVLab/ViCLIP-L-14-hf) for M1, M4")
ap("--viclip-config", default="viclip_l14", help="ViCLIP preset name or JSON file of ViCLIPConfig fields")
ap("--bpe", help="CLIP BPE merges (bpe_simple_vocab_16e6.txt.gz); default: beside --viclip")
ap("--swin", help="torchvision swin3d_b state dict (swin3d_b_1k-24f7c7c6.pth) or URL, for M2")
ap("--swin-config", default="swin3d_b", help="Swin3D preset name or JSON file of Swin3DConfig fields")
ap("--raft", help="torchvision raft_large state dict (raft_large_C_T_SKHT_V2-ff5fadd5.pth) or URL, for M3")
ap("--raft-config", default="raft_large", help="RAFT preset name or JSON file of RAFTConfig fields")
ap("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device for the networks")
ap("--max-frames", type=int, default=0, help="resample each generated video to at most this many frames (0 = all)")
ap("--max-side", type=int, default=0, help="downscale so that the longer side is at most this (0 = native)")
ap("--toy-threshold", type=float, default=40.0, help="toy subject = |gen - input bg| above this (0-255)")
ap("--cp-radius", type=float, default=None,
   help="copy-paste radius in pixels (default 5%% of the shorter side, at least 2)")
ap("--limit", type=int, default=0, help="evaluate only the first N records (0 = all)")
ap("--layout", choices=("results", "released"), default="results",
   help="results: a folder holding results.jsonl (sample.py --triplets); released: the paper's released result "
        "folders, sample-*/ holding fg.mp4, bg.mp4, prompt.txt and one <method>.mp4 per method")
ap("--method", nargs="+", metavar="NAME", help="with --layout released: the method video to score (e.g. "
   "gen-recomposer); with --judge / --study two names, run A's and run B's (one name: the same for both)")
ap("--segmenter", choices=("motion", "sam2"), default="motion",
   help="how each generated video is split into fg / bg layers before M1-M3: the Split stage's weight-free motion "
        "segmenter, or SAM 2 prompted with its box (needs --sam2; the paper re-segments with its own decomposer)")
ap("--sam2", help="SAM 2 weights for --segmenter sam2 (a folder or hub id, e.g. facebook/sam2.1-hiera-tiny)")
# pairwise preference (judge.py, report.py): the paper's Table 3 and Figures 7-8
ap("--judge", nargs=2, metavar=("RUN_A", "RUN_B"),
   help="VLM judge: compare two runs over the same triplets on the paper's six criteria -> OUT/answers.jsonl "
        "(resumable), judge.md, judge.svg, judge.json (default OUT: RUN_A/judge-<name of RUN_B>)")
ap("--backend", choices=("qwen", "gemini"), default="qwen",
   help="the judge: a local VLM through transformers (Qwen2.5-VL family), or Gemini through google-genai (key in "
        "GEMINI_API_KEY or GOOGLE_API_KEY), as in the paper")
ap("--judge-model", help="the judge's weights: a folder or hub id (default Qwen/Qwen2.5-VL-7B-Instruct) or the "
                         "Gemini model id (default gemini-2.5-pro)")
ap("--judge-frames", type=int, default=8, help="frames per video shown to a local judge (Gemini gets the files)")
ap("--seed", type=int, default=0, help="the A/B order: shuffled per question (--judge) or example (--study) from it")
ap("--study", nargs=2, metavar=("RUN_A", "RUN_B"),
   help="user study: write a static site (OUT/site/index.html, videos beside it) with the paper's form; the A/B "
        "key stays in OUT/key.json, outside the site")
ap("--study-n", type=int, default=0, help="examples in the study, a seeded random subset (0 = all; the paper: 25)")
ap("--tally", nargs="+", metavar=("DIR", "ANSWERS"),
   help="DIR (a --study OUT) and the answers-*.json files people exported -> DIR/tally.md, tally.svg, tally.json")


def compare(paths, out=None):
    """Summaries of several runs side by side (printed; with out, also <out>/compare.md and report.html)."""
    if out:
        data.check_out_dir(out)
    runs = {}
    for r in paths:
        name, summary, rows = load_run(r)
        runs[name if name not in runs else f"{name} ({r})"] = (summary, rows)
    text = table({k: v[0] for k, v in runs.items()})
    print(text, end="")
    segs = {v[0].get("segmenter") for v in runs.values()} - {None}
    if len(segs) > 1:
        print("warning: the runs were split into layers by different segmenters: " + "; ".join(sorted(segs)),
              file=sys.stderr)
    if out:
        atomic_write_text(Path(out) / "compare.md", text)
        html = write_report(Path(out), {k: v[0] for k, v in runs.items()}, {k: v[1] for k, v in runs.items()},
                            "compare: " + ", ".join(runs) + (f" ({'; '.join(sorted(segs))})" if segs else ""))
        print(f"-> {out}/compare.md, {html.name}")
    else:
        print("(add --out DIR for compare.md and report.html)")
    return {k: v[0] for k, v in runs.items()}


# The flags a score depends on: an eval folder holds the scores of one setting, so that its summary means one thing
SCORE_FLAGS = ("viclip", "viclip_config", "bpe", "swin", "swin_config", "raft", "raft_config", "max_frames",
               "max_side", "toy_threshold", "cp_radius", "segmenter", "sam2")


MODES = ("results", "compare", "judge", "study", "tally")


def default_out(args):
    """Where a mode writes when --out is not given."""
    if args.judge or args.study:
        a, b = args.judge or args.study
        tag = "judge" if args.judge else "study"
        other = args.method[-1] if args.layout == "released" and args.method else Path(b).resolve().name
        return Path(a) / f"{tag}-{other}"
    if args.layout == "released":
        return Path(args.results) / f"eval-{args.method[0]}"
    return Path(args.results) / "eval"


def check_flags(args):
    """Flag values that cannot work end the run here, in one line, before anything is read or loaded."""
    given = [m for m in MODES if getattr(args, m)]
    if len(given) != 1:
        both = f"{' and '.join('--' + m for m in given)}: not both; " if given else ""
        raise BadInput(f"{both}give --results DIR (score a run), or one of --compare RUN ... (tabulate scored runs), "
                       "--judge RUN_A RUN_B, --study RUN_A RUN_B, --tally DIR ANSWERS...")
    a = args
    for flag, val, ok, rule in (("--max-frames", a.max_frames, a.max_frames >= 0, "at least 0 (0 = all)"),
                                ("--max-side", a.max_side, a.max_side >= 0, "at least 0 (0 = native)"),
                                ("--limit", a.limit, a.limit >= 0, "at least 0 (0 = all)"),
                                ("--toy-threshold", a.toy_threshold, 0 <= a.toy_threshold < 255, "in [0, 255)"),
                                ("--cp-radius", a.cp_radius, a.cp_radius is None or a.cp_radius > 0, "above 0"),
                                ("--judge-frames", a.judge_frames, a.judge_frames >= 1, "at least 1"),
                                ("--study-n", a.study_n, a.study_n >= 0, "at least 0 (0 = all)")):
        if not ok:
            raise BadInput(f"{flag} {val}: must be {rule}")
    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device {args.device}: not a torch device; use cpu or cuda (cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    if args.segmenter == "sam2" and not args.sam2:
        raise BadInput("--segmenter sam2 needs --sam2 (SAM 2 weights: a folder or a hub id such as "
                       "facebook/sam2.1-hiera-tiny), or use --segmenter motion (weight-free)")
    if args.sam2 and args.segmenter == "sam2":
        from decompose import check_weights
        check_weights(args.sam2, "--sam2", "--segmenter motion (weight-free)")
    nmethods = 2 if args.judge or args.study else 1
    if args.method and len(args.method) > nmethods:
        raise BadInput(f"--method {' '.join(args.method)}: at most {nmethods} name(s) here")
    if args.layout == "released" and not args.method and (args.results or args.judge or args.study):
        raise BadInput("--layout released needs --method NAME (the <method>.mp4 to read in each sample-*/ folder)")
    if args.method and args.layout != "released":
        raise BadInput("--method picks a video in the released layout's sample-*/ folders; add --layout released")
    for flag, runs in (("results", [args.results] if args.results else []), ("judge", args.judge or []),
                       ("study", args.study or [])):
        for run in runs if args.layout == "results" else []:
            if not (Path(run) / "results.jsonl").is_file():
                names = "NAME" if flag == "results" else "NAME_A NAME_B"
                raise BadInput(f"--{flag} {run}: no results.jsonl there (write it with sample.py --triplets FILE "
                               f"--out {run}; the paper's released folders: --layout released --method {names})")
    if (args.compare or args.tally) and (args.layout != "results" or args.method):
        raise BadInput("--layout / --method choose what --results, --judge or --study read; --compare and --tally "
                       "read scored or answered folders as they are")
    if args.tally:
        if len(args.tally) < 2:
            raise BadInput(f"--tally {args.tally[0]}: give the study folder and then the answers-*.json files")
        return
    if not args.compare:
        data.check_out_dir(args.out or default_out(args), "--out")


def released_records(folder, method):
    """The paper's released result folders, read as they are (as the StM release's evaluation reads them):
    <folder>/sample-*/ holding fg.mp4 (the subject on black), bg.mp4, prompt.txt, optionally mask.mp4, and one
    <method>.mp4 per method -> results.jsonl-style records (absolute paths; id = the sample folder's name)."""
    folder = Path(folder)
    samples = sorted(d for d in folder.glob("sample-*") if d.is_dir()) if folder.is_dir() else []
    if not samples:
        raise BadInput(f"{folder}: no sample-*/ folders there (--layout released reads sample-*/ holding fg.mp4, "
                       "bg.mp4, prompt.txt and one <method>.mp4 per method)")
    methods = sorted({f.stem for d in samples for f in d.glob("*.mp4")} - {"fg", "bg", "mask", "fg_cb"})
    if method not in methods:
        raise BadInput(f"--method {method}: {'not in' if method else 'name one of the methods in'} {folder} "
                       f"(its sample folders hold: {', '.join(methods) or 'no method videos'})")
    recs = []
    for d in samples:
        rec = {"id": d.name, "fg": str(d / "fg.mp4"), "bg": str(d / "bg.mp4"), "result": str(d / f"{method}.mp4"),
               "prompt": (d / "prompt.txt").read_text().strip() if (d / "prompt.txt").is_file() else ""}
        recs.append({**rec, "mask": str(d / "mask.mp4")} if (d / "mask.mp4").is_file() else rec)
    return recs


def read_records(folder, limit=0, layout="results", method=None):
    """A run -> (records to score as (line, record), skipped as {line, id, why}): results.jsonl in `folder`
    (sample.py --triplets), or with layout "released" the paper's sample-*/ folders and one method's videos (line =
    the sample's position). The first `limit` records (0 = all); one whose video is missing or unreadable is
    skipped and reported. None usable: BadInput."""
    src = Path(folder) / "results.jsonl"
    if layout == "released":
        rows, problems, src = list(enumerate(released_records(folder, method), 1)), [], Path(folder)
    else:
        rows, problems = data.read_jsonl(src)
    skipped = [{"line": i, "id": None, "why": m.split(": ", 1)[1]} for i, m in problems]
    good, seen = [], {}
    for i, rec in rows[:limit or None]:
        why = check_record(rec, Path(folder))
        key = None if why else _path(rec["result"], Path(folder)).resolve()
        if key in seen:
            why = f"the same result as line {seen[key]}, scored once"
        elif key is not None:
            seen[key] = i
        if why:
            skipped.append({"line": i, "id": rec.get("id"), "why": why})
        else:
            good.append((i, rec))
    skipped.sort(key=lambda s: s["line"])
    if not good:
        first = f" (line {skipped[0]['line']}: {skipped[0]['why']})" if skipped else ""
        raise BadInput(f"{src}: none of its {len(rows)} records can be scored{first}; "
                       "each needs readable result, fg and bg videos")
    return good, skipped


def absolute_videos(rec, base, keys=("fg", "bg", "mask", "result", "reference")):
    """A record's video paths (relative to `base` or absolute), resolved: {key: absolute path or None}."""
    return {k: str(_path(rec[k], base).resolve()) if rec.get(k) else None for k in keys}


def pair_runs(run_a, run_b, layout="results", methods=(None, None)):
    """Two runs over the same triplets -> (pairs, (only in A, only in B)) for the judge and the user study: one
    dict per triplet in both, matched by id (else by fg, bg and prompt), with absolute paths: id, fg, bg, mask,
    prompt, a and b (the two results), and the toy's reference / expect where the record has them."""
    def load(folder, method):
        recs = [r for _, r in read_records(folder, 0, layout, method)[0]]
        recs = [{**r, **absolute_videos(r, Path(folder))} for r in recs]
        return {r.get("id") or "|".join([r["fg"], r["bg"], r.get("prompt", "")]): r for r in recs}
    a, b = load(run_a, methods[0]), load(run_b, methods[1])
    pairs = [{**{k: v for k, v in r.items() if k != "result"}, "id": str(r.get("id") or f"{i:04d}"),
              "prompt": r.get("prompt", ""), "a": r["result"], "b": b[k]["result"]}
             for i, (k, r) in enumerate(a.items()) if k in b]
    if not pairs:
        raise BadInput(f"{run_a} and {run_b}: no triplet in both (matched by id, else by fg, bg and prompt); "
                       "compare two runs over the same triplets")
    if any(p["a"] == p["b"] for p in pairs):
        raise BadInput(f"{run_a} and {run_b}: the two runs are the same videos; give two different runs (with "
                       "--layout released, two methods: --method NAME_A NAME_B)")
    return pairs, (len(a) - len(pairs), len(b) - len(pairs))


def load_networks(args):
    """Networks(...) of the flags, or one line naming the weights that could not be loaded."""
    try:
        return Networks(args.viclip, args.swin, args.raft, args.viclip_config, args.swin_config, args.raft_config,
                        args.bpe, args.device)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as e:
        given = " ".join(f"--{k} {v}" for k, v in (("viclip", args.viclip), ("swin", args.swin), ("raft", args.raft))
                         if v)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"the metric networks ({given}) could not be loaded: {msg}; check the weight files and the "
                       "--*-config presets they match") from None


def _stat(path):
    """(size, mtime) of a result: a video rewritten since it was scored has new ones."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def read_scored(out, recs, base, settings):
    """The rows an earlier run left in <out>/metrics.jsonl (resume: they are not scored again). Each row is appended
    as its record is scored, so a stopped run keeps them; a torn last line is dropped, with a warning. Rows made
    with other flags, or of a result rewritten since, are never mixed in nor removed: one line, another --out."""
    f = out / "metrics.jsonl"
    old, problems = data.read_jsonl(f) if f.is_file() else ([], [])
    rows = [r for _, r in old]
    # rows from before --segmenter existed were made with the motion segmenter
    was_of = lambda r: {"segmenter": "motion", "sam2": None, **r["settings"]} if r.get("settings") else None
    other = [r for r in rows if was_of(r) != settings]
    if other:
        was = was_of(other[0]) or {}
        diff = [k for k in SCORE_FLAGS if was.get(k) != settings[k]] if was else ["none recorded: an older evaluate.py"]
        raise BadInput(f"{f}: holds {len(other)} scores made with other flags ({', '.join(diff)}); they are kept: "
                       "pass another --out, or the same flags to add to them")
    done = {r.get("result"): r.get("result_stat") for r in rows}
    paths = [str(_path(r["result"], base).resolve()) for r in recs]
    stale = [p for p in paths if p in done and done[p] != _stat(p)]
    if stale:
        raise BadInput(f"{f}: scores {stale[0]}{f' (and {len(stale) - 1} more)' if stale[1:] else ''} as it was "
                       "before it was rewritten; they are kept: pass another --out to score the new results, or "
                       "delete that file")
    data.drop_problem_lines(f, rows, problems)
    return rows


def join_metrics(out, order):
    """Rank 0, alone: the rows the ranks appended to metrics.rank-R.jsonl that metrics.jsonl lacks are added to it,
    in `order` (result paths: the records' order, as one process appends them); then those files go. Run at the end,
    and at the start of a rerun after a kill, so a rank's finished scores count as done."""
    recs, files = data.rank_records(out, "metrics")
    if not files:
        return
    have = [r for _, r in data.read_jsonl(out / "metrics.jsonl")[0]] if (out / "metrics.jsonl").is_file() else []
    seen, pos, new = {r.get("result") for r in have}, {k: i for i, k in enumerate(order)}, {}
    for r in recs:
        if r.get("result") not in seen:
            new.setdefault(r.get("result"), r)
    add = sorted(new.values(), key=lambda r: pos.get(r.get("result"), len(pos)))
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in have + add))
    for f in files:
        f.unlink()


def run_judge(args):
    """--judge RUN_A RUN_B: the VLM judge over the triplets both runs hold (judge.py)."""
    import judge
    pairs, names, out = pairs_of(args, args.judge)
    settings = {"backend": args.backend, "model": args.judge_model, "seed": args.seed,
                "frames": args.judge_frames if args.backend == "qwen" else None}
    if args.backend == "gemini":
        vlm = judge.GeminiJudge(args.judge_model or "gemini-2.5-pro")
    else:
        from decompose import check_weights
        path = args.judge_model or "Qwen/Qwen2.5-VL-7B-Instruct"
        check_weights(path, "--judge-model", "--backend gemini (GEMINI_API_KEY)")
        vlm = judge.QwenJudge(path, args.device, frames=args.judge_frames)
    try:
        t = judge.judge_pairs(vlm, pairs, out, args.seed, judge.KEYS, *names, settings=settings)
    except RuntimeError as e:                     # the judge failed (network, quota): the answers so far are kept
        raise BadInput(str(e)) from None
    print(judge.tally_table(t, *names), end="")
    print(f"-> {out}/judge.md, judge.svg, judge.json, answers.jsonl")
    return t


def pairs_of(args, runs):
    """The pairs of --judge / --study RUN_A RUN_B, the runs' names and the output folder; says what is unmatched."""
    methods = (args.method or [None]) * 2 if args.layout == "released" else (None, None)
    methods = methods[:1] * 2 if args.method and len(args.method) == 1 else methods[:2]
    pairs, (only_a, only_b) = pair_runs(*runs, args.layout, methods)
    if only_a or only_b:
        print(f"warning: {only_a} triplets only in {runs[0]} and {only_b} only in {runs[1]} are left out; "
              f"comparing {len(pairs)}", file=sys.stderr)
    names = [m or Path(r).resolve().name for r, m in zip(runs, methods)]
    names = names if names[0] != names[1] else [f"{n} ({r})" for n, r in zip(names, runs)]
    return pairs[:args.limit or None], names, Path(args.out or default_out(args))


def main(args):
    check_flags(args)
    if args.compare:
        return compare(args.compare, args.out)
    if args.judge:
        return run_judge(args)
    if args.study:
        import report
        pairs, names, out = pairs_of(args, args.study)
        page = report.write_study(pairs, out, *names, seed=args.seed, n=args.study_n or None)
        print(f"study of {min(len(pairs), args.study_n or len(pairs))} examples: open {page} (share {page.parent}; "
              f"keep {out / 'key.json'}), then python evaluate.py --tally {out} answers-*.json")
        return page
    if args.tally:
        import judge
        import report
        t = report.tally_study(args.tally[0], args.tally[1:])
        print(judge.tally_table(t, *json.loads((Path(args.tally[0]) / "key.json").read_text())["names"]), end="")
        return t
    return score(args)


def score(args):
    """--results: score every record of a run (resumable; torchrun shares the records), then the summary."""
    base = Path(args.results)
    out = Path(args.out or default_out(args))
    recs, skipped = read_records(base, args.limit, args.layout, (args.method or [None])[0])
    settings = {k: getattr(args, k) for k in SCORE_FLAGS}
    key = lambda r: str(_path(r["result"], base).resolve())
    ranks = data.Ranks()                                   # torchrun: this process's share of the records
    args.device = str(ranks.device) if ranks.world > 1 and args.device == "cuda" else args.device
    if ranks.rank == 0:
        join_metrics(out, [key(r) for _, r in recs])      # what a killed run's ranks scored counts as done
    ranks.wait()
    rows = read_scored(out, [r for _, r in recs], base, settings)
    done = {r["result"] for r in rows}
    left = [(i, r) for i, r in recs if key(r) not in done]
    todo, left_keys = ranks.mine(left), {key(r) for _, r in left}
    if len(left) < len(recs) and ranks.rank == 0:
        print(f"{len(recs) - len(todo)} records already scored in {out}/metrics.jsonl are kept; scoring {len(todo)}")
    nets = load_networks(args) if todo else Networks()
    missing = [n for n, w in (("ViCLIP (M1, M4)", args.viclip), ("Swin3D (M2)", args.swin), ("RAFT (M3)", args.raft))
               if not w]
    if missing and todo and ranks.rank == 0:
        print(f"no weights for {', '.join(missing)}: those metrics are skipped; weight-free measures "
              f"(bg PSNR/SSIM, fg colour histogram{', classical-flow M3' if not args.raft else ''}) are reported")
    out.mkdir(parents=True, exist_ok=True)
    count = lambda: len({r.get("result") for r in data.rank_records(out, "metrics")[0]} & left_keys)
    progress, n_skipped = data.Progress(ranks, f"evaluate {base}", len(left), len(todo), count), len(skipped)
    for i, rec in todo:
        try:
            row = evaluate_record(rec, base, nets, args.max_frames, args.max_side, args.toy_threshold, args.cp_radius,
                                  args.segmenter, args.sam2)
        except (ValueError, KeyError, TypeError, OSError) as e:    # this record only: report it, score the rest
            skipped.append({"line": i, "id": rec.get("id"), "why": f"{type(e).__name__}: {e}"})
            continue
        except KeyboardInterrupt:
            sys.exit(f"interrupted: {out}/metrics.jsonl keeps the {len(rows)} records scored; rerun to resume")
        row = json_safe({**row, "result_stat": _stat(key(rec)), "settings": settings})
        data.append_jsonl(ranks.record_file(out, "metrics"), row)    # one write of one line: a kill tears at most it
        rows.append(row)
        progress.step()
    seconds = progress.close()
    if ranks.world > 1:                                    # every rank's skips; rank 0 joins the scores and reports
        skipped = skipped[:n_skipped] + [s for mine in ranks.gather(skipped[n_skipped:]) for s in mine]
        if ranks.rank > 0:
            return None
        join_metrics(out, [key(r) for _, r in recs])
        rows = [r for _, r in data.read_jsonl(out / "metrics.jsonl")[0]]
    print(f"{len(left)} records in {seconds:.1f}s ({len(left) / max(seconds, 1e-9):.3g}/s, {ranks.world} "
          "process(es))")
    skipped.sort(key=lambda s: s["line"])
    said = [f"line {s['line']}" + (f" ({s['id']})" if s["id"] else "") + f": {s['why']}" for s in skipped]
    src = base / "results.jsonl" if args.layout == "results" else base
    for msg in said:
        print(f"warning: skipped {src} {msg}", file=sys.stderr)
    notes = [f"{r.get('id')}: {n}" for r in rows for n in r.get("notes", [])]
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)
    # where the records came from, so that --compare can show each triplet's videos
    source = {"folder": str(base.resolve()), "layout": args.layout, "method": (args.method or [None])[0]}
    name = args.name or (source["method"] if args.layout == "released" else base.resolve().name)
    summary = {**summarise(rows), "name": name, "skipped": skipped, "notes": notes, "source": source,
               "segmenter": SEGMENTERS[args.segmenter].format(sam2=args.sam2)}
    atomic_write_text(out / "summary.json", json.dumps(json_safe(summary), indent=1))
    note = f"\nLayers of the generated videos: {summary['segmenter']}.\n"
    note += f"\nNo weights for {', '.join(missing)}: \"weight-free\" columns are the fallbacks.\n" if missing else ""
    note += f"\nSkipped (not scored) {src.name} records:\n" + "".join(f"- {m}\n" for m in said) if said else ""
    note += "\nNotes:\n" + "".join(f"- {n}\n" for n in notes) if notes else ""
    atomic_write_text(out / "summary.md", f"# {args.results}\n\n" + table({name: summary}) + note + "\n")
    print(table({name: summary}), end="")
    html = write_report(out, {name: summary}, {name: rows}, f"{args.results}: {summary['segmenter']}")
    print(f"-> {out}/summary.md, summary.json, metrics.jsonl, {html.name}")
    return summary


SEGMENTERS = {"motion": "the Split stage's weight-free motion segmenter (segment.motion_mask)",
              "sam2": "SAM 2 ({sam2}) prompted with the motion segmenter's box, as the Split stage's --segmenter sam2"}


def write_report(out, summaries, rows, title):
    """OUT/report.html (report.py): the summary table, a bar chart per metric, and per triplet its input videos,
    the toy's correct composite where there is one, and each run's result with its metrics. summaries / rows: by run
    name, a summary (with its "source") and the metrics.jsonl rows."""
    import report
    runs = []
    for name, summary in summaries.items():
        src, by_result, triplets = summary.get("source"), {r.get("result"): r for r in rows[name]}, []
        if src:                              # the records again, for their input videos (paths made absolute)
            base = Path(src["folder"])
            for _, rec in read_records(base, 0, src["layout"], src["method"])[0]:
                row = by_result.get(str(_path(rec["result"], base).resolve()))
                if row is not None:
                    files = absolute_videos(rec, base, ("fg", "bg", "mask", "reference"))
                    triplets.append({**row, **files, "id": rec.get("id") or row.get("id"),
                                     "prompt": rec.get("prompt", "")})
        runs.append({"name": name, "summary": summary, "rows": triplets})
    return report.write_report(out, runs, COLUMNS, title)


if __name__ == "__main__":
    data.run_cli(main, parser)
