"""
vae.py against diffusers' AutoencoderKLCogVideoX (the oracle, test-only), CPU, fp32, no network.

    python -m pytest -q tests/test_vae.py
"""
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vae  # noqa: E402
from plumbing import weights  # noqa: E402
from conftest import rel, single_thread  # noqa: E402
from vae import PRESETS, VAE, VAEConfig, WEIGHTS_NAME  # noqa: E402
from figures import parity  # noqa: E402  (tests/figures.py: the parity table of docs/results.md)

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLCogVideoX  # noqa: E402

# Two tiny members: the toy preset (3 levels, x4 space) and one shaped like the real VAE
# (4 levels, x8 space, channel changes at blocks 1 and 3, two time-compressing blocks).
CONFIGS = {
    "toy": PRESETS["toy"],
    "4level": VAEConfig(block_out_channels=(8, 16, 16, 32), layers_per_block=2, latent_channels=4, norm_num_groups=4,
                        sample_height=32, sample_width=48, scaling_factor=0.7),
}


def diffusers_kwargs(cfg):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def randomize_(model, seed=0):
    """Conv kernels keep their (random) default init; every norm weight and every bias is made random
    too (the defaults, 1 and 0 for norms, would hide a norm or bias applied in the wrong place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.ndim == 1:
                r = torch.randn(t.shape, generator=g)
                t.copy_(1 + 0.2 * r if "norm" in name and name.endswith("weight") else 0.2 * r)
    return model


one_thread = single_thread("module")


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(diffusers reference, ours loaded from the reference's save_pretrained folder)."""
    torch.manual_seed(0)
    ref = randomize_(AutoencoderKLCogVideoX(**diffusers_kwargs(CONFIGS[request.param])).eval())
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    return ref, VAE.from_pretrained(folder)


# -- structure -----------------------------------------------------------------------------------------

def test_5b_meta_model_has_diffusers_names_and_shapes():
    cfg = PRESETS["cogvideox-5b"]
    with torch.device("meta"):
        ref = AutoencoderKLCogVideoX(**diffusers_kwargs(cfg))
    ours = weights.meta_model(VAE, cfg)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want and len(got) == 436
    assert sum(p.numel() for p in ours.parameters()) == 215_583_907
    assert PRESETS["cogvideox-2b"].scaling_factor == 1.15258426 and cfg.scaling_factor == 0.7


def test_toy_preset_shapes():
    ref = AutoencoderKLCogVideoX(**diffusers_kwargs(PRESETS["toy"]))  # constructible in diffusers too
    ours = VAE(PRESETS["toy"])
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    mean, logvar = ours.encode(torch.zeros(1, 3, 9, 64, 64))
    assert mean.shape == logvar.shape == (1, 16, 3, 16, 16)
    assert ours.decode(mean).shape == (1, 3, 9, 64, 64)


# -- parity ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 5, 9, 17])
def test_parity_with_diffusers(pair, T):
    ref, ours = pair
    torch.manual_seed(T)
    x = torch.rand(2, 3, T, 16, 24) * 2 - 1
    with torch.no_grad():
        post = ref.encode(x).latent_dist
    for chunk in (8, 16, None):  # one window per call (= diffusers), two, the whole clip
        mean, logvar = ours.encode(x, chunk_frames=chunk)
        parity("vae", max(rel(mean, post.mean), rel(logvar, post.logvar)))
        assert rel(mean, post.mean) < 1e-5 and rel(logvar, post.logvar) < 1e-5, chunk

    z = post.mean
    outs = [ours.decode(z, chunk_frames=chunk) for chunk in (2, 4, None)]
    assert all(o.shape == (2, 3, T, 16, 24) for o in outs)
    assert all(rel(o, outs[0]) < 1e-5 for o in outs[1:])      # chunking never changes the result
    with torch.no_grad():
        want = ref.decode(z).sample
    if z.shape[2] % 2 == 0:
        # An even number of latent frames (T = 5, 13, ...): diffusers treats its first (only) window as
        # if it did not start the clip and returns 4t frames (8 here). We keep the first-frame rule.
        assert want.shape[2] == 4 * z.shape[2]
    else:
        parity("vae", rel(outs[0], want))
        assert rel(outs[0], want) < 1e-5


def test_three_windows_with_two_per_call(pair):
    """25 frames = windows 9 + 8 + 8 (7 latent frames = 3 + 2 + 2): the cache crosses uneven chunks."""
    ref, ours = pair
    x = torch.rand(1, 3, 25, 8, 8) * 2 - 1
    with torch.no_grad():
        post = ref.encode(x).latent_dist
        want = ref.decode(post.mean).sample
    errs = rel(ours.encode(x, chunk_frames=16)[0], post.mean), rel(ours.decode(post.mean, chunk_frames=4), want)
    parity("vae-uneven", max(errs))
    assert max(errs) < 1e-5


def test_big_convs_split_in_time_exactly(pair, monkeypatch):
    """The guard that convolves huge inputs in overlapping time slices (for cuDNN) changes nothing."""
    _, ours = pair
    x = torch.rand(1, 3, 17, 16, 16) * 2 - 1
    mean = ours.encode(x, chunk_frames=None)[0]
    video = ours.decode(mean, chunk_frames=None)
    monkeypatch.setattr(vae, "CONV_SPLIT_NUMEL", 3000)
    assert rel(ours.encode(x, chunk_frames=None)[0], mean) < 1e-6
    assert rel(ours.decode(mean, chunk_frames=None), video) < 1e-6


def test_save_pretrained_round_trip(pair, tmp_path):
    ref, ours = pair
    ours.save_pretrained(tmp_path)
    back = AutoencoderKLCogVideoX.from_pretrained(tmp_path)  # diffusers reads what we write
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    assert VAE.from_pretrained(tmp_path).config == ours.config


def test_sample_latent(pair):
    _, ours = pair
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    mean, logvar = ours.encode(x)
    a = ours.sample_latent(x, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, mean + (0.5 * logvar).exp() * eps)


# -- tiling ---------------------------------------------------------------------------------------------

def test_tiled_decode_close_to_untiled():
    """A 96x96 frame from tiles of at most 48x48 px overlapping by 16 px (3x3 tiles of 44 or 40 px), random
    weights. Measured (toy, seed 0): max error 8.8%, mean error 3.0% of the untiled output (diffusers' own
    tiling at the same geometry: 10.2% / 3.1%). Bound asserted: max < 10%, mean < 5%."""
    torch.manual_seed(0)
    ours = randomize_(VAE(PRESETS["toy"]).eval())
    z = torch.randn(1, 16, 3, 24, 24)
    full = ours.decode(z)
    tiled = ours.decode(z, tile_size=(48, 48), tile_overlap=(16, 16))
    assert tiled.shape == full.shape == (1, 3, 9, 96, 96)
    err = (tiled - full).abs()
    assert err.max() / full.abs().max() < 0.10 and err.mean() / full.abs().mean() < 0.05
    # one tile that covers the frame is the untiled decode exactly; so is the default on a small frame
    assert torch.equal(ours.decode(z, tile_size=(96, 96)), full)
    assert ours.decode(z[..., :8, :8], tile=True).shape == (1, 3, 9, 32, 32)


def test_tiled_encode_is_the_blend_of_its_tiles():
    """Tiled encode = each tile encoded alone, blended across the overlaps; and never further from the
    untiled encode than its worst tile.

    Why not diffusers' tiled encode as the oracle: no tile setting makes the two tile alike. diffusers starts a
    tile every tile_sample_min * (1 - tile_overlap_factor) px until the frame's edge, so its last tiles are cut
    short, and blends with weights y / extent (from 0) over the first `extent` latent rows of each tile, keeping
    `tile - extent` rows of each; ours cuts the axis into the fewest tiles of at most the tile size, evenly sized,
    overlapping by exactly the overlap asked, and ramps across the whole overlap. Only one tile covering the frame
    agrees, and that is the untiled encode. No tiling is exact either: every GroupNorm takes its statistics over
    the tile, so each tile's latents differ from the untiled ones.

    The reference is therefore written from the definition, for this geometry (toy VAE, x4 space): 96 px = 24
    latent cells, tiles of at most 64 px = 16 cells, 16 px (4 cells) of overlap -> two tiles per axis covering
    24 + 4 = 28 cells, 14 each, at cells 0 and 10, overlapping on cells 10..13, where the second tile's weight
    rises (j + 0.5) / 4 and the first's falls to match (they sum to 1). The output at a cell is thus a convex
    blend of the tiles covering it, which bounds its error against the untiled encode by the worst covering
    tile's error (measured: the blend of the four tiles matches bit for bit; the untiled encode differs by at most
    33% of its largest |value|, 9% of its mean |value| on average -- 15% / 5% with the earlier plan's full-size
    16-cell tiles, which overlapped by 8 cells where 4 were asked)."""
    torch.manual_seed(0)
    ours = randomize_(VAE(PRESETS["toy"]).eval())
    x = torch.rand(1, 3, 9, 96, 96) * 2 - 1
    calls = []
    hook = ours.encoder.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    tiled = ours.encode(x, tile_size=(64, 64), tile_overlap=(16, 16))[0]
    hook.remove()
    assert calls == [(56, 56)] * 4                      # four 14-cell tiles (9 frames: one encoder call each)
    full = ours.encode(x)[0]
    assert tiled.shape == full.shape == (1, 16, 3, 24, 24)

    ramp = torch.ones(24, 2)                            # weight of tile 0 / tile 1 along one axis, per cell
    ramp[14:, 0] = ramp[:10, 1] = 0
    ramp[10:14, 1] = (torch.arange(4) + 0.5) / 4
    ramp[10:14, 0] = 1 - ramp[10:14, 1]
    want = torch.zeros_like(full)
    worst = torch.zeros_like(full)                      # the largest |tile - untiled| among the tiles at a cell
    for i, y in enumerate((0, 10)):
        for j, x0 in enumerate((0, 10)):
            tile = ours.encode(x[..., 4 * y:4 * y + 56, 4 * x0:4 * x0 + 56])[0]       # (1, 16, 3, 14, 14)
            w = (ramp[:, i, None] * ramp[None, :, j])[y:y + 14, x0:x0 + 14]
            want[..., y:y + 14, x0:x0 + 14] += w * tile
            covered = w > 0
            gap = (tile - full[..., y:y + 14, x0:x0 + 14]).abs() * covered
            worst[..., y:y + 14, x0:x0 + 14] = torch.maximum(worst[..., y:y + 14, x0:x0 + 14], gap)
    assert rel(tiled, want) < 1e-6
    assert ((tiled - full).abs() <= worst + 1e-6).all()
    assert rel(tiled, full) > 0.01                      # the tiles really differ from the untiled encode


def test_tile_plan_covers_no_more_than_diffusers_tiles():
    """The tile plan (vae._spans, latent cells) at the real size: 49x480x720 -> 60x90 latent, default tiles 240x360
    px = 30x45 cells, overlap 40x72 px = 5x9 cells. diffusers' tiles there start every 25 (36) cells and the last
    is cut short: 30 + 30 + 10 = 70 rows, 45 + 45 + 18 = 108 columns. Ours: as many tiles, no larger, even."""
    assert vae._spans(60, 30, 5) == [(0, 24), (19, 42), (37, 60)]                 # 24 + 23 + 23 = 70 rows
    assert vae._spans(90, 45, 9) == [(0, 36), (27, 63), (54, 90)]                 # 3 x 36 = 108 columns
    # every overlap is exactly the one asked, lengths differ by at most 1, none over the tile size
    for n, size, ov in [(8, 4, 1), (12, 6, 1), (37, 10, 3), (100, 16, 8), (13, 12, 1)]:
        spans = vae._spans(n, size, ov)
        lengths = [b - a for a, b in spans]
        assert spans[0][0] == 0 and spans[-1][1] == n and max(lengths) <= size and max(lengths) - min(lengths) <= 1
        assert all(a1 == b0 - ov for (_, b0), (a1, _) in zip(spans, spans[1:]))
        assert len(spans) == 1 + -(-(n - size) // (size - ov))                   # the fewest that fit
    assert vae._spans(8, 8, 2) == [(0, 8)]                                         # one tile: untiled


@pytest.mark.parametrize("hw, tile, overlap", [((96, 96), (64, 64), (16, 16)), ((64, 152), (32, 48), (8, 16)),
                                               ((80, 288), (64, 128), (32, 96)), ((32, 32), (64, 64), (16, 16))])
def test_tiling_reassembles_a_tile_local_map_exactly(hw, tile, overlap):
    """Give _tiled a `run` that is local (each output cell depends only on its own input cells): an f x f average
    pool going down (the encoder's grid, f = 8 here), f x nearest upsampling going up (the decoder's). Every tile
    then holds the same values as the whole map on its cells, so a blend whose weights are normalised returns the
    untiled result to rounding: this checks tile placement, the pixel <-> latent bookkeeping and that the
    weights form a partition of unity -- also where a tile's two ramps cross (overlap > half a tile: case 3)."""
    m = VAE(CONFIGS["4level"])
    f = m.space
    x = torch.rand(1, 2, 3, *hw)
    down = lambda t: F.avg_pool3d(t, (1, f, f))                                      # noqa: E731
    up = lambda t: t.repeat_interleave(f, -2).repeat_interleave(f, -1)               # noqa: E731
    assert (m._tiled(down, x, tile, overlap, down=f) - down(x)).abs().max() < 1e-6
    z = down(x)
    assert (m._tiled(up, z, tile, overlap, up=f) - up(z)).abs().max() < 1e-6


# -- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, word", [((1, 3, 8, 16, 16), "4k+1"), ((1, 4, 9, 16, 16), "channels"),
                                         ((3, 9, 16, 16), "(B, C, T, H, W)"), ((1, 3, 9, 18, 16), "multiples")])
def test_encode_rejects_bad_input(shape, word):
    with pytest.raises(ValueError, match="^x: ") as e:
        VAE(PRESETS["toy"]).encode(torch.zeros(shape))
    assert word in str(e.value)


def test_decode_and_chunk_errors():
    m = VAE(PRESETS["toy"])
    with pytest.raises(ValueError, match="^z: .*16 channels"):
        m.decode(torch.zeros(1, 4, 3, 4, 4))
    with pytest.raises(ValueError, match="chunk_frames=3"):
        m.decode(torch.zeros(1, 16, 3, 4, 4), chunk_frames=3)
    with pytest.raises(ValueError, match="chunk_frames=4"):
        m.encode(torch.zeros(1, 3, 9, 16, 16), chunk_frames=4)


def test_load_errors_name_key_and_file(tmp_path):
    VAE(PRESETS["toy"]).save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / WEIGHTS_NAME))
    del sd["decoder.conv_out.conv.bias"]
    save_file(sd, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(KeyError, match="decoder.conv_out.conv.bias"):
        VAE.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        VAE.from_pretrained(tmp_path / "nowhere")
