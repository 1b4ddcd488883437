"""
Golden masks of SegAnyMo's SAM 2 prompting loop (others/segmo.py::prompt_objects), made by the official code:

    git -C SEGANYMO_MIRROR archive HEAD sam2/run_sam2.py | tar -x -C /tmp/seganymo
    python tests/goldens/make_segmo_loop.py --official /tmp/seganymo      # needs opencv-python, scikit-learn

It runs the official `sam2/run_sam2.py::main` unchanged on seeded moving tracks, written to disk as its inputs
(`dynamic_traj.npy`, ...), with SAM 2 replaced by `DiscPredictor` below: the mask of a prompt is a disc around each
clicked point, and propagation carries the last prompted frame's mask unchanged. What cannot be imported here
without SAM 2's own install is stubbed in sys.modules: `sam2.build_sam` (returns the stub), and `torchvision` /
`imageio` / `matplotlib` when missing (the loop never calls them); the video writer at the end of `main` is
switched off. cv2 (dilation) and sklearn (nearest neighbours) are the real ones. The masks are captured where
`main` calls `analyze_frame_merges` and `merge_masks`, and also read back from the PNGs it writes. Saved to
tests/goldens/segmo_loop.safetensors (masks bit-packed); tests/test_segmo.py drives ours with the same stub.
Not run in CI.
"""
import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

T, H, W = 49, 48, 64
OUT = Path(__file__).with_name("segmo_loop.safetensors")


class DiscPredictor:
    """A deterministic stand-in for SAM 2 in our Predictor protocol: a disc of radius r around each clicked point
    (moved to the centre of its snap x snap cell when snap is set, so nearby clicks give the same mask); propagation
    repeats the last prompted frame's mask (from the earliest prompted frame, as SAM 2)."""

    def __init__(self, T, H, W, r=4.0, snap=0):
        self.T, self.r, self.snap = T, r, snap
        ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        self.grid = torch.stack([xs, ys], -1)                                  # (H, W, 2) pixel centres
        self.prompts = {}

    def reset(self):
        self.prompts = {}

    def prompt(self, t, points):
        p = torch.as_tensor(points, dtype=torch.float32)
        if self.snap:
            p = (p / self.snap).floor() * self.snap + self.snap / 2
        d = ((self.grid[None] - p[:, None, None]) ** 2).sum(-1)                # (P, H, W)
        self.prompts[t] = (d <= self.r ** 2).any(0)
        return self.prompts[t]

    def propagate(self, reverse=False):
        start = min(self.prompts)
        order = (range(start, -1, -1) if start > 0 else []) if reverse else range(start, self.T)
        mask = None
        for t in order:
            mask = self.prompts.get(t, mask)
            yield t, mask


class OfficialStub:
    """DiscPredictor behind the official SAM2VideoPredictor calls that run_sam2.py makes."""

    def __init__(self, stub):
        self.stub, self.obj = stub, None

    def init_state(self, video_dir):
        return {}

    def reset_state(self, state):
        self.stub.reset()

    def add_new_points_or_box(self, inference_state, frame_idx, obj_id, points, labels):
        self.obj = obj_id
        m = self.stub.prompt(frame_idx, torch.from_numpy(np.asarray(points, np.float32)))
        return frame_idx, [obj_id], torch.where(m, 1.0, -1.0)[None, None]     # logits (1, 1, H, W)

    def propagate_in_video(self, state, reverse=False):
        for t, m in self.stub.propagate(reverse):
            yield t, [self.obj], torch.where(m, 1.0, -1.0)[None, None]


def scenario(seed, n_clusters, per_cluster, noise_tracks=0, hidden=()):
    """Seeded moving tracks: clusters of points moving along straight lines, occasional dropouts, plus scattered
    tracks; clusters listed in `hidden` are invisible on frames 0-5. -> xy (N, T, 2) float32, visible (N, T) bool."""
    g = torch.Generator().manual_seed(seed)
    xy, vis = [], []
    for c in range(n_clusters):
        start = torch.rand(2, generator=g) * torch.tensor([W - 16.0, H - 16.0]) + 8
        vel = (torch.rand(2, generator=g) - 0.5) * 0.4
        spread = 3 + 5 * torch.rand(1, generator=g)
        off = (torch.rand(per_cluster, 2, generator=g) - 0.5) * 2 * spread
        path = start + vel * torch.arange(T)[:, None]                         # (T, 2)
        xy.append(path[None] + off[:, None] + 0.3 * torch.randn(per_cluster, T, 2, generator=g))
        v = torch.rand(per_cluster, T, generator=g) > 0.1
        if c in hidden:
            v[:, :6] = False
        vis.append(v)
    if noise_tracks:
        xy.append(torch.rand(noise_tracks, 1, 2, generator=g) * torch.tensor([W, H]) + torch.zeros(1, T, 2))
        vis.append(torch.rand(noise_tracks, T, generator=g) > 0.3)
    return torch.cat(xy).float().numpy(), torch.cat(vis).numpy()


SCENARIOS = {                                          # name: (scenario() arguments, DiscPredictor arguments)
    "two_objects": (dict(seed=1, n_clusters=2, per_cluster=40, noise_tracks=5), dict()),
    "one_big": (dict(seed=2, n_clusters=1, per_cluster=80), dict()),
    "three_hidden": (dict(seed=3, n_clusters=3, per_cluster=25, hidden=(1,)), dict()),
    "few": (dict(seed=5, n_clusters=1, per_cluster=4), dict()),
    "scattered": (dict(seed=6, n_clusters=0, per_cluster=0, noise_tracks=40), dict()),
    "merge_4_to_2": (dict(seed=29, n_clusters=3, per_cluster=30, noise_tracks=20), dict(r=6.0, snap=12)),
    "merge_5_to_3": (dict(seed=31, n_clusters=3, per_cluster=30, noise_tracks=20), dict(r=8.0, snap=16)),
    "merge_2_to_1": (dict(seed=12, n_clusters=2, per_cluster=40, noise_tracks=10), dict(r=8.0, snap=16)),
}


def pack(masks):
    """bool (..., T, H, W) -> uint8 bits (for a small golden file)."""
    return torch.from_numpy(np.packbits(np.asarray(masks, bool).reshape(-1)))


def unpack(bits, shape):
    return torch.from_numpy(np.unpackbits(bits.numpy())[:int(np.prod(shape))].reshape(shape).astype(bool))


def run_official(official, xy, vis, work, stub_kw):
    """Run the official run_sam2.main on these tracks -> (objects before merging, merged objects, union from PNGs)."""
    for name in ("torchvision", "imageio", "matplotlib", "matplotlib.pyplot"):
        try:
            __import__(name)
        except ImportError:
            mod = sys.modules[name] = types.ModuleType(name)
            mod.get_writer = None
    stub = OfficialStub(DiscPredictor(T, H, W, **stub_kw))
    build = types.ModuleType("sam2.build_sam")
    build.build_sam2_video_predictor = lambda cfg, ckpt: stub
    sys.modules["sam2"], sys.modules["sam2.build_sam"] = types.ModuleType("sam2"), build
    sys.path.insert(0, str(Path(official) / "sam2"))
    import run_sam2 as rs
    from PIL import Image

    captured = {}
    analyze, merge = rs.analyze_frame_merges, rs.merge_masks

    def analyze_spy(segments, **kw):
        captured["segments"] = segments
        return analyze(segments, **kw)

    def merge_spy(segments, groups):
        captured["merged"] = merge(segments, groups)
        return captured["merged"]
    rs.analyze_frame_merges, rs.merge_masks = analyze_spy, merge_spy
    rs.save_video_from_images3 = lambda *a, **k: None

    work = Path(work)
    dyn, frames, out = work / "clip", work / "frames", work / "out"
    for d in (dyn, frames, out):
        d.mkdir(parents=True)
    np.save(dyn / "dynamic_traj.npy", xy.transpose(2, 0, 1))               # [2, N, T]
    np.save(dyn / "dynamic_visibility.npy", vis)
    np.save(dyn / "dynamic_confidences.npy", np.ones(vis.shape, np.float32))
    for t in range(T):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(frames / f"{t:05d}.png")
    rs.args = argparse.Namespace(vis=False, output_mask_dir=str(out), video_dir=str(frames), dynamic_dir=str(dyn),
                                 cal_only=False)
    try:
        rs.main(rs.args)
    except SystemExit:                                 # main() exits when it finds no object
        return np.zeros((0, T, H, W), bool), np.zeros((0, T, H, W), bool), np.zeros((T, H, W), bool)
    finally:
        del sys.modules["run_sam2"]

    def stack(segs):
        ids = sorted({i for f in segs.values() for i in f})
        return np.stack([[segs[t][i].reshape(H, W) for t in range(T)] for i in ids])
    pngs = sorted((out / "initial_preds" / "clip").glob("*.png"))
    union = np.stack([np.asarray(Image.open(p)) > 0 for p in pngs])
    return stack(captured["segments"]), stack(captured["merged"]), union


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="a folder holding SegAnyMo's sam2/run_sam2.py")
    args = ap.parse_args()
    from safetensors.torch import save_file
    tensors = {}
    for name, (kw, stub_kw) in SCENARIOS.items():
        xy, vis = scenario(**kw)
        with tempfile.TemporaryDirectory() as work:
            objects, merged, union = run_official(args.official, xy, vis, work, stub_kw)
        assert (merged.any(0) == union).all()
        print(f"{name}: {len(xy)} tracks, {len(objects)} objects, {len(merged)} after merging, "
              f"fg {union.mean():.3f}")
        tensors.update({f"{name}.xy": torch.from_numpy(xy), f"{name}.visible": torch.from_numpy(vis),
                        f"{name}.objects": pack(objects), f"{name}.merged": pack(merged),
                        f"{name}.n": torch.tensor([len(objects), len(merged)])})
    save_file(tensors, OUT)
    os.chmod(OUT, 0o644)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
