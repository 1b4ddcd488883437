"""
Evaluate compositions: the paper's metrics (Table 1-2), weight-free fallbacks and the toy world's exact scores of a
run, and the pairwise preference of two runs (Table 3) by a VLM judge or by people. One subcommand per job:

    python evaluate.py results results/toy                             # weight-free + toy metrics -> results/toy/eval/
    python evaluate.py results results/real --viclip OpenGVLab/ViCLIP-L-14-hf \\
        --swin swin3d_b_1k-24f7c7c6.pth --raft raft_large_C_T_SKHT_V2-ff5fadd5.pth   # M1-M4 as in the StM release
    python evaluate.py compare results/full results/no-aug results/no-aug/eval --out cmp   # runs side by side
    python evaluate.py results Organized_Results --layout released --method gen-recomposer  # the paper's own outputs
    python evaluate.py judge results/stm results/copy-paste --judge-model Qwen/Qwen2.5-VL-7B-Instruct --out jd
    GEMINI_API_KEY=... python evaluate.py judge results/stm results/copy-paste --backend gemini   # as the paper
    python evaluate.py study results/stm results/copy-paste --study-n 25 --out study   # a static site for people
    python evaluate.py tally study answers/*.json                      # their exported answers -> win / tie / lose

What is scored (M1-M4 as in the StM release, weight-free measures, the toy world's exact scores) and how to
read it: docs/evaluation.md, "What is scored".

The run. `results RESULTS_DIR` reads results.jsonl as sample.py --triplets writes it: one line per composite with
`fg` (subject on black, or any video with `mask`), `bg`, `prompt`, `result` (the generated video) and, for toy
triplets, `expect`; relative paths are relative to the folder, inputs are resampled to the generated video's frames
and size (fit_video). --layout released reads the paper's released result folders as they are: sample-*/ holding
fg.mp4, bg.mp4, prompt.txt and one <method>.mp4 per method (--method picks one; two for judge / study). A record
whose videos are missing or unreadable is skipped and reported (stderr, summary.md / .json); the scores go to
metrics.jsonl through the record engine (plumbing.records.Job), so a stopped run resumes where it stopped,
torchrun's processes share the records, and scores made with other flags are refused (--overwrite: rescored).
results and compare (with --out) also write report.html: the table, a bar chart per metric, and per triplet the
input videos, the toy's correct composite and each run's result with its metrics; it opens from disk.
Pairwise preference (the paper's Table 3, Figures 7-8; others/judge.py, others/pages.py): judge asks a VLM, per
triplet and criterion, the paper's instruction with only that criterion's references and the two results in a
seeded random order; study writes the same questions as a web form for people, tally counts their exported
answers. Both give win / tie / lose of RUN_A against RUN_B per criterion, as a table and a stacked-bar plot (SVG).
Unusable flags: one line, exit code 2. Library use: evaluate_record(rec, base, metrics.Networks(...), ...)
scores one record.
"""
import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from plumbing import weights
from plumbing.cli import WRITE_ERRORS, BadInput, check_device, check_out_dir, check_ranges, run_cli
from plumbing.dataset import read_results, resolve_path, sweep_sets
from plumbing.files import atomic_write_text
from plumbing.ranks import Ranks
from plumbing.records import Job, json_safe, read_jsonl
from plumbing.video import dilate, fit_video, read_mask, read_video
from others import judge, metrics, segmo
from others import pages
from others.segment import motion_mask, sam2_mask
import toy

# (key, column label, arrow): the order of the summary table
COLUMNS = [
    ("m1_fg", "M1 fg identity (ViCLIP)", "↑"), ("m1_bg", "M1 bg identity (ViCLIP)", "↑"),
    ("m2_action_kl", "M2 action KL (Swin3D)", "↓"), ("m3_flow_mse", "M3 bg flow MSE (RAFT)", "↓"),
    ("m4_text", "M4 text (ViCLIP)", "↑"),
    ("wf_m3_flow_mse", "M3 bg flow MSE (classical, weight-free)", "↓"),
    ("wf_bg_psnr", "bg PSNR (weight-free)", "↑"), ("wf_bg_ssim", "bg SSIM (weight-free)", "↑"),
    ("wf_fg_hist", "fg colour-hist (weight-free)", "↑"),
    ("toy_shape_iou", "toy shape IoU", "↑"), ("toy_size_ratio", "toy size ratio", "≈"),
    ("toy_colour_err", "toy colour err", "↓"),
    ("toy_track_err", "toy track err (px)", "↓"), ("toy_bg_psnr", "toy bg PSNR", "↑"),
    ("toy_affordance", "toy affordance", "↑"),
    ("toy_affordance_moved", "toy affordance (moved)", "↑"), ("toy_copy_paste", "toy copy-paste", "↓"),
    ("toy_tint_match", "toy tint match", "↑"), ("toy_shadow_ok", "toy shadow ok", "↑"),
]
SEGMENTERS = {"motion": "the Split stage's weight-free motion segmenter (segment.motion_mask)",
              "sam2": "SAM 2 ({sam2}) prompted with the motion segmenter's box, as the Split stage's --segmenter sam2",
              "segmo": "Segment-Any-Motion (others/segmo.py), as the StM release re-decomposes for M1-M3"}


# ---------------------------------------------------------------------------------------------
# What is scored: one record


def evaluate_record(rec, base, nets, max_frames=0, max_side=0, toy_threshold=40.0, cp_radius=None,
                    segmenter="motion", sam2=None, segmo_spec=None, device="cpu"):
    """One results.jsonl record (paths relative to `base`) -> its metrics; nets: a Networks.
    max_frames / max_side / toy_threshold / cp_radius / segmenter / sam2: as the flags of the same names;
    segmo_spec: the --segmo-* models (others.segmo.SegAnyMoSpec); device: where the segmenter runs."""
    gen, fg, bg, mask, geom = load_record(rec, base, max_frames, max_side)
    if min(gen.shape[1:3]) < 16:
        raise ValueError(f"the result is {gen.shape[2]}x{gen.shape[1]}: too small to segment and score (at least "
                         "16 pixels a side)")
    gen_mask = subject_mask(gen, segmenter, sam2, segmo_spec, device)
    out = {"id": rec.get("id"), "result": str(resolve_path(rec["result"], base).resolve()), "frames": len(gen),
           "size": list(gen.shape[1:3]), "gen_fg_ratio": float(gen_mask.mean())}
    out.update(nets(gen, fg, bg, gen_mask, rec.get("prompt", "")))
    r = max(1, round(min(gen.shape[1:3]) / 100))
    outside = ~dilate(torch.as_tensor(mask | gen_mask), r).numpy()
    out["wf_bg_psnr"] = metrics.masked_psnr(gen, bg, outside)
    out["wf_bg_ssim"] = metrics.masked_ssim(gen, bg, outside)
    # 0 where the generated video lacks a subject the input has (a real failure); null, with the reason, where
    # the input itself gives nothing to compare with
    out["wf_fg_hist"] = float(torch.minimum(metrics.colour_hist(fg, mask), metrics.colour_hist(gen, gen_mask)).sum()) \
        if mask.any() and gen_mask.any() else (0.0 if mask.any() else None)
    if nets.raft is None:
        out["wf_m3_flow_mse"] = metrics.background_flow_mse(bg, gen * ~gen_mask[..., None], gen_mask)
    if rec.get("expect"):
        out.update(toy.metrics(gen, fg, bg, mask, rec["expect"], geom, toy_threshold, cp_radius))
    notes = []
    if not mask.any():
        notes.append("the input mask is empty (no subject): fg measures left out (null)")
        out.update({k: None for k in ("m1_fg", "m2_action_kl", "wf_fg_hist") if k in out})
    if not outside.any():
        notes.append("the masks cover every pixel (no background left to compare): bg measures left out (null)")
        out.update({k: None for k in ("m1_bg", "m3_flow_mse", "wf_m3_flow_mse", "wf_bg_psnr", "wf_bg_ssim")
                    if k in out})
    if len(gen) < 2:                           # flow is measured between frames: one frame has none
        notes.append(f"M3 (bg flow) needs at least 2 frames, the result has {len(gen)}: left out (null)")
    if notes:
        out["notes"] = notes
    return out


def subject_mask(video, segmenter="motion", sam2=None, segmo_spec=None, device="cpu"):
    """A generated video's subject mask, by the same segmenter as the Split stage (decompose.clip_mask): the
    weight-free motion segmenter, SAM 2 prompted with its box, or Segment-Any-Motion as the StM release
    re-decomposes (the union of the moving objects; an empty fg when nothing moves)."""
    if segmenter == "segmo":
        return segmo.resident(segmo_spec, str(device)).seg(video)[0].numpy()
    mask = motion_mask(video)
    return sam2_mask(video, mask, sam2, device=device) if segmenter == "sam2" else mask


def load_record(rec, base, max_frames=0, max_side=0):
    """-> gen, input fg layer, input bg uint8 (T,H,W,3), input mask bool (T,H,W), geometry (s, left, top)
    mapping input pixel coordinates to the generated video's (x_gen = x_in * s - left)."""
    gen = read_video(resolve_path(rec["result"], base))[0]
    T, H, W = gen.shape[:3]
    if max_side and max(H, W) > max_side:
        k = max_side / max(H, W)
        H, W = max(2, round(H * k / 2) * 2), max(2, round(W * k / 2) * 2)
    T = min(T, max_frames) if max_frames else T
    gen = fit_video(gen, T, H, W, name="result")
    fg_raw = read_video(resolve_path(rec["fg"], base))[0]
    if rec.get("mask"):
        mask = fit_video(read_mask(resolve_path(rec["mask"], base)), T, H, W, mask=True, name="mask")
    else:
        mask = fit_video(fg_raw.max(-1) > 16, T, H, W, mask=True, name="fg")  # non-black = subject
    fg = fit_video(fg_raw, T, H, W, name="fg") * mask[..., None]
    bg = fit_video(read_video(resolve_path(rec["bg"], base))[0], T, H, W, name="bg")
    h, w = fg_raw.shape[1:3]
    s = max(H / h, W / w)
    return gen, fg, bg, mask, (s, (round(w * s) - W) // 2, (round(h * s) - H) // 2)


# ---------------------------------------------------------------------------------------------
# The loop over a run's records, on the record engine (plumbing.records.Job): one record per scored result appended
# as it is scored, so a rerun after any kill scores only what is left; torchrun's processes share the records; a
# result (or its inputs, or the weights) changed since it was scored is scored again; a record that cannot be
# scored is recorded with its reason and reported; scores made with other flags are refused (or, --overwrite, redone);
# a record scored by other scoring code (SCORING_CODE changed since) is scored again

# The flags a score depends on: an eval folder holds the scores of one setting, so that its summary means one thing
SCORE_FLAGS = ("viclip", "viclip_config", "bpe", "swin", "swin_config", "raft", "raft_config", "max_frames",
               "max_side", "toy_threshold", "cp_radius", "segmenter", "sam2")


# The code a score depends on, by content: a record scored by other code (a metric fixed or added since) is scored
# again, as one whose result file changed. The files evaluate_record's measures live in (not the report pages).
SCORING_CODE = ("evaluate.py", "toy.py", "others/metrics.py", "others/segment.py", "others/segmo.py",
                "others/moseg.py", "others/tapir.py", "plumbing/video.py")


def scoring_code_id():
    """sha256 of the scoring code's text (its content, so a fresh clone or a touched file keeps the scores)."""
    h = hashlib.sha256()
    for f in SCORING_CODE:
        h.update((Path(__file__).resolve().parent / f).read_bytes())
    return h.hexdigest()


def score(args):
    """results RESULTS_DIR: score every record of a run not scored yet, then the summary of all (rank 0)."""
    base, out = Path(args.results), results_out(args)
    recs, skipped = read_results(base, args.limit, args.layout, (args.method or [None])[0])
    items = [{**rec, "id": str(rec.get("id") or f"line-{i}"), "line": i} for i, rec in recs]
    nets_files = [w for w in (args.viclip, args.bpe, args.swin, args.raft, args.sam2) if w]
    code = ("scoring code", scoring_code_id())
    inputs = lambda it: [resolve_path(it[k], base) for k in ("result", "fg", "bg", "mask") if it.get(k)] + nets_files \
        + [code]
    settings = {k: getattr(args, k) for k in SCORE_FLAGS}
    if args.segmenter == "segmo":                       # its five models are part of what the scores mean
        settings.update({k: v for k, v in vars(args).items() if k.startswith("segmo_")})
    settings["results"] = str(base.resolve())           # one eval folder holds the scores of one run
    ranks = Ranks()                                   # torchrun: this process's share of the records
    device = str(ranks.device) if ranks.world > 1 and args.device == "cuda" else args.device
    nets = load_networks(args, device)
    spec = segmo.spec_of(args) if args.segmenter == "segmo" else None
    job = Job(out, "metrics", items, inputs=inputs, settings=settings, ranks=ranks, overwrite=args.overwrite,
              what="score")
    todo = job.todo()
    if len(job.left) < len(items) and ranks.rank == 0:
        print(f"{len(items) - len(job.left)} records already scored in {out}/metrics.jsonl are kept; "
              f"scoring {len(job.left)}")
    missing = [n for n, w in (("ViCLIP (M1, M4)", args.viclip), ("Swin3D (M2)", args.swin), ("RAFT (M3)", args.raft))
               if not w]
    if missing and todo and ranks.rank == 0:
        print(f"no weights for {', '.join(missing)}: those metrics are skipped; weight-free measures "
              f"(bg PSNR/SSIM, fg colour histogram{', classical-flow M3' if not args.raft else ''}) are reported")
    for it in todo:
        try:
            row = evaluate_record(it, base, nets, args.max_frames, args.max_side, args.toy_threshold, args.cp_radius,
                                  args.segmenter, args.sam2, spec, device)
        except KeyboardInterrupt:
            sys.exit(f"interrupted: the records scored so far are kept in {out}; rerun to resume")
        except Exception as e:                     # this record only (a video too small to segment, ...): report it
            if isinstance(e, OSError) and e.errno in WRITE_ERRORS:
                raise
            job.skip(it["id"], f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", line=it["line"])
            continue
        job.done(it["id"], json_safe({**row, "settings": settings}))
    recs = job.finish()
    if recs is None:                                  # ranks > 0: rank 0 reports
        return None
    print(f"{len(job.left)} records in {job.seconds:.1f}s ({len(job.left) / max(job.seconds, 1e-9):.3g}/s, "
          f"{ranks.world} process(es))")
    line = {it["id"]: it["line"] for it in items}     # the records of this plan that could not be scored
    skipped += [{"line": line[r["id"]], "id": r["id"], "why": r.get("error")} for r in recs
                if r.get("status") != "ok" and r["id"] in line]
    return write_summary(args, out, [r for r in recs if r.get("status") == "ok"], skipped, missing)


def load_networks(args, device):
    """metrics.Networks(...) of the flags, or one line naming the weights that could not be loaded."""
    try:
        return metrics.Networks(args.viclip, args.swin, args.raft, args.viclip_config, args.swin_config,
                                args.raft_config, args.bpe, device)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as e:
        given = " ".join(f"--{k} {v}" for k, v in (("viclip", args.viclip), ("swin", args.swin), ("raft", args.raft))
                         if v)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"the metric networks ({given}) could not be loaded: {msg}; check the weight files and the "
                       "--*-config presets they match") from None


def write_summary(args, out, rows, skipped, missing):
    """The end of a results run: its skips and notes (stderr), summary.json / .md, report.html -> the summary."""
    base = Path(args.results)
    skipped.sort(key=lambda s: s["line"])
    said = [f"line {s['line']}" + (f" ({s['id']})" if s["id"] else "") + f": {s['why']}" for s in skipped]
    src = base / "results.jsonl" if args.layout == "results" else base
    for msg in said:
        print(f"warning: skipped {src} {msg}", file=sys.stderr)
    notes = [f"{r.get('id')}: {n}" for r in rows for n in r.get("notes", [])]
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)
    # where the records came from, so that compare can show each triplet's videos
    source = {"folder": str(base.resolve()), "layout": args.layout, "method": (args.method or [None])[0]}
    name = args.name or (source["method"] if args.layout == "released" else base.resolve().name)
    summary = {**summarise(rows), "name": name, "skipped": skipped, "notes": notes, "source": source,
               "segmenter": SEGMENTERS[args.segmenter].format(sam2=args.sam2), "composed_with": composed_with(base)}
    atomic_write_text(out / "summary.json", json.dumps(json_safe(summary), indent=1))
    note = f"\nLayers of the generated videos: {summary['segmenter']}.\n"
    note += f"\nNo weights for {', '.join(missing)}: \"weight-free\" columns are the fallbacks.\n" if missing else ""
    note += f"\nSkipped (not scored) {src.name} records:\n" + "".join(f"- {m}\n" for m in said) if said else ""
    note += "\nNotes:\n" + "".join(f"- {n}\n" for n in notes) if notes else ""
    atomic_write_text(out / "summary.md", f"# {args.results}\n\n" + table({name: summary}) + note + "\n")
    print(table({name: summary}), end="")
    html = pages.write_runs_report(out, {name: summary}, {name: rows}, COLUMNS,
                                   f"{args.results}: {summary['segmenter']}")
    print(f"-> {out}/summary.md, summary.json, metrics.jsonl, {html.name}")
    return summary


def composed_with(folder):
    """The sample.py settings a results folder was composed with (guidance, steps, sampler, seed, ...), or None
    (the released layout, or records without them)."""
    rows, _ = read_jsonl(Path(folder) / "results.jsonl") if (Path(folder) / "results.jsonl").is_file() else ([], [])
    return next((r["settings"] for _, r in rows if isinstance(r.get("settings"), dict)), None)


def setting(summary, key):
    """A sample.py setting (guidance, steps, ...) the summarised run was composed with, or None."""
    return (summary.get("composed_with") or {}).get(key)


def summarise(rows):
    """Mean of every numeric metric over the records (nan / None skipped)."""
    def mean(v):
        v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
        return float(np.mean(v)) if v else float("nan")
    keys = [k for k, _, _ in COLUMNS if any(k in r for r in rows)]
    return {"n": len(rows), **{k: mean([r.get(k) for r in rows]) for k in keys}}


def table(runs, by=None):
    """runs: {name: summary} -> markdown table shaped like the paper's Table 2 (rows = runs); `by`: a sample.py
    setting shown as a column of its own (guidance, for a sweep)."""
    cols = [(k, lab, arr) for k, lab, arr in COLUMNS if any(k in s for s in runs.values())]
    lines = ["| run | " + (f"{by} | " if by else "") + "n | " + " | ".join(f"{lab} {arr}" for _, lab, arr in cols)
             + " |", "| --- | " + ("--- | " if by else "") + "--- | " + " | ".join("---" for _ in cols) + " |"]
    for name, s in runs.items():
        cell = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
        lines.append(f"| {name} | " + (f"{cell(setting(s, by))} | " if by else "")
                     + f"{s['n']} | " + " | ".join(cell(s.get(k)) for k, _, _ in cols) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The records of a run


# ---------------------------------------------------------------------------------------------
# The subcommands: each checks its own flags (one line, before anything is read or loaded), then runs


def run_results(args):
    """results RESULTS_DIR: score a run -> RESULTS_DIR/eval (summary.md / .json, metrics.jsonl, report.html)."""
    a = args
    check_ranges(("--max-frames", a.max_frames, a.max_frames >= 0, "at least 0 (0 = all)"),
                 ("--max-side", a.max_side, a.max_side >= 0, "at least 0 (0 = native)"),
                 ("--toy-threshold", a.toy_threshold, 0 <= a.toy_threshold < 255, "in [0, 255)"),
                 ("--cp-radius", a.cp_radius, a.cp_radius is None or a.cp_radius > 0, "above 0"))
    check_device(args.device)
    if args.segmenter == "sam2" and not args.sam2:
        raise BadInput("--segmenter sam2 needs --sam2 (SAM 2 weights: a folder or a hub id such as "
                       "facebook/sam2.1-hiera-tiny), or use --segmenter motion (weight-free)")
    if args.segmenter == "sam2":
        weights.check_weights(args.sam2, "--sam2", "--segmenter motion (weight-free)")
    if args.segmenter == "segmo":
        segmo.check_flags(args, "--segmenter motion (weight-free)")
    sets = sweep_sets(args.results, "results.jsonl") if args.layout == "results" and not \
        (Path(args.results) / "results.jsonl").is_file() else []
    if sets:                                            # a guidance sweep: every set scored into its own eval/
        if args.out or args.name:
            raise BadInput(f"results {args.results}: a sweep's sets are scored into <set>/eval, each named by its "
                           "folder; leave out --out / --name (or score one set: results <set>)")
        print(f"{args.results}: a guidance sweep of {len(sets)} sets: " + ", ".join(d.name for d in sets))
        return {d.name: run_results(argparse.Namespace(**{**vars(args), "results": str(d)})) for d in sets}
    check_reading(args, "results", [args.results], 1)
    check_out_dir(results_out(args), "--out")
    return score(args)


def results_out(args):
    """results' --out, default RESULTS_DIR/eval (with --layout released: RESULTS_DIR/eval-METHOD)."""
    name = f"eval-{args.method[0]}" if args.layout == "released" else "eval"
    return Path(args.out or Path(args.results) / name)


def check_reading(args, command, runs, nmethods):
    """--limit, --layout / --method (at most `nmethods` names) and the runs they read: a released layout needs a
    method, and a results folder its results.jsonl."""
    check_ranges(("--limit", args.limit, args.limit >= 0, "at least 0 (0 = all)"))
    if args.method and len(args.method) > nmethods:
        raise BadInput(f"--method {' '.join(args.method)}: at most {nmethods} name(s) here")
    if args.layout == "released" and not args.method:
        raise BadInput("--layout released needs --method NAME (the <method>.mp4 to read in each sample-*/ folder)")
    if args.method and args.layout != "released":
        raise BadInput("--method picks a video in the released layout's sample-*/ folders; add --layout released")
    for run in runs if args.layout == "results" else []:
        if not (Path(run) / "results.jsonl").is_file():
            names = "NAME" if nmethods == 1 else "NAME_A NAME_B"
            raise BadInput(f"{command} {run}: no results.jsonl there (write it with sample.py --triplets FILE "
                           f"--out {run}; the paper's released folders: --layout released --method {names})")


def run_compare(args):
    """compare RUN ...: summaries of several runs side by side (printed; with --out, also compare.md and
    report.html)."""
    if args.out:
        check_out_dir(args.out)
        if (Path(args.out) / "metrics.jsonl").exists():
            raise BadInput(f"compare --out {args.out}: holds a run's scores (metrics.jsonl) and its report.html, which "
                           "compare's would replace; use another --out")
    runs = {}
    for r in [str(d) for r in args.runs for d in sweep_sets(r, "eval/metrics.jsonl") or [r]]:
        name, summary, rows = load_run(r)
        runs[name if name not in runs else f"{name} ({r})"] = (summary, rows)
    gs = {k: setting(v[0], "guidance") for k, v in runs.items()}
    by_guidance = len(set(gs.values()) - {None}) > 1       # a sweep: rows by guidance, each metric plotted on it
    if by_guidance:
        runs = dict(sorted(runs.items(), key=lambda kv: (gs[kv[0]] is None, gs[kv[0]] or 0)))
    text = table({k: v[0] for k, v in runs.items()}, by="guidance" if by_guidance else None)
    print(text, end="")
    segs = {v[0].get("segmenter") for v in runs.values()} - {None}
    if len(segs) > 1:
        print("warning: the runs were split into layers by different segmenters: " + "; ".join(sorted(segs)),
              file=sys.stderr)
    if args.out:
        atomic_write_text(Path(args.out) / "compare.md", text)
        title = "compare: " + ", ".join(runs) + (f" ({'; '.join(sorted(segs))})" if segs else "")
        plots = guidance_plots({k: v[0] for k, v in runs.items()}) if by_guidance else ""
        if plots:
            atomic_write_text(Path(args.out) / "guidance.html", f"<!doctype html><meta charset='utf-8'>{plots}")
        html = pages.write_runs_report(Path(args.out), {k: v[0] for k, v in runs.items()},
                                       {k: v[1] for k, v in runs.items()}, COLUMNS, title, extra=plots)
        print(f"-> {args.out}/compare.md, {html.name}" + (", guidance.html (each metric against guidance)"
                                                          if plots else ""))
    else:
        print("(add --out DIR for compare.md and report.html)")
    return {k: v[0] for k, v in runs.items()}


def guidance_plots(summaries):
    """{run: summary} of a guidance sweep -> HTML: one SVG line chart per metric, the metric against guidance."""
    points = [{"guidance": setting(s, "guidance"), **s} for s in summaries.values()
              if setting(s, "guidance") is not None]
    charts = [pages.curve_svg(k, f"{lab} {arr}", points, [k], x="guidance") for k, lab, arr in COLUMNS
              if any(pages.number(p.get(k)) for p in points)]
    return f'<h2>Against guidance</h2><div class="row">{"".join(charts)}</div>' if charts else ""


def load_run(path):
    """An eval folder (metrics.jsonl) or a results folder (its eval/metrics.jsonl) -> (name, summary, rows); the
    summary keeps where the records came from (summary.json's source). Lines a stopped run left half-written are
    left out, with a warning."""
    p = Path(path)
    for f in (p / "metrics.jsonl", p / "eval" / "metrics.jsonl", p):
        if f.is_file():
            rows, problems = read_jsonl(f)
            for _, msg in problems:
                print(f"warning: {msg}", file=sys.stderr)
            name = f.parent.parent.name if f.parent.name == "eval" else f.parent.name
            try:
                old = json.loads((f.parent / "summary.json").read_text())
            except (OSError, ValueError):
                old = {}
            rows = [r for _, r in rows if r.get("status", "ok") == "ok"]      # not the records that failed
            extra = {k: old[k] for k in ("source", "segmenter", "composed_with") if isinstance(old, dict) and k in old}
            src = extra.get("source") or {}
            if "composed_with" not in extra and src.get("layout") == "results":     # scored before it was kept
                extra["composed_with"] = composed_with(src.get("folder", ""))
            return old.get("name", name) if isinstance(old, dict) else name, {**summarise(rows), **extra}, rows
    raise BadInput(f"compare {path}: no metrics.jsonl there (run python evaluate.py results {path} first)")


def run_judge(args):
    """judge RUN_A RUN_B: the VLM judge over the triplets both runs hold (others/judge.py)."""
    check_ranges(("--judge-frames", args.judge_frames, args.judge_frames >= 1, "at least 1"))
    check_device(args.device)
    pairs, names, out = pairs_of(args, "judge")
    settings = {"backend": args.backend, "model": args.judge_model, "seed": args.seed,
                "frames": args.judge_frames if args.backend == "qwen" else None}
    vlm = judge.load_judge(args.backend, args.judge_model, args.device, args.judge_frames)
    try:
        t = judge.judge_pairs(vlm, pairs, out, args.seed, judge.KEYS, *names, settings=settings)
    except RuntimeError as e:                     # the judge failed (network, quota): the answers so far are kept
        raise BadInput(str(e)) from None
    print(judge.tally_table(t, *names), end="")
    print(f"-> {out}/judge.md, judge.svg, judge.json, answers.jsonl")
    return t


def run_study(args):
    """study RUN_A RUN_B: the same questions as a static web form for people (others/pages.py), its key beside."""
    check_ranges(("--study-n", args.study_n, args.study_n >= 0, "at least 0 (0 = all)"))
    pairs, names, out = pairs_of(args, "study")
    page = pages.write_study(pairs, out, *names, seed=args.seed, n=args.study_n or None)
    print(f"study of {min(len(pairs), args.study_n or len(pairs))} examples: open {page} (share {page.parent}; "
          f"keep {out / 'key.json'}), then python evaluate.py tally {out} answers-*.json")
    return page


def pairs_of(args, command):
    """judge / study RUN_A RUN_B: the reading flags checked, the pairs, the runs' names and the output folder
    (default RUN_A/<command>-<name of RUN_B>); says what is left unmatched."""
    runs = [args.run_a, args.run_b]
    check_reading(args, command, runs, 2)
    methods = (args.method * 2)[:2] if args.method else [None, None]
    out = Path(args.out or Path(args.run_a) / f"{command}-{methods[1] or Path(args.run_b).resolve().name}")
    check_out_dir(out, "--out")
    pairs, (only_a, only_b) = judge.pair_runs(*runs, args.layout, methods)
    if only_a or only_b:
        print(f"warning: {only_a} triplets only in {runs[0]} and {only_b} only in {runs[1]} are left out; "
              f"comparing {len(pairs)}", file=sys.stderr)
    names = [m or Path(r).resolve().name for r, m in zip(runs, methods)]
    names = names if names[0] != names[1] else [f"{n} ({r})" for n, r in zip(names, runs)]
    return pairs[:args.limit or None], names, out


def run_tally(args):
    """tally STUDY_DIR ANSWERS...: people's exported answers -> STUDY_DIR/tally.md, tally.svg, tally.json."""
    t = pages.tally_study(args.study, args.answers)
    print(judge.tally_table(t, *json.loads((Path(args.study) / "key.json").read_text())["names"]), end="")
    return t


# ---------------------------------------------------------------------------------------------
# The command line: one subparser per subcommand, holding only its own flags (shared groups: parent parsers)


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
commands = parser.add_subparsers(dest="command", required=True, metavar="{results,compare,judge,study,tally}")
device = argparse.ArgumentParser(add_help=False)
device.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="device for the networks (the judge's, for judge)")
reading = argparse.ArgumentParser(add_help=False)                 # which videos of a run are read
reading.add_argument("--layout", choices=("results", "released"), default="results",
                     help="results: a folder holding results.jsonl (sample.py --triplets); released: the paper's "
                          "released result folders, sample-*/ holding fg.mp4, bg.mp4, prompt.txt and one "
                          "<method>.mp4 per method")
reading.add_argument("--method", nargs="+", metavar="NAME",
                     help="with --layout released: the method video to score (e.g. gen-recomposer); for judge / "
                          "study two names, run A's and run B's (one name: the same for both)")
reading.add_argument("--limit", type=int, default=0, help="only the first N records (0 = all)")
pair = argparse.ArgumentParser(add_help=False, parents=[reading])  # two runs over the same triplets
pair.add_argument("run_a", metavar="RUN_A", help="a results folder (or, --layout released, the released folder)")
pair.add_argument("run_b", metavar="RUN_B", help="another run over the same triplets (matched by id)")
pair.add_argument("--seed", type=int, default=0,
                  help="the A/B order: shuffled per question (judge) or example (study) from it")


def command(name, run, about, parents=()):
    """A subcommand: its parser (help and description `about`) and what runs it; -> its add_argument."""
    p = commands.add_parser(name, parents=list(parents), help=about, description=about)
    p.set_defaults(run=run)
    return p.add_argument


ap = command("results", run_results, "score a run: M1-M4 where weights are given, weight-free measures, toy "
             "metrics -> summary.md / .json, metrics.jsonl (resumable), report.html", [device, reading])
ap("results", metavar="RESULTS_DIR", help="folder holding results.jsonl (sample.py --triplets ... --out DIR); a "
   "guidance sweep's folder (gs-*/ sets) scores each set into <set>/eval")
ap("--out", help="report folder (default RESULTS_DIR/eval; with --layout released, RESULTS_DIR/eval-METHOD)")
ap("--name", help="row name of this run in summary.md (default: the results folder's name)")
ap("--viclip", help="ViCLIP weights (.safetensors / .pth, a folder holding model.safetensors, or a hub id such as "
                    "OpenGVLab/ViCLIP-L-14-hf) for M1, M4")
ap("--viclip-config", default="viclip_l14", help="ViCLIP preset name or JSON file of ViCLIPConfig fields")
ap("--bpe", help="CLIP BPE merges (bpe_simple_vocab_16e6.txt.gz); default: beside --viclip")
ap("--swin", help="torchvision swin3d_b state dict (swin3d_b_1k-24f7c7c6.pth) or URL, for M2")
ap("--swin-config", default="swin3d_b", help="Swin3D preset name or JSON file of Swin3DConfig fields")
ap("--raft", help="torchvision raft_large state dict (raft_large_C_T_SKHT_V2-ff5fadd5.pth) or URL, for M3")
ap("--raft-config", default="raft_large", help="RAFT preset name or JSON file of RAFTConfig fields")
ap("--max-frames", type=int, default=0, help="resample each generated video to at most this many frames (0 = all)")
ap("--max-side", type=int, default=0, help="downscale so that the longer side is at most this (0 = native)")
ap("--toy-threshold", type=float, default=40.0, help="toy subject = |gen - input bg| above this (0-255)")
ap("--cp-radius", type=float, default=None,
   help="copy-paste radius in pixels (default 5%% of the shorter side, at least 2)")
ap("--segmenter", choices=("motion", "sam2", "segmo"), default="motion",
   help="how each generated video is split into fg / bg layers before M1-M3: the Split stage's weight-free motion "
        "segmenter, SAM 2 prompted with its box (needs --sam2), or Segment-Any-Motion (segmo: the StM release's "
        "re-decomposition, comparable with the paper's Table 2; its models: --segmo-*)")
ap("--sam2", help="SAM 2 weights for --segmenter sam2 (a folder or hub id, e.g. facebook/sam2.1-hiera-tiny)")
segmo.add_flags(ap.__self__)                                      # --segmo-*: the same flags as decompose.py's
ap("--overwrite", action="store_true", help="rescore the records --out holds scores of with other flags (default: "
   "refuse, keeping them)")

ap = command("compare", run_compare, "print the summaries of scored runs side by side")
ap("runs", nargs="+", metavar="RUN", help="eval folders, results folders holding eval/, or a guidance sweep's folder "
   "(sample.py --guidance G1 G2 ...: its gs-*/ sets, by guidance, with each metric plotted against guidance)")
ap("--out", help="where compare.md and report.html go (default: print only)")

ap = command("judge", run_judge, "VLM judge: compare two runs over the same triplets on the paper's six criteria "
             "-> OUT/answers.jsonl (resumable), judge.md, judge.svg, judge.json", [pair, device])
ap("--out", help="default RUN_A/judge-<name of RUN_B>")
ap("--backend", choices=("qwen", "gemini"), default="qwen",
   help="the judge: a local VLM through transformers (Qwen2.5-VL family), or Gemini through google-genai (key in "
        "GEMINI_API_KEY or GOOGLE_API_KEY), as in the paper")
ap("--judge-model", help="the judge's weights: a folder or hub id (default Qwen/Qwen2.5-VL-7B-Instruct) or the "
                         "Gemini model id (default gemini-2.5-pro)")
ap("--judge-frames", type=int, default=8, help="frames per video shown to a local judge (Gemini gets the files)")

ap = command("study", run_study, "user study: a static site (OUT/site/index.html, videos beside it) with the "
             "paper's form; the A/B key stays in OUT/key.json, outside the site", [pair])
ap("--out", help="default RUN_A/study-<name of RUN_B>")
ap("--study-n", type=int, default=0, help="examples in the study, a seeded random subset (0 = all; the paper: 25)")

ap = command("tally", run_tally, "count the answers people exported from a study -> STUDY_DIR/tally.md, tally.svg, "
             "tally.json")
ap("study", metavar="STUDY_DIR", help="the --out of evaluate.py study")
ap("answers", nargs="+", metavar="ANSWERS", help="the answers-*.json files people exported")


def main(args):
    """Run the subcommand of parser.parse_args(argv) -> what it returns (a summary, the tally, the study page)."""
    return args.run(args)


if __name__ == "__main__":
    run_cli(main, parser)
