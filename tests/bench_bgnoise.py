"""
How far is train.py's latent bg-noise shortcut (--cache-latents --bg-noise-latent) from the faithful path
(issue 16, item 5)?

    python toy.py data --out /tmp/bgdata --clips 64
    python tests/bench_bgnoise.py --data /tmp/bgdata                   # toy base, 32 clips, ~3 min on 2 CPU cores

The bg condition of one training step, in scaled latent space (s = the VAE's scaling_factor, x = the bg clip):
    faithful (F)  s * sample_latent(x + sigma * eps)     train.py (the StM release): noise the pixels, then encode
    shortcut (S)  s * mean(x) + sigma * eps'             train.py --cache-latents --bg-noise-latent: the cached
                                                         posterior mean, noise added in latent space
    F, posterior mean (M)  s * mean(x + sigma * eps)     F without the posterior sample: separates the two parts
with sigma = exp(N(--bg-noise, 0.5)) and c = s * mean(x) the clean latent. One row per sigma at the 2.5, 16,
50, 84, 97.5% quantiles of that law, and one "drawn" row where each draw has its own sigma, as in training.
Columns are root-mean-squares over every latent element of --clips clips x --draws draws:
    |F-c| |M-c| |S-c|    how big each perturbation is
    F-S /c, F-S /F-c     rms(F - S) relative to rms(c), and to the faithful perturbation rms(F - c)
    M-S /c, M-S /M-c     the same with the posterior mean
    F-F' /F-c            two independent faithful draws: what rms(F - S) /F-c would be if S had exactly F's law
    S/F size             rms(S - c) / rms(F - c): the shortcut's perturbation over the faithful one
    bias /M-c            rms(E[M] - c) / rms(M - c): the systematic shift of encoding noisy pixels (the mean over
                         draws, its sampling variance subtracted); the shortcut has none
    post /F-c            rms(F - M) / rms(F - c): the part of the faithful perturbation that is the posterior sample
    lag-1 corr           correlation of neighbouring latent cells (along W) of M - E[M]; the shortcut's is 0
F and S are independent random draws, so rms(F - S) never reaches 0: compare it with the F-F' column.
"""
import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from plumbing.dataset import LayeredClips, read_lists
from vae import VAE  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--data", required=True, help="layered-clip dataset folder (python toy.py data --out FOLDER)")
ap.add_argument("--model", default=str(ROOT / "assets" / "toy-base"),
                help="base model folder (its vae/) or a VAE folder")
ap.add_argument("--clips", type=int, default=32, help="bg clips to average over (the first N of --data)")
ap.add_argument("--draws", type=int, default=4,
                help="noise draws per clip and sigma (even: pairs give the F-F' column)")
ap.add_argument("--frames", type=int, default=9, help="frames per clip (4k+1)")
ap.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="frame size")
ap.add_argument("--bg-noise", type=float, default=-3.0, help="sigma = exp(N(this, 0.5)), as train.py --bg-noise")
ap.add_argument("--seed", type=int, default=0, help="seed of every noise draw")
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")

QUANTILES = {"2.5%": -1.959964, "16%": -0.994458, "50%": 0.0, "84%": 0.994458, "97.5%": 1.959964}  # z of N(0, 1)
KEYS = ("c", "F-c", "M-c", "S-c", "F-S", "M-S", "F-F'", "F-M", "bias2", "var", "lag", "lag0")


def rms(sums, key, n):
    return math.sqrt(sums[key] / n)


@torch.no_grad()
def measure(a):
    """-> rows [(quantile name, sigma or None, stats dict)], per-channel S/F size ratios at the median sigma."""
    vae = VAE.from_pretrained(a.model, device=a.device)                           # a base folder or its vae/ itself
    s = vae.config.scaling_factor
    ds = LayeredClips(a.data, frames=a.frames, size=tuple(a.size))
    n_clips, K = min(a.clips, len(ds)), a.draws
    if n_clips == 0 or K < 2 or K % 2:
        raise SystemExit(f"need at least one clip (got {len(ds)}) and an even --draws >= 2 (got {K})")
    rows = [(q, math.exp(a.bg_noise + 0.5 * z)) for q, z in QUANTILES.items()] + [("drawn", None)]
    sums = [dict.fromkeys(KEYS, 0.0) for _ in rows]
    chan = torch.zeros(2, vae.config.latent_channels, dtype=torch.float64)      # per channel: sum (M-c)^2, (S-c)^2
    n_el = 0
    for i in range(n_clips):
        x = ds[i]["bg"][None].to(a.device)                                       # (1, 3, T, H, W) in [-1, 1]
        c = vae.encode(x)[0] * s                                                  # (1, Z, t, h, w) clean, scaled
        n_el += K * c.numel()
        for r, (_, sigma) in enumerate(rows):
            g = torch.Generator().manual_seed(a.seed * 1_000_003 + i * 101 + r)
            if sigma is None:                                                     # as train.noisy: one sigma per draw
                sig = torch.exp(a.bg_noise + 0.5 * torch.randn(K, generator=g)).double()
            else:
                sig = torch.full((K,), sigma, dtype=torch.float64)
            sig = sig.view(K, 1, 1, 1, 1).to(a.device, torch.float32)
            eps = torch.randn((K, *x.shape[1:]), generator=g).to(a.device)        # pixel noise
            mean, logvar = vae.encode(x + sig * eps)                              # (K, Z, t, h, w) each
            M = mean * s
            F = (mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g).to(mean)) * s
            S = c + sig * torch.randn(M.shape, generator=g).to(M)                 # the shortcut, in latent space
            Mbar = M.mean(0, keepdim=True)
            res = M - Mbar                                                        # the noise part of M
            acc = sums[r]
            acc["c"] += K * c.pow(2).sum().item()
            diffs = {"F-c": F - c, "M-c": M - c, "S-c": S - c, "F-S": F - S, "M-S": M - S, "F-M": F - M}
            for key, d in diffs.items():
                acc[key] += d.pow(2).sum().item()
            acc["F-F'"] += 2 * (F[0::2] - F[1::2]).pow(2).sum().item()            # K/2 pairs, weighted to K draws
            acc["bias2"] += K * (Mbar - c).pow(2).sum().item()
            acc["var"] += res.pow(2).sum().item() / (K - 1)                       # unbiased variance of M per element
            acc["lag"] += (res[..., 1:] * res[..., :-1]).sum().item()
            acc["lag0"] += (res[..., 1:].pow(2).sum().item() + res[..., :-1].pow(2).sum().item()) / 2
            if rows[r][0] == "50%":
                chan[0] += (M - c).pow(2).sum((0, 2, 3, 4)).double().cpu()
                chan[1] += (S - c).pow(2).sum((0, 2, 3, 4)).double().cpu()
        print(f"clip {i + 1}/{n_clips}", end="\r", file=sys.stderr, flush=True)
    out = []
    for (name, sigma), acc in zip(rows, sums):
        pF, pM, pS = rms(acc, "F-c", n_el), rms(acc, "M-c", n_el), rms(acc, "S-c", n_el)
        bias = math.sqrt(max(0.0, acc["bias2"] - acc["var"]) / n_el)             # E|Mbar-c|^2 = bias^2 + var/K
        out.append((name, sigma, {
            "rms_c": rms(acc, "c", n_el), "F-c": pF, "M-c": pM, "S-c": pS,
            "F-S/c": rms(acc, "F-S", n_el) / rms(acc, "c", n_el), "F-S/F-c": rms(acc, "F-S", n_el) / pF,
            "M-S/c": rms(acc, "M-S", n_el) / rms(acc, "c", n_el), "M-S/M-c": rms(acc, "M-S", n_el) / pM,
            "F-F'/F-c": rms(acc, "F-F'", n_el) / pF, "S/F": pS / pF, "bias/M-c": bias / pM,
            "post/F-c": rms(acc, "F-M", n_el) / pF, "lag1": acc["lag"] / acc["lag0"]}))
    return out, (chan[1] / chan[0]).sqrt()


def main(argv=None):
    a = ap.parse_args(argv)
    rows, chan = measure(a)
    cols = ["F-c", "M-c", "S-c", "F-S/c", "F-S/F-c", "M-S/c", "M-S/M-c", "F-F'/F-c", "S/F", "bias/M-c", "post/F-c",
            "lag1"]
    head = ["|F-c|", "|M-c|", "|S-c|", "F-S /c", "F-S /F-c", "M-S /c", "M-S /M-c", "F-F' /F-c", "S/F size",
            "bias /M-c", "post /F-c", "lag-1 corr"]
    n = min(a.clips, len(read_lists(a.data)))
    print(f"\nbg noise: sigma = exp(N({a.bg_noise}, 0.5)); {a.model}; {n} clips "
          f"x {a.draws} draws of {a.frames}x{a.size[0]}x{a.size[1]}; rms of the clean scaled latent c: "
          f"{rows[0][2]['rms_c']:.4f}\n")
    print("| quantile | sigma | " + " | ".join(head) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in head) + " |")
    for name, sigma, r in rows:
        sig = f"{sigma:.4f}" if sigma is not None else "drawn"
        print(f"| {name} | {sig} | " + " | ".join(f"{r[k]:.4f}" if k in ("F-c", "M-c", "S-c") else f"{r[k]:.3f}"
                                                  for k in cols) + " |")
    print(f"\nper latent channel at the median sigma, S/F size (posterior mean): min {chan.min():.2f}, "
          f"median {chan.median():.2f}, max {chan.max():.2f}")
    d = rows[-1][2]                                                           # the drawn row
    size_off, bias = abs(d["S/F"] - 1), d["bias/M-c"]
    verdict = "negligible" if max(size_off, bias, d["post/F-c"]) < 0.05 else "NOT negligible"
    print(f"drawn sigma: the shortcut's perturbation is {d['S/F']:.2f}x the faithful one, bias {bias:.1%} and "
          f"posterior part {d['post/F-c']:.1%} of it -> {verdict} (threshold 5% of the faithful perturbation)")
    return rows


if __name__ == "__main__":
    main()
