"""
others/tapir.py against DeepMind's official PyTorch port of BootsTAPIR, through goldens made by
`python tests/goldens/make_tapir.py --official <SegAnyMo checkout> --out tests/goldens` (a tiny model from the port's
own classes, seeded random weights; see that script). No network, no real weights.

    python -m pytest -q tests/test_tapir.py
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import rel, single_thread
from figures import parity
from others import tapir

GOLDENS = Path(__file__).parent / "goldens"
one_thread = single_thread("module")


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(GOLDENS / "tapir_tiny.safetensors"), "pt") as f:
        g = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    model = tapir.TAPIR(**json.loads(meta["tiny"])).eval()
    model.load_state_dict({k[3:]: v for k, v in g.items() if k.startswith("sd.")}, strict=True)
    video = (g["in.video"].float() / 255 * 2 - 1).permute(0, 3, 1, 2)                   # (T, 3, 64, 64)
    return g, model, video


def test_real_checkpoint_keys_and_shapes():
    """The full-config model has exactly the names and shapes of bootstapir_checkpoint_v2.pt's model."""
    want = json.loads((GOLDENS / "tapir_keys.json").read_text())
    with torch.device("meta"):
        model = tapir.TAPIR()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == want["keys"]
    assert sum(p.numel() for p in model.parameters()) == want["params"] == 54_699_335


def test_parity_with_official(golden):
    """Feature grids, the cost-volume estimate and the refined outputs equal the port's (fp32)."""
    g, model, video = golden
    q = g["in.queries"]
    with torch.no_grad():
        pyramid = model.feature_grids(video)
        q_feats = model.query_features(pyramid, q, (64, 64))
        init = model.initial_tracks(pyramid[1], q_feats[1], q, (64, 64))
        final = model(video, q, chunk=5)
    errs = {
        "hires": rel(pyramid[0].permute(0, 2, 3, 1), g["grid.hires"]),
        "lowres": rel(pyramid[1].permute(0, 2, 3, 1), g["grid.lowres"]),
        "init_tracks": rel(init[0], g["out.init_tracks"]),
        "init_occlusion": rel(init[1], g["out.init_occlusion"]),
        "init_expected_dist": rel(init[2], g["out.init_expected_dist"]),
        "tracks": rel(final[0], g["out.tracks"]),
        "occlusion": rel(final[1], g["out.occlusion"]),
        "expected_dist": rel(final[2], g["out.expected_dist"]),
    }
    print("\ntapir parity, max rel err: " + ", ".join(f"{k} {v:.2g}" for k, v in errs.items()))
    parity("tapir", max(errs.values()))
    assert max(errs.values()) <= 1e-5, errs
    # the query frame's initial position is the query itself, exactly
    rows = torch.arange(len(q))
    assert torch.equal(init[0][rows, q[:, 0].long()], q[:, [2, 1]])


def test_features_once_equal_the_ports_per_chunk_calls(golden):
    """Grids computed once, queries in chunks of 2 / 5 = the port called once per chunk (grids recomputed)."""
    g, model, video = golden
    q = g["in.queries"]
    with torch.no_grad():
        pyramid = model.feature_grids(video)
        outs = []
        for i in range(0, len(q), 5):
            qc = q[i:i + 5]
            q_feats = model.query_features(pyramid, qc, (64, 64))
            for j in range(0, len(qc), 2):
                outs.append(model.estimate(pyramid, [f[j:j + 2] for f in q_feats], qc[j:j + 2], (64, 64)))
    for got, k in zip((torch.cat(o) for o in zip(*outs)), ("tracks", "occlusion", "expected_dist")):
        assert rel(got, g[f"chunked.{k}"]) <= 1e-5, k


def test_track_equals_run_tapir(golden):
    """track() on a 5x40x56 clip = run_tapir.py's procedure around the port (resize, query mapping, chunks,
    tracks mapped back, query frame set, SegAnyMo's visibility / confidence)."""
    g, model, _ = golden
    assert np.array_equal(tapir.lanczos_resize(g["e2e.clip"].numpy(), (64, 64)), g["e2e.frames"].numpy())
    tracks, vis, conf = tapir.track(model, g["e2e.clip"], g["e2e.queries"], size=64, query_chunk=7, refine_chunk=3)
    assert tracks.shape == (12, 5, 2) and vis.shape == conf.shape == (12, 5)
    assert rel(tracks, g["e2e.tracks"]) <= 1e-5
    # probabilities in [0, 1]: 1e-5 absolute is the fp32 bar (1e-6 failed by 3e-6 on another x86 CPU than the goldens')
    assert (vis - g["e2e.visibility"]).abs().max() <= 1e-5
    assert (conf - g["e2e.confidence"]).abs().max() <= 1e-5
    q = g["e2e.queries"]
    assert torch.equal(tracks[torch.arange(len(q)), q[:, 0].long()], q[:, [2, 1]])


@pytest.mark.parametrize("src,dst", [((61, 97), (64, 64)), ((120, 180), (64, 64)), ((30, 20), (64, 48)),
                                     ((64, 64), (64, 64)), ((48, 256), (48, 40))])
def test_lanczos_resize_is_pils(src, dst):
    """Bit-exactly PIL's Image.resize(LANCZOS) on uint8 RGB: down, up, mixed, identity, one axis only."""
    from PIL import Image
    rng = np.random.default_rng(sum(src + dst))
    video = rng.integers(0, 256, (2, *src, 3), dtype=np.uint8)
    video[:, : src[0] // 2] //= 4                                  # an edge, so overshoot clips at 0 and 255
    want = np.stack([np.asarray(Image.fromarray(f).resize(dst[::-1], Image.Resampling.LANCZOS)) for f in video])
    assert np.array_equal(tapir.lanczos_resize(video, dst), want)


def test_grid_queries_at_480x720():
    """Spacing int(sqrt(480*720/9000)) = 6 from (0, 0), frames 0, 10, .., 40, row-major (run_tapir.py's mgrid)."""
    q = tapir.grid_queries(49, 480, 720)
    y, x = np.mgrid[0:480:6, 0:720:6]
    want = np.concatenate([np.stack([np.full(y.size, t), y.reshape(-1), x.reshape(-1)], -1) for t in range(0, 49, 10)])
    assert q.shape == (48_000, 3) and q.dtype == torch.float32
    assert np.array_equal(q.numpy(), want)
    assert len(tapir.grid_queries(1, 540, 960)) == 78 * 138          # sqrt(57.6) = 7.59: spacing 7 (int, not round)
    small = tapir.grid_queries(3, 40, 56, every=2)                   # sqrt(0.25) -> 0: spacing at least 1 px
    assert len(small) == 2 * 40 * 56 and small[:, 0].unique().tolist() == [0.0, 2.0]


def test_load_tapir_names_the_file(tmp_path, golden):
    """A checkpoint that is not BootsTAPIR's stops with one line naming the file; a narrower one (the golden's)
    loads with its widths read off the file, and the full layout's shapes give the official config."""
    bad = tmp_path / "other.pt"
    torch.save({"resnet_torch.initial_conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="other.pt: not a BootsTAPIR checkpoint"):
        tapir.load_tapir(bad)
    g, model, _ = golden
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    again = tapir.load_tapir(tmp_path / "tiny.pt")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    torch.save({k: v for k, v in model.state_dict().items() if k != "torch_pips_mixer.linear_1.bias"},
               tmp_path / "cut.pt")                                                          # a key missing
    with pytest.raises(KeyError, match="cut.pt: checkpoint does not match the model"):
        tapir.load_tapir(tmp_path / "cut.pt")
    full = {k: torch.empty(v, device="meta") for k, v in json.loads((GOLDENS / "tapir_keys.json").read_text())
            ["keys"].items()}
    assert tapir.config_of(full) == dict(widths=(64, 128, 256, 256), blocks_per_group=(2, 2, 2, 2),
                                         extra_conv_layers=5, extra_conv_multiplier=4, mixer_hidden_dim=512,
                                         num_mixer_blocks=12)