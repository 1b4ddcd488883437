"""
Compose: put a foreground subject into a background video under a prompt (paper §3.4, Inference).

    python sample.py                                       # bundled toy composer on bundled toy examples -> out/
    python sample.py --fg fg.mp4 --bg bg.mp4 --prompt "a red boat sailing on the water at sunset" --grid
    python sample.py --fg clip.mp4 --mask mask.mp4 --bg bg.mp4 --prompt "..."   # any video + its mask
    python sample.py --triplets data/toy-test/triplets.jsonl --ckpt runs/toy --out results/toy   # for evaluate.py
Real scale (GPU, bf16, tiled VAE decode):
    python sample.py --model THUDM/CogVideoX-5b-I2V --ckpt runs/stm5b --fg fg.mp4 --bg bg.mp4 --prompt "..." \\
        --steps 50 --guidance 6 --sampler dpm --dynamic-cfg

--ckpt is a train.py output folder, a folder holding a diffusers `transformer/`, or a hub id;
--model gives the VAE, T5 and tokenizer (a folder laid out like THUDM/CogVideoX-5b-I2V, or a hub id).
fg is the subject on black (its mask is where it is not black), or any video with --mask.
Inputs of another size, length or frame rate are resampled to the model's frames and cropped to its size.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import data
import diffusion
import weights
from dit import DiT
from text import T5Encoder, Tokenizer, encode_prompts
from vae import VAE

ROOT = Path(__file__).resolve().parent
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap = parser
ap.add_argument("--fg", help="foreground video (subject on black), or any video with --mask")
ap.add_argument("--mask", help="mask video or PNG folder for --fg (white/nonzero = subject)")
ap.add_argument("--bg", help="background video")
ap.add_argument("--prompt", default="", help="text prompt describing the composed video")
ap.add_argument("--triplets",
                help="jsonl of {fg, bg, prompt[, mask, id, reference]} (paths relative to the file): compose them all")
ap.add_argument("--ckpt", default=str(ROOT / "assets" / "toy-composer"),
                help="composer: train.py output folder, a folder with transformer/, or a hub id")
ap.add_argument("--model", default=None,
                help="base model for VAE/T5/tokenizer (default: the one the composer was trained from, else assets/toy-base)")
ap.add_argument("--out", default="out", help="output folder (or .mp4 file for a single composition)")
ap.add_argument("--steps", type=int, default=50, help="sampler steps (StM release: 50)")
ap.add_argument("--sampler", default="dpm", choices=["ddim", "dpm"],
                help="CogVideoX's DPM-Solver++ variant (StM release) or its DDIM (the toy composer's)")
ap.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance on the text (1: off; StM: 6)")
ap.add_argument("--dynamic-cfg", action="store_true",
                help="CogVideoX's dynamic guidance schedule (off in the StM release; it makes the scale oscillate)")
ap.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same video)")
ap.add_argument("--frames", type=int, default=None, help="frames to generate (default: the composer's, 4k+1)")
ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                help="frame size (default: the composer's)")
ap.add_argument("--grid", action="store_true", help="also write fg | bg | result side by side as mp4 and gif; with several "
                "compositions also <out>/grid.{mp4,gif}: the first 8 stacked, plus, where the triplet has a `reference` "
                "(a correct "
                "composite), that video and the same through the VAE")
ap.add_argument("--batch", type=int, default=4, help="compositions per forward pass (triplet mode)")
ap.add_argument("--fps", type=float, default=None, help="output frame rate (default: the background's)")
ap.add_argument("--tile", action="store_true", help="tiled VAE decode (automatic above 256x256)")
ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def composer_folders(ckpt, model):
    """-> (transformer folder, base model) from --ckpt/--model."""
    p = Path(ckpt)
    if p.exists() and (p / "transformer").is_dir():
        args = p / "args.json"
        base = model or (json.loads(args.read_text())["model"] if args.exists() else None)
        return p / "transformer", base or str(ROOT / "assets" / "toy-base")
    if p.exists() and (p / "config.json").exists():
        return p, model or str(ROOT / "assets" / "toy-base")
    if p.exists():
        raise SystemExit(f"--ckpt {ckpt}: neither a train.py output (transformer/) nor a transformer folder "
                         "(config.json)")
    return weights.resolve(ckpt, "transformer"), model or ckpt


def load_inputs(fg, bg, mask, T, H, W):
    """-> fg (3,T,H,W), bg (3,T,H,W), mask (1,T,H,W), bg fps; notices for any resampling."""
    fgv, _ = data.read_video(fg)
    bgv, fps = data.read_video(bg)
    if mask:
        m = data.read_mask(mask)
        data.check_aligned(fgv, m, fg, mask)
    else:                                  # subject on black: the mask is wherever it is not black
        m = fgv.max(-1) > 16
    if not m.any():
        raise SystemExit(f"{mask or fg}: the mask is empty (no subject found)")
    for name, v in ((fg, fgv), (bg, bgv)):
        if v.shape[:3] != (T, H, W):
            print(f"note: {name} is {len(v)} frames of {v.shape[2]}x{v.shape[1]}; resampled to {T} frames of {W}x{H}")
    fgv, bgv = data.fit_video(fgv, T, H, W), data.fit_video(bgv, T, H, W)
    m = data.fit_video(m, T, H, W, mask=True)
    fgv = fgv * m[..., None]
    return data.to_tensor(fgv), data.to_tensor(bgv), torch.from_numpy(m).float()[None], fps


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


def main(a):
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        tfolder, base = composer_folders(a.ckpt, a.model)
        model = DiT.from_pretrained(tfolder, subfolder="", dtype=dtype, device=device).eval()
        vae = VAE.from_pretrained(base, dtype=dtype, device=device)
        tok = Tokenizer.from_pretrained(base, max_length=model.config.max_text_seq_length)
        t5 = T5Encoder.from_pretrained(base, dtype=dtype, device=device)
    except (FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"could not load the models: {e}")
    if model.config.in_channels != 48:
        raise SystemExit(f"{tfolder}: in_channels={model.config.in_channels}; "
                         "a StM composer takes 48 ([noisy | fg | bg])")
    c = model.config
    T = a.frames or c.sample_frames
    H, W = a.size or (c.sample_height * vae.space, c.sample_width * vae.space)
    if (T - 1) % 4 or H % 16 or W % 16:
        raise SystemExit(f"--frames {T} --size {H} {W}: need 4k+1 frames and sizes that are multiples of 16")
    tile = a.tile or H * W > 256 * 256
    texts = lambda p: encode_prompts(p, tok, t5, device=device, dtype=dtype)

    if a.triplets or not (a.fg or a.bg):
        path = Path(a.triplets or ROOT / "assets" / "examples" / "triplets.jsonl")
        if not path.exists():
            raise SystemExit(f"{path}: no such triplets file")
        jobs = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        for j in jobs:
            for k in ("fg", "bg", "mask", "reference"):
                if j.get(k):
                    j[k] = str((path.parent / j[k]).resolve())
        out_dir, single = Path(a.out), False
    else:
        if not (a.fg and a.bg):
            raise SystemExit("give both --fg and --bg (or --triplets FILE, or nothing for the bundled examples)")
        jobs = [{"id": "result", "fg": a.fg, "bg": a.bg, "mask": a.mask, "prompt": a.prompt}]
        single = a.out.endswith((".mp4", ".gif"))
        out_dir = Path(a.out).parent if single else Path(a.out)
    records, rows = [], []
    t0 = time.time()
    for i in range(0, len(jobs), a.batch):
        chunk = jobs[i:i + a.batch]
        ins = [load_inputs(j["fg"], j["bg"], j.get("mask"), T, H, W) for j in chunk]
        fg, bg, mask = (torch.stack([x[k] for x in ins]) for k in range(3))
        video = compose(model, vae, texts, fg, bg, mask, [j.get("prompt", "") for j in chunk], steps=a.steps,
                        sampler=a.sampler, guidance=a.guidance, dynamic_cfg=a.dynamic_cfg, seed=a.seed, tile=tile,
                        device=device, dtype=dtype)
        for j, x, v, f, b in zip(chunk, ins, video, fg, bg):
            fps = a.fps or x[3]
            name = Path(a.out) if single else out_dir / f"{j.get('id', f'{len(records):04d}')}.mp4"
            data.write_video(name, data.to_uint8(v), fps)
            if a.grid:
                grid = data.to_uint8(torch.cat([f, b, v], -1))
                data.write_video(name.with_name(name.stem + "_grid.mp4"), grid, fps)
                data.write_video(name.with_name(name.stem + "_grid.gif"), grid, fps)
                if len(rows) < 8:                              # with a known-correct composite (toy triplets), if given
                    ref = reference_columns(j.get("reference"), vae, T, H, W, tile, device, dtype)
                    rows.append(np.concatenate([grid] + ref, 2))
            records.append({**j, "result": str(name.resolve())})
            print(f"wrote {name}")
    if a.grid and len(rows) > 1:
        rows = [np.pad(r, ((0, 0), (0, 2), (0, max(x.shape[2] for x in rows) - r.shape[2]), (0, 0))) for r in rows]
        for ext in ("mp4", "gif"):                             # 2-px black line between rows
            data.write_video(out_dir / f"grid.{ext}", np.concatenate(rows, 1)[:, :-2], a.fps or ins[0][3])
    if not single:
        weights.atomic_write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(records)} composition(s) in {time.time() - t0:.1f}s "
          f"({a.steps} {a.sampler} steps, guidance {a.guidance}, seed {a.seed})")


if __name__ == "__main__":
    main(parser.parse_args())
