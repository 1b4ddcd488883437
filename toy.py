"""
Build the toy base model: a folder laid out like `THUDM/CogVideoX-5b-I2V`, so the very same loaders
and train.py / sample.py code paths run on the CPU toy world (data.toy_clip).

The shipped assets/toy-base, in three runs (140 min on a 2-core CPU; killed? the same command + --resume):

    python toy.py --out runs/toy-base-v2 --sprite-margin 0 --batch 4 --vae-steps 2000 --minutes 24 --threads 2
    python toy.py --out runs/toy-base-v3 --init runs/toy-base-v2 --sprite-margin 0 --lr 5e-4 --warmup 50 \
        --batch 4 --vae-steps 100000 --minutes 45 --threads 2             # trained on (+45 min)
    python toy.py --out assets/toy-base --init runs/toy-base-v3 --lr 3e-4 --warmup 50 --batch 4 \
        --vae-steps 40000 --minutes 75 --threads 2                        # + the 3-px sprite margin (+75 min)
    python toy.py --out /tmp/tb --vae-steps 2                             # a smoke build in seconds

<out>/tokenizer/spiece.model       SentencePiece trained on every toy caption (colour x kind x verb x tint) + a few words
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

import torch
from tqdm import tqdm

import data
import text
import vae as V
import weights
from decompose import dilate  # each frame's mask grown by a square: the sprite loss margin

SCHEDULER = {"_class_name": "CogVideoXDDIMScheduler", "_diffusers_version": "0.31.0",
             "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "trained_betas": None, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
             "snr_shift_scale": 1.0, "timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False,
             "clip_sample_range": 1.0, "sample_max_value": 1.0, "steps_offset": 0}
MODEL_INDEX = {"_class_name": "CogVideoXImageToVideoPipeline", "_diffusers_version": "0.31.0",
               "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
               "tokenizer": ["transformers", "T5Tokenizer"], "vae": ["diffusers", "AutoencoderKLCogVideoX"]}
GENERIC = ["a video of", "the scene", "and", "with", "in front of", "behind", "moving", "left", "right", "slowly", "fast"]
TRAIN_SEED0, HELDOUT_SEED0, SCALE_SEED0 = 10**6, 900_000, 800_000  # disjoint seed ranges for data.toy_clip


def windows(T, w):
    # the frame windows VAE._run uses (first window takes the remainder); training must see the same ones
    n = max(T // w, 1)
    return V.Frames([T - w * (n - 1)] + [w] * (n - 1), first=True)


def clips(seeds, T, H, W, masks=False):
    """-> videos (B, 3, T, H, W) in [-1, 1] [, sprite masks (B, 1, T, H, W) in {0, 1}]."""
    cs = [data.toy_clip(s, T, H, W) for s in seeds]
    x = torch.stack([data.to_tensor(c["video"]) for c in cs])
    return (x, torch.stack([torch.from_numpy(c["mask"]).float()[None] for c in cs])) if masks else x


def psnr(a, b, where=None):  # videos in [-1, 1]: peak-to-peak 2; `where` (B, 1, T, H, W) restricts it to those pixels
    se = (a.clamp(-1, 1) - b) ** 2
    mse = se.mean() if where is None else (se * where).sum() / (3 * where.sum()).clamp(min=1)
    return 10 * math.log10(4 / max(mse.item(), 1e-12))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write (replaced atomically if it exists)")
    p.add_argument("--vae-steps", type=int, default=1200, help="VAE training steps")
    p.add_argument("--minutes", type=float, default=8.0, help="VAE training time budget: stop at --vae-steps or this, whichever first")
    p.add_argument("--batch", type=int, default=8, help="toy clips per VAE step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay to 10%%)")
    p.add_argument("--warmup", type=int, default=20, help="linear warm-up steps")
    p.add_argument("--sprite-weight", type=float, default=20.0, help="extra loss weight on sprite pixels: sprites cover ~3%% of a frame "
                   "but are all the composer is about; unweighted, the VAE spends itself on background texture and blurs them away")
    p.add_argument("--sprite-margin", type=int, default=3, help="the sprite weight also covers this many pixels around each sprite: "
                   "weighted inside only, spilling sprite colour outwards is 20x cheaper than missing it, and the VAE learns to "
                   "dilate (a bird's chevron becomes a dome)")
    p.add_argument("--vae-channels", type=int, nargs=3, default=list(V.PRESETS["toy"].block_out_channels), metavar="C",
                   help="VAE widths at full, 1/2 and 1/4 resolution (the toy preset: 8 16 32)")
    p.add_argument("--init", default=None, help="start the VAE from this base folder's vae/ (to train it longer) instead of random weights")
    p.add_argument("--ckpt-every", type=int, default=200, help="VAE steps between resumable checkpoints (<out>.ckpt.pt, removed when done)")
    p.add_argument("--resume", action="store_true", help="continue the VAE training from <out>.ckpt.pt where a killed run left it")
    p.add_argument("--kl", type=float, default=1e-6, help="KL weight (per latent element, vs per-pixel L1 + MSE)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, noise and the training clips")
    p.add_argument("--frames", type=int, default=9, help="frames per clip (4k+1)")
    p.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="clip height and width")
    p.add_argument("--scale-clips", type=int, default=256, help="clips whose latent means set scaling_factor")
    p.add_argument("--eval-clips", type=int, default=32, help="held-out clips for the final PSNR")
    p.add_argument("--spiece-vocab", type=int, default=120, help="SentencePiece vocab size asked for (may come out smaller)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a shared 2-core box, 2 threads spin-wait and run ~5x slower)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))  # beside --out, so the rename is atomic
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is a shared asset
    try:
        return build(args, tmp, out, t0)
    except BaseException:                                                   # killed or failed: no temp folder left
        shutil.rmtree(tmp, ignore_errors=True)                             # (the VAE checkpoint stays for --resume)
        raise


def build(args, tmp, out, t0):
    (H, W), T = args.size, args.frames

    # tokenizer: every caption the toy world can say, so no toy prompt ever hits <unk>
    captions = [data.toy_caption({"colour": c, "kind": k}, {"tint_name": t})
                for c in data.COLOURS for k in data.KINDS for t in data.TINTS]
    text.train_spiece(captions + GENERIC, tmp / "tokenizer" / "spiece.model", args.spiece_vocab)
    tok = text.Tokenizer(tmp / "tokenizer" / "spiece.model")
    # T5 ids = SentencePiece ids + 100 sentinels appended (as T5Tokenizer); a random frozen encoder is enough
    t5 = text.T5Encoder(dataclasses.replace(text.PRESETS["toy"], vocab_size=tok.sp.get_piece_size() + 100))
    t5.save_pretrained(tmp / "text_encoder")

    # VAE: train encoder + decoder directly (VAE.encode/decode run without grad), on the windows they use
    if args.init:
        vae = V.VAE.from_pretrained(args.init).float().train()
    else:
        vae = V.VAE(dataclasses.replace(V.PRESETS["toy"], block_out_channels=tuple(args.vae_channels))).train()
    enc_fr, dec_fr = windows(T, 2 * vae.time), windows((T - 1) // vae.time + 1, 2)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    # resumable: weights, optimizer, step, time used and the noise RNG, so a resumed run continues exactly
    ckpt, start, used = out.with_name(out.name + ".ckpt.pt"), 0, 0.0
    if args.resume:
        if not ckpt.exists():
            raise SystemExit(f"--resume: no checkpoint {ckpt} (it is written every --ckpt-every steps and removed when a build completes)")
        st = torch.load(ckpt, weights_only=False)
        if st["config"] != dataclasses.asdict(vae.config):
            raise SystemExit(f"--resume: {ckpt} holds a VAE with another config; pass the same --vae-channels / --init as the killed run")
        vae.load_state_dict(st["vae"])
        opt.load_state_dict(st["opt"])
        start, used = st["step"], st["seconds"]
        torch.set_rng_state(st["rng"])
        print(f"resuming the VAE at step {start} ({used / 60:.1f} min used)")

    def save_ckpt(step):
        tmp_ckpt = ckpt.with_name(ckpt.name + ".tmp")
        torch.save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": time.time() - t_train,
                    "rng": torch.get_rng_state(), "config": dataclasses.asdict(vae.config)}, tmp_ckpt)
        tmp_ckpt.replace(ckpt)                                              # atomic: a kill mid-save keeps the last one
    # the cosine runs on progress = steps or time used, whichever is further along: on a busy shared CPU the
    # build still ends in --minutes, with a fully decayed learning rate
    progress = lambda s: max(s / args.vae_steps, (time.time() - t_train) / (60 * args.minutes))
    lr_at = lambda s: args.lr * min(1, (s + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress(s), 1))))
    bar, t_train = tqdm(range(start, args.vae_steps), desc="vae", dynamic_ncols=True), time.time() - used
    for step in bar:
        if progress(step) >= 1:
            break
        if step > start and step % args.ckpt_every == 0:
            save_ckpt(step)
        seeds = range(TRAIN_SEED0 + args.seed * 10**7 + step * args.batch, TRAIN_SEED0 + args.seed * 10**7 + (step + 1) * args.batch)
        x, m = clips(seeds, T, H, W, masks=True)                            # fresh clips every step: no overfitting
        vae._reset_caches()  # causal-conv caches must not carry over from the previous clip
        mean, logvar = vae.encoder(x, enc_fr).chunk(2, dim=1)               # (B, 16, t, H/4, W/4) each
        logvar = logvar.clamp(-30, 20)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)            # the decoder must tolerate posterior noise
        vae._reset_caches()
        y = vae.decoder(z, dec_fr)                                          # (B, 3, T, H, W)
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
        w = 1 + args.sprite_weight * dilate(m, args.sprite_margin)          # (B, 1, T, H, W) per-pixel weight
        loss = (w * ((y - x).abs() + (y - x) ** 2)).mean() / w.mean() + args.kl * kl
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)  # a few bad early steps at lr 2e-3 otherwise
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr(y.detach(), x):.2f}", lr=f"{lr_at(step):.1e}")
    vae._reset_caches()
    vae.eval()

    # scaling_factor: 1 / std of the latent means, so the DiT sees unit-variance latents
    with torch.no_grad():
        means = [vae.encode(clips(range(s, min(s + 16, SCALE_SEED0 + args.scale_clips)), T, H, W))[0]
                 for s in range(SCALE_SEED0, SCALE_SEED0 + args.scale_clips, 16)]
        vae.config.scaling_factor = float(1 / torch.cat(means).std())
        scores, sprite, near = [], [], []
        for s in range(HELDOUT_SEED0, HELDOUT_SEED0 + args.eval_clips, 8):
            x, m = clips(range(s, min(s + 8, HELDOUT_SEED0 + args.eval_clips)), T, H, W, masks=True)
            y = vae.decode(vae.encode(x)[0])                                # decode the mean
            scores += [psnr(yi[None], xi[None]) for yi, xi in zip(y, x)]
            sprite += [psnr(yi[None], xi[None], mi[None]) for yi, xi, mi in zip(y, x, m)]
            # each sprite and 3 px around it: scored inside only, a VAE that dilates sprites would look good
            near += [psnr(yi[None], xi[None], di[None]) for yi, xi, di in zip(y, x, dilate(m, 3))]
    vae.save_pretrained(tmp / "vae")

    (tmp / "scheduler").mkdir()
    weights.atomic_write_text(tmp / "scheduler" / "scheduler_config.json", json.dumps(SCHEDULER, indent=2) + "\n")
    weights.atomic_write_text(tmp / "model_index.json", json.dumps(MODEL_INDEX, indent=2) + "\n")

    # swap in: the old folder (if any) moves aside first, so --out is never half-written
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    ckpt.unlink(missing_ok=True)                                            # the build is complete
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB) in {time.time() - t0:.0f} s: spiece vocab {tok.sp.get_piece_size()}, "
          f"VAE held-out PSNR {sum(scores) / len(scores):.2f} dB on {len(scores)} clips (min {min(scores):.2f}), "
          f"on the sprites {sum(sprite) / len(sprite):.2f} dB (min {min(sprite):.2f}), "
          f"on them + 3 px around {sum(near) / len(near):.2f} dB, "
          f"scaling_factor {vae.config.scaling_factor:.4f}")
    return {"psnr": sum(scores) / len(scores), "sprite_psnr": sum(sprite) / len(sprite), "near_psnr": sum(near) / len(near), "scaling_factor": vae.config.scaling_factor, "seconds": time.time() - t0}


if __name__ == "__main__":
    main()
