"""
Compose: put a foreground subject into a background video under a prompt (paper §3.4, Inference).

    python sample.py --grid --guidance 2 --sampler ddim --eps-scale 1.43 --eps-below 800   # the README quick start:
        # the bundled toy composer, with the sampler it was tuned with, on the bundled toy examples -> out/
    python sample.py --fg fg.mp4 --bg bg.mp4 --prompt "a red boat sailing on the water at sunset" --grid
    python sample.py --fg clip.mp4 --mask mask.mp4 --bg bg.mp4 --prompt "..." --out out/mine.mp4   # video + its mask
    python sample.py --triplets data/toy-test/triplets.jsonl --ckpt runs/toy --out results/toy   # for evaluate.py
    python sample.py --triplets Organized_Results --ckpt runs/stm5b --guidance 2 4 6 8 --out results/test
        # the paper's test protocol: a folder of triplet folders (its released test set), one set per guidance
    torchrun --nproc_per_node=8 sample.py --triplets test/triplets.jsonl --ckpt runs/stm5b --out results/stm5b
Real scale (GPU, bf16, tiled VAE decode; the StM release's sampler settings are the defaults):
    python sample.py --model THUDM/CogVideoX-5b-I2V --ckpt runs/stm5b --fg fg.mp4 --mask mask.mp4 --bg bg.mp4 \\
        --prompt "..." --steps 50 --guidance 6 --sampler dpm
    (a GPU with less memory: --offload model, ~14 GB, or --offload sequential, ~4 GB, derived: docs/one-gpu.md)

The composition itself is composer.compose (encode the layers, sample with guidance on the text, decode); this
script is the batch around it. --ckpt is a train.py output folder, a folder holding a diffusers `transformer/`, a
train.py --lora output (put on --model's transformer and merged at load), or a hub id; --model gives the VAE, T5
and tokenizer. fg is the subject on black (its mask is where it is not black), or any video with --mask. Inputs of
another size, length or frame rate are resampled to the model's frames and cropped to its size; the output keeps
the background's duration (a still image as bg is a still scene of the model's length, at 8 fps as CogVideoX).

--triplets also takes a folder of triplet folders (each <name>/ holding fg, bg, optionally mask, and prompt.txt; the
StM release's sample-*/ test folders are such a folder): the triplets file made of it is written as
<out>/triplets.jsonl and composed. Several --guidance values compose every triplet once per value, into
<out>/gs-<value>/, each a results folder of its own (evaluate.py results / compare read them; docs/evaluation.md).

A folder --out is a batch job on the one record engine (plumbing/records.py): results.jsonl holds one record per
composition with the fingerprint of its inputs and checkpoint; a rerun composes only what is missing or changed,
a triplet that cannot be used is skipped with its reason, and a folder made with other settings is refused (use
another --out, or --overwrite). A file --out (.mp4 / .gif) is one composition and is never replaced without
--overwrite. Every flag and input is checked before a model loads.
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

import composer
from plumbing.cli import BadInput, check_device, check_out_dir, run_cli
from plumbing.ranks import Ranks
from plumbing.records import Job, read_records
from plumbing.dataset import (check_files, folder_triplets, guidance_set, input_stamps, read_triplets,
                              triplets_text)
from plumbing.files import atomic_write_text
from plumbing.video import fit_video, read_video, to_tensor, to_uint8, write_video

ROOT = Path(__file__).resolve().parent

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
arg = parser.add_argument
arg("--fg", help="foreground video (subject on black), or any video with --mask")
arg("--mask", help="mask video or PNG folder for --fg (white/nonzero = subject)")
arg("--bg", help="background video, or a still image")
arg("--prompt", default=None, help="text prompt describing the composed video (with --fg / --bg)")
arg("--triplets", help="jsonl of {fg, bg, prompt[, mask, id, reference]} (paths relative to the file), or a folder of "
    "triplet folders (<name>/ with fg, bg, optional mask, prompt.txt; the StM release's sample-*/): compose all")
arg("--ckpt", default=str(ROOT / "assets" / "toy-composer"),
    help="composer: train.py output folder, a folder with transformer/, or a hub id")
arg("--model", default=None,
    help="base model for VAE/T5/tokenizer (default: the one the composer was trained from, else assets/toy-base)")
arg("--out", default="out", help="output folder (or .mp4 / .gif file for a single composition)")
arg("--steps", type=int, default=50, help="sampler steps (StM release: 50)")
arg("--sampler", default="dpm", choices=["ddim", "dpm"],
    help="CogVideoX's DPM-Solver++ variant (StM release) or its DDIM (the toy composer's)")
arg("--eps-scale", type=float, default=1.0, help="each step moves along this times the noise estimate (epsilon "
    "scaling against exposure bias, Ning et al. 2024; 1: off). The toy composer's: docs/toy-world.md")
arg("--eps-below", type=int, default=1000, help="--eps-scale acts on the steps with t below this only (1000: every "
    "step); above it the steps are plain, so where the subject goes, decided at high noise, is left as it was")
arg("--guidance", type=float, nargs="+", default=[6.0], help="classifier-free guidance on the text (1: off; StM: 6); "
    "several values (the release's test protocol: 2 4 6 8) compose each triplet once per value into <out>/gs-<value>/")
arg("--dynamic-cfg", action="store_true",
    help="CogVideoX's dynamic guidance schedule (off in the StM release; it makes the scale oscillate)")
arg("--seed", type=int, default=0, help="noise seed (same seed, same video)")
arg("--frames", type=int, default=None, help="frames to generate (default: the composer's, 4k+1)")
arg("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="frame size (default: the composer's)")
arg("--grid", action="store_true", help="also write fg | bg | result side by side as grid/<id>.mp4 and .gif; with "
    "several compositions also <out>/grid.{mp4,gif}: the first 8 stacked, plus, where the triplet has a "
    "`reference` (a correct composite), that video and the same through the VAE")
arg("--batch", type=int, default=4, help="compositions per forward pass (triplet mode)")
arg("--fps", type=float, default=None, help="output frame rate (default: keep the background's duration)")
arg("--tile", action="store_true", help="force the tiled VAE (default: tiled when an untiled decode would not fit "
    "the free GPU memory, the reason printed; on the CPU above 256x256)")
arg("--offload", default="none", choices=composer.Offload.MODES, help="none: every model on the GPU (T5 leaves "
    "once the prompts are encoded); model: T5, transformer, VAE each on the GPU only while it runs; sequential: "
    "the transformer's and T5's blocks stream through the GPU one at a time (least memory, slowest); docs/one-gpu.md")
arg("--compile", action="store_true", help="torch.compile the transformer's blocks (first composition pays the "
    "compile)")
arg("--overwrite", action="store_true", help="replace earlier results in --out made with other settings")
arg("--device", default=None, help="cpu or cuda (default: cuda if available)")


def main(a):
    check_flags(a)
    ranks = Ranks()                                        # torchrun: this process's share of --triplets
    device = check_device(a.device) if a.device else ranks.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tfolder, base = composer.composer_folders(a.ckpt, a.model)
    T, H, W = composer.shape_of(tfolder, base, a.frames, a.size)
    sched = composer.load_schedule(tfolder, base)                                 # a bad config fails before models
    tile = True if a.tile else "auto"
    if a.offload != "none" and device.type != "cuda":
        print(f"note: --offload {a.offload} on {device.type}: the models already live in host memory, nothing to "
              "move; the same outputs, no memory saved")
    offload = composer.Offload(a.offload, device)
    if a.out.lower().endswith((".mp4", ".gif")):
        return compose_one(a, tfolder, base, sched, (T, H, W), tile, device, dtype, offload)

    out = Path(a.out)
    check_out_dir(out)
    items, bad = load_triplets(a, out, ranks)
    ins = {"result": composer.load_inputs(a.fg, a.bg, a.mask, T, H, W)} if a.fg else {}   # one composition: fail now
    sets = [(g, out if len(a.guidance) == 1 else guidance_set(out, g)) for g in a.guidance]
    why = {dest: {it["id"]: bad.get(it["id"]) or clash_with_inputs(it, dest) for it in items} for _, dest in sets}
    for it in items:                                       # the files, probed once for every set
        files = None if bad.get(it["id"]) else check_files(it)
        for _, dest in sets:
            why[dest][it["id"]] = why[dest][it["id"]] or files
    for _, dest in sets:
        a.overwrite or check_folder(dest, [it for it in items if not why[dest][it["id"]]])
    model, vae, texts = composer.load_models(tfolder, base, device, dtype, offload, a.compile)   # before any write
    table = composer.embed_all(texts, [it["prompt"] for it in items if not bad.get(it["id"])], offload)
    offload.release("t5")                                  # every prompt encoded: T5 leaves the GPU
    run = (model, vae, table, tfolder, base, sched, (T, H, W), tile, device, dtype, offload, ranks)
    for g, dest in sets:
        if len(sets) > 1 and ranks.rank == 0:
            print(f"guidance {g:g} -> {dest}")
        compose_set(a, run, g, dest, items, why[dest], dict(ins))


def load_triplets(a, out, ranks):
    """What to compose -> (items, {id: why it cannot be}): the --triplets file; a folder of triplet folders, made
    into <out>/triplets.jsonl first; --fg/--bg/--mask/--prompt; or the bundled examples."""
    if a.fg:
        return [{"id": "result", "fg": a.fg, "bg": a.bg, "mask": a.mask, "prompt": a.prompt or ""}], {}
    src = Path(a.triplets or ROOT / "assets" / "examples" / "triplets.jsonl")
    if not src.is_dir():
        return read_triplets(src)
    found, left = folder_triplets(src)
    for name, why in left:
        print(f"warning: --triplets {src}: {name}/ left out: {why}", file=sys.stderr)
    made = out / "triplets.jsonl"
    text = triplets_text(found, made)
    if made.exists() and made.read_text(encoding="utf-8", errors="replace") != text and not a.overwrite:
        raise BadInput(f"--out {out}: its triplets.jsonl lists other triplets than {src} holds now; use another "
                       "--out, or --overwrite to replace it")
    if ranks.rank == 0:
        atomic_write_text(made, text)
        print(f"{len(found)} triplet folder(s) in {src} -> {made}")
    ranks.wait()                                           # every rank reads the file rank 0 wrote
    return read_triplets(made)


def compose_set(a, run, guidance, out, items, bad, ins):
    """Compose every triplet at one guidance into the results folder `out` (resumable: the record engine)."""
    model, vae, table, tfolder, base, sched, (T, H, W), tile, device, dtype, offload, ranks = run
    settings = {"ckpt": str(Path(a.ckpt).resolve()) if Path(a.ckpt).exists() else a.ckpt, "steps": a.steps,
                "sampler": a.sampler, "guidance": guidance, "dynamic_cfg": a.dynamic_cfg, "seed": a.seed,
                "frames": T, "size": [H, W], "fps": a.fps, "grid": a.grid, "batch": a.batch,
                "schedule": sched.config}
    if a.eps_scale != 1:                                   # (absent when off: records made before the flag stay done)
        settings.update(eps_scale=a.eps_scale, eps_below=a.eps_below)
    # the record engine: a triplet is done when its record matches these settings, its inputs and the checkpoint
    job = Job(out, "results", items, settings=settings, ranks=ranks, overwrite=a.overwrite, what="composition",
              inputs=lambda j: [tfolder, base, *(j.get(k) for k in ("fg", "bg", "mask", "reference")),
                                {"prompt": j.get("prompt")}])
    for i, why in bad.items():
        if why and not job.is_done(i):
            job.skip(i, why)
    groups, rows = job.batches(a.batch, bar=ranks.world > 1), []      # fixed-position: a rerun, the same noise
    for chunk in groups:
        chunk = [j for j in chunk if not bad.get(j["id"]) and j["id"] not in job.skipped]
        for j in chunk:
            try:
                ins[j["id"]] = ins.get(j["id"]) or composer.load_inputs(j["fg"], j["bg"], j.get("mask"), T, H, W)
            except BadInput as e:                          # (an item done before stays as it was)
                job.is_done(j["id"]) or job.skip(j["id"], e)
        chunk = [j for j in chunk if j["id"] in ins]
        if not chunk:
            continue
        fg, bg, mask = (torch.stack([ins[j["id"]][k] for j in chunk]) for k in range(3))
        prompts = [j["prompt"] for j in chunk]
        video = composer.compose(model, vae, composer.text_of(table, prompts), fg, bg, mask, prompts, steps=a.steps,
                                 sampler=a.sampler, guidance=guidance, dynamic_cfg=a.dynamic_cfg, seed=a.seed,
                                 tile=tile, device=device, dtype=dtype, progress=ranks.world == 1, offload=offload,
                                 sched=sched, eps_scale=a.eps_scale, eps_below=a.eps_below)
        for j, v, f, b in zip(chunk, video, fg, bg):
            fps = a.fps or ins.pop(j["id"])[3]
            if job.is_done(j["id"]):                       # recomputed with its batch, not rewritten
                continue
            name, written = out / f"{j['id']}.mp4", []
            write_video(name, to_uint8(v), fps)
            written.append(name)
            if a.grid:
                grid = to_uint8(torch.cat([f, b, v], -1))
                written += write_grid(out / "grid" / j["id"], grid, fps)
                if len(rows) < 8 and ranks.world == 1:     # with a known-correct composite (toy triplets), if any
                    rows.append((np.concatenate([grid] + reference_columns(j.get("reference"), vae, T, H, W, tile,
                                                                           device, dtype, offload), 2), fps))
            job.done(j["id"], {**j, "result": str(name.resolve()), "fps": fps, "settings": settings,
                               "input_stamps": input_stamps(j)}, outputs=written)   # evaluate checks them
            print(f"wrote {name}")
    recs = job.finish()
    if recs is None:                                       # ranks > 0: rank 0 reports
        return
    if a.grid and ranks.world > 1:                         # the grids of the other ranks, read back
        rows = [(np.concatenate([read_video(out / "grid" / f"{r['id']}.mp4")[0]] + reference_columns(
            r.get("reference"), vae, T, H, W, tile, device, dtype, offload), 2), r["fps"])
            for r in recs if r.get("status") == "ok" and r.get("settings") == settings][:8]
    if a.grid and len(rows) > 1:
        write_grid(out / "grid", stack_rows([r for r, _ in rows]), rows[-1][1])
    done_before = len(items) - len(job.left)
    print(f"{job.n_new} composition(s) in {job.seconds:.1f}s ({a.steps} {a.sampler} steps, guidance {guidance:g}, "
          f"seed {a.seed})" + (f"; {done_before} done before" if done_before else "")
          + (f"; {len(job.skipped)} skipped: " + ", ".join(job.skipped) if job.skipped else "")
          + (f"; {ranks.world} processes, {job.n_new / max(job.seconds, 1e-9):.3g} items/s" if ranks.world > 1
             else ""))


def compose_one(a, tfolder, base, sched, shape, tile, device, dtype, offload):
    """A single composition into one file --out: never replaces a file without --overwrite, nor an input."""
    out = Path(a.out)
    for flag in ("fg", "bg", "mask"):
        if getattr(a, flag) and Path(getattr(a, flag)).resolve() == out.resolve():
            raise BadInput(f"--out {a.out}: is the --{flag} input; name another file")
    grids = [out.with_name(f"{out.stem}_grid.{ext}") for ext in ("mp4", "gif")] if a.grid else []
    for f in [out] + grids:
        if f.is_dir():
            raise BadInput(f"--out {a.out}: {f} is a folder; name a file")
        if any(getattr(a, k) and Path(getattr(a, k)).resolve() == f.resolve() for k in ("fg", "bg", "mask")):
            raise BadInput(f"--out {a.out}: {f.name} would overwrite an input; name another file")
        if f.exists() and not a.overwrite:
            raise BadInput(f"--out {a.out}: {f} exists; add --overwrite to replace it, or name another file")
    check_out_dir(out.parent)
    fg, bg, mask, fps = composer.load_inputs(a.fg, a.bg, a.mask, *shape)     # a bad input fails before the models
    model, vae, texts = composer.load_models(tfolder, base, device, dtype, offload, a.compile)
    text = composer.embed(texts, [a.prompt or ""], offload)
    offload.release("t5")
    v = composer.compose(model, vae, text, fg[None], bg[None], mask[None], [a.prompt or ""], steps=a.steps,
                         sampler=a.sampler, guidance=a.guidance[0], dynamic_cfg=a.dynamic_cfg, seed=a.seed, tile=tile,
                         device=device, dtype=dtype, offload=offload, sched=sched, eps_scale=a.eps_scale,
                         eps_below=a.eps_below)[0]
    write_video(out, to_uint8(v), a.fps or fps)
    if a.grid:
        write_grid(out.with_name(f"{out.stem}_grid"), to_uint8(torch.cat([fg, bg, v], -1)), a.fps or fps)
    print(f"wrote {out}")


# ---------------------------------------------------------------------------------------------
# Checking what the user gave, before any model loads


def check_flags(a):
    finite = lambda x: x is not None and math.isfinite(x)
    problems = [(a.steps < 1, f"--steps {a.steps}: need at least 1"),
                *[(not (finite(g) and g >= 0), f"--guidance {g}: need a finite number >= 0 (1: no guidance; StM: 6)")
                  for g in a.guidance],
                (len({f"{g:g}" for g in a.guidance}) < len(a.guidance),
                 f"--guidance {' '.join(f'{g:g}' for g in a.guidance)}: a value twice (each names a set "
                 "<out>/gs-<value>)"),
                (len(a.guidance) > 1 and a.out.lower().endswith((".mp4", ".gif")),
                 f"--out {a.out}: several --guidance values make one results set each; give a folder --out"),
                (a.triplets and a.out.lower().endswith((".mp4", ".gif")),
                 f"--out {a.out}: --triplets composes many; give a folder --out"),
                (not 0 <= a.seed < 2**63, f"--seed {a.seed}: need 0 <= seed < 2^63"),
                (a.batch < 1, f"--batch {a.batch}: need at least 1"),
                (not (finite(a.eps_scale) and 0.5 <= a.eps_scale <= 2),
                 f"--eps-scale {a.eps_scale}: need a number between 0.5 and 2 (1: off)"),
                (not 1 <= a.eps_below <= 1000, f"--eps-below {a.eps_below}: need a timestep between 1 and 1000"),
                (a.fps is not None and not (finite(a.fps) and 0.1 <= a.fps <= 240),
                 f"--fps {a.fps}: need a frame rate between 0.1 and 240"),
                (a.frames is not None and a.frames < 1, f"--frames {a.frames}: need 4k+1 frames"),
                (a.grid and a.fps is not None and a.fps > 100, f"--fps {a.fps} with --grid: the grid's GIF holds at "
                 "most 100 fps; a lower --fps, or no --grid"),
                (a.triplets and (a.fg or a.bg or a.mask or a.prompt is not None),
                 "--triplets composes the file's triplets: leave out --fg/--bg/--mask/--prompt (or --triplets)"),
                (not a.fg and (a.mask or a.prompt is not None or a.bg),
                 "--mask/--prompt/--bg belong to --fg: give --fg and --bg (or --triplets FILE, or nothing for the "
                 "bundled examples)"),
                (a.fg and not a.bg, "give both --fg and --bg (or --triplets FILE, or nothing for the bundled "
                 "examples)"),
                (a.triplets is None and a.fg is None and a.out.lower().endswith((".mp4", ".gif")),
                 f"--out {a.out}: a file holds one composition; give --fg and --bg, or a folder for the examples")]
    for bad, msg in problems:
        if bad:
            raise BadInput(msg)
    if a.device:
        check_device(a.device)


def check_folder(out, items):
    """Before anything is written: in a folder sample.py never wrote, a file <out>/<id>.mp4 (the user's own); in one
    it did, a record of the same id made from other files (another triplets file) - refused, not replaced."""
    recs = {k: r for f in sorted(out.glob("results*.jsonl")) for k, r in read_records(f).items()}   # + journals
    keys = ("fg", "bg", "mask")
    ours = (out / "results.settings.json").exists()
    foreign = [it["id"] for it in items if (out / f"{it['id']}.mp4").exists() and not ours]
    other = [it["id"] for it in items if recs.get(it["id"], {}).get("status") == "ok"
             and any(recs[it["id"]].get(k) != it.get(k) for k in keys)]
    for ids, what in ((foreign, "hold(s) videos no record of this folder accounts for"),
                      (other, "hold(s) results made from other fg / bg / mask files")):
        if ids:
            raise BadInput(f"--out {out}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''} {what}; use another "
                           "--out, or --overwrite to replace them")


def clash_with_inputs(item, out):
    """Why an item's output would overwrite one of its inputs (--out holding the inputs), or None."""
    res = (out / f"{item['id']}.mp4").resolve()
    for k in ("fg", "bg", "mask", "reference"):
        if item.get(k) and Path(item[k]).resolve() == res:
            return f"its result {res} would overwrite its {k}; use another --out"
    return None


def reference_columns(path, vae, T, H, W, tile, device, dtype, offload):
    """A known-correct composite, as is and through this VAE (encode + decode): the second is the sharpest any
    composer decoded by this VAE can draw, so the grid shows how much of a blur is the composer's."""
    if not path:
        return []
    ref = fit_video(read_video(path)[0], T, H, W)                    # uint8 (T, H, W, 3)
    x = to_tensor(ref)[None].to(device, dtype)                       # (1, 3, T, H, W)
    tile = tile is True or (tile == "auto" and H * W > 256 * 256)
    with offload.use("vae"):
        return [ref, to_uint8(vae.decode(vae.encode(x, tile=tile)[0], tile=tile)[0])]


def write_grid(path_stem, frames, fps):
    """A grid as <path_stem>.mp4 and .gif (a GIF holds at most 100 fps: above, the mp4 only) -> the paths written."""
    paths = [Path(f"{path_stem}.{ext}") for ext in (("mp4", "gif") if fps <= 100 else ("mp4",))]
    for path in paths:
        write_video(path, frames, fps)
    return paths


def stack_rows(rows):
    """Grids of several compositions, one above the other, a 2-px black line between them."""
    rows = [np.pad(r, ((0, 0), (0, 2), (0, max(x.shape[2] for x in rows) - r.shape[2]), (0, 0))) for r in rows]
    return np.concatenate(rows, 1)[:, :-2]


if __name__ == "__main__":
    run_cli(main, parser)
