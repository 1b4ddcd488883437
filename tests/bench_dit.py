"""
Benchmark (not a test): forward+backward time and peak memory of dit.DiT against diffusers'
CogVideoXTransformer3DModel for the same config, in one run, printed as ours/diffusers ratios.
Each model is measured in its own child process, so one model's memory never counts for the other;
the children alternate (--rounds) and each model's best time and lowest peak are kept.

    python tests/bench_dit.py                                   # CPU, small stm-like config (~1 min on 2 cores)
    python tests/bench_dit.py --device cuda --dtype bf16 --preset stm-5b-i2v --layers 4 --frames 13 --size 60x90 --ac
    python tests/bench_dit.py --heads 6 --head-dim 32 --layers 6 --text-dim 64 --text-len 32 --size 16x16 --batch 8 \
        --patch 1                                               # the toy-l composer at patch 1 (docs/toy-world.md)

Peak memory: CUDA `max_memory_allocated` above what was allocated before the step; on CPU the
rise of the process's peak resident set (ru_maxrss) over its resident size before the first step
(glibc told to mmap blocks >= 64 KiB, so freed tensors leave the resident set at once).
"""
import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dit import DiT, PRESETS  # noqa: E402

# -----------------------------------------------------------------------------
# CLI arguments
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--preset", default="toy", choices=PRESETS, help="base config; the flags below override it")
parser.add_argument("--heads", type=int, default=8, help="toy only: attention heads")
parser.add_argument("--head-dim", type=int, default=64, help="toy only: head dim")
parser.add_argument("--layers", type=int, default=4, help="transformer blocks")
parser.add_argument("--text-dim", type=int, default=256, help="toy only: text width (real T5: 4096)")
parser.add_argument("--text-len", type=int, default=64, help="toy only: text tokens")
parser.add_argument("--frames", type=int, default=3, help="latent frames")
parser.add_argument("--size", default="32x32", help="latent HxW (sets sample_height/width too, for the learned PE)")
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--patch", type=int, default=None, help="spatial patch size (default: the preset's)")
parser.add_argument("--iters", type=int, default=3, help="timed iterations after one warm-up")
parser.add_argument("--rounds", type=int, default=2, help="alternate ours/diffusers this often, keep each one's best")
parser.add_argument("--device", default="cpu")
parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
parser.add_argument("--ac", action="store_true", help="activation checkpointing in both models")
parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: "ours" or "diffusers"


def config(args):
    H, W = map(int, args.size.split("x"))
    base = PRESETS[args.preset]
    over = dict(num_layers=args.layers, patch_size=args.patch or base.patch_size)
    if args.preset == "toy":  # widen the toy to a small-but-not-tiny model; real presets keep their widths
        over.update(num_attention_heads=args.heads, attention_head_dim=args.head_dim,
                    text_embed_dim=args.text_dim, max_text_seq_length=args.text_len)
    frames = (args.frames - 1) * base.temporal_compression_ratio + 1
    return dataclasses.replace(base, sample_height=H, sample_width=W, sample_frames=frames, **over), H, W


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args):
    """Runs in the child: build one model, time fwd+bwd, report seconds/iter and peak extra memory."""
    cfg, H, W = config(args)
    dev, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    B, T = args.batch, args.frames
    x = torch.randn(B, cfg.in_channels, T, H, W, device=dev, dtype=dtype)
    text = torch.randn(B, cfg.max_text_seq_length, cfg.text_embed_dim, device=dev, dtype=dtype)
    t = torch.randint(0, 1000, (B,), device=dev)
    ofs = torch.full((B,), 2.0, device=dev) if cfg.ofs_embed_dim else None
    if args.child == "ours":
        model = DiT(cfg).to(dev, dtype).set_activation_checkpointing(args.ac)
        step = lambda: model(x, text, t, ofs)
    else:
        from diffusers import CogVideoXTransformer3DModel
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        model = CogVideoXTransformer3DModel(**dataclasses.asdict(cfg)).to(dev, dtype)
        if args.ac:
            model.enable_gradient_checkpointing()
        rope, p = None, cfg.patch_size
        if cfg.use_rotary_positional_embeddings:  # at the sample size the pipelines' grid is 0..n-1
            pt = cfg.patch_size_t or 1
            rope = get_3d_rotary_pos_embed(cfg.attention_head_dim, ((0, 0), (H // p, W // p)), (H // p, W // p),
                                           T // pt, device=dev)
        xf = x.transpose(1, 2).contiguous()  # diffusers is frames-first; converting is part of its caller's cost
        step = lambda: model(xf, text, t, ofs=ofs, image_rotary_emb=rope, return_dict=False)[0]
    model.train()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def fwd_bwd():
        step().float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    if dev.type == "cuda":  # baseline: model, inputs (and on CPU the interpreter) before any step
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
    fwd_bwd()  # warm-up (allocations, kernels); its peak counts, the gradients are freed again
    sync()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        fwd_bwd()
    sync()
    sec = (time.perf_counter() - t0) / args.iters
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    params = sum(p.numel() for p in model.parameters())
    tokens = cfg.max_text_seq_length + T * H * W // (cfg.patch_size ** 2 * (cfg.patch_size_t or 1))
    print(json.dumps({"sec": sec, "peak": peak, "params": params, "tokens": tokens}))


def main():
    args = parser.parse_args()
    if args.child:
        return measure(args)
    cfg, H, W = config(args)
    print(f"config: {args.preset}, D={cfg.num_attention_heads * cfg.attention_head_dim}, {cfg.num_layers} layers, "
          f"latent {cfg.in_channels}x{args.frames}x{H}x{W}, batch {args.batch}, {args.dtype} on {args.device}, "
          f"AC {'on' if args.ac else 'off'}, torch {torch.__version__} threads {torch.get_num_threads()}")
    # glibc keeps freed small-heap memory mapped, so the peak RSS of two models with the same live
    # memory can differ by ~10% with the allocation order; serving big blocks by mmap makes it exact
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = {}
    for _ in range(args.rounds):  # alternating, so a busy machine slows both alike
        for who in ("ours", "diffusers"):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", who], capture_output=True,
                                 text=True, env=env)
            if out.returncode:
                sys.exit(f"{who} failed:\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[who] = {k: min(v, res[who][k]) for k, v in r.items()} if who in res else r
    for who, r in res.items():
        print(f"{who:10s} {r['params'] / 1e6:8.2f}M params  {r['tokens']} tokens  "
              f"fwd+bwd {r['sec'] * 1e3:9.1f} ms/iter  peak +{r['peak'] / 2**20:8.1f} MiB")
    o, d = res["ours"], res["diffusers"]
    print(f"ratio ours/diffusers: time {o['sec'] / d['sec']:.3f}  peak memory {o['peak'] / max(d['peak'], 1):.3f}")


if __name__ == "__main__":
    main()
