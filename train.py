"""
Merge: train the StM composer (paper §3.4, §4.1). A CogVideoX-I2V DiT reads [noisy | fg | bg]
latents (48 channels) and learns to rebuild the original clip from its split layers.

Toy world, CPU (the default base model is the toy one shipped in assets/toy-base):
    python data.py toy --out data/toy --clips 2048
    python train.py --data data/toy --out runs/toy
    python train.py --data data/toy --preset toy-l --cache-latents --cache-dir runs/cache --steps 2800 --warmup 100 \
        --lr 1e-3 --fg-noise -2.0 --flip-p 0 --crop-scale 0.8 1.25 --threads 2 --workers 1 --out runs/toy-composer-l
                                                        # the shipped assets/toy-composer (20 min + 2.7 min of cache)
    torchrun --nproc_per_node=2 train.py --data data/toy --out runs/toy2     # 2 processes, gloo
Real scale, one node of 8 GPUs (multi-node: add --nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:29500):
    torchrun --nproc_per_node=8 train.py --model THUDM/CogVideoX-5b-I2V --data data/stm \\
        --frames 49 --size 480 720 --batch 2 --grad-accum 4 --lr 5e-6 --warmup 1000 --steps 20000 \\
        --bf16 --ac --cache-latents --ckpt-every 500 --val-every 1000 --out runs/stm5b
Resume: the same command plus --resume (continues from the newest complete checkpoint in --out/ckpt).
Paper ablations (Table 4): --no-augment, --plain-loss, or both.

Outputs in --out: log.jsonl, ckpt/step_NNNNNNN (distributed checkpoints), val/*.mp4, and at the end
transformer/ (diffusers format: sample.py --ckpt OUT, or CogVideoXTransformer3DModel.from_pretrained).
"""
import argparse
import functools
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from tqdm import tqdm

import data
import diffusion
import weights
from augment import Augment
from dit import DiT, DiTConfig, PRESETS
from text import EmbeddingCache, T5Encoder, Tokenizer
from vae import VAE

ROOT = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# CLI arguments
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", default=str(ROOT / "assets" / "toy-base"), help="base model: folder laid out like THUDM/CogVideoX-5b-I2V, or a hub id")
ap.add_argument("--preset", default=None, choices=list(PRESETS), help="train the composer from scratch with this DiT preset instead of widening --model's transformer (toy)")
ap.add_argument("--data", required=True, help="layered-clip dataset folder (data.py toy / decompose.py)")
ap.add_argument("--out", default="runs/stm", help="output folder: logs, checkpoints, final transformer/")
ap.add_argument("--frames", type=int, default=9, help="frames per clip (4k+1; 49 for CogVideoX)")
ap.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="frame size (480 720 for CogVideoX)")
ap.add_argument("--stride", type=int, default=1, help="frame stride when a clip is longer than --frames")
ap.add_argument("--batch", type=int, default=8, help="micro-batch per process")
ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step (global batch = batch x accum x world)")
ap.add_argument("--steps", type=int, default=1500, help="optimiser steps")
ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (paper, 5B: 5e-6)")
ap.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine")
ap.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (paper: 1000)")
ap.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.95], help="AdamW betas")
ap.add_argument("--eps", type=float, default=1e-8, help="AdamW eps")
ap.add_argument("--wd", type=float, default=1e-4, help="AdamW weight decay (matrices only)")
ap.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: off)")
ap.add_argument("--alpha", type=float, default=0.5, help="identity loss: weight of the fg region (Eq. 4)")
ap.add_argument("--plain-loss", action="store_true", help="ablation: CogVideoX's plain loss instead of the identity loss")
ap.add_argument("--no-augment", action="store_true", help="ablation: no transformation-aware augmentation of the fg")
ap.add_argument("--flip-p", type=float, default=0.7, help="augmentation: probability of a horizontal flip of the fg (paper: 0.7)")
ap.add_argument("--crop-p", type=float, default=0.7, help="augmentation: probability of re-framing the fg (paper: 0.7)")
ap.add_argument("--crop-scale", type=float, nargs=2, default=(0.5, 2.0), metavar=("LO", "HI"), help="augmentation: zoom range of the fg re-framing (paper: 0.5 2.0)")
ap.add_argument("--text-drop", type=float, default=0.1, help="probability of an empty prompt (for classifier-free guidance)")
ap.add_argument("--fg-noise", type=float, default=-1.0, help="fg pixel noise: sigma = exp(N(this, 0.5)) (StM: -1.0); -inf: none")
ap.add_argument("--bg-noise", type=float, default=-3.0, help="bg pixel noise: sigma = exp(N(this, 0.5)) (StM: -3.0); -inf: none")
ap.add_argument("--cache-latents", action="store_true", help="encode video/bg latents and prompts once (in --out/cache) so steps run the VAE only on the augmented fg")
ap.add_argument("--cache-dir", default=None, help="where the caches live (default: --out/cache); share it between runs on the same data and base model")
ap.add_argument("--bf16", action="store_true", help="bf16 compute (FSDP2 mixed precision: bf16 params, fp32 reduce); fp32 otherwise")
ap.add_argument("--ac", action="store_true", help="activation checkpointing per transformer block")
ap.add_argument("--workers", type=int, default=2, help="threads per rank that decode clips (PyAV releases the GIL)")
ap.add_argument("--seed", type=int, default=0, help="seed of init, data order and noise (every draw is a function of seed, step, rank)")
ap.add_argument("--log-every", type=int, default=10, help="steps between log lines")
ap.add_argument("--ckpt-every", type=int, default=250, help="steps between checkpoints")
ap.add_argument("--keep", type=int, default=2, help="checkpoints to keep")
ap.add_argument("--val-every", type=int, default=500, help="steps between validation videos (0: never)")
ap.add_argument("--val-steps", type=int, default=25, help="sampler steps for validation videos")
ap.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out/ckpt")
ap.add_argument("--stop-at", type=int, default=0, help="checkpoint and exit after this step (a job time limit); --resume continues")
ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")


# ---------------------------------------------------------------------------------------------
# helpers


def lr_at(step, a):
    """Linear warm-up to --lr, then cosine down to --min-lr at --steps."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = min(1.0, (step - a.warmup) / max(1, a.steps - a.warmup))
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1 + math.cos(math.pi * p))


def gen(*key):
    """A generator seeded by (seed, step, rank, ...): draws never depend on the past, so resume is
    exact. (hashlib, not hash(): Python salts str hashes per process.)"""
    return torch.Generator().manual_seed(int(hashlib.sha256(repr(key).encode()).hexdigest()[:15], 16))


@functools.lru_cache(maxsize=4)
def epoch_order(n, seed, epoch):
    return torch.randperm(n, generator=gen(seed, "epoch", epoch)).tolist()


def batch_indices(n, step, micro, rank, world, a):
    """Sample ids of one micro-batch: epochs are seeded permutations, consumed in global order."""
    per_step = a.batch * a.grad_accum * world
    first = step * per_step + (micro * world + rank) * a.batch
    out = []
    for k in range(first, first + a.batch):
        epoch, pos = divmod(k, n)
        out.append(epoch_order(n, a.seed, epoch)[pos])
    return out


def complete_checkpoints(out):
    d = Path(out) / "ckpt"
    return sorted(p for p in d.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")) if d.exists() else []


def noisy(x, mean, g):
    """x + sigma * eps with sigma = exp(N(mean, 0.5)), one sigma per call (as StM and CogVideoX)."""
    if mean == float("-inf"):
        return x
    sigma = math.exp(mean + 0.5 * torch.randn((), generator=g).item())
    return x + sigma * torch.randn(x.shape, generator=g).to(x)


# ---------------------------------------------------------------------------------------------


def main(a):
    # --- processes and devices ------------------------------------------------------------------
    distributed = "RANK" in os.environ
    cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if a.threads:
        torch.set_num_threads(a.threads)
    master = rank == 0
    say = (lambda *s: print(*s, flush=True)) if master else (lambda *s: None)
    barrier = dist.barrier if distributed else (lambda: None)
    out = Path(a.out)
    if master:
        (out / "ckpt").mkdir(parents=True, exist_ok=True)
        weights.atomic_write_text(out / "args.json", json.dumps(vars(a), indent=2))
    cdtype = torch.bfloat16 if a.bf16 else torch.float32

    # --- data -----------------------------------------------------------------------------------
    H, W = a.size
    if (a.frames - 1) % 4 or H % 16 or W % 16:
        raise SystemExit(f"--frames {a.frames} --size {H} {W}: need 4k+1 frames and sizes that are multiples of 16")
    ds = data.LayeredClips(a.data, frames=a.frames, size=(H, W), stride=a.stride)
    if len(ds) == 0:
        raise SystemExit(f"--data {a.data}: the dataset is empty")
    ds_full = ds                                                            # validation needs every layer

    # --- frozen VAE and text encoder ------------------------------------------------------------
    vae = VAE.from_pretrained(a.model, dtype=cdtype, device=device).requires_grad_(False)
    scale = vae.config.scaling_factor
    lmask = lambda m: diffusion.latent_mask(m, vae.time, vae.space)       # pixel mask -> latent grid
    max_len = (PRESETS[a.preset] if a.preset else weights.read_config(weights.resolve(a.model, "transformer"), DiTConfig)).max_text_seq_length
    tok, t5 = Tokenizer.from_pretrained(a.model, max_length=max_len), T5Encoder.from_pretrained(a.model, dtype=cdtype, device=device)
    cache_root = Path(a.cache_dir) if a.cache_dir else out / "cache"
    texts = EmbeddingCache(cache_root / "text", tok, t5.requires_grad_(False), device=device, dtype=cdtype)
    texts([""])                                                             # cache the empty prompt (text dropout) while T5 is here

    # --- optional latent cache: the original clip and the bg, encoded once (mean and logvar) ---
    key = hashlib.sha256(str(Path(a.data).resolve()).encode())              # which data, which VAE:
    for p in vae.parameters():                                              # another never reads stale latents
        key.update(p.detach().float().cpu().numpy().tobytes()[:256])
    cache = cache_root / f"latents_{a.frames}x{H}x{W}_s{a.stride}_{key.hexdigest()[:12]}"
    if a.cache_latents:
        cache.mkdir(parents=True, exist_ok=True)
        mine = [i for i in range(len(ds)) if i % world == rank and not (cache / f"{i:07d}.safetensors").exists()]
        for i in tqdm(mine, desc="caching latents", disable=not master):
            it = ds[i]
            with torch.no_grad():
                mv, lv = vae.encode(it["video"][None].to(device, cdtype))
                mb, lb = vae.encode(it["bg"][None].to(device, cdtype))
            texts([it["caption"]])
            weights.save_state_dict({"video_mean": mv[0], "video_logvar": lv[0], "bg_mean": mb[0], "bg_logvar": lb[0]},
                                    cache, f"{i:07d}.safetensors")
        barrier()
        t5.to("cpu")                                                        # every caption is cached now
        ds = data.LayeredClips(a.data, frames=a.frames, size=(H, W), stride=a.stride, skip=("video", "bg"))

    # --- the composer ---------------------------------------------------------------------------
    torch.manual_seed(a.seed)                                               # same init on every rank
    if a.preset:
        model = DiT(PRESETS[a.preset])
    else:
        model = DiT.from_pretrained(a.model, in_channels=48)                # widened I2V: [noisy | fg | bg]
    if model.config.in_channels != 48:
        raise SystemExit(f"the composer needs in_channels=48, got {model.config.in_channels}")
    model.set_activation_checkpointing(a.ac)
    if distributed:                                                         # FSDP2: each block, then the root
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if a.bf16 else MixedPrecisionPolicy()
        for block in model.transformer_blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    model.to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=tuple(a.betas), eps=a.eps, foreach=True)
    n_params = sum(p.numel() for p in model.parameters())                  # DTensor numel is the global size
    say(f"composer: {n_params / 1e6:.2f}M params, world {world}, {cdtype}, AC {a.ac}, data {len(ds)} clips")

    # --- resume ---------------------------------------------------------------------------------
    step = 0
    if a.resume and complete_checkpoints(out):
        ck = complete_checkpoints(out)[-1]
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=str(ck))
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        step = json.loads((ck / "step.json").read_text())["step"]
        say(f"resumed from {ck} at step {step}")

    def save_checkpoint(step):
        final = out / "ckpt" / f"step_{step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if master and tmp.exists():
            shutil.rmtree(tmp)
        barrier()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
        barrier()
        if master:                                      # rename last: a crash mid-save leaves only a .tmp
            weights.atomic_write_text(tmp / "step.json", json.dumps({"step": step}))
            os.replace(tmp, final)
            for old in complete_checkpoints(out)[:-a.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()

    sched = diffusion.Schedule()
    augment = Augment(flip_p=0, crop_p=0, jitter_p=0) if a.no_augment else Augment(flip_p=a.flip_p, crop_p=a.crop_p, crop_scale=tuple(a.crop_scale))

    def load(idx, dset=None):
        items = list(pool.map((dset or ds).__getitem__, idx))
        return {k: (torch.stack([it[k] for it in items]) if torch.is_tensor(items[0][k]) else [it[k] for it in items])
                for k in items[0]}

    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max(1, a.workers))                            # decoding releases the GIL

    def condition(b, idx, step, micro):
        """-> x0, the 48-channel conditioning parts (fg, bg latents), text, un-augmented latent mask."""
        g = gen(a.seed, step, rank, micro)
        B = len(idx)
        with torch.no_grad():
            if a.cache_latents:
                c = [weights.read_state_dict(cache, f"{i:07d}.safetensors") for i in idx]
                pick = lambda k: torch.stack([x[k] for x in c]).to(device, cdtype)
                mean = pick("video_mean")
                x0 = (mean + (0.5 * pick("video_logvar")).exp() * torch.randn(mean.shape, generator=g).to(mean)) * scale
                bg = pick("bg_mean") * scale
                if a.bg_noise != float("-inf"):                             # pixel noise, approximated in latent space
                    bg = noisy(bg, a.bg_noise, g)
            else:
                x0 = vae_sample(b["video"], g)
                bg = vae_sample(noisy(b["bg"], a.bg_noise, g), g)
            fgs, masks = zip(*[augment(b["fg"][i], b["mask"][i], g) for i in range(B)])
            fg_aug, m_aug = torch.stack(fgs), torch.stack(masks)
            fg = vae_sample(noisy(fg_aug, a.fg_noise, g), g) * lmask(m_aug).to(device, cdtype)
            caps = ["" if torch.rand((), generator=g).item() < a.text_drop else c for c in b["caption"]]
            text = texts(caps)
        return x0, fg, bg, text, lmask(b["mask"]).to(device), g

    def vae_sample(x, g):
        return vae.sample_latent(x.to(device, cdtype), generator=g) * scale

    @torch.no_grad()
    def validate(step):
        """Compose held-out pairs (fg of clip i, bg of clip i+1) and write fg | bg | result videos."""
        idx = [0, 1] if len(ds) > 1 else [0]
        b = load(idx, ds_full)
        fg = vae_sample(b["fg"], gen(a.seed, "val")) * lmask(b["mask"]).to(device, cdtype)
        bg = vae_sample(b["bg"].roll(1, 0), gen(a.seed, "val"))
        text = texts(b["caption"])
        model.eval()
        v_fn = lambda x, t, i: model(torch.cat([x, fg, bg], 1).to(cdtype), text, t).float()
        z = sched.sample(v_fn, torch.randn(fg.shape, generator=gen(a.seed, "val-noise")).to(device),
                         steps=a.val_steps, progress=False)
        model.train()
        video = vae.decode((z / scale).to(cdtype)).float()
        if master:
            for j in range(len(idx)):
                grid = torch.cat([b["fg"][j], b["bg"].roll(1, 0)[j], video[j].cpu()], -1)
                data.write_video(out / "val" / f"step{step:07d}_{j}.mp4", data.to_uint8(grid), fps=8)

    # --- the training loop ----------------------------------------------------------------------
    model.train()
    log = open(out / "log.jsonl", "a") if master else None
    t_last, losses = time.time(), []
    bar = tqdm(total=a.steps, initial=step, desc="train", disable=not master, dynamic_ncols=True)
    while step < a.steps:
        lr = lr_at(step, a)
        for group in opt.param_groups:
            group["lr"] = lr
        stats = torch.zeros(3, device=device)
        for micro in range(a.grad_accum):
            idx = batch_indices(len(ds), step, micro, rank, world, a)
            b = load(idx)
            x0, fg, bg, text, mask_lat, g = condition(b, idx, step, micro)
            t = sched.sample_t(len(idx), generator=g).to(device)
            noise = torch.randn(x0.shape, generator=g).to(x0)
            xt = sched.add_noise(x0, noise, t)
            if distributed:
                model.set_requires_gradient_sync(micro == a.grad_accum - 1)   # reduce-scatter once per step
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16 and not distributed):
                v = model(torch.cat([xt, fg, bg], 1), text, t)               # (B, 16, T', H', W')
            x0_hat = sched.x0_from_v(xt.float(), v.float(), t)
            w = sched.loss_weight(t).to(device)
            if a.plain_loss:
                loss = diffusion.plain_loss(x0_hat, x0, w)
                fg_l = bg_l = loss.detach()
            else:
                loss, fg_l, bg_l = diffusion.identity_loss(x0_hat, x0.float(), mask_lat, w, a.alpha)
            (loss / a.grad_accum).backward()
            stats += torch.stack([loss.detach(), fg_l, bg_l]).float() / a.grad_accum
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip if a.clip > 0 else float("inf"))
        if distributed:
            dist.all_reduce(stats, op=dist.ReduceOp.AVG)
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
        if not torch.isfinite(stats).all() or not torch.isfinite(gnorm):
            say(f"step {step}: loss {stats.tolist()} / grad norm {gnorm.item()} is not finite; stopping. "
                f"The last good checkpoint is {complete_checkpoints(out)[-1] if complete_checkpoints(out) else 'none'}.")
            raise SystemExit(1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        losses.append(stats[0].item())
        if step % a.log_every == 0 or step == a.steps:
            dt = (time.time() - t_last) / a.log_every
            t_last = time.time()
            rec = {"step": step, "loss": stats[0].item(), "loss_fg": stats[1].item(), "loss_bg": stats[2].item(),
                   "lr": lr, "grad_norm": gnorm.item(), "s_per_step": dt,
                   "samples_per_s": a.batch * a.grad_accum * world / dt}
            if cuda:
                rec["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                tokens = x0.shape[2] * x0.shape[3] * x0.shape[4] // 4 + text.shape[1]
                flops = 6 * n_params * tokens * a.batch * a.grad_accum * world     # matmul FLOPs, fwd + bwd
                rec["mfu"] = flops / dt / (989e12 * world)                         # of H100 bf16 dense peak
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
            if master:
                tqdm.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
                log.write(json.dumps(rec) + "\n")
                log.flush()
        if step % a.ckpt_every == 0 or step == a.steps or step == a.stop_at:
            save_checkpoint(step)
        if a.val_every and (step % a.val_every == 0 or step == a.steps):
            validate(step)
        if step == a.stop_at:
            say(f"stopping at step {step} as asked (--stop-at); continue with --resume")
            break
    bar.close()
    if step < a.steps:
        if distributed:
            dist.destroy_process_group()
        return

    # --- the consolidated composer, in the diffusers format ------------------------------------
    full, _ = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if master:
        weights.save_state_dict(full, out / "transformer", "diffusion_pytorch_model.safetensors", 5 * 2**30)
        weights.write_config(out / "transformer", model.config, extra={"_class_name": "CogVideoXTransformer3DModel"})
        say(f"done: {step} steps, final loss {losses[-1] if losses else float('nan'):.4f}; composer in {out / 'transformer'}")
    barrier()
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(ap.parse_args())
