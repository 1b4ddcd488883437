"""
Encode / decode time and peak memory of vae.py against diffusers' AutoencoderKLCogVideoX, same random
weights, same input, one run. Not collected by pytest (run it on demand).

    python tests/bench_vae.py --threads 1                         # CPU: quarter widths, 49x64x96, ~4 min
    python tests/bench_vae.py --threads 1 --repeat 3              # the same 3 times, median ratios (shared box)
    python tests/bench_vae.py --device cuda --preset cogvideox-5b --height 480 --width 720 --dtype bf16

Rows: diffusers as is, diffusers with enable_slicing() + enable_tiling() (the baseline of the ratios),
ours (time chunks only), ours with tile=True (at most diffusers' default tile size, the same overlap).
Peak memory is what the call adds on top of the loaded model and input: torch.cuda peak stats on
GPU; on CPU each measurement runs in a fresh process and reports the rise of its peak RSS.
"""
import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vae import PRESETS, VAE  # noqa: E402

IMPLS = ["diffusers", "ours", "diffusers+slice+tile", "ours+tile"]  # pairs run back to back (fairer on a shared box)


def build(args):
    cfg = PRESETS[args.preset]
    if args.channels:
        cfg = dataclasses.replace(cfg, block_out_channels=tuple(int(c) for c in args.channels.split(",")))
    cfg = dataclasses.replace(cfg, sample_height=args.height, sample_width=args.width)  # default tiles = half of this
    return cfg


def load(impl, cfg, args):
    from diffusers import AutoencoderKLCogVideoX
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    ref = AutoencoderKLCogVideoX(**kw)
    if impl.startswith("diffusers"):
        m = ref
        if "slice" in impl:
            m.enable_slicing()
            m.enable_tiling()
    else:
        m = VAE(cfg)
        m.load_state_dict(ref.state_dict())
        del ref
    return m.to(args.device, dtype).eval()


def run_op(impl, m, op, x):
    ours, tile = impl.startswith("ours"), impl.endswith("tile")
    with torch.no_grad():
        if op == "encode":
            return m.encode(x, tile=tile)[0] if ours else m.encode(x).latent_dist.mean
        return m.decode(x, tile=tile) if ours else m.decode(x).sample


def measure(impl, op, args):
    """Time and peak extra memory of one call (after one warm-up call on GPU)."""
    cfg = build(args)
    m = load(impl, cfg, args)
    T, s = args.frames, 2 ** (len(cfg.block_out_channels) - 1)
    g = torch.Generator().manual_seed(1)
    if op == "encode":
        x = torch.rand(args.batch, 3, T, args.height, args.width, generator=g) * 2 - 1
    else:
        x = torch.randn(args.batch, cfg.latent_channels, (T - 1) // 4 + 1, args.height // s, args.width // s,
                        generator=g)
    dtype = next(m.parameters()).dtype
    x = x.to(args.device, dtype)
    cuda = args.device.startswith("cuda")
    if cuda:
        run_op(impl, m, op, x)  # warm-up (cuDNN autotuning, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        run_op(impl, m, op, x[:, :, :1, :2 * s, :2 * s])  # warm-up on a tiny input (libraries, thread pool)
        base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()  # RSS now
    t = time.perf_counter()
    out = run_op(impl, m, op, x)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = (torch.cuda.max_memory_allocated() if cuda else rss()) - base
    return {"time": dt, "peak": peak, "out": list(out.shape), "checksum": float(out.float().abs().mean())}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="cogvideox-5b")
    p.add_argument("--channels", default=None, help="override block_out_channels, e.g. 32,64,64,128 (CPU default)")
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--repeat", type=int, default=1, help="measure everything N times, print median ratios")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "OP"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device == "cpu" and args.channels is None and args.preset.startswith("cogvideox"):
        args.channels = "32,64,64,128"  # the real depth and layout, a quarter of the width
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(*args.worker, args)))
        return

    print(f"preset {args.preset} channels {args.channels or 'as preset'}  input {args.batch}x3x{args.frames}x"
          f"{args.height}x{args.width}  {args.device} {args.dtype}")
    runs = [measure_all(args) for _ in range(args.repeat)]
    res = runs[0]
    # each run's ratios pair measurements taken back to back; the median over runs damps other jobs' load
    note = f", median over {args.repeat} runs" if args.repeat > 1 else ""
    print(f"\nratios ours / diffusers (time, peak memory; < 1 is better){note}:")
    for op in ("encode", "decode"):
        for impl, base in (("ours", "diffusers"), ("ours+tile", "diffusers+slice+tile"), ("ours+tile", "diffusers")):
            ratio = lambda k: statistics.median(r[impl, op][k] / max(r[base, op][k], 1e-9) for r in runs)  # noqa: E731
            t, m = ratio("time"), ratio("peak")
            print(f"  {op:6s} {impl:10s} vs {base:22s} time x{t:.2f}  peak x{m:.2f}")
    d, o = res["diffusers", "decode"], res["ours", "decode"]
    print(f"\nuntiled agreement (decode, mean |out|): diffusers {d['checksum']:.6f} ours {o['checksum']:.6f}")


def measure_all(args):
    """One measurement of every (implementation, op), printed as it comes."""
    res = {}
    for op in ("encode", "decode"):
        for impl in IMPLS:
            if args.device == "cpu":  # a fresh process per measurement, so peak RSS belongs to this call alone
                cmd = [sys.executable, __file__, "--worker", impl, op] + [a for a in sys.argv[1:]]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(out.stderr)
                res[impl, op] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                res[impl, op] = measure(impl, op, args)
                torch.cuda.empty_cache()
            r = res[impl, op]
            print(f"  {op:6s} {impl:22s} {r['time']:8.2f} s  {r['peak'] / 2**20:9.1f} MiB  out {r['out']}", flush=True)
    return res



if __name__ == "__main__":
    main()
