"""
Real scale, rehearsed (issue 16): one GPU run that measures what the 5B composer costs, with random weights
(nothing is downloaded). Not collected by pytest; tests/test_bench_scripts.py runs it at --tiny on CPU.

    python tests/bench_realscale.py --device cuda       # one H100/H200; ~5 min estimated from FLOPs (not yet timed)
    python tests/bench_realscale.py --tiny --device cpu # toy sizes, ~10 s: checks that the script runs

a. train step   random-init stm-5b-i2v DiT (5.6B) at 49x480x720 (latent 13x60x90 -> 13*30*45 = 17,550 video
                tokens + 226 text tokens of width 4096), activation checkpointing on, micro-batch 1 and 2.
                Two ways of holding the weights, each with an AdamW step (states on fp32 params) in the timed step:
                  fp32+autocast: fp32 weights, torch.autocast(bf16) around the forward (train.py --bf16, 1 process);
                  bf16 params:   bf16 weights compute, an fp32 master copy takes the AdamW step and is cast back
                                 (what FSDP2 with MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) computes).
                fp32 weights + grads + AdamW states are 16 bytes x 5.6B = 90 GB; a row that runs out of memory
                prints OOM. 1 warm-up step, then --iters timed steps (default 3), torch.cuda.synchronize around them.
                MFU = model FLOPs / (seconds per step x --peak-tflops), with model FLOPs per sample
                    6 * N_params * (video tokens + text tokens)  +  12 * layers * seq^2 * D
                (matmuls fwd + bwd; the attention scores QK^T and AV, 4 seq^2 D forward, x3 with backward;
                seq = video + text tokens, D = heads x head dim; the recompute of checkpointing is not counted).
                Peak memory: torch.cuda.max_memory_allocated, reset before each row (weights and AdamW included).
b. sampling     --steps (50) DPM-Solver steps with classifier-free guidance 6: one forward of batch 2 (cond and
                uncond, as sample.compose) per step, bf16 weights, no_grad; the DiT only (no VAE, no T5).
                1 warm-up forward, then the whole sampling loop timed once.
c. VAE          random-init vae.PRESETS["cogvideox-5b"] in bf16: encode of a 49x480x720 clip, decode of its
                13x60x90 latent, untiled and tile=True (240x360-pixel tiles), one timed call each after a warm-up
                on a small input; peak memory includes the weights and the input.
d. precision    the same seeded random DiT in fp32 (TF32 off), in fp32 under autocast(bf16), and cast to bf16
                params, one forward on the same inputs at the full size (batch 1); relative difference of the output
                to fp32: max|a - b| / max|b| and mean|a - b| / mean|b|.
Random weights: init_weights starts the adaLN modulations and the output projection at zero (the model is the
identity and outputs 0), so those are redrawn as N(0, 0.02^2) to give every block work and a non-zero output.
Timing does not depend on the values; the precision numbers of trained weights can differ.

The table is markdown; the last line, `JSON {...}`, holds every number for scripts.
"""
import argparse
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import diffusion  # noqa: E402
import dit  # noqa: E402
import vae as vae_lib  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
ap.add_argument("--preset", default="stm-5b-i2v", choices=list(dit.PRESETS), help="DiT preset (random init)")
ap.add_argument("--vae-preset", default="cogvideox-5b", choices=list(vae_lib.PRESETS), help="VAE preset (random init)")
ap.add_argument("--frames", type=int, default=49, help="pixel frames (4k+1)")
ap.add_argument("--height", type=int, default=480, help="pixel height")
ap.add_argument("--width", type=int, default=720, help="pixel width")
ap.add_argument("--layers", type=int, default=0, help="transformer blocks (0: the preset's 42); e.g. 21 to fit fp32 "
                "weights + AdamW on an 80 GB GPU; every number then covers that many blocks")
ap.add_argument("--steps", type=int, default=50, help="sampling steps (b)")
ap.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance scale (b)")
ap.add_argument("--batches", default="1,2", help="micro-batches of the train step (a)")
ap.add_argument("--iters", type=int, default=3, help="timed train steps per row after the warm-up (a)")
ap.add_argument("--warmup", type=int, default=1, help="untimed train steps per row (a)")
ap.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak for MFU (H100/H200 bf16 dense: 989)")
ap.add_argument("--skip", default="", help="sections to skip, comma-separated, e.g. c,d")
ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
ap.add_argument("--tiny", action="store_true",
                help="CPU smoke size: toy DiT and VAE presets, 9x64x64, 2 sampling steps")

# -----------------------------------------------------------------------------
# helpers


def say(*s):
    print(*s, flush=True)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_memory(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev):
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None  # CPU: not measured


def build_dit(cfg, dev, seed):
    """Seeded random DiT in fp32 on `dev`, built there directly; the zero-initialised modulations and output
    projection redrawn (see the docstring) so the output depends on every block."""
    torch.manual_seed(seed)
    with torch.device(dev):
        model = dit.DiT(cfg)
    with torch.no_grad():
        zeroed = [b.norm1.linear for b in model.transformer_blocks] + [b.norm2.linear for b in model.transformer_blocks]
        for lin in zeroed + [model.norm_out.linear, model.proj_out]:
            lin.weight.normal_(0, 0.02)
            lin.bias.normal_(0, 0.02)
    return model


def dit_inputs(cfg, shape, B, dev, seed):
    """Random stand-ins for one micro-batch: x0 (B,16,T',H',W'), the 32 condition channels, text, t, noise, mask."""
    g = torch.Generator(dev).manual_seed(seed)
    C, T, H, W = cfg.out_channels, *shape
    rnd = lambda *s: torch.randn(*s, generator=g, device=dev)
    return {"x0": rnd(B, C, T, H, W), "cond": rnd(B, cfg.in_channels - C, T, H, W),
            "text": rnd(B, cfg.max_text_seq_length, cfg.text_embed_dim), "noise": rnd(B, C, T, H, W),
            "t": torch.randint(0, 1000, (B,), generator=g, device=dev),
            "mask": (torch.rand(B, 1, T, H, W, generator=g, device=dev) < 0.3).float()}


def flops_per_sample(n_params, cfg, shape, train=True):
    """Model FLOPs of one sample: 2 N tokens + 4 L seq^2 D forward; x3 for forward + backward."""
    T, H, W = shape
    video = (T // (cfg.patch_size_t or 1)) * (H // cfg.patch_size) * (W // cfg.patch_size)
    seq, D = video + cfg.max_text_seq_length, cfg.num_attention_heads * cfg.attention_head_dim
    fwd = 2 * n_params * seq + 4 * cfg.num_layers * seq ** 2 * D
    return 3 * fwd if train else fwd


# -----------------------------------------------------------------------------
# a. the training step


def train_rows(a, cfg, shape, dev, mode):
    """Rows of section a for one way of holding the weights ("fp32+autocast" or "bf16 params"), one per
    micro-batch; the model and the AdamW states are shared by the rows of a mode."""
    rows = []
    model = opt = master = None
    reset_memory(dev)
    try:
        model = build_dit(cfg, dev, a.seed).set_activation_checkpointing(True).train()
        n_params = sum(p.numel() for p in model.parameters())
        params = list(model.parameters())
        if mode == "bf16 params":                   # fp32 master copy for AdamW, bf16 weights compute
            master = [p.detach().clone().requires_grad_(True) for p in params]
            model.to(torch.bfloat16)
            params = list(model.parameters())
        opt_params = master if master is not None else params
        decay = [p for p in opt_params if p.ndim >= 2]                   # as train.py: no decay on vectors
        no_decay = [p for p in opt_params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=5e-6, betas=(0.9, 0.95), foreach=True)
    except torch.cuda.OutOfMemoryError:
        model = opt = master = None
        return [{"mode": mode, "batch": B, "oom": True} for B in a.batch_list]
    sched = diffusion.Schedule()
    wdtype = torch.bfloat16 if mode == "bf16 params" else torch.float32

    def step(inp):
        xt = sched.add_noise(inp["x0"], inp["noise"], inp["t"])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mode == "fp32+autocast"):
            x = torch.cat([xt, inp["cond"]], 1).to(wdtype)                   # (B, 48, T', H', W')
            v = model(x, inp["text"].to(wdtype), inp["t"])                   # (B, 16, T', H', W')
        x0_hat = sched.x0_from_v(xt.float(), v.float(), inp["t"])
        loss, _, _ = diffusion.identity_loss(x0_hat, inp["x0"], inp["mask"], sched.loss_weight(inp["t"]))
        loss.backward()
        if master is not None:                      # FSDP2 reduces bf16 grads into fp32 shards: same cast here
            for p, m in zip(params, master):
                m.grad, p.grad = p.grad.float(), None
        torch.nn.utils.clip_grad_norm_(opt_params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if master is not None:
            with torch.no_grad():
                for p, m in zip(params, master):
                    p.copy_(m)
        return loss.detach()

    oom = False
    for B in a.batch_list:
        if oom:                                     # a larger batch will not fit either
            rows.append({"mode": mode, "batch": B, "oom": True})
            continue
        say(f"a. {mode}, micro-batch {B}: {a.warmup} warm-up + {a.iters} timed steps")
        reset_memory(dev)
        inp = dit_inputs(cfg, shape, B, dev, a.seed + B)
        try:
            for i in range(a.warmup + a.iters):
                if i == a.warmup:
                    sync(dev)
                    t0 = time.perf_counter()
                loss = step(inp)
            sync(dev)
            sec = (time.perf_counter() - t0) / a.iters
            mfu = flops_per_sample(n_params, cfg, shape) * B / sec / (a.peak_tflops * 1e12)
            rows.append({"mode": mode, "batch": B, "s_per_step": sec, "mfu": mfu, "peak_gib": peak_gib(dev),
                         "loss": loss.item(), "params_b": n_params / 1e9})
        except torch.cuda.OutOfMemoryError:
            oom = True
            rows.append({"mode": mode, "batch": B, "oom": True})
        opt.zero_grad(set_to_none=True)
        for p in params:
            p.grad = None
        del inp
    model = opt = master = params = opt_params = decay = no_decay = None
    reset_memory(dev)
    return rows


# -----------------------------------------------------------------------------
# b. sampling


@torch.no_grad()
def sampling_row(a, cfg, shape, dev):
    reset_memory(dev)
    model = build_dit(cfg, dev, a.seed).to(torch.bfloat16).eval()
    n_params = sum(p.numel() for p in model.parameters())
    inp = dit_inputs(cfg, shape, 1, dev, a.seed)
    cond = inp["cond"]                                                       # (1, 32, T', H', W'): fg | bg latents
    text = torch.cat([inp["text"], torch.zeros_like(inp["text"])]).to(torch.bfloat16)  # (2, L, D): [cond | uncond],
    # stand-ins for the T5 embeddings of the prompt and of "" (the values do not change the cost)
    sched = diffusion.Schedule()

    def v_fn(x, t, i):                       # as sample.compose: cond and uncond in one forward of batch 2
        xx = torch.cat([x, cond], 1).repeat(2, 1, 1, 1, 1).to(torch.bfloat16)
        v_c, v_u = model(xx, text, t.repeat(2)).float().chunk(2)
        return v_u + diffusion.cfg_scale(a.guidance, i, t[0].item(), a.steps) * (v_c - v_u)

    say(f"b. {a.steps} DPM steps, guidance {a.guidance}, batch 2 per forward: 1 warm-up forward, then timed")
    v_fn(inp["noise"], torch.full((1,), 999, device=dev), 0)                # warm-up
    sync(dev)
    t0 = time.perf_counter()
    z = sched.sample(v_fn, inp["noise"], steps=a.steps, sampler="dpm", generator=None)
    sync(dev)
    sec = time.perf_counter() - t0
    mfu = flops_per_sample(n_params, cfg, shape, train=False) * 2 * a.steps / sec / (a.peak_tflops * 1e12)
    row = {"steps": a.steps, "s_total": sec, "s_per_step": sec / a.steps, "mfu": mfu, "peak_gib": peak_gib(dev),
           "out_finite": bool(torch.isfinite(z).all())}
    model = None                                                             # v_fn holds it: free before the next
    reset_memory(dev)
    return row


# -----------------------------------------------------------------------------
# c. the VAE


@torch.no_grad()
def vae_rows(a, dev):
    reset_memory(dev)
    torch.manual_seed(a.seed)
    with torch.device(dev):
        m = vae_lib.VAE(vae_lib.PRESETS[a.vae_preset])
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32          # CPU has no bf16 avg_pool3d
    m = m.to(dtype).eval()
    s = m.space
    g = torch.Generator(dev).manual_seed(a.seed)
    x = (torch.rand(1, 3, a.frames, a.height, a.width, generator=g, device=dev) * 2 - 1).to(dtype)
    z = torch.randn(1, m.config.latent_channels, (a.frames - 1) // 4 + 1, a.height // s, a.width // s,
                    generator=g, device=dev).to(dtype)
    m.encode(x[:, :, :9, :8 * s, :8 * s])                                   # warm-up: kernels, allocator
    m.decode(z[:, :, :3, :8, :8])
    rows = []
    for op, tile in (("encode", False), ("encode", True), ("decode", False), ("decode", True)):
        say(f"c. VAE {op}{' tiled' if tile else ''}")
        reset_memory(dev)
        sync(dev)
        t0 = time.perf_counter()
        try:
            out = m.encode(x, tile=tile)[0] if op == "encode" else m.decode(z, tile=tile)
            sync(dev)
            rows.append({"op": op, "tile": tile, "dtype": str(dtype)[6:], "s": time.perf_counter() - t0,
                         "peak_gib": peak_gib(dev),
                         "out": list(out.shape), "out_finite": bool(torch.isfinite(out).all())})
            del out
        except torch.cuda.OutOfMemoryError:
            rows.append({"op": op, "tile": tile, "dtype": str(dtype)[6:], "oom": True})
    del m, x, z
    reset_memory(dev)
    return rows


# -----------------------------------------------------------------------------
# d. bf16 against fp32


@torch.no_grad()
def precision_rows(a, cfg, shape, dev):
    reset_memory(dev)
    say("d. the same DiT in fp32, fp32+autocast(bf16) and bf16 params: one forward each")
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False   # a true fp32 reference
    model = build_dit(cfg, dev, a.seed).eval()
    inp = dit_inputs(cfg, shape, 1, dev, a.seed)
    x = torch.cat([sched_xt(inp), inp["cond"]], 1)                          # (1, 48, T', H', W')
    ref = model(x, inp["text"], inp["t"]).float()
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        auto = model(x, inp["text"], inp["t"]).float()
    model.to(torch.bfloat16)
    half = model(x.to(torch.bfloat16), inp["text"].to(torch.bfloat16), inp["t"]).float()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    rows = []
    for name, out in (("fp32+autocast", auto), ("bf16 params", half)):
        d = (out - ref).abs()
        rows.append({"vs_fp32": name, "max_rel": (d.max() / ref.abs().max()).item(),
                     "mean_rel": (d.mean() / ref.abs().mean()).item(), "ref_rms": ref.pow(2).mean().sqrt().item(),
                     "size": f"1x{cfg.in_channels}x{shape[0]}x{shape[1]}x{shape[2]} latent"})
    del model
    reset_memory(dev)
    return rows


def sched_xt(inp):
    return diffusion.Schedule().add_noise(inp["x0"], inp["noise"], inp["t"])


# -----------------------------------------------------------------------------


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    a = ap.parse_args(argv)
    if a.tiny:
        a.preset, a.vae_preset, a.frames, a.height, a.width, a.steps = "toy", "toy", 9, 64, 64, 2
    a.batch_list = [int(b) for b in a.batches.split(",")]
    skip = set(s.strip() for s in a.skip.split(",") if s.strip())
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py
    if (a.frames - 1) % 4 or a.height % 16 or a.width % 16:
        raise SystemExit(f"--frames {a.frames} --height {a.height} --width {a.width}: "
                         "need 4k+1 frames and sizes that are multiples of 16")
    space = 2 ** (len(vae_lib.PRESETS[a.vae_preset].block_out_channels) - 1)
    shape = ((a.frames - 1) // 4 + 1, a.height // space, a.width // space)   # latent T', H', W'
    # the learned position embedding is tied to the latent size: make the preset's table this size
    cfg = dataclasses.replace(dit.PRESETS[a.preset], sample_frames=a.frames, sample_height=shape[1],
                              sample_width=shape[2])
    if a.layers:
        cfg = dataclasses.replace(cfg, num_layers=a.layers)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    say(f"{a.preset} DiT ({cfg.num_layers} blocks), {a.vae_preset} VAE, {a.frames}x{a.height}x{a.width} "
        f"(latent {'x'.join(map(str, shape))}), "
        f"{name}, torch {torch.__version__}, peak {a.peak_tflops:g} TFLOPS for MFU")
    res = {"meta": {"preset": a.preset, "vae_preset": a.vae_preset, "video": [a.frames, a.height, a.width],
                    "latent": list(shape), "layers": cfg.num_layers, "device": name, "torch": torch.__version__,
                    "peak_tflops": a.peak_tflops,
                    "warmup": a.warmup, "iters": a.iters}}
    t_all = time.perf_counter()
    if "a" not in skip:
        res["a"] = train_rows(a, cfg, shape, dev, "fp32+autocast") + train_rows(a, cfg, shape, dev, "bf16 params")
    if "b" not in skip:
        res["b"] = [sampling_row(a, cfg, shape, dev)]
    if "c" not in skip:
        res["c"] = vae_rows(a, dev)
    if "d" not in skip:
        res["d"] = precision_rows(a, cfg, shape, dev)
    res["meta"]["total_s"] = time.perf_counter() - t_all

    say("\n| row | what | seconds | per step | MFU | peak GiB | note |")
    say("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for i, r in enumerate(res.get("a", []), 1):
        what = f"train step, {r['mode']}, AC, AdamW, micro-batch {r['batch']}"
        if r.get("oom"):
            say(f"| a{i} | {what} | OOM | OOM | - | - | out of memory |")
        else:
            say(f"| a{i} | {what} | {r['s_per_step']:.3f} | {r['s_per_step']:.3f} | {r['mfu']:.1%} | "
                f"{fmt(r['peak_gib'], '.1f')} | {r['params_b']:.2f}B params, loss {r['loss']:.3f} |")
    for r in res.get("b", []):
        say(f"| b | {r['steps']} DPM steps, CFG {a.guidance:g} (batch 2), bf16 | {r['s_total']:.2f} | "
            f"{r['s_per_step']:.3f} | {r['mfu']:.1%} | {fmt(r['peak_gib'], '.1f')} | DiT only |")
    for i, r in enumerate(res.get("c", []), 1):
        what = f"VAE {r['op']}{', tiled' if r['tile'] else ''}, {r['dtype']}"
        if r.get("oom"):
            say(f"| c{i} | {what} | OOM | - | - | - | out of memory |")
        else:
            say(f"| c{i} | {what} | {r['s']:.2f} | - | - | {fmt(r['peak_gib'], '.1f')} | out {r['out']} |")
    for i, r in enumerate(res.get("d", []), 1):
        say(f"| d{i} | output, {r['vs_fp32']} vs fp32 | - | - | - | - | max rel {r['max_rel']:.2e}, "
            f"mean rel {r['mean_rel']:.2e} ({r['size']}) |")
    say(f"\ntotal {res['meta']['total_s']:.1f} s; train rows: {a.warmup} warm-up + {a.iters} timed steps")
    say("JSON " + json.dumps(res))
    return res


if __name__ == "__main__":
    main()
