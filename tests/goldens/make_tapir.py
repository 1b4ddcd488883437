"""
Golden tensors for tests/test_tapir.py, made with DeepMind's official PyTorch port of TAPIR (`tapnet_torch`, as
vendored by SegAnyMo under preproc/). Not run in CI: the tests only read what this writes.

    git -C <SegAnyMo mirror> archive HEAD preproc | tar -x -C /tmp/seganymo      # or any checkout of SegAnyMo
    pip install einshape mediapy                                                 # the port's and run_tapir's deps
    python tests/goldens/make_tapir.py --official /tmp/seganymo --out tests/goldens

Writes
- tapir_keys.json: name -> shape of every tensor of the real checkpoint's model (`TAPIR(pyramid_level=1)`, built
  on the meta device), and its parameter count;
- tapir_tiny.safetensors (< 1 MB, fp32): a tiny TAPIR assembled from the port's own classes (its ResNet groups,
  ExtraConvs and PIPSMLPMixer built narrow through their constructor arguments; the port's TAPIR hard-codes the
  widths, so those submodules are swapped in and `highres_dim` / `lowres_dim` set), with seeded random weights
  (`sd.*`), run on a seeded 5x64x64 clip (`in.*`): the port's forward (`out.*`, final and initial estimates),
  its feature grids (`grid.*`), the release's per-chunk loop (`chunked.*`: model(video, chunk) for each of 3
  chunks, feature grids recomputed per call) and run_tapir.py's whole procedure on a 5x40x56 clip (`e2e.*`:
  mediapy's Lanczos resize to 64x64, corner-aligned query mapping, per-chunk calls, tracks mapped back, query
  frame set to the query, then SegAnyMo's visibility / confidence).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

TINY = dict(widths=(8, 16, 16, 24), blocks_per_group=(2, 2, 2, 2), extra_conv_layers=2, extra_conv_multiplier=2,
            mixer_hidden_dim=32, num_mixer_blocks=2)
SIZE = 64


def import_port(root):
    root = Path(root)
    for d in (root, root / "preproc"):
        if (d / "tapnet_torch").is_dir():
            sys.path.insert(0, str(d))
            break
    else:
        sys.exit(f"make_tapir.py: error: {root}: no tapnet_torch/ or preproc/tapnet_torch/ in it")
    from tapnet_torch import nets, tapir_model, transforms
    return nets, tapir_model, transforms


def tiny_official(nets, tapir_model):
    m = tapir_model.TAPIR(pyramid_level=1, initial_resolution=(SIZE, SIZE))
    w = TINY["widths"]
    m.highres_dim, m.lowres_dim = w[1], w[3]
    m.resnet_torch.initial_conv = nn.Conv2d(3, w[0], 7, stride=2, bias=False)
    c_in = [w[0], *w[:-1]]
    m.resnet_torch.block_groups = nn.ModuleList(
        nets.BlockGroup(c_in[i], w[i], TINY["blocks_per_group"][i], s, True) for i, s in enumerate((1, 2, 2, 1)))
    m.extra_convs = nets.ExtraConvs(TINY["extra_conv_layers"], w[3], TINY["extra_conv_multiplier"])
    dim = 4 + w[1] + w[3]
    m.torch_pips_mixer = nets.PIPSMLPMixer(dim + 3 * 49, dim, TINY["mixer_hidden_dim"], TINY["num_mixer_blocks"])
    # random norms and biases too (their defaults, 1 and 0, would hide a swapped scale / shift)
    g = torch.Generator().manual_seed(1)
    for name, p in m.named_parameters():
        if "bn_" in name or "layer_norm" in name:
            p.data = (1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g)
        elif name.endswith("bias"):
            p.data = 0.1 * torch.randn(p.shape, generator=g)
    return m.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="a checkout of SegAnyMo (or a folder holding tapnet_torch/)")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    out = Path(args.out)
    nets, tapir_model, transforms = import_port(args.official)

    with torch.device("meta"):
        full = tapir_model.TAPIR(pyramid_level=1)
    keys = {k: list(v.shape) for k, v in full.state_dict().items()}
    n_params = sum(v.numel() for v in full.parameters())
    lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in keys.items())
    (out / "tapir_keys.json").write_text(f'{{"params": {n_params}, "keys": {{\n{lines}\n}}}}\n')

    torch.manual_seed(0)
    m = tiny_official(nets, tapir_model)
    rng = np.random.default_rng(0)
    T = 5
    video_u8 = rng.integers(0, 256, (T, SIZE, SIZE, 3), dtype=np.uint8)
    video = (torch.from_numpy(video_u8).float() / 255 * 2 - 1)[None]           # (1, T, H, W, 3), as run_tapir
    n = 12
    queries = np.stack([rng.integers(0, T, n), rng.uniform(0, SIZE - 1, n), rng.uniform(0, SIZE - 1, n)], -1)
    queries[0, 1:] = (0.0, SIZE - 1.0)                                         # corners, to reach the borders
    queries[1, 1:] = (SIZE - 1.0, 0.0)
    queries = torch.from_numpy(queries.astype(np.float32))
    g = {}
    with torch.no_grad():
        o = m(video, queries[None], query_chunk_size=5)
        g["out.tracks"], g["out.occlusion"], g["out.expected_dist"] = (o[k][0] for k in
                                                                       ("tracks", "occlusion", "expected_dist"))
        g["out.init_tracks"] = o["unrefined_tracks"][0][0]
        g["out.init_occlusion"] = o["unrefined_occlusion"][0][0]
        g["out.init_expected_dist"] = o["unrefined_expected_dist"][0][0]
        fg = m.get_feature_grids(video, False)
        g["grid.hires"], g["grid.lowres"] = fg.hires[0][0], fg.lowres[0][0]      # (T, h, w, C)
        parts = [m(video, c[None], query_chunk_size=64) for c in torch.tensor_split(queries, 3)]
        for k in ("tracks", "occlusion", "expected_dist"):
            g[f"chunked.{k}"] = torch.cat([p[k][0] for p in parts])

        # run_tapir.py on a non-square clip, at SIZE instead of 256
        import mediapy as media
        clip = rng.integers(0, 256, (T, 40, 56, 3), dtype=np.uint8)
        clip[:, 10:30, 15:40] //= 3                                             # some structure
        H, W = clip.shape[1:3]
        frames = media.resize_video(clip, (SIZE, SIZE))
        y, x = np.mgrid[0:H:3, 0:W:3]
        t = np.repeat(np.arange(0, T, 2), 4)
        pick = rng.choice(y.size, len(t), replace=False)
        yq, xq = y.reshape(-1)[pick], x.reshape(-1)[pick]
        pts = np.stack([t, yq / (H - 1) * (SIZE - 1), xq / (W - 1) * (SIZE - 1)], -1).astype(np.float32)
        fr = (torch.from_numpy(frames).float() / 255 * 2 - 1)[None]
        res = []
        for c in np.array_split(pts, max(1, len(pts) // 4)):
            p = m(fr, torch.from_numpy(c)[None])
            tr = transforms.convert_grid_coordinates(p["tracks"][0].numpy(), (SIZE - 1, SIZE - 1), (W - 1, H - 1))
            res.append(np.concatenate([tr, p["occlusion"][0].numpy()[..., None],
                                       p["expected_dist"][0].numpy()[..., None]], -1))
        arr = np.concatenate(res).astype(np.float32)
        arr[np.arange(len(t)), t, :2] = np.stack([xq, yq], -1)
        g["e2e.clip"] = torch.from_numpy(clip)
        g["e2e.frames"] = torch.from_numpy(np.ascontiguousarray(frames))
        g["e2e.queries"] = torch.from_numpy(np.stack([t, yq, xq], -1).astype(np.float32))
        g["e2e.tracks"] = torch.from_numpy(arr[..., :2])
        g["e2e.visibility"] = 1 - torch.sigmoid(torch.from_numpy(arr[..., 2]))
        g["e2e.confidence"] = 1 - torch.sigmoid(torch.from_numpy(arr[..., 3]))

    g["in.video"], g["in.queries"] = torch.from_numpy(video_u8), queries
    g.update({f"sd.{k}": v for k, v in m.state_dict().items()})
    g = {k: v.detach().contiguous() for k, v in g.items()}
    save_file(g, str(out / "tapir_tiny.safetensors"), metadata={"tiny": json.dumps(TINY), "size": str(SIZE)})
    (out / "tapir_tiny.safetensors").chmod(0o644)
    print(f"tapir_keys.json: {len(keys)} tensors, {n_params / 1e6:.2f} M parameters; "
          f"tapir_tiny.safetensors: {(out / 'tapir_tiny.safetensors').stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
