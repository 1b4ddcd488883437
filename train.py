"""
Merge: train the StM composer (paper §3.4, §4.1). A CogVideoX-I2V DiT reads [noisy | fg | bg]
latents (48 channels) and learns to rebuild the original clip from its split layers.

Toy world, CPU (the default base model is the toy one shipped in assets/toy-base):
    python toy.py data --out data/toy --clips 2048
    python train.py --data data/toy --out runs/toy
    python train.py --data data/toy --preset toy-l --cache-latents --cache-dir runs/cache --steps 4000 --warmup 100 \\
        --lr 2e-3 --fg-noise -2.0 --flip-p 0 --crop-scale 0.8 1.25 --text-drop 0.1 --bg-noise-latent \\
        --threads 2 --workers 1 --out runs/toy-composer-l   # the shipped assets/toy-composer (35 min + 5 min cache)
    torchrun --nproc_per_node=2 train.py --data data/toy --out runs/toy2     # 2 processes, gloo
Real scale, one node of 8 GPUs (multi-node: add --nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:29500):
    torchrun --nproc_per_node=8 train.py --model THUDM/CogVideoX-5b-I2V --data data/stm \\
        --frames 49 --size 480 720 --batch 2 --grad-accum 4 --lr 5e-6 --warmup 1000 --steps 20000 \\
        --bf16 --ac --cache-latents --ckpt-every 500 --val-every 1000 --out runs/stm5b
    torchrun --nproc_per_node=8 train.py --model THUDM/CogVideoX-5b-I2V --data data/stm --cache-latents \\
        --out runs/stm5b                                   # the same: the paper's recipe is this base's default
The defaults follow the base (RECIPES, told from its transformer/config.json before any weight loads): the toy base
gets the toy's, a CogVideoX-5B-I2V-layout base the paper's (49x480x720, lr 5e-6, warm-up 1000, 20000 steps, global
batch 64 whatever the number of GPUs: --grad-accum = --global-batch / (--batch x world), bf16 and AC on CUDA). Any
flag overrides them; the resolved recipe is printed first and stored in OUT/args.json, and a value far from it (e.g.
a full fine-tune above lr 1e-4) gets a one-line warning. Watch a run in OUT/report.html (curves, recipe, validation
videos; rewritten at each log and validation step); --log-to tensorboard|wandb sends the same scalars there too.
One GPU, LoRA (lora.py: adapters on every block's attention, the patch projection in full, the rest frozen in bf16;
output OUT/lora/ in the diffusers LoRA format; --merge also writes OUT/transformer/):
    python train.py --model THUDM/CogVideoX-5b-I2V --data data/stm --lora 16 --lora-alpha 8 --lr 1e-4 --batch 1 \\
        --frames 49 --size 480 720 --warmup 100 --steps 20000 --bf16 --ac --cache-latents --out runs/stm5b-lora
Resume: the same command plus --resume (continues from the newest checkpoint in --out/ckpt not known to be bad; an
--out that holds a run is refused without it, and a recipe flag that differs from its args.json needs
--resume-with-new-flags).
Paper ablations (Table 4): --no-augment, --plain-loss, or both.

Precision: the trainable weights and AdamW's state are fp32 whatever dtype the base checkpoint is stored in
(5B-I2V is stored in bf16: at lr 5e-6 most bf16 updates would round away). --bf16 computes in bf16: FSDP2's
MixedPrecisionPolicy (bf16 params in forward/backward, fp32 gradient reduction) under torchrun, torch.autocast
in one process. The frozen VAE and T5 run in the compute dtype.

Outputs in --out: args.json (the resolved flags), scheduler/ (the noise schedule trained with: the base's, --snr-shift
over it; sample.py samples with it), log.jsonl, val.jsonl (validation loss and videos), report.html,
ckpt/step_NNNNNNN (distributed checkpoints), val/*.mp4, and at the end
transformer/ (diffusers format, --save-dtype: sample.py --ckpt OUT, or CogVideoXTransformer3DModel.from_pretrained).
A checkpoint counts as good once the step after it had a finite loss (its step.json says "good": true).
What --resume trusts: a checkpoint's .metadata (a pickle) is loaded only if its sha256 matches the one step.json
recorded at save time and every other pickled value only through torch.load(weights_only=True), which refuses a
swapped or altered file but not someone who can rewrite step.json as well, so keep --out writable by you alone.
"""
import argparse
import functools
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from tqdm import tqdm

from plumbing.cli import BadInput, check_out_dir, run_cli
from plumbing.dataset import LayeredClips
from plumbing.video import IMAGE_EXTS, check_shape, probe, to_uint8, write_video
import diffusion
import lora
import composer
from plumbing import weights
from plumbing.files import Lock, atomic_write_text, sha256
from augment import Augment
from others import pages
from dit import DiT, DiTConfig, PRESETS
from text import EmbeddingCache, T5Encoder, Tokenizer
from vae import VAE, VAEConfig

ROOT = Path(__file__).resolve().parent
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# one process saves and loads its checkpoints with torch.distributed.checkpoint too, as intended
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")



class RecipeParser(argparse.ArgumentParser):
    """parse_args also fills in the base's recipe (resolve_recipe, quietly), so a parsed namespace is complete
    wherever it is used; one that cannot resolve (a global batch that does not divide) is left for check_flags to
    report in one line. flags_given records which recipe flags were on the command line."""

    def parse_args(self, args=None, namespace=None):
        # argparse takes "-inf" for a flag, so "--fg-noise -inf" (as the helps write it) is read as "--fg-noise=-inf"
        args, joined = sys.argv[1:] if args is None else list(args), []
        for s in args:
            if s.lower() == "-inf" and joined and joined[-1].startswith("--") and "=" not in joined[-1]:
                joined[-1] += "=" + s
            else:
                joined.append(s)
        a = super().parse_args(joined, namespace)
        if a.flags_given is None:
            a.flags_given = [k for k in RECIPE_FLAGS if getattr(a, k) is not None]
        try:
            resolve_recipe(a)
        except BadInput:
            pass
        return a


parser = RecipeParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
arg = parser.add_argument
arg("--model", default=str(ROOT / "assets" / "toy-base"),
    help="base model: folder laid out like THUDM/CogVideoX-5b-I2V, or a hub id")
arg("--preset", default=None, choices=list(PRESETS),
    help="train the composer from scratch with this DiT preset instead of widening --model's transformer (toy)")
arg("--data", required=True, help="layered-clip dataset folder (toy.py data / decompose.py / the StM release's)")
arg("--out", default="runs/stm", help="output folder: logs, checkpoints, final transformer/")
arg("--frames", type=int, default=None, help="frames per clip (4k+1; recipe: toy 9, 5B-I2V the base's 49)")
arg("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
    help="frame size (recipe: toy 64 64, 5B-I2V the base's sample size, 480 720)")
arg("--stride", type=int, default=1, help="frame stride when a clip is longer than --frames")
arg("--batch", type=int, default=None, help="micro-batch per process (recipe: toy 8, 5B-I2V 2)")
arg("--grad-accum", type=int, default=None,
    help="micro-batches per optimiser step (default: derived from --global-batch; toy 1)")
arg("--global-batch", type=int, default=None,
    help="samples per optimiser step = batch x accum x world (recipe: 5B-I2V 64 whatever the world; toy: batch x "
         "world)")
arg("--steps", type=int, default=None, help="optimiser steps (recipe: toy 1500, 5B-I2V 20000)")
arg("--lr", type=float, default=None, help="peak learning rate (recipe: toy 1e-3, 5B-I2V 5e-6, with --lora 1e-4)")
arg("--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine")
arg("--warmup", type=int, default=None, help="linear warm-up steps (recipe: toy 100, 5B-I2V 1000)")
arg("--betas", type=float, nargs=2, default=[0.9, 0.95], help="AdamW betas")
arg("--eps", type=float, default=1e-8, help="AdamW eps")
arg("--wd", type=float, default=1e-4, help="AdamW weight decay (matrices only)")
arg("--clip", type=float, default=1.0, help="gradient norm clip (0: off)")
arg("--snr-shift", type=float, default=None,
    help="SNR shift s of the noise schedule (SNR / s at every t; default: the base's scheduler/ config: 5B and the "
         "toy 1, CogVideoX-2B 3); written to OUT/scheduler/, which sample.py samples with")
arg("--input-perturbation", type=float, default=0.0, metavar="G",
    help="train on x_t built with noise + G x another noise, the target still the clean clip (Ning et al. 2023, "
         "DDPM-IP: against sampling's exposure bias; 0: off, as the paper)")
arg("--alpha", type=float, default=0.5, help="identity loss: weight of the fg region (Eq. 4)")
arg("--plain-loss", action="store_true", help="ablation: CogVideoX's plain loss instead of the identity loss")
arg("--no-augment", action="store_true", help="ablation: no transformation-aware augmentation of the fg")
arg("--flip-p", type=float, default=0.7, help="augmentation: probability of a horizontal flip of the fg (paper: 0.7)")
arg("--crop-p", type=float, default=0.7, help="augmentation: probability of re-framing the fg (paper: 0.7)")
arg("--crop-scale", type=float, nargs=2, default=(0.5, 2.0), metavar=("LO", "HI"),
    help="augmentation: zoom range of the fg re-framing (paper: 0.5 2.0)")
arg("--crop-shift", type=float, default=0.0, metavar="F",
    help="augmentation: shift the re-framing window by up to F of the frame each way (paper: 0; with "
         "--crop-scale 1 1 a pure translation)")
arg("--text-drop", type=float, default=0.0,
    help="probability of an empty prompt (StM release: 0.0; the toy composer: 0.1)")
arg("--fg-noise", type=float, default=-1.0, help="fg pixel noise: sigma = exp(N(this, 0.5)) (StM: -1.0); -inf: none")
arg("--bg-noise", type=float, default=-3.0, help="bg pixel noise: sigma = exp(N(this, 0.5)) (StM: -3.0); -inf: none")
arg("--cache-latents", action="store_true",
    help="encode the clip latents and prompts once (in --cache-dir); steps then encode only the augmented fg and "
         "the noised bg (the bg too with --bg-noise-latent or --bg-noise -inf)")
arg("--bg-noise-latent", action="store_true",
    help="with --cache-latents: add the bg noise to the cached bg latent instead of encoding noised pixels each "
         "step (a shortcut, not the release's recipe: see the README's measurement)")
arg("--cache-dir", default=None, help="where the caches live (default: --out/cache); share it between runs")
arg("--bf16", action=argparse.BooleanOptionalAction, default=None,
    help="bf16 compute (fp32 master weights either way); fp32 compute otherwise (recipe: 5B-I2V on CUDA)")
arg("--ac", action=argparse.BooleanOptionalAction, default=None,
    help="activation checkpointing per transformer block (recipe: 5B-I2V on CUDA)")
arg("--save-dtype", choices=list(DTYPES), default=None,
    help="dtype of the final transformer/ (default: bf16 when widening --model, like the official weights; "
         "fp32 with --preset)")
arg("--workers", type=int, default=2, help="threads per rank that decode clips (PyAV releases the GIL)")
arg("--seed", type=int, default=0,
    help="seed of init, data order and noise (every draw is a function of seed, step, rank)")
arg("--log-every", type=int, default=10, help="steps between log lines")
arg("--ckpt-every", type=int, default=None, help="steps between checkpoints (recipe: toy 250, 5B-I2V 500)")
arg("--keep", type=int, default=2, help="checkpoints to keep")
arg("--val-every", type=int, default=None,
    help="steps between validation videos (0: never; recipe: toy 500, 5B-I2V 1000)")
arg("--val-steps", type=int, default=50, help="sampler steps of validation videos (StM release: 50)")
arg("--val-sampler", default="dpm", choices=["ddim", "dpm"], help="sampler of validation videos (StM release: dpm)")
arg("--val-guidance", type=float, default=6.0, help="text guidance of validation videos (StM release: 6.0)")
arg("--resume", action="store_true",
    help="continue from the newest complete checkpoint in --out/ckpt that is not known to be bad (one whose next "
         "step's loss was not finite)")
arg("--resume-with-new-flags", action="store_true",
    help="with --resume: continue although recipe flags (model, data, shape, optimiser, loss, noise, augmentation, "
         "seed, ...) differ from the run's args.json, e.g. a lower --lr after a NaN; the new values apply from the "
         "resumed step on. Without it such a resume is refused (--steps, --stop-at, logging, checkpoint, validation "
         "and speed flags may always change)")
arg("--stop-at", type=int, default=0, help="checkpoint and exit after this step (a job time limit); --resume continues")
arg("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
arg("--lora", type=int, default=0, metavar="RANK",
    help="LoRA of this rank on every block's attention (lora.py); the widened patch projection trains in full, "
         "the rest is frozen (bf16 with --bf16). Output: OUT/lora/ (diffusers/PEFT names). StM release: 16")
arg("--lora-alpha", type=float, default=None, help="LoRA scale alpha/rank (default: alpha = rank; StM release: 8)")
arg("--lora-ff", action="store_true", help="with --lora: also adapt the feed-forward layers (ff.net.0.proj, ff.net.2)")
arg("--merge", action="store_true", help="with --lora: also write OUT/transformer/, the merged full composer")
arg("--recipe", choices=["toy", "cogvideox-5b-i2v"], default=None,
    help="the defaults to start from (default: told from the base's transformer/config.json, see RECIPES)")
arg("--log-to", choices=["tensorboard", "wandb"], default=None,
    help="also send the log scalars there (OUT/tb, or a wandb run); OUT/report.html is written either way")
arg("--flags-given", nargs="*", default=None, help=argparse.SUPPRESS)    # set by parse_args: for the recipe line


def main(a):
    check_flags(a)                                                          # every flag, --out and --resume, first
    run = setup_processes(a)
    out, say = run.out, run.say

    # --- data (checked before anything loads), frozen VAE and text encoder ------------------------
    H, W = a.size
    ds_full = open_dataset(a.data, a.frames, H, W, a.stride)
    bad = check_clips(run, ds_full)
    for i, why in list(bad.items())[:5]:
        say(f"warning: --data clip {i} skipped: {why}")
    if not ds_full.items:
        raise BadInput(f"--data {a.data}: no usable clip ({len(bad)} unreadable; empty, or none passes its "
                       "metadata.csv filter)")
    say(f"data: {len(ds_full)} clips" + (f", {len(bad)} unusable ones skipped (listed in {out}/skipped.json)"
                                         if bad else ""))
    ds_val = open_dataset(a.data, a.frames, H, W, a.stride, split="val")
    ds_val = ds_val if len(ds_val) else ds_full                             # the release's DAVIS clips, if any
    run.sched = noise_schedule(a)                                           # its config checked before the models
    vae, tok, t5 = frozen_models(run)
    if run.master:
        (out / "ckpt").mkdir(parents=True, exist_ok=True)
        other = run.lock.acquire()                                          # one run writes a folder at a time
        if other is not None:
            raise BadInput(f"--out {a.out}: process {other.get('pid', '?')} on {other.get('host', '?')} is training "
                           "into it; wait for it to end, or use another --out")
        atomic_write_text(out / "skipped.json", json.dumps(bad, indent=1))
        run.sched.save(out / "scheduler")                                   # what sample.py samples this run with
    cache_root = Path(a.cache_dir) if a.cache_dir else out / "cache"
    texts = EmbeddingCache(cache_root / "text", tok, t5, device=run.device, dtype=run.dtype)
    texts([""])                                                             # the empty prompt (dropout, CFG)
    cache, ds = None, ds_full
    if a.cache_latents:
        cache = latent_cache_dir(cache_root, ds_full.items, vae, a.frames, H, W, a.stride)
        cache_latents(ds_full, vae, texts, cache, run.rank, run.world, run.device, run.dtype, run.master)
        run.barrier()
        t5.to("cpu")                                                        # every caption is cached now
    augment = (Augment(flip_p=0, crop_p=0, jitter_p=0) if a.no_augment
               else Augment(flip_p=a.flip_p, crop_p=a.crop_p, crop_scale=tuple(a.crop_scale),
                            crop_shift=a.crop_shift))
    cond = Conditioner(vae, texts, augment, fg_noise=a.fg_noise, bg_noise=a.bg_noise, text_drop=a.text_drop,
                       cache=cache, bg_noise_latent=a.bg_noise_latent)
    if cache is not None:                                                   # only decode what the step still encodes
        ds = open_dataset(a.data, a.frames, H, W, a.stride, skip=("video", "bg") if cond.cached_bg() else ("video",))
        ds.items = ds_full.items

    # --- the composer, its optimiser, resume ------------------------------------------------------
    model = build_composer(a.model, a.preset, a.seed, a.ac, run.distributed, a.bf16, lora_spec(a)).to(run.device)
    opt = make_optimizer(model, a.lr, a.betas, a.eps, a.wd)
    n_params = sum(p.numel() for p in model.parameters())                  # DTensor numel is the global size
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"composer: {n_params / 1e6:.2f}M params, {n_train / 1e6:.3f}M trained (fp32 masters), world {run.world}, "
        f"compute {run.dtype}, AC {a.ac}" + (f", LoRA rank {a.lora} alpha {lora_spec(a)[1]:g}" if a.lora else ""))
    step = resume(run, model, opt) if a.resume else 0
    if run.master:                                  # after a resume that worked: a refused one leaves args.json as is
        atomic_write_text(out / "args.json", json.dumps(vars(a), indent=2))
    train_loop(run, model, opt, cond, ds, ds_val, step)
    if run.distributed:
        dist.destroy_process_group()


def train_loop(run, model, opt, cond, ds, ds_val, step):
    """From `step` to --steps (or --stop-at): steps, logs, checkpoints (each confirmed good by the next step's finite
    loss), validation, the export."""
    a, sched = run.a, run.sched
    n_params = sum(p.numel() for p in model.parameters())
    model.train()
    log = open_log(run, step)
    sink = open_sink(a.log_to, run) if run.master and a.log_to else None
    t_last, losses = time.time(), []
    unconfirmed = step or None                       # the checkpoint whose weights this step's loss tests, if any
    bar = tqdm(total=a.steps, initial=step, desc="train", disable=not run.master, dynamic_ncols=True)
    while step < a.steps:
        lr = lr_at(step, a.lr, a.warmup, a.steps, a.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr
        stats = torch.zeros(3, device=run.device)
        for micro in range(a.grad_accum):
            idx = batch_indices(len(ds), step, micro, run.rank, run.world, a.batch, a.grad_accum, a.seed)
            b = collate(list(run.pool.map(functools.partial(read_clip, ds), idx)))
            g = gen(a.seed, step, run.rank, micro)
            x0, fg, bg, text, mask_lat = cond(b, idx, g)                    # x0, fg, bg (B, 16, T', H', W')
            t = sched.sample_t(len(idx), generator=g).to(run.device)
            xt = noised_latent(sched, x0, t, g, a.input_perturbation)        # the target stays x0
            if run.distributed:
                model.set_requires_gradient_sync(micro == a.grad_accum - 1)   # reduce-scatter once per step
            with run.autocast():
                v = model(torch.cat([xt, fg, bg], 1), text, t)               # (B, 16, T', H', W')
            x0_hat = sched.x0_from_v(xt.float(), v.float(), t)
            w = sched.loss_weight(t).to(run.device)
            if a.plain_loss:
                loss = diffusion.plain_loss(x0_hat, x0, w)
                fg_l = bg_l = loss.detach()
            else:
                loss, fg_l, bg_l = diffusion.identity_loss(x0_hat, x0.float(), mask_lat, w, a.alpha)
            (loss / a.grad_accum).backward()
            stats += torch.stack([loss.detach(), fg_l, bg_l]).float() / a.grad_accum
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip if a.clip > 0 else float("inf"))
        if run.distributed:
            dist.all_reduce(stats, op=dist.ReduceOp.AVG)
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
        if not torch.isfinite(stats).all() or not torch.isfinite(gnorm):
            stop_not_finite(run, step, f"loss {stats.tolist()} / grad norm {gnorm.item()}", refute=unconfirmed)
        if unconfirmed is not None:                  # finite weights can still be useless: good once this is finite
            judge_checkpoint(run, unconfirmed, good=True)
            unconfirmed = None
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        losses.append(stats[0].item())
        if step % a.log_every == 0 or step == a.steps:
            dt, t_last = (time.time() - t_last) / a.log_every, time.time()
            rec = log_record(run, stats, gnorm, x0, text, step=step, lr=lr, dt=dt, n_params=n_params)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
            if run.master:
                tqdm.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if sink:
                    sink(rec)
                write_report(run)
        if step % a.ckpt_every == 0 or step == a.steps or step == a.stop_at:
            if not params_finite(model, run.distributed):                  # never save, or keep, a broken model
                stop_not_finite(run, step, "the weights")
            save_checkpoint(run, model, opt, step)
            unconfirmed = step
        if a.val_every and (step % a.val_every == 0 or step == a.steps):
            rec = validate(run, model, cond.vae, cond.texts, ds_val, step)
            if run.master:
                with open(run.out / "val.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if sink:
                    sink(rec)
                write_report(run)
        if step == a.stop_at:
            run.say(f"stopping at step {step} as asked (--stop-at); continue with --resume")
            break
    bar.close()
    if step == a.steps:
        where = export(run, model, opt)
        final = f"final loss {losses[-1]:.4f}" if losses else "nothing left to train"
        run.say(f"done: {step} steps, {final}; {where}")
    if run.master:
        run.say(run_summary(*read_records(run.out)) + f" (report: {run.out / 'report.html'})")
        write_report(run)
    run.barrier()


# ---------------------------------------------------------------------------------------------
# The run: flags, processes, output folder


@dataclass
class Run:
    """What every part of a training run shares besides the models: the parsed flags `a`, this process's place in
    the job (torchrun's rank and world; `distributed` when torchrun started it), its device, the compute dtype and
    the threads that decode clips. The defaults are one CPU process."""
    a: argparse.Namespace
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False
    dtype: torch.dtype = torch.float32                  # compute dtype; the trained weights are fp32 masters always
    pool: ThreadPoolExecutor = None                     # decoding releases the GIL
    sched: object = None                                # diffusion.Schedule: the base's, or --snr-shift's

    @property
    def out(self):
        return Path(self.a.out)

    @property
    def master(self):
        return self.rank == 0

    @functools.cached_property
    def lock(self):
        """OUT/.train.lock (plumbing.files.Lock): a second run training into the same --out is refused."""
        return Lock(self.out, ".train.lock")

    def say(self, *s):
        if self.master:
            print(*s, flush=True)

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def gather(self, x):
        """Every rank's `x`, on every rank."""
        if not self.distributed:
            return [x]
        out = [None] * self.world
        dist.all_gather_object(out, x)
        return out

    def autocast(self):
        """One process: autocast to bf16 over the fp32 weights; under torchrun FSDP2 casts the parameters itself."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.a.bf16 and not self.distributed)


def setup_processes(a):
    """-> the Run. torchrun sets RANK; a plain `python train.py` is one process."""
    distributed = "RANK" in os.environ
    cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if a.threads:
        torch.set_num_threads(a.threads)
    return Run(a, rank, world, device, distributed, dtype=torch.bfloat16 if a.bf16 else torch.float32,
               pool=ThreadPoolExecutor(max(1, a.workers)))


# ---------------------------------------------------------------------------------------------
# Checking what the user gave, before any compute


# The recipe a base gets by default. Every value is a flag's default (None in argparse) and any flag overrides it;
# resolve_recipe fills in the rest and args.json stores what it resolved to. "cogvideox-5b-i2v" is the paper's
# (§4.1: 49x480x720, lr 5e-6, 1,000 warm-up steps, 20,000 steps, global batch 64), bf16 compute and activation
# checkpointing on CUDA; frames and size follow the base's sample size (its learned PE is made for it). "toy" is the
# CPU toy world's (assets/toy-base, --preset toy/toy-l). lora_lr: the peak lr with --lora (the StM release: 1e-4).
RECIPES = {
    "toy": dict(frames=9, size=[64, 64], batch=8, global_batch=None, lr=1e-3, lora_lr=1e-3, warmup=100, steps=1500,
                bf16=False, ac=False, ckpt_every=250, val_every=500),
    "cogvideox-5b-i2v": dict(frames=49, size=[480, 720], batch=2, global_batch=64, lr=5e-6, lora_lr=1e-4, warmup=1000,
                             steps=20000, bf16="cuda", ac="cuda", ckpt_every=500, val_every=1000),
}
RECIPE_FLAGS = ("frames", "size", "batch", "grad_accum", "global_batch", "steps", "lr", "warmup", "bf16", "ac",
                "ckpt_every", "val_every", "recipe")
FAR = 20                 # a learning rate this many times the recipe's, or a global batch 1/8 of it, gets a warning


def base_config(a):
    """The composer's DiTConfig before any weight loads: --preset's, or --model's transformer/config.json (a hub id:
    that one file) -> (config or None, where it came from)."""
    if a.preset:
        return PRESETS[a.preset], f"--preset {a.preset}"
    p = Path(a.model)
    try:
        if p.exists():
            folder = weights.resolve(p, "transformer")
            return weights.read_config(folder, DiTConfig), str(folder / "config.json")
        if str(a.model).count("/") == 1 and not str(a.model).startswith((".", "/")):
            from huggingface_hub import hf_hub_download
            f = Path(hf_hub_download(str(a.model), "transformer/config.json"))
            return weights.read_config(f.parent, DiTConfig), f"{a.model}/transformer/config.json"
    except Exception:                                   # offline, no transformer/ (the toy base), unreadable
        pass
    return None, None


def detect_recipe(a, forced):
    """-> (recipe name, why, the base's sample (frames, H, W) or None). The 5B-I2V family is told by its interface:
    226 T5 tokens, 3D RoPE and 32 (I2V) or 48 (StM) input channels, whatever its width (the rehearsal's miniature
    has it); the toy presets take 32 text tokens. No readable config: a local folder is the toy base (it ships no
    transformer/), a hub id a real base."""
    cfg, src = base_config(a)
    sample = None
    if cfg is not None:
        real = cfg.max_text_seq_length == 226 and cfg.use_rotary_positional_embeddings and cfg.in_channels in (32, 48)
        if real:
            try:
                local = Path(a.model).exists()
                vcfg = weights.read_config(weights.resolve(a.model, "vae"), VAEConfig) if local else None
                space = 2 ** (len(vcfg.block_out_channels) - 1) if vcfg else 8
                sample = (cfg.sample_frames, cfg.sample_height * space, cfg.sample_width * space)
            except (FileNotFoundError, ValueError, TypeError):
                pass
        name = "cogvideox-5b-i2v" if real else "toy"
        why = f"{src}: {cfg.max_text_seq_length} text tokens, {cfg.in_channels} input channels"
    else:
        local = Path(a.model).exists()
        name, why = ("toy", f"--model {a.model}: no transformer/config.json") if local else \
            ("cogvideox-5b-i2v", f"--model {a.model}: a hub id whose config could not be read")
    if forced:
        name, why = a.recipe, "--recipe"
    return name, why, sample


def resolve_recipe(a):
    """Fill every flag left at None from the base's recipe, derive --grad-accum from --global-batch (or the global
    batch from an explicit --grad-accum), and store the recipe's name in a.recipe -> (a one-line summary, warnings).
    Idempotent: a second call finds nothing left to fill."""
    if getattr(a, "flags_given", None) is None:                     # a namespace not from parser.parse_args
        a.flags_given = [k for k in RECIPE_FLAGS if getattr(a, k) is not None]
    given = a.flags_given
    name, why, sample = detect_recipe(a, "recipe" in given)
    r = dict(RECIPES[name])
    paper = dict(r)
    if sample:                                          # the base's own sample size (49x480x720 for the real 5B-I2V)
        r["frames"], r["size"] = sample[0], list(sample[1:])
    cuda = torch.cuda.is_available()
    for k in ("frames", "size", "batch", "steps", "warmup", "ckpt_every", "val_every", "bf16", "ac"):
        if getattr(a, k) is None:
            setattr(a, k, cuda if r[k] == "cuda" else r[k])
    if a.lr is None:
        a.lr = r["lora_lr"] if a.lora else r["lr"]
    world = int(os.environ.get("WORLD_SIZE", 1)) if "RANK" in os.environ else 1
    if a.batch < 1 or (a.global_batch is not None and a.global_batch < 1):
        raise BadInput(f"--batch {a.batch} / --global-batch {a.global_batch}: need at least 1")
    if a.grad_accum is not None:
        gb = a.batch * a.grad_accum * world
        if a.global_batch is not None and a.global_batch != gb:
            raise BadInput(f"--global-batch {a.global_batch} but --batch {a.batch} x --grad-accum {a.grad_accum} x "
                           f"{world} processes = {gb}; give --global-batch or --grad-accum, or values that agree")
        a.global_batch = gb
    else:
        gb = a.global_batch or r["global_batch"] or a.batch * world
        if gb % (a.batch * world):
            raise BadInput(f"--global-batch {gb}: not a multiple of --batch {a.batch} x {world} processes = "
                           f"{a.batch * world}; pick a global batch that is, or another --batch")
        a.global_batch, a.grad_accum = gb, gb // (a.batch * world)
    a.recipe = name
    summary = (f"recipe {name} ({why}): {a.frames}x{a.size[0]}x{a.size[1]}, global batch {a.global_batch} = "
               f"{a.batch} per process x {a.grad_accum} accum x {world} processes, lr {a.lr:g}, warm-up {a.warmup}, "
               f"{a.steps} steps, bf16 {'on' if a.bf16 else 'off'}, AC {'on' if a.ac else 'off'}, checkpoint every "
               f"{a.ckpt_every}, validation every {a.val_every}"
               + (f"; given: {', '.join('--' + k.replace('_', '-') for k in given)}" if given else ""))
    want_lr, kind = (r["lora_lr"], "LoRA") if a.lora else (r["lr"], "full fine-tune")
    used = (f"the paper used lr {want_lr:g} ({kind}), warm-up {r['warmup']}, global batch {r['global_batch']}, "
            f"{paper['frames']}x{paper['size'][0]}x{paper['size'][1]}, {r['steps']} steps" if name != "toy" else
            f"the toy recipe is lr {want_lr:g}, warm-up {r['warmup']}, batch {r['batch']}, {r['steps']} steps")
    warn = []
    if not want_lr / FAR <= a.lr <= want_lr * FAR:
        warn.append(f"warning: --lr {a.lr:g} is far {'above' if a.lr > want_lr else 'below'} the {name} recipe for a "
                    f"{kind} of this base: {used}")
    if r["global_batch"] and a.global_batch * 8 < r["global_batch"]:
        warn.append(f"warning: global batch {a.global_batch} is far below the {name} recipe's: {used}")
    if sample and (a.frames, *a.size) != sample:
        warn.append(f"warning: --frames/--size {a.frames}x{a.size[0]}x{a.size[1]} differ from this base's sample size "
                    f"{'x'.join(map(str, sample))}, which its learned position embedding was made for: {used}")
    return summary, warn


# Flags that change how a run goes, not what it trains: a --resume may change them freely. Any other flag is part
# of the recipe, and a resume that changes one needs --resume-with-new-flags.
NOT_RECIPE = {"out", "steps", "stop_at", "threads", "workers", "log_every", "ckpt_every", "keep", "val_every",
              "val_steps", "val_sampler", "val_guidance", "cache_dir", "ac", "save_dtype", "merge", "resume",
              "resume_with_new_flags", "log_to", "flags_given"}
MAX_NOISE = 2.0          # sigma ~ e^2 = 7.4 on [-1, 1] pixels: the layer is gone under the noise


def check_flags(a):
    """Resolve the recipe (printed, with its warnings, by rank 0), then one line for a flag value that cannot work,
    or an --out that cannot take this run, before anything loads."""
    summary, warn = resolve_recipe(a)
    if os.environ.get("RANK", "0") == "0":
        for line in [summary, *warn]:
            print(line, flush=True)
    if a.log_to:
        open_sink(a.log_to, None)                                           # a missing package: one line, now
    inf = float("inf")
    msg = check_shape(a.frames, *a.size, "--frames/--size")
    problems = [(msg, msg),
                (min(a.steps, a.batch, a.grad_accum, a.ckpt_every, a.keep, a.log_every) < 1,
                 "--steps, --batch, --grad-accum, --ckpt-every, --keep and --log-every must be at least 1"),
                (not 0 < a.lr < inf, f"--lr {a.lr}: need a positive, finite learning rate"),
                (not 0 <= a.min_lr <= a.lr, f"--min-lr {a.min_lr}: need 0 <= --min-lr <= --lr ({a.lr})"),
                (a.warmup < 0, f"--warmup {a.warmup}: need 0 or more steps"),
                (not all(0 <= b < 1 for b in a.betas), f"--betas {a.betas}: each must lie in [0, 1)"),
                (not 0 < a.eps < inf, f"--eps {a.eps}: need a positive, finite epsilon"),
                (not 0 <= a.wd < inf, f"--wd {a.wd}: need a finite weight decay >= 0"),
                (not a.clip >= 0, f"--clip {a.clip}: need a norm >= 0 (0: off)"),
                (a.stride < 1, f"--stride {a.stride}: need at least 1"),
                (not all(0 <= p <= 1 for p in (a.text_drop, a.flip_p, a.crop_p, a.alpha)),
                 "--text-drop, --flip-p, --crop-p and --alpha are probabilities/weights in [0, 1]"),
                (not 0 < a.crop_scale[0] <= a.crop_scale[1] < inf, f"--crop-scale {a.crop_scale}: need 0 < LO <= HI"),
                (not 0 <= a.crop_shift < 1, f"--crop-shift {a.crop_shift}: need 0 <= F < 1"),
                (a.snr_shift is not None and not 0 < a.snr_shift < inf, f"--snr-shift {a.snr_shift}: need s > 0"),
                (not 0 <= a.input_perturbation <= 1,
                 f"--input-perturbation {a.input_perturbation}: need 0 <= G <= 1 (DDPM-IP: 0.1)"),
                (a.val_every < 0 or a.val_steps < 1 or not 0 <= a.val_guidance < inf,
                 "--val-every >= 0, --val-steps >= 1 and a finite --val-guidance >= 0 are needed"),
                (a.stop_at < 0, f"--stop-at {a.stop_at}: need a step >= 0"),
                (min(a.threads, a.workers) < 0, "--threads and --workers need 0 or more (0: the default)"),
                (not 0 <= a.seed < 2**63, f"--seed {a.seed}: need 0 <= seed < 2^63"),
                (a.lora < 0 or (a.lora_alpha is not None and not 0 < a.lora_alpha < inf),
                 "--lora RANK >= 1 (0: off) and a finite --lora-alpha > 0 are needed"),
                (a.lora and a.preset, "--lora adapts --model's transformer; it cannot start from --preset"),
                ((a.lora_ff or a.merge or a.lora_alpha is not None) and not a.lora,
                 "--lora-alpha, --lora-ff and --merge go with --lora RANK"),
                (a.resume_with_new_flags and not a.resume, "--resume-with-new-flags goes with --resume")]
    for bad, text in problems:
        if bad:
            raise BadInput(text)
    for flag, mean in (("--fg-noise", a.fg_noise), ("--bg-noise", a.bg_noise)):
        if not (mean == -inf or (math.isfinite(mean) and mean <= MAX_NOISE)):
            raise BadInput(f"{flag} {mean}: sigma = exp(N({mean}, 0.5)) on [-1, 1] pixels needs a finite mean <= "
                           f"{MAX_NOISE:g} (sigma ~ {math.exp(MAX_NOISE):.1f}) or -inf (none); the StM release uses "
                           "--fg-noise -1.0 --bg-noise -3.0")
    check_out_dir(a.out)
    if a.cache_dir:
        check_out_dir(a.cache_dir, "--cache-dir")
    check_out(a)


def read_clip(ds, i, said=set()):
    """ds[i]; a clip whose file passed the up-front probe but fails to decode (a corrupt frame deep inside a video or
    frame folder) is said once and replaced by the next clip that decodes, so one bad file never stops a run."""
    for k in range(len(ds)):
        j = (i + k) % len(ds)
        try:
            return ds[j]
        except (ValueError, OSError) as e:
            if j not in said:
                said.add(j)
                print(f"warning: --data clip {j} ({ds.items[j]['video']}) does not decode, replaced by another: "
                      f"{str(e).splitlines()[0]}", flush=True)
    raise BadInput(f"--data: no clip decodes (the first: {ds.items[i]['video']})")


def check_learned_positions(a):
    """A composer whose position embedding is a learned table (5B-I2V 1.0, the toy presets) takes only the size it
    was made for: any other --size is refused here, not by a shape error at step 0."""
    if not Path(a.model).exists():                                 # a hub id: nothing is downloaded to check it
        return
    try:
        c = PRESETS[a.preset] if a.preset else weights.read_config(weights.resolve(a.model, "transformer"), DiTConfig)
        space = weights.meta_model(VAE, weights.read_config(weights.resolve(a.model, "vae"), VAEConfig)).space
    except (FileNotFoundError, RuntimeError, ValueError, TypeError, KeyError):
        return                                                    # the model is checked where it loads
    want = (c.sample_height * space, c.sample_width * space)
    if c.use_learned_positional_embeddings and tuple(a.size) != want:
        raise BadInput(f"--size {a.size[0]} {a.size[1]}: this composer's learned position embedding is tied to "
                       f"{want[0]}x{want[1]}; use --size {want[0]} {want[1]}")


def check_out(a):
    """--out holds no other run (else --resume is needed: a new run there would replace its checkpoints, log, args
    and export); with --resume, the run is before --steps and --stop-at and trained the same recipe."""
    out = Path(a.out)
    for flag, given in (("--model", a.model), ("--data", a.data), ("--cache-dir", a.cache_dir)):
        p = Path(given) if given and Path(given).exists() else None
        if p and flag != "--cache-dir" and (out.resolve() == p.resolve() or p.resolve() in out.resolve().parents):
            raise BadInput(f"--out {a.out}: is (inside) the {flag} folder {given}; a run writes its checkpoints, "
                           "cache and export there: name a folder of its own")
    if max(a.threads, a.workers) > 1024:
        raise BadInput(f"--threads {a.threads} / --workers {a.workers}: at most 1024")
    check_learned_positions(a)
    done = complete_checkpoints(out) or [p for p in (out / "transformer", out / "lora") if p.exists()]
    if not a.resume:
        if done:
            raise BadInput(f"--out {a.out} holds another run ({done[-1].relative_to(out)}); --resume to continue "
                           "it, or another --out")
        return
    usable = [ck for ck in complete_checkpoints(out) if checkpoint_record(ck).get("good") is not False]
    if not usable:
        raise BadInput(f"--resume: no complete checkpoint in {out / 'ckpt'} (is --out right? a new run "
                       "needs no --resume)")
    at = checkpoint_record(usable[-1])["step"]
    if a.steps < at:
        raise BadInput(f"--steps {a.steps}: the run in --out {a.out} is at step {at} already; --steps {at} or more "
                       "continues it")
    if a.stop_at and a.stop_at <= at:
        raise BadInput(f"--stop-at {a.stop_at}: the run in --out {a.out} is at step {at} already; stop after it, "
                       "or leave --stop-at out")
    changed = recipe_changes(a, out)
    if changed and not a.resume_with_new_flags:
        raise BadInput(f"--resume: the run in --out {a.out} was trained with other recipe flags "
                       f"({'; '.join(changed)}: its args.json -> now); give its values again, or add "
                       "--resume-with-new-flags to continue with the new ones")


def recipe_changes(a, out):
    """The recipe flags whose value differs from the run's args.json, as '--flag old -> new'."""
    p = Path(out) / "args.json"
    old = json.loads(p.read_text()) if p.exists() else {}
    now = json.loads(json.dumps(vars(a)))                  # compared as args.json stores them (tuples as lists)
    return [f"--{k.replace('_', '-')} {old[k]} -> {v}" for k, v in now.items()
            if k in old and k not in NOT_RECIPE and old[k] != v]


def open_dataset(root, frames, H, W, stride, split="train", skip=()):
    try:
        return LayeredClips(root, frames=frames, size=(H, W), stride=stride, split=split, skip=skip)
    except (FileNotFoundError, ValueError) as e:
        raise BadInput(f"--data {e}") from None


def clip_problem(item, frames, stride):
    """-> None, or why one clip cannot be read at `frames` frames: a layer is missing, unreadable or too short, or
    two layers that the step reads frame for frame (fg and mask, video and bg) differ in frames or size. Read from
    the files' headers, not decoded."""
    need = (frames - 1) * stride + 1
    shape = {}
    for key in ("video", "fg", "bg", "mask"):
        try:
            n, _ = probe(item[key])
        except (FileNotFoundError, ValueError) as e:
            return f"{key}: {e}"
        if n < need:
            return f"{key}: {item[key]} has {n} frames, {need} are needed (--frames {frames} --stride {stride})"
        shape[key] = (n, *frame_size(item[key]))
    for x, y in (("fg", "mask"), ("video", "bg")):
        if shape[x] != shape[y]:
            return (f"{x} {item[x]} is {'x'.join(map(str, shape[x]))} but {y} {item[y]} is "
                    f"{'x'.join(map(str, shape[y]))} (frames x H x W); the layers of a clip must match")
    return None


def frame_size(path):
    """(H, W) of a video file or frame folder from its stream header (a folder: its first frame's)."""
    p = Path(path)
    first = min(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS) if p.is_dir() else p
    with av.open(str(first)) as c:
        s = c.streams.video[0]
        return s.height, s.width


def check_clips(run, ds):
    """Probe every clip's files (this rank's share, in the decode threads) and drop the unusable ones from `ds`,
    the same ones on every rank -> {index: why}. A missing or mismatched file then never stops training mid-run."""
    a = run.a
    mine = [i for i in range(len(ds)) if i % run.world == run.rank]
    why = dict(zip(mine, run.pool.map(lambda i: clip_problem(ds.items[i], a.frames, a.stride), mine)))
    bad = {i: w for part in run.gather({i: w for i, w in why.items() if w}) for i, w in part.items()}
    ds.items = [it for i, it in enumerate(ds.items) if i not in bad]
    return bad


# ---------------------------------------------------------------------------------------------
# Models and data


def frozen_models(run):
    """The base model's VAE, tokenizer and T5 (frozen, in the compute dtype)."""
    a, device, dtype = run.a, run.device, run.dtype
    try:
        vae = VAE.from_pretrained(a.model, dtype=dtype, device=device).requires_grad_(False)
        cfg = PRESETS[a.preset] if a.preset else weights.read_config(weights.resolve(a.model, "transformer"),
                                                                      DiTConfig)
        tok = Tokenizer.from_pretrained(a.model, max_length=cfg.max_text_seq_length)
        t5 = T5Encoder.from_pretrained(a.model, dtype=dtype, device=device).requires_grad_(False)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        raise BadInput(f"--model {a.model}: {e}") from None
    return vae, tok, t5


def noise_schedule(a):
    """The noise schedule the composer trains with: the base's scheduler/ config (a base without one: CogVideoX-5B's),
    --snr-shift over it."""
    try:
        sched = diffusion.Schedule.from_pretrained(a.model)
    except FileNotFoundError:
        sched = diffusion.Schedule()
    except (ValueError, RuntimeError) as e:
        raise BadInput(f"--model {a.model}: {e}") from None
    return sched if a.snr_shift is None else diffusion.Schedule(**dict(sched.config, snr_shift_scale=a.snr_shift))


def lora_spec(a):
    """--lora, --lora-alpha, --lora-ff -> (rank, alpha, targets), or None without --lora."""
    return (a.lora, a.lora_alpha or float(a.lora), lora.ATTN + (lora.FF if a.lora_ff else ())) if a.lora else None


def build_composer(model_path, preset, seed, ac, shard, bf16, lora_spec=None):
    """The 48-channel composer with fp32 master weights: a preset from scratch, or --model's transformer widened
    (whatever dtype it is stored in). shard: FSDP2 on every block then the root, bf16 compute if asked.
    lora_spec: (rank, alpha, targets) -> LoRA (lora.py): only adapters and patch projection train (fp32); the
    frozen rest is loaded in bf16 with --bf16 and never exists in fp32 (5B: 11 GB instead of 22)."""
    torch.manual_seed(seed)                                                 # same init on every rank
    if preset:
        model = DiT(PRESETS[preset])
    else:
        frozen = torch.bfloat16 if lora_spec and bf16 else torch.float32
        model = DiT.from_pretrained(model_path, in_channels=48, dtype=frozen)  # [noisy | fg | bg]
    if model.config.in_channels != 48:
        raise SystemExit(f"the composer needs in_channels=48, got {model.config.in_channels}")
    if lora_spec:
        lora.add_lora(model, *lora_spec)                                    # A drawn from the seed: same on all ranks
        model.patch_embed.proj.float()                                      # trained in full: fp32 masters
    model.set_activation_checkpointing(ac)
    if shard:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for block in model.transformer_blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    return model


def make_optimizer(model, lr, betas, eps, wd):
    """AdamW with weight decay on matrices only; its state follows the (fp32) trainable parameters (frozen ones,
    with --lora, get no state)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=tuple(betas), eps=eps, foreach=True)


def latent_cache_dir(cache_root, items, vae, frames, H, W, stride):
    """One folder per (clips, VAE weights, clip shape): another VAE, or a clip list or clip file that changed
    since, never reads stale latents. Clip files are keyed by path, size and modification time (not read)."""
    key = hashlib.sha256()
    for it in items:
        for k in ("caption", "video", "bg"):
            st = Path(it[k]).stat() if k != "caption" else None
            key.update(repr((it[k], st and (st.st_size, st.st_mtime_ns))).encode())
    for p in vae.state_dict().values():                                    # every weight, all of it
        key.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return Path(cache_root) / f"latents_{frames}x{H}x{W}_s{stride}_{key.hexdigest()[:12]}"


@torch.no_grad()
def cache_latents(ds, vae, texts, cache, rank, world, device, dtype, show):
    """Encode every clip and its bg once (mean and logvar; this rank's share, resumable) and every caption."""
    cache.mkdir(parents=True, exist_ok=True)
    mine = [i for i in range(len(ds)) if i % world == rank and not (cache / f"{i:07d}.safetensors").exists()]
    for i in tqdm(mine, desc="caching latents", disable=not show):
        it = ds[i]
        mv, lv = vae.encode(it["video"][None].to(device, dtype))
        mb, lb = vae.encode(it["bg"][None].to(device, dtype))
        texts([it["caption"]])
        weights.save_state_dict({"video_mean": mv[0], "video_logvar": lv[0], "bg_mean": mb[0], "bg_logvar": lb[0]},
                                cache, f"{i:07d}.safetensors")


class Conditioner:
    """A batch of clips -> the training inputs: x0 (the clip's latent, a posterior sample), the fg latent of the
    augmented, noised fg layer times its latent mask, the bg latent of the noised bg layer, the text embedding
    (empty with probability text_drop) and the un-augmented latent mask for the identity loss. The same layout
    as composer.compose: [noisy | fg * mask | bg], latents times the VAE's scaling factor."""

    def __init__(self, vae, texts, augment, *, fg_noise, bg_noise, text_drop, cache=None, bg_noise_latent=False):
        self.vae, self.texts, self.augment, self.cache = vae, texts, augment, cache
        self.fg_noise, self.bg_noise, self.text_drop = fg_noise, bg_noise, text_drop
        self.bg_noise_latent = bg_noise_latent
        self.scale = vae.config.scaling_factor
        p = next(vae.parameters())
        self.device, self.dtype = p.device, p.dtype

    def cached_bg(self):
        """Whether the bg latent comes from the cache (no pixel noise to add, or the latent-space shortcut)."""
        return self.cache is not None and (self.bg_noise == float("-inf") or self.bg_noise_latent)

    def encode(self, x, g):
        return self.vae.sample_latent(x.to(self.device, self.dtype), generator=g) * self.scale

    def lmask(self, m):
        return diffusion.latent_mask(m, self.vae.time, self.vae.space).to(self.device)

    @torch.no_grad()
    def __call__(self, b, idx, g):
        if self.cache is not None:
            c = [weights.read_state_dict(self.cache, f"{i:07d}.safetensors") for i in idx]
            pick = lambda k: torch.stack([x[k] for x in c]).to(self.device, self.dtype)
            mean = pick("video_mean")
            eps = torch.randn(mean.shape, generator=g).to(mean)
            x0 = (mean + (0.5 * pick("video_logvar")).exp() * eps) * self.scale       # a fresh posterior sample
        else:
            x0 = self.encode(b["video"], g)                                     # (B, 16, T', H', W')
        if self.cached_bg():
            bg = noisy(pick("bg_mean") * self.scale, self.bg_noise, g)         # pixel noise, approximated in latents
        else:
            bg = self.encode(noisy(b["bg"], self.bg_noise, g), g)               # the release: noise, then encode
        fgs, masks = zip(*[self.augment(b["fg"][i], b["mask"][i], g) for i in range(len(idx))])
        fg_aug, m_aug = torch.stack(fgs), torch.stack(masks)
        fg = self.encode(noisy(fg_aug, self.fg_noise, g), g) * self.lmask(m_aug).to(self.dtype)
        caps = ["" if torch.rand((), generator=g).item() < self.text_drop else c for c in b["caption"]]
        return x0, fg, bg, self.texts(caps), self.lmask(b["mask"])


def noisy(x, mean, g):
    """x + sigma * eps with sigma = exp(N(mean, 0.5)), one sigma per call (as StM and CogVideoX)."""
    if mean == float("-inf"):
        return x
    sigma = math.exp(mean + 0.5 * torch.randn((), generator=g).item())
    return x + sigma * torch.randn(x.shape, generator=g).to(x)


# ---------------------------------------------------------------------------------------------
# Schedules and seeded draws


def noised_latent(sched, x0, t, g, perturb=0.0):
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) (eps + perturb * xi). perturb > 0 (--input-perturbation; DDPM-IP, Ning et
    al. 2023) trains on x_t a little off the forward path, as sampling feeds the model its own slightly wrong x_t,
    while the loss still asks for the clean x0; 0 draws nothing extra, so runs without it are unchanged."""
    noise = torch.randn(x0.shape, generator=g).to(x0)
    if perturb:
        noise = noise + perturb * torch.randn(x0.shape, generator=g).to(x0)
    return sched.add_noise(x0, noise, t)


def lr_at(step, lr, warmup, steps, min_lr=0.0):
    """Linear warm-up to lr, then cosine down to min_lr at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))


def gen(*key):
    """A generator seeded by (seed, step, rank, ...): draws never depend on the past, so resume is
    exact. (hashlib, not hash(): Python salts str hashes per process.)"""
    return torch.Generator().manual_seed(int(hashlib.sha256(repr(key).encode()).hexdigest()[:15], 16))


@functools.lru_cache(maxsize=4)
def epoch_order(n, seed, epoch):
    return torch.randperm(n, generator=gen(seed, "epoch", epoch)).tolist()


def batch_indices(n, step, micro, rank, world, batch, grad_accum, seed):
    """Sample ids of one micro-batch: epochs are seeded permutations, consumed in global order, so the
    ranks and micro-steps of one optimiser step read disjoint slices of it."""
    first = step * batch * grad_accum * world + (micro * world + rank) * batch
    return [epoch_order(n, seed, k // n)[k % n] for k in range(first, first + batch)]


def collate(items):
    return {k: (torch.stack([it[k] for it in items]) if torch.is_tensor(items[0][k]) else [it[k] for it in items])
            for k in items[0]}


# ---------------------------------------------------------------------------------------------
# Logs, validation, the export


def open_log(run, step):
    """log.jsonl for appending (master), cut back to the records up to `step` first: a resumed run redoes the steps
    after its checkpoint, and a fresh one starts over a run that died before its first checkpoint."""
    if not run.master:
        return None
    for p in (run.out / "val.jsonl", run.out / "log.jsonl"):           # val.jsonl: the validation records
        keep = []
        for line in p.read_text().splitlines() if p.exists() else []:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line + "\n")
            except (ValueError, KeyError, TypeError):                 # a torn last line
                pass
        atomic_write_text(p, "".join(keep))
    return open(p, "a")


def read_records(out):
    """log.jsonl and val.jsonl of the whole run (a resumed one too) -> (log records, validation records)."""
    def read(p):
        recs = []
        for line in p.read_text().splitlines() if p.exists() else []:
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
        return recs
    return read(Path(out) / "log.jsonl"), read(Path(out) / "val.jsonl")


def run_summary(log, val):
    """The run in one line: steps, samples and tokens seen, training wall time, mean MFU, best validation loss."""
    if not log:
        return "summary: nothing logged yet"
    wall = tokens = samples = 0.0
    prev = 0
    for r in log:                                       # each record stands for the steps since the one before
        n = r["step"] - prev
        prev = r["step"]
        wall += r.get("s_per_step", 0.0) * n
        samples += r.get("samples_per_s", 0.0) * r.get("s_per_step", 0.0) * n
        tokens += r.get("tokens_per_s", 0.0) * r.get("s_per_step", 0.0) * n
    mfu = [r["mfu"] for r in log if "mfu" in r]
    best = min(val, key=lambda r: r["val_loss"]) if val else None
    hms = f"{int(wall // 3600)}:{int(wall % 3600 // 60):02d}:{wall % 60:04.1f}"
    return (f"summary: {log[-1]['step']} steps, {samples:.0f} samples, {tokens:.4g} tokens, {hms} of training "
            "(h:mm:ss), mean MFU " + (f"{100 * sum(mfu) / len(mfu):.1f}%" if mfu else "n/a")
            + (f", best validation loss {best['val_loss']:.4f} (fg {best['val_loss_fg']:.4f}, bg "
               f"{best['val_loss_bg']:.4f}) at step {best['step']}" if best else ", no validation yet"))


def write_report(run):
    """OUT/report.html (atomically) from the whole run's log.jsonl and val.jsonl: curves, recipe, val videos."""
    log, val = read_records(run.out)
    pages.write_train_report(run.out, log, val, vars(run.a), run_summary(log, val))


def open_sink(kind, run):
    """--log-to: a function that sends one log or validation record's scalars to TensorBoard (OUT/tb) or wandb.
    The package is imported only here; missing, it is one line (check_flags calls this with run=None first)."""
    pkg = {"tensorboard": "tensorboard", "wandb": "wandb"}[kind]
    try:
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
        else:
            import wandb
    except ImportError:
        raise BadInput(f"--log-to {kind}: the {pkg} package is not installed (pip install {pkg}); or leave "
                       "--log-to out (OUT/report.html and log.jsonl are written either way)") from None
    if run is None:
        return None
    scalars = lambda rec: {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float))}
    if kind == "tensorboard":
        w = SummaryWriter(str(run.out / "tb"))

        def send(rec):
            for k, v in scalars(rec).items():
                w.add_scalar(k, v, rec["step"])
            w.flush()
        return send
    wandb.init(project="stm", name=run.out.name, dir=str(run.out), config=vars(run.a), resume="allow")
    return lambda rec: wandb.log(scalars(rec), step=rec["step"])


def log_record(run, stats, gnorm, x0, text, *, step, lr, dt, n_params):
    """One log line: losses (total, fg, bg), lr, grad norm and speed; on a GPU also peak memory and MFU."""
    samples = run.a.batch * run.a.grad_accum * run.world
    tokens = x0.shape[2] * x0.shape[3] * x0.shape[4] // 4 + text.shape[1]     # per sample: 2x2 patches + text
    rec = {"step": step, "loss": stats[0].item(), "loss_fg": stats[1].item(), "loss_bg": stats[2].item(),
           "lr": lr, "grad_norm": gnorm.item(), "s_per_step": dt, "samples_per_s": samples / dt,
           "tokens_per_s": tokens * samples / dt}
    if run.device.type == "cuda":
        rec["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        flops = 6 * n_params * tokens * samples                             # matmul FLOPs, fwd + bwd (no attention)
        rec["mfu"] = flops / dt / (989e12 * run.world)                      # of H100 bf16 dense peak
    return rec


@torch.no_grad()
def validate(run, model, vae, texts, ds, step):
    """Compose held-out pairs (fg of clip i, bg of clip i+1) with composer.compose and the recipe's sampler
    settings, and write fg | bg | result videos; and the validation loss -> the validation record."""
    a = run.a
    idx = [0, 1][:len(ds)]
    b = collate([ds[i] for i in idx])
    bg = b["bg"].roll(1, 0)
    model.eval()
    with run.autocast():
        video = composer.compose(model, vae, texts, b["fg"], bg, b["mask"], b["caption"], steps=a.val_steps,
                                 sampler=a.val_sampler, guidance=a.val_guidance, seed=a.seed, device=run.device,
                                 dtype=run.dtype, sched=run.sched)
        losses = val_loss(run, model, vae, texts, b)
    model.train()
    names = [f"val/step{step:07d}_{j}.mp4" for j in range(len(idx))]
    if run.master:
        for j in range(len(idx)):
            grid = torch.cat([b["fg"][j], bg[j], video[j]], -1)
            write_video(run.out / names[j], to_uint8(grid), fps=8)
    return {"step": step, "val_loss": losses[0], "val_loss_fg": losses[1], "val_loss_bg": losses[2],
            "videos": names, "prompts": list(b["caption"])}


def val_loss(run, model, vae, texts, b):
    """The identity loss on the validation clips' own layers (posterior means, no augmentation, no layer noise) at
    five fixed timesteps with seeded noise: the same number for the same weights, so it can be compared across
    steps -> [loss, fg part, bg part]."""
    sched, p = run.sched, next(vae.parameters())
    enc = lambda x: vae.encode(x.to(p.device, p.dtype))[0] * vae.config.scaling_factor
    x0, bg = enc(b["video"]), enc(b["bg"])
    m = diffusion.latent_mask(b["mask"], vae.time, vae.space).to(p.device)
    fg = enc(b["fg"]) * m.to(x0.dtype)
    text, g, out = texts(list(b["caption"])), gen(run.a.seed, "val"), torch.zeros(3)
    for t in (100, 300, 500, 700, 900):
        tt = torch.full((len(x0),), t, dtype=torch.long, device=run.device)
        xt = sched.add_noise(x0, torch.randn(x0.shape, generator=g).to(x0), tt)
        v = model(torch.cat([xt, fg, bg], 1), text, tt)
        x0_hat = sched.x0_from_v(xt.float(), v.float(), tt)
        loss, fl, bl = diffusion.identity_loss(x0_hat, x0.float(), m, sched.loss_weight(tt), run.a.alpha)
        out += torch.stack([loss, fl, bl]).float().cpu() / 5
    return out.tolist()


def export(run, model, opt):
    """The trained composer, gathered from the shards on rank 0 -> where it went (for the last log line): the
    diffusers format in OUT/transformer/ (--save-dtype), or with --lora the adapter in OUT/lora/ (PEFT names, fp32;
    the patch projection; lora_config.json) and with --merge also the merged composer, loaded the way sample.py
    loads it, in OUT/transformer/. A failed write is one line naming the folder; the last checkpoint holds the run."""
    a, out = run.a, run.out
    dtype = DTYPES[a.save_dtype or ("fp32" if a.preset else "bf16")]
    folder = out / ("lora" if a.lora else "transformer")
    try:
        if a.lora:
            full, _ = get_state_dict(model, opt, options=trained_only(model, full_state_dict=True, cpu_offload=True))
            if run.master:
                lora.save_adapter(full, folder, lora.lora_config(*lora_spec(a), a.model))
                if a.merge:
                    folder = out / "transformer"
                    lora.write_merged(out / "lora", a.model, folder, dtype)
        else:
            full, _ = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if run.master:
                model.save_pretrained(folder, max_shard_bytes=5 * 2**30,
                                      state_dict={k: v.to(dtype) for k, v in full.items()})
    except (OSError, SafetensorError) as e:
        raise BadInput(f"--out: could not write {folder} ({one_line(e)}); disk full or not writable? The last "
                       "checkpoint holds the run: make room, then --resume writes it again") from None
    where = f"composer in {out / 'transformer'} ({dtype})"
    return f"LoRA in {out / 'lora'} (fp32)" + (f", merged {where}" if a.merge else "") if a.lora else where


def one_line(e):
    """An error, and the one under DCP's wrapper, as one short line."""
    if isinstance(e, dcp.CheckpointException):
        e = next(iter(e.failures.values()))[0]
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def stop_not_finite(run, step, what, refute=None):
    """Stop on a non-finite loss or weights. The checkpoint whose weights gave that loss (`refute`, the step saved
    just before, unless a finite loss confirmed it) is marked bad: this message and --resume name the newest good."""
    if refute is not None:
        judge_checkpoint(run, refute, good=False)
    good = [ck for ck in complete_checkpoints(run.out) if checkpoint_record(ck).get("good")]
    run.say(f"step {step}: {what} is not finite; stopping. The last good checkpoint is "
            f"{good[-1] if good else 'none'} (--resume continues from it; with --resume-with-new-flags, at a "
            "lower --lr).")
    raise SystemExit(1)


# ---------------------------------------------------------------------------------------------
# Checkpoints: torch.distributed.checkpoint folders, written as step_N.tmp and renamed when complete; step.json
# holds the step, the sha256 of DCP's .metadata (a pickle) and whether the step after it had a finite loss ("good")


def complete_checkpoints(out):
    """The checkpoint folders this script names step_NNNNNNN (a user's step_old backup beside them is not one)."""
    d = Path(out) / "ckpt"
    return sorted(p for p in d.glob("step_*") if p.is_dir() and re.fullmatch(r"step_\d+", p.name)) \
        if d.exists() else []


def checkpoint_record(ck):
    """{step, metadata_sha256, good} of a checkpoint; good is None until the next step's loss is known. A step.json
    that is not the object this script writes counts as none: no digest matches it, so it is not loaded."""
    step = int(Path(ck).name.split("_")[1])
    try:
        rec = json.loads((Path(ck) / "step.json").read_text())
    except (OSError, ValueError):
        rec = None
    ok = isinstance(rec, dict) and rec.get("step") == step and isinstance(rec.get("metadata_sha256"), str)
    return rec if ok else {"step": step}


def params_finite(model, distributed):
    ok = torch.tensor(float(all(torch.isfinite(p.detach().to_local() if hasattr(p, "to_local") else p.detach()).all()
                                for p in model.parameters())))
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def save_checkpoint(run, model, opt, step):
    """Written as step_N.tmp, renamed when complete. A failed write (a full disk) removes the .tmp and stops in one
    line naming it; the older checkpoints are untouched."""
    final = run.out / "ckpt" / f"step_{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if run.master and tmp.exists():
        shutil.rmtree(tmp)
    run.barrier()
    msd, osd = get_state_dict(model, opt, options=trained_only(model))
    try:
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
        run.barrier()
        if run.master:                                  # rename last: a crash mid-save leaves only a .tmp
            record = {"step": step, "metadata_sha256": sha256(tmp / ".metadata"), "good": None}
            atomic_write_text(tmp / "step.json", json.dumps(record))
            if final.exists():                          # the same step again, after a resume from an older one
                shutil.rmtree(final)
            os.replace(tmp, final)
    except (OSError, dcp.CheckpointException) as e:
        if run.master:
            shutil.rmtree(tmp, ignore_errors=True)
        raise BadInput(f"--out: could not write checkpoint {tmp} ({one_line(e)}); disk full or not writable? The "
                       "older checkpoints are intact: make room, then rerun with --resume (without it if none "
                       "was saved)") from None
    if run.master:
        prune(run.out, run.a.keep)
    run.barrier()


def judge_checkpoint(run, step, good):
    """Record in step_N/step.json whether the step after it had a finite loss (once), then prune."""
    ck = run.out / "ckpt" / f"step_{step:07d}"
    if run.master and ck.is_dir():
        record = checkpoint_record(ck)
        if record.get("good") is None:
            atomic_write_text(ck / "step.json", json.dumps({**record, "good": good}))
        prune(run.out, run.a.keep)


def prune(out, keep):
    """Keep the newest `keep` checkpoints and the newest good one: the newest can hold finite but useless weights
    (a step at too high a learning rate) until the next step's loss tells."""
    cks = complete_checkpoints(out)
    good = [ck for ck in cks if checkpoint_record(ck).get("good")]
    for ck in cks[:-keep]:
        if ck not in good[-1:]:
            shutil.rmtree(ck, ignore_errors=True)


def trained_only(model, **kw):
    """State-dict options that leave out frozen parameters (--lora: they come from --model again, and a 5B
    checkpoint stays ~100 MB); load_state_dict is then not strict about them. A no-op for a full fine-tune."""
    frozen = any(not p.requires_grad for p in model.parameters())
    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen, **kw)


# What DCP's .metadata pickle may build: its own metadata types, torch.Size, dtypes, layouts and paths; nothing that
# runs code. A crafted .metadata (even with step.json's digest forged to match) fails to load instead of running.
SAFE_METADATA = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                 ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
                 ("pathlib", "PureWindowsPath"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in SAFE_METADATA or module == "torch.distributed.checkpoint.metadata" or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata type: not loaded")


class SafeMetadataReader(dcp.FileSystemReader):
    """DCP's file reader, except that .metadata is unpickled by SafeUnpickler."""

    def read_metadata(self, *args, **kwargs):
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
            metadata = SafeUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class WeightsOnlyPlanner(dcp.DefaultLoadPlanner):
    """DCP's loader, except that a pickled non-tensor value (the optimiser's settings) must first load with
    torch.load(weights_only=True), which builds plain data only: a crafted value cannot run code."""

    def load_bytes(self, read_item, value):
        torch.load(value, weights_only=True)
        value.seek(0)
        super().load_bytes(read_item, value)


def load_checkpoint(model, opt, ck):
    """Fill model and optimiser (sharded or not) from a checkpoint folder -> its step. Its .metadata, a pickle, is
    read only if it is the file this run saved (the sha256 in step.json)."""
    record, meta = checkpoint_record(ck), Path(ck) / ".metadata"
    if record.get("metadata_sha256") != sha256(meta):                     # (a missing file: it does not load)
        raise BadInput(f"--resume: {meta} is not the file saved with {ck} (its sha256 differs from the one in "
                       "step.json, or step.json has none); it is a pickle, so it is not loaded: delete that "
                       "checkpoint to resume from an older one")
    try:                                    # read here first, so that DCP never gets to log a refusal's traceback
        with open(meta, "rb") as f:
            SafeUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise ValueError(f"{meta}: {e}") from None
    msd, osd = get_state_dict(model, opt, options=trained_only(model))
    state = {"model": msd, "optim": osd}
    dcp.load(state, storage_reader=SafeMetadataReader(str(ck)),          # fails on any key the checkpoint lacks
             planner=WeightsOnlyPlanner())
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=trained_only(model))
    return record["step"]


def resume(run, model, opt):
    """The newest complete checkpoint that is not known bad, loads and holds finite weights; any other is skipped,
    and said so -> its step."""
    for ck in reversed(complete_checkpoints(run.out)):
        if checkpoint_record(ck).get("good") is False:
            run.say(f"warning: skipping checkpoint {ck}: the step after it had a non-finite loss")
            continue
        try:
            step = load_checkpoint(model, opt, ck)
        except (KeyboardInterrupt, SystemExit, BadInput):
            raise
        except BaseException as e:                      # a torn or corrupt file (DCP's own error is a BaseException)
            run.say(f"warning: skipping checkpoint {ck}: it does not load ({one_line(e)})")
            continue
        if not params_finite(model, run.distributed):
            run.say(f"warning: skipping checkpoint {ck}: its weights are not finite")
            continue
        run.say(f"resumed from {ck} at step {step}")
        return step
    raise BadInput(f"--resume: none of the checkpoints in {run.out / 'ckpt'} loads; see the warnings above")


if __name__ == "__main__":
    run_cli(main, parser)
