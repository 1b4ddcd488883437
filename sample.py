"""
Compose: put a foreground subject into a background video under a prompt (paper §3.4, Inference).

    python sample.py --grid --guidance 2 --sampler ddim    # bundled toy composer on bundled toy examples -> out/
    python sample.py --fg fg.mp4 --bg bg.mp4 --prompt "a red boat sailing on the water at sunset" --grid
    python sample.py --fg clip.mp4 --mask mask.mp4 --bg bg.mp4 --prompt "..."   # any video + its mask
    python sample.py --triplets data/toy-test/triplets.jsonl --ckpt runs/toy --out results/toy   # for evaluate.py
Real scale (GPU, bf16, tiled VAE decode; the StM release's sampler settings are the defaults):
    python sample.py --model THUDM/CogVideoX-5b-I2V --ckpt runs/stm5b --fg fg.mp4 --mask mask.mp4 --bg bg.mp4 \\
        --prompt "..." --steps 50 --guidance 6 --sampler dpm

--ckpt is a train.py output folder, a folder holding a diffusers `transformer/`, or a hub id; a train.py --lora
output (OUT/lora/, lora.py) is put on --model's transformer (widened to 48 channels) and merged at load;
--model gives the VAE, T5 and tokenizer (a folder laid out like THUDM/CogVideoX-5b-I2V, or a hub id).
fg is the subject on black (its mask is where it is not black), or any video with --mask.
Inputs of another size, length or frame rate are resampled to the model's frames and cropped to its size; the
output keeps the background's duration (its frame rate is the model's frame count over that duration).

Every input is checked before a model loads. A batch (--triplets) skips a triplet whose files cannot be read and
reports it; results.jsonl is rewritten (atomically) after every batch, and a rerun of the same command skips what
is done. Earlier results in --out made with other settings are never overwritten (use another --out, or
--overwrite).
"""
import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

import data
import diffusion
import lora
import weights
from data import BadInput
from dit import DiT, DiTConfig
from text import T5Encoder, Tokenizer, encode_prompts
from vae import VAE, VAEConfig

ROOT = Path(__file__).resolve().parent
MAX_DERIVED_MASK = 0.6        # a "subject on black" whose non-black part covers more than this is no such thing

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
arg = parser.add_argument
arg("--fg", help="foreground video (subject on black), or any video with --mask")
arg("--mask", help="mask video or PNG folder for --fg (white/nonzero = subject)")
arg("--bg", help="background video")
arg("--prompt", default="", help="text prompt describing the composed video")
arg("--triplets", help="jsonl of {fg, bg, prompt[, mask, id, reference]} (paths relative to the file): compose all")
arg("--ckpt", default=str(ROOT / "assets" / "toy-composer"),
    help="composer: train.py output folder, a folder with transformer/, or a hub id")
arg("--model", default=None,
    help="base model for VAE/T5/tokenizer (default: the one the composer was trained from, else assets/toy-base)")
arg("--out", default="out", help="output folder (or .mp4 file for a single composition)")
arg("--steps", type=int, default=50, help="sampler steps (StM release: 50)")
arg("--sampler", default="dpm", choices=["ddim", "dpm"],
    help="CogVideoX's DPM-Solver++ variant (StM release) or its DDIM (the toy composer's)")
arg("--guidance", type=float, default=6.0, help="classifier-free guidance on the text (1: off; StM: 6)")
arg("--dynamic-cfg", action="store_true",
    help="CogVideoX's dynamic guidance schedule (off in the StM release; it makes the scale oscillate)")
arg("--seed", type=int, default=0, help="noise seed (same seed, same video)")
arg("--frames", type=int, default=None, help="frames to generate (default: the composer's, 4k+1)")
arg("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="frame size (default: the composer's)")
arg("--grid", action="store_true", help="also write fg | bg | result side by side as mp4 and gif; with several "
    "compositions also <out>/grid.{mp4,gif}: the first 8 stacked, plus, where the triplet has a `reference` "
    "(a correct composite), that video and the same through the VAE")
arg("--batch", type=int, default=4, help="compositions per forward pass (triplet mode)")
arg("--fps", type=float, default=None, help="output frame rate (default: keep the background's duration)")
arg("--tile", action="store_true", help="tiled VAE decode (automatic above 256x256)")
arg("--overwrite", action="store_true", help="replace earlier results in --out made with other settings")
arg("--device", default=None, help="cpu or cuda (default: cuda if available)")


# ---------------------------------------------------------------------------------------------
# Checking what the user gave, before any model loads


def check_flags(a):
    problems = [(a.steps < 1, f"--steps {a.steps}: need at least 1"),
                (not a.guidance >= 0, f"--guidance {a.guidance}: need a number >= 0 (1: no guidance)"),
                (not 0 <= a.seed < 2**63, f"--seed {a.seed}: need 0 <= seed < 2^63"),
                (a.batch < 1, f"--batch {a.batch}: need at least 1"),
                (a.fps is not None and not a.fps > 0, f"--fps {a.fps}: need a positive frame rate"),
                (a.frames is not None and a.frames < 1, f"--frames {a.frames}: need 4k+1 frames")]
    for bad, msg in problems:
        if bad:
            raise BadInput(msg)


def composer_folders(ckpt, model):
    """-> (transformer folder, base model) from --ckpt/--model. A LoRA folder (train.py --lora: OUT/lora/) stands
    for the transformer folder: load_models puts it on --model's transformer."""
    p = Path(ckpt)
    if p.exists() and not (p / "transformer").is_dir() and lora.is_adapter(p / "lora"):
        p = p / "lora"
    if lora.is_adapter(p):
        try:
            return p, model or lora.read_config(p)["base_model"]
        except (ValueError, KeyError) as e:
            raise BadInput(f"--ckpt {e}") from None
    if p.exists() and (p / "transformer").is_dir():
        args = p / "args.json"
        base = model or (json.loads(args.read_text()).get("model") if args.exists() else None)
        return p / "transformer", base or str(ROOT / "assets" / "toy-base")
    if p.exists() and (p / "config.json").exists():
        return p, model or str(ROOT / "assets" / "toy-base")
    if p.exists():
        raise BadInput(f"--ckpt {ckpt}: neither a train.py output (transformer/) nor a transformer folder "
                       "(config.json)")
    try:
        return weights.resolve(ckpt, "transformer"), model or ckpt
    except (FileNotFoundError, RuntimeError) as e:
        raise BadInput(f"--ckpt {e}") from None


def shape_of(tfolder, base, frames, size):
    """(T, H, W) to generate, from the composer's and the VAE's config.json (no weights read yet)."""
    try:
        c = lora.composer_config(base) if lora.is_adapter(tfolder) else weights.read_config(tfolder, DiTConfig)
        space = weights.meta_model(VAE, weights.read_config(weights.resolve(base, "vae"), VAEConfig)).space
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
        raise BadInput(f"could not read the model's config: {e}") from None
    if c.in_channels != 48:
        raise BadInput(f"--ckpt {tfolder}: in_channels={c.in_channels}; a StM composer takes 48 ([noisy | fg | bg])")
    T = frames or c.sample_frames
    H, W = size or (c.sample_height * space, c.sample_width * space)
    msg = data.check_shape(T, H, W, "--frames/--size")
    if msg:
        raise BadInput(msg)
    return T, H, W


def read_triplets(path):
    """jsonl -> jobs (paths resolved against the file); one line that names the line for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"--triplets {path}: no such file")
    jobs, seen = [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            j = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{where}: not valid JSON ({e.msg}); one object per line is expected") from None
        if not isinstance(j, dict):
            raise BadInput(f"{where}: a JSON object {{fg, bg, prompt[, mask, id, reference]}} is expected")
        missing = [k for k in ("fg", "bg") if not isinstance(j.get(k), str) or not j[k]]
        if missing:
            raise BadInput(f"{where}: missing {' and '.join(missing)} (a video path relative to the file)")
        j["id"] = str(j.get("id", f"{len(jobs):04d}"))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", j["id"]):     # it becomes a file name in --out
            raise BadInput(f"{where}: id {j['id']!r} must be a plain file name (letters, digits, . _ -)")
        if j["id"] in seen:
            raise BadInput(f"{where}: id {j['id']!r} is also on line {seen[j['id']]}; ids name the outputs")
        seen[j["id"]] = n
        for k in ("fg", "bg", "mask", "reference"):
            if j.get(k):
                j[k] = str((path.parent / j[k]).resolve())
        jobs.append(j)
    if not jobs:
        raise BadInput(f"--triplets {path}: no triplets in the file")
    return jobs


def check_files(job):
    """-> None, or why the job's files cannot be used (cheap: the containers are probed, not decoded)."""
    for k in ("fg", "bg", "mask", "reference"):
        if job.get(k):
            try:
                n, _ = data.probe(job[k])
            except (FileNotFoundError, ValueError) as e:
                return f"{k} {e}"
            if n < 1:
                return f"{k} {job[k]}: no frames"
    return None


def earlier_results(out_dir, jobs, settings, overwrite):
    """-> (all records of results.jsonl by id, the ids of `jobs` already done with these settings and inputs).
    A job whose output file holds another run's result (other settings or inputs) is refused: never overwritten
    unless --overwrite."""
    old = {r["id"]: r for r in read_results(out_dir) if isinstance(r, dict) and "id" in r}
    keys = ("fg", "bg", "mask", "prompt")
    done, clash = set(), []
    for j in jobs:
        r = old.get(j["id"])
        if r and Path(r.get("result", "")).exists():
            if r.get("settings") == settings and all(r.get(k) == j.get(k) for k in keys):
                done.add(j["id"])
            else:
                clash.append(j["id"])
    if clash and not overwrite:
        raise BadInput(f"--out {out_dir}: {', '.join(clash[:3])}{' ...' if len(clash) > 3 else ''} already hold(s) "
                       "a result made with other settings or inputs; use another --out, or --overwrite")
    return old, done


def read_results(out_dir):
    p = out_dir / "results.jsonl"
    recs = []
    for line in (p.read_text().splitlines() if p.exists() else []):
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return recs


def join_results(out_dir, jobs):
    """Rank 0, alone: the records the ranks appended to results.rank-R.jsonl go into results.jsonl (replacing older
    ones of the same id), in triplet order as one process writes them; then those files go. Run at the end, and at
    the start of a rerun after a kill, so a rank's finished items count as done."""
    recs, files = data.rank_records(out_dir, "results")
    if not files:
        return
    records = {r["id"]: r for r in read_results(out_dir) if isinstance(r, dict) and "id" in r}
    new = {r["id"]: r for r in recs if "id" in r}
    for j in jobs:
        if j["id"] in new:
            records[j["id"]] = new.pop(j["id"])
    records.update(new)                                    # ids of another triplet file: kept, after
    weights.atomic_write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records.values()))
    for f in files:
        f.unlink()


def load_inputs(fg, bg, mask, T, H, W):
    """-> fg (3,T,H,W), bg (3,T,H,W), mask (1,T,H,W), and the frame rate that keeps bg's duration; notices for
    any resampling. Raises BadInput naming the file for anything unreadable."""
    try:
        fgv, _ = data.read_video(fg)
        bgv, bg_fps = data.read_video(bg)
        m = data.read_mask(mask) if mask else None
    except (FileNotFoundError, ValueError) as e:
        raise BadInput(str(e)) from None
    if m is None:                            # subject on black: the mask is wherever it is not black
        m = fgv.max(-1) > 16
        if m.mean() > MAX_DERIVED_MASK:
            raise BadInput(f"--fg {fg}: read as a subject on black, its mask would cover {m.mean():.0%} of the "
                           "frames; is it a whole video? Give its mask with --mask")
    elif m.shape != fgv.shape[:3]:
        print(f"note: {mask} is {m.shape[0]} frames of {m.shape[2]}x{m.shape[1]}; resampled to the fg's "
              f"{len(fgv)} frames of {fgv.shape[2]}x{fgv.shape[1]}")
        m = data.fit_video(m, len(fgv), *fgv.shape[1:3], mask=True, mode="stretch")
    if not m.any():
        raise BadInput(f"{mask or fg}: the mask is empty (no subject found)")
    for name, v in ((fg, fgv), (bg, bgv)):
        if v.shape[:3] != (T, H, W):
            print(f"note: {name} is {len(v)} frames of {v.shape[2]}x{v.shape[1]}; resampled to {T} frames of {W}x{H}")
    fps = T * bg_fps / len(bgv)                                               # the bg's duration, T frames
    fgv, bgv = data.fit_video(fgv, T, H, W), data.fit_video(bgv, T, H, W)
    m = data.fit_video(m, T, H, W, mask=True)
    fgv = fgv * m[..., None]
    return data.to_tensor(fgv), data.to_tensor(bgv), torch.from_numpy(m).float()[None], fps


# ---------------------------------------------------------------------------------------------
# Composition


@torch.no_grad()
def compose(model, vae, texts, fg, bg, mask, prompts, steps=50, sampler="dpm", guidance=6.0, dynamic_cfg=False,
            seed=0, tile=False, device="cpu", dtype=torch.float32, progress=True):
    """fg, bg (B,3,T,H,W), mask (B,1,T,H,W), prompts -> composed video (B,3,T,H,W) in [-1,1].
    The DiT input is [noisy | fg latent * latent mask | bg latent], latents times the VAE's scaling factor,
    as train.py's Conditioner builds it. texts: list of prompts -> (B, L, D) embeddings."""
    s = vae.config.scaling_factor
    enc = lambda x: vae.encode(x.to(device, dtype), tile=tile)[0] * s     # the posterior mean: no noise at inference
    m_lat = diffusion.latent_mask(mask, vae.time, vae.space).to(device, dtype)
    cond = torch.cat([enc(fg) * m_lat, enc(bg)], 1)                        # (B, 32, T', H', W')
    B = len(prompts)
    text = texts(list(prompts) + [""] * B)                                # (2B, L, D): [cond | uncond]
    sched = diffusion.Schedule()

    def v_fn(x, t, i):                     # classifier-free guidance on the text; fg and bg in both halves
        if guidance == 1:
            return model(torch.cat([x, cond], 1).to(dtype), text[:B], t).float()
        xx = torch.cat([x, cond], 1).repeat(2, 1, 1, 1, 1).to(dtype)
        v_c, v_u = model(xx, text, t.repeat(2)).float().chunk(2)
        return v_u + diffusion.cfg_scale(guidance, i, t[0].item(), steps, dynamic_cfg) * (v_c - v_u)

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((B, vae.config.latent_channels) + tuple(m_lat.shape[2:]), generator=g).to(device)
    z = sched.sample(v_fn, noise, steps=steps, sampler=sampler, generator=g, progress=progress)
    return vae.decode((z / s).to(dtype), tile=tile).float().clamp(-1, 1).cpu()


def reference_columns(path, vae, T, H, W, tile, device, dtype):
    """A known-correct composite, as is and through this VAE (encode + decode): the second is the sharpest any
    composer decoded by this VAE can draw, so the grid shows how much of a blur is the composer's."""
    if not path:
        return []
    ref = data.fit_video(data.read_video(path)[0], T, H, W)                    # uint8 (T, H, W, 3)
    x = data.to_tensor(ref)[None].to(device, dtype)                            # (1, 3, T, H, W)
    return [ref, data.to_uint8(vae.decode(vae.encode(x, tile=tile)[0], tile=tile)[0])]


def load_models(tfolder, base, device, dtype):
    try:
        model = (lora.load_composer(tfolder, base, dtype, device) if lora.is_adapter(tfolder)   # merged at load
                 else DiT.from_pretrained(tfolder, subfolder="", dtype=dtype, device=device).eval())
        vae = VAE.from_pretrained(base, dtype=dtype, device=device)
        tok = Tokenizer.from_pretrained(base, max_length=model.config.max_text_seq_length)
        t5 = T5Encoder.from_pretrained(base, dtype=dtype, device=device)
    except (FileNotFoundError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"could not load the models: {e}") from None
    return model, vae, lambda p: encode_prompts(p, tok, t5, device=device, dtype=dtype)


def write_grid(rows, path_stem, fps):
    rows = [np.pad(r, ((0, 0), (0, 2), (0, max(x.shape[2] for x in rows) - r.shape[2]), (0, 0))) for r in rows]
    for ext in ("mp4", "gif"):                                 # 2-px black line between rows
        data.write_video(f"{path_stem}.{ext}", np.concatenate(rows, 1)[:, :-2], fps)


def jobs_of(a, T, H, W):
    """-> (jobs, output folder, single?, inputs already read). A single composition's inputs are read now, so a bad
    one fails before the models load; a batch's files are probed now and read batch by batch."""
    if a.triplets or not (a.fg or a.bg):
        return read_triplets(a.triplets or ROOT / "assets" / "examples" / "triplets.jsonl"), Path(a.out), False, {}
    if not (a.fg and a.bg):
        raise BadInput("give both --fg and --bg (or --triplets FILE, or nothing for the bundled examples)")
    single = a.out.endswith((".mp4", ".gif"))
    job = {"id": Path(a.out).stem if single else "result", "fg": a.fg, "bg": a.bg, "mask": a.mask, "prompt": a.prompt}
    return [job], Path(a.out).parent if single else Path(a.out), single, {job["id"]: load_inputs(a.fg, a.bg, a.mask,
                                                                                                   T, H, W)}


def read_back_rows(recs, vae, T, H, W, tile, device, dtype):
    """Among several ranks, rank 0 stacks the grid from the first 8 compositions' <id>_grid.mp4 files (the others'
    arrays are on other ranks), each with its reference columns as one process adds them."""
    grid = lambda r: Path(r["result"]).with_name(Path(r["result"]).stem + "_grid.mp4")
    return [np.concatenate([data.read_video(grid(r))[0]] + reference_columns(r.get("reference"), vae, T, H, W, tile,
                                                                             device, dtype), 2) for r in recs[:8]]


def plan_batches(ranks, jobs, batch, done, skipped, out_dir):
    """-> (this rank's batches by start, its Progress, the ids to compose on all ranks). Batches are fixed by
    position, so a resumed run draws the same noise for each item as a straight run; each rank takes every
    world-th batch of those with work left (every rank sees the same `done`: rank 0 joined before they read)."""
    todo = lambda i: [j["id"] for j in jobs[i:i + batch] if j["id"] not in done and j["id"] not in skipped]
    left = [i for i in range(0, len(jobs), batch) if todo(i)]
    mine, left_ids = ranks.mine(left), {k for i in left for k in todo(i)}
    count = lambda: len({r.get("id") for r in data.rank_records(out_dir, "results")[0]} & left_ids)
    return mine, data.Progress(ranks, "sample", len(left_ids), sum(len(todo(i)) for i in mine), count,
                               every=batch, bar=ranks.world > 1), left_ids


def main(a):
    check_flags(a)
    ranks = data.Ranks()                                   # torchrun: this process's share of --triplets
    device = torch.device(a.device) if a.device else ranks.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tfolder, base = composer_folders(a.ckpt, a.model)
    T, H, W = shape_of(tfolder, base, a.frames, a.size)
    tile = a.tile or H * W > 256 * 256
    settings = {"ckpt": str(Path(a.ckpt).resolve()) if Path(a.ckpt).exists() else a.ckpt, "steps": a.steps,
                "sampler": a.sampler, "guidance": a.guidance, "dynamic_cfg": a.dynamic_cfg, "seed": a.seed,
                "frames": T, "size": [H, W]}
    jobs, out_dir, single, inputs = jobs_of(a, T, H, W)
    data.check_out_dir(out_dir)                               # writable: checked now, not after sampling
    if not single and ranks.rank == 0:
        join_results(out_dir, jobs)                        # what a killed run's ranks finished counts as done
    ranks.wait()
    records, done = ({}, set()) if single else earlier_results(out_dir, jobs, settings, a.overwrite)
    skipped = {j["id"]: why for j in jobs if (why := check_files(j))}
    for i, why in skipped.items() if ranks.rank == 0 else ():
        print(f"skipping {i}: {why}")

    model, vae, texts = load_models(tfolder, base, device, dtype)
    rows, fps0, n_new, t0 = [], None, 0, time.time()
    mine, progress, left_ids = plan_batches(ranks, jobs, a.batch, done, skipped, out_dir)
    for i in mine:
        chunk = [j for j in jobs[i:i + a.batch] if j["id"] not in skipped]
        for j in chunk:
            try:
                inputs[j["id"]] = inputs.get(j["id"]) or load_inputs(j["fg"], j["bg"], j.get("mask"), T, H, W)
            except BadInput as e:
                skipped[j["id"]] = str(e)
                print(f"skipping {j['id']}: {e}")
        chunk = [j for j in chunk if j["id"] not in skipped]
        if not chunk:
            continue
        ins = [inputs.pop(j["id"]) for j in chunk]
        fg, bg, mask = (torch.stack([x[k] for x in ins]) for k in range(3))
        video = compose(model, vae, texts, fg, bg, mask, [j.get("prompt", "") for j in chunk], steps=a.steps,
                        sampler=a.sampler, guidance=a.guidance, dynamic_cfg=a.dynamic_cfg, seed=a.seed, tile=tile,
                        device=device, dtype=dtype, progress=ranks.world == 1)
        for j, x, v, f, b in zip(chunk, ins, video, fg, bg):
            if j["id"] in done:                                # recomputed with its batch, not rewritten
                continue
            fps = fps0 = a.fps or x[3]
            name = Path(a.out) if single else out_dir / f"{j['id']}.mp4"
            data.write_video(name, data.to_uint8(v), fps)
            if a.grid:
                grid = data.to_uint8(torch.cat([f, b, v], -1))
                data.write_video(name.with_name(name.stem + "_grid.mp4"), grid, fps)
                data.write_video(name.with_name(name.stem + "_grid.gif"), grid, fps)
                if len(rows) < 8 and ranks.world == 1:         # with a known-correct composite (toy triplets), if any
                    ref = reference_columns(j.get("reference"), vae, T, H, W, tile, device, dtype)
                    rows.append(np.concatenate([grid] + ref, 2))
            records[j["id"]] = {**j, "result": str(name.resolve()), "fps": fps, "settings": settings}
            if ranks.world > 1:                                # each rank its own file; rank 0 joins them at the end
                data.append_jsonl(ranks.record_file(out_dir, "results"), records[j["id"]])
            n_new += 1
            progress.step()
            print(f"wrote {name}")
        if not single and ranks.world == 1:                    # after every batch: a kill loses at most one batch
            weights.atomic_write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in
                                                                         records.values()))
    progress.close()
    n_new, skipped = finish_ranks(ranks, out_dir, jobs, n_new, skipped)
    if ranks.rank > 0:
        return
    if ranks.world > 1 and a.grid:
        new = [r for r in read_results(out_dir) if r.get("id") in left_ids]
        rows, fps0 = read_back_rows(new, vae, T, H, W, tile, device, dtype), new[-1]["fps"] if new else None
    if a.grid and len(rows) > 1:
        write_grid(rows, out_dir / "grid", fps0)
    print(f"{n_new} composition(s) in {time.time() - t0:.1f}s ({a.steps} {a.sampler} steps, guidance {a.guidance}, "
          f"seed {a.seed})" + (f"; {len(done)} done before" if done else "")
          + (f"; {len(skipped)} skipped: " + ", ".join(skipped) if skipped else "")
          + (f"; {ranks.world} processes, {n_new / (time.time() - t0):.3g} items/s" if ranks.world > 1 else ""))


def finish_ranks(ranks, out_dir, jobs, n_new, skipped):
    """After every rank has finished: rank 0 joins their results (join_results) -> the compositions written and the
    items skipped on all ranks."""
    if ranks.world == 1:
        return n_new, skipped
    both = ranks.gather((n_new, skipped))
    if ranks.rank == 0:
        join_results(out_dir, jobs)
    return sum(n for n, _ in both), {k: v for _, s in both for k, v in s.items()}

if __name__ == "__main__":
    data.run_cli(main, parser)
