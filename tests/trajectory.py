"""Where along the sampler does a toy composer lose the subject's shape? (issue 32; docs/toy-world.md)

    python tests/trajectory.py --ckpt assets/toy-composer --triplets data/toy-test/triplets.jsonl

For every toy triplet (they carry the correct composite as `reference` and what the toy metrics expect), one DDIM run
of --steps from pure noise, as sample.py --sampler ddim --guidance 1 composes (one triplet at a time, noise from
--seed), scored at its end and, along the way, the shape of its x0 estimate decoded at a few steps; then the same
DDIM started part-way, from the correct composite noised to that step's level (SDEdit), scored at its end. Toy shape
IoU, size ratio and copy-paste (toy.metrics, as evaluate.py scores them, through the same mp4 writer) are printed per
row: if the estimate along the run is better than where the run ends, the last steps lose the shape; if runs started
late from the right composite end near the VAE's ceiling, the model can finish a right composite, and what it
finishes from its own run is what is off. With --eps-scale the steps are sample.py's with that flag; the x0 estimate
scored along the way is still the model's own (before scaling).
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import composer  # noqa: E402
import diffusion  # noqa: E402
import toy  # noqa: E402
from evaluate import load_record  # noqa: E402
from plumbing.dataset import read_triplets  # noqa: E402
from plumbing.video import fit_video, read_video, to_tensor, to_uint8, write_video  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--ckpt", default=str(ROOT / "assets" / "toy-composer"), help="composer (as sample.py --ckpt)")
parser.add_argument("--triplets", required=True, help="toy triplets.jsonl (toy.py triplets: with reference, expect)")
parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
parser.add_argument("--at", type=int, nargs="+", default=[0, 10, 20, 30, 40, 45],
                    help="step indices where the run's x0 estimate is scored, and where the SDEdit runs start")
parser.add_argument("--seed", type=int, default=0, help="noise seed (the same for every triplet)")
parser.add_argument("--eps-scale", type=float, default=1.0, help="as sample.py --eps-scale (1: off)")
parser.add_argument("--eps-below", type=int, default=1000, help="as sample.py --eps-below")
parser.add_argument("--threads", type=int, default=1, help="torch threads")


def main(a):
    torch.set_num_threads(a.threads)
    items, bad = read_triplets(a.triplets)                       # sample.py's reader: paths resolved, bad lines named
    for why in bad.values():
        print(f"warning: left out: {why}", file=sys.stderr)
    items = [it for it in items if it["id"] not in bad]
    if not all(it.get("reference") and "expect" in it for it in items):
        raise SystemExit(f"--triplets {a.triplets}: toy triplets (toy.py triplets: with reference, expect) are needed")
    tfolder, base = composer.composer_folders(a.ckpt, None)
    T, H, W = composer.shape_of(tfolder, base, None, None)
    sched = composer.load_schedule(tfolder, base)
    model, vae, texts = composer.load_models(tfolder, base, torch.device("cpu"), torch.float32)
    s, ts = vae.config.scaling_factor, sched.timesteps(a.steps)
    tmpdir = tempfile.TemporaryDirectory()                     # the decoded mp4s, scored then dropped
    tmp = Path(tmpdir.name)
    rows = {}

    def score(it, z, row, fps):                                   # decode, write as sample.py does, score as evaluate
        path = tmp / f"{it['id']}.mp4"
        write_video(path, to_uint8(vae.decode(z / s).clamp(-1, 1)[0]), fps)
        gen, fg, bg, mask, geom = load_record({**it, "result": str(path)}, Path("."))
        m = toy.metrics(gen, fg, bg, mask, it["expect"], geom)
        rows.setdefault(row, []).append((m["toy_shape_iou"], m["toy_size_ratio"], m["toy_copy_paste"]))

    def ddim(x, start, cond, text, it, fps, trace):
        for i in range(start, a.steps):
            t = ts[i].item()
            v = model(torch.cat([x, cond], 1), text, torch.tensor([t])).float()
            x0 = sched.ddim_step(v, t, x, a.steps)[1]                                # the model's own x0 estimate
            v = sched.scale_eps(v, x, t, a.eps_scale, a.eps_below)                  # as Schedule.sample
            x = sched.ddim_step(v, t, x, a.steps)[0]
            if trace and i in a.at:
                score(it, x0, f"x0 estimate at step {i:2d} (t={t:3d}) of the run from noise", fps)
        return x

    with torch.no_grad():
        for it in tqdm(items, desc="triplets"):
            fg, bg, mask, fps = composer.load_inputs(it["fg"], it["bg"], it.get("mask"), T, H, W)
            ref = to_tensor(fit_video(read_video(it["reference"])[0], T, H, W))[None]
            m_lat = diffusion.latent_mask(mask[None], vae.time, vae.space)
            cond = torch.cat([vae.encode(fg[None])[0] * s * m_lat, vae.encode(bg[None])[0] * s], 1)
            text = composer.embed(texts, [it["prompt"]])[:1]
            noise = torch.randn((1, vae.config.latent_channels) + tuple(m_lat.shape[2:]),
                                generator=torch.Generator().manual_seed(a.seed))
            score(it, ddim(noise, 0, cond, text, it, fps, True), "the run from noise, its end", fps)
            x0 = vae.encode(ref)[0] * s
            score(it, x0, "the correct composite through the VAE (the ceiling)", fps)
            for k in a.at:
                if k > 0:
                    xt = sched.add_noise(x0, noise, ts[k:k + 1])
                    score(it, ddim(xt, k, cond, text, it, fps, False),
                          f"started at step {k:2d} (t={ts[k].item():3d}) from the correct composite, its end", fps)
    tmpdir.cleanup()
    print(f"{a.ckpt} on {a.triplets}: DDIM {a.steps}, seed {a.seed}, guidance 1"
          + (f", --eps-scale {a.eps_scale:g} --eps-below {a.eps_below}" if a.eps_scale != 1 else ""))
    for row, vals in rows.items():
        v = np.array([x for x in vals if x[0] is not None and np.isfinite(x[0])], float)
        print(f"  {row:72s} n={len(v)}  shape IoU {v[:, 0].mean():.3f}  size ratio {v[:, 1].mean():.2f}  "
              f"copy-paste {v[:, 2].mean():.2f}")


if __name__ == "__main__":
    main(parser.parse_args())
