"""
One GPU, one composition (issue: sample.py --offload): peak GPU memory and seconds per 50-step composition at
49x480x720 for each --offload mode (none, model, sequential), with random weights (nothing is downloaded). Not
collected by pytest; tests/test_bench_scripts.py runs it at --tiny on CPU. docs/one-gpu.md holds the table.

    python tests/bench_offload.py --device cuda        # one H100/H200 (not yet run on one)
    python tests/bench_offload.py --tiny --device cpu  # toy sizes, seconds: checks that the script runs

What one row is: composer.compose as sample.py runs it (T5 encodes the prompt and leaves, the VAE encodes fg and
bg, --steps DPM steps with CFG --guidance as one batch-2 DiT call per step, the VAE decodes, tiled when an untiled
decode would not fit), for the random-init stm-5b-i2v DiT, T5-v1.1-XXL and the CogVideoX-5B VAE, all bf16, built on
the host; the Offload of that mode then places them. Peak: torch.cuda.max_memory_allocated over the whole row (load
onto the GPU included), reset before it. Seconds: the composition, after one warm-up composition of 1 step; the
placing (the "load") is timed apart. Modes run in the order none, model, sequential in one process.
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import composer  # noqa: E402
import dit  # noqa: E402
import text as text_lib  # noqa: E402
import vae as vae_lib  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
ap.add_argument("--modes", default="none,model,sequential", help="offload modes to run, in this order")
ap.add_argument("--steps", type=int, default=50, help="sampling steps (StM release: 50)")
ap.add_argument("--guidance", type=float, default=6.0, help="CFG scale (6: batch-2 DiT calls)")
ap.add_argument("--tiny", action="store_true", help="toy DiT/VAE, a 1-layer T5, 9x64x64, 2 steps: a CPU check")


def random_(model, std=0.02):
    """Seeded small random weights in place (fast: no init functions), norms at 1 so activations stay finite."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight") and p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(std).to(p.dtype))
        for b in model.buffers():                # left uninitialised by to_empty (the DiT's position table)
            b.zero_()
    return model.eval()


def build(a, dtype):
    if a.tiny:
        dcfg, vcfg, shape = dit.PRESETS["toy"], vae_lib.PRESETS["toy"], (9, 64, 64)
        tcfg = text_lib.T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4)
    else:
        dcfg, vcfg, shape = dit.PRESETS["stm-5b-i2v"], vae_lib.PRESETS["cogvideox-5b"], (49, 480, 720)
        tcfg = text_lib.T5Config()
    with torch.device("meta"):
        model, vae, t5 = dit.DiT(dcfg), vae_lib.VAE(vcfg), text_lib.T5Encoder(tcfg)
    model, vae, t5 = (random_(m.to_empty(device="cpu").to(dtype)) for m in (model, vae, t5))
    t5.encoder.embed_tokens = t5.shared
    L = dcfg.max_text_seq_length
    texts = lambda p: t5(torch.arange(len(p) * L).view(len(p), L).remainder(tcfg.vocab_size)
                         .to(t5.shared.weight.device)).to(dtype)
    return model, vae, t5, texts, shape


def row(a, mode, models, dev, dtype):
    model, vae, t5, texts, (T, H, W) = models
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    off = composer.Offload(mode, dev)
    t0 = time.perf_counter()
    off.add("t5", t5, t5.encoder.block, keep=[t5.encoder.block[0].layer[0].SelfAttention.relative_attention_bias])
    off.add("transformer", model, model.transformer_blocks)
    off.add("vae", vae)
    load = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    fg, bg = (torch.rand(1, 3, T, H, W, generator=g) * 2 - 1 for _ in range(2))
    mask = torch.zeros(1, 1, T, H, W)
    mask[..., H // 4:3 * H // 4, W // 4:3 * W // 4] = 1
    kw = dict(sampler="dpm", guidance=a.guidance, tile="auto", device=dev, dtype=dtype, progress=False, offload=off)

    def one(steps):
        text = composer.embed(texts, ["a prompt"], off)
        off.release("t5")
        return composer.compose(model, vae, text, fg, bg, mask, ["a prompt"], steps=steps, **kw)

    one(1)                                                           # warm-up (kernels, the allocator)
    if cuda:
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    out = one(a.steps)
    if cuda:
        torch.cuda.synchronize(dev)
    s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None
    for m in (t5, model, vae):                                       # back on the host for the next mode
        m.to("cpu")
    return {"mode": mode, "peak_gib": peak, "s": s, "s_per_step": s / a.steps, "load_s": load,
            "moves": len(off.events), "out": list(out.shape), "out_finite": bool(torch.isfinite(out).all())}


def main(argv=None):
    a = ap.parse_args(argv)
    if a.tiny:
        a.steps = 2
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    models = build(a, dtype)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    T, H, W = models[-1]
    print(f"offload bench: {'toy' if a.tiny else 'stm-5b-i2v + T5-XXL + CogVideoX-5B VAE'}, {T}x{H}x{W}, "
          f"{a.steps} DPM steps, CFG {a.guidance:g}, {dtype}, {name}, torch {torch.__version__}")
    res = {"meta": {"device": name, "video": [T, H, W], "steps": a.steps, "tiny": a.tiny}, "rows": []}
    for mode in a.modes.split(","):
        res["rows"].append(row(a, mode.strip(), models, dev, dtype))
    print(f"\n| --offload | peak GPU GiB | s per {a.steps}-step composition | s per step | placing s | moves |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in res["rows"]:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        print(f"| {r['mode']} | {peak} | {r['s']:.2f} | {r['s_per_step']:.3f} | {r['load_s']:.2f} | {r['moves']} |")
    print("JSON " + json.dumps(res))
    return res


if __name__ == "__main__":
    main()
