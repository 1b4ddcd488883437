"""
dit.py against diffusers' CogVideoXTransformer3DModel (the oracle, test-only), CPU, fp32, no network.

    python -m pytest -q tests/test_dit.py
"""
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dit  # noqa: E402
from dit import DiT, DiTConfig, PRESETS  # noqa: E402
from figures import parity  # noqa: E402  (tests/figures.py: the parity table of docs/results.md)

diffusers = pytest.importorskip("diffusers")
from diffusers import CogVideoXTransformer3DModel  # noqa: E402
from diffusers.models.embeddings import get_3d_rotary_pos_embed  # noqa: E402
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"

# Tiny members of each family: D = 2 heads x 16, 2 layers, 8 text tokens.
TINY = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=24, time_embed_dim=32,
            max_text_seq_length=8, in_channels=4, out_channels=4, sample_height=8, sample_width=12, sample_frames=9)
FAMILIES = {
    "2b": dict(TINY),                                                     # sin-cos PE
    "5b": dict(TINY, use_rotary_positional_embeddings=True),              # RoPE
    "5b-i2v": dict(TINY, in_channels=8, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    "1.5-i2v": dict(TINY, in_channels=8, use_rotary_positional_embeddings=True, patch_size_t=2, patch_bias=False,
                    ofs_embed_dim=32, sample_frames=13),
}


def randomize_(model, seed=0):
    """Every weight random (zero-init layers would hide bugs); norm weights around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            r = torch.randn(t.shape, generator=g, dtype=torch.float32)
            t.copy_(1 + 0.1 * r if "norm" in name and name.endswith("weight") else 0.2 * r)
    return model


def reference(family, seed=0, **kw):
    torch.manual_seed(seed)
    return randomize_(CogVideoXTransformer3DModel(**{**FAMILIES[family], **kw}).eval(), seed)


def reference_rope(cfg, T, H, W):
    """RoPE tables exactly as the diffusers pipelines compute them (1.0: linspace grid, 1.5: slice)."""
    p, gh, gw = cfg.patch_size, H // cfg.patch_size, W // cfg.patch_size
    base_h, base_w = cfg.sample_height // p, cfg.sample_width // p
    if cfg.patch_size_t is None:
        crops = get_resize_crop_region_for_grid((gh, gw), base_w, base_h)
        return get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, (gh, gw), T)
    return get_3d_rotary_pos_embed(cfg.attention_head_dim, None, (gh, gw), T // cfg.patch_size_t,
                                   grid_type="slice", max_size=(base_h, base_w))


def run_reference(ref, x, text, t, ofs=None):
    cfg = ref.config
    rope = reference_rope(cfg, *x.shape[2:]) if cfg.use_rotary_positional_embeddings else None
    with torch.no_grad():
        out = ref(hidden_states=x.transpose(1, 2), encoder_hidden_states=text, timestep=t, ofs=ofs,
                  image_rotary_emb=rope, return_dict=False)[0]
    return out.transpose(1, 2)  # frames-first -> (B, C, T, H, W)


def inputs(cfg, T=3, H=8, W=12, B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, T, H, W, generator=g)
    text = torch.randn(B, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g)
    return x, text, torch.tensor([3, 700])[:B]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# -----------------------------------------------------------------------------
# Parity on tiny random models of each family


@pytest.mark.parametrize("family,size,shard", [
    ("2b", (3, 8, 12), False),       # at the sample size: the stored-table path
    ("2b", (2, 8, 8), False),        # another size: sin-cos recomputed for the grid
    ("5b", (3, 8, 12), True),        # sharded checkpoint
    ("5b", (3, 12, 8), False),       # other aspect ratio: RoPE grid centre-cropped onto the base grid
    ("5b-i2v", (3, 8, 12), False),   # learned PE
    ("5b-i2v", (2, 8, 12), False),   # learned PE, other frame count: diffusers falls back to sin-cos
    ("1.5-i2v", (4, 8, 12), False),  # temporal patches + ofs
])
def test_parity_with_diffusers(tmp_path, family, size, shard):
    ref = reference(family)
    ref.save_pretrained(tmp_path / "transformer", max_shard_size="40KB" if shard else "10GB")
    if shard:
        assert (tmp_path / "transformer" / f"{WEIGHTS}.index.json").exists()
    model = DiT.from_pretrained(tmp_path)  # a base-model folder with transformer/ inside
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    x, text, t = inputs(model.config, *size)
    ofs = torch.full((2,), 2.0) if model.config.ofs_embed_dim else None
    with torch.no_grad():
        ours = model.eval()(x, text, t, ofs)
    theirs = run_reference(ref, x, text, t, ofs)
    assert ours.shape == (2, model.config.out_channels, *size)
    parity("dit", rel_err(ours, theirs))
    assert rel_err(ours, theirs) <= 1e-5, rel_err(ours, theirs)


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "toy"] + ["toy"])
def test_meta_names_and_shapes_match_diffusers(name):
    cfg = PRESETS[name]
    with torch.device("meta"):
        ref = CogVideoXTransformer3DModel(**dataclasses.asdict(cfg))
    ours = dit.weights.meta_model(DiT, cfg)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes(ours) == shapes(ref)


def test_composer_saved_by_us_loads_in_diffusers(tmp_path):
    model = randomize_(DiT(PRESETS["toy"]), seed=3).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["in_channels"] == 48
    ref = CogVideoXTransformer3DModel.from_pretrained(tmp_path).eval()
    assert ref.config.in_channels == 48
    x, text, t = inputs(model.config, 3, 16, 16)
    with torch.no_grad():
        ours = model(x, text, t)
    parity("dit-composer", rel_err(ours, run_reference(ref, x, text, t)))
    assert rel_err(ours, run_reference(ref, x, text, t)) <= 1e-5
    half = DiT.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {t.dtype for t in [*half.parameters(), *half.buffers()]} == {torch.bfloat16}
    with torch.no_grad():
        assert rel_err(half(x.bfloat16(), text.bfloat16(), t).float(), ours) < 0.1  # bf16 runs end to end


@pytest.mark.parametrize("family", ["5b-i2v", "1.5-i2v"])
def test_widening_copies_image_channels(tmp_path, family):
    reference(family, in_channels=32, out_channels=16).save_pretrained(tmp_path)  # [noisy 16 | image 16]
    narrow = DiT.from_pretrained(tmp_path).eval()
    wide = DiT.from_pretrained(tmp_path, in_channels=48).eval()                  # [noisy | fg | bg]
    per_ch = lambda m: m.patch_embed.proj.weight.reshape(m.patch_embed.proj.weight.shape[0], m.config.in_channels, -1)
    w, w0 = per_ch(wide), per_ch(narrow)
    assert w.shape[1] == 48 and torch.equal(w[:, :32], w0) and torch.equal(w[:, 32:48], w0[:, 16:32])
    # with an all-zero bg layer the widened model computes exactly what the checkpoint computes
    x, text, t = inputs(narrow.config, 4, 8, 12)
    with torch.no_grad():
        a = wide(torch.cat([x, torch.zeros_like(x[:, :16])], dim=1), text, t)
        b = narrow(x, text, t)
    assert rel_err(a, b) <= 1e-6
    wide.save_pretrained(tmp_path / "wide")
    assert DiT.from_pretrained(tmp_path / "wide").config.in_channels == 48


# -----------------------------------------------------------------------------
# Clear errors


@pytest.fixture
def saved(tmp_path):
    reference("5b-i2v").save_pretrained(tmp_path, max_shard_size="40KB")
    return tmp_path


def test_missing_shard_is_named(saved):
    shard = sorted(saved.glob("diffusion_pytorch_model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        DiT.from_pretrained(saved)


def _edit_single_file(folder, edit):
    sd = {}
    for f in sorted(folder.glob("diffusion_pytorch_model-*.safetensors")):
        sd.update(load_file(f))
        f.unlink()
    (folder / f"{WEIGHTS}.index.json").unlink()
    edit(sd)
    save_file(sd, folder / WEIGHTS)


def test_unexpected_key_is_named(saved):
    _edit_single_file(saved, lambda sd: sd.update({"foo.bar": torch.zeros(1)}))
    with pytest.raises(KeyError, match="foo.bar"):
        DiT.from_pretrained(saved)


def test_missing_key_is_named(saved):
    _edit_single_file(saved, lambda sd: sd.pop("proj_out.bias"))
    with pytest.raises(KeyError, match="proj_out.bias"):
        DiT.from_pretrained(saved)


def test_shape_mismatch_is_named(saved):
    with pytest.raises(ValueError, match=r"has shape \(1, 80, 32\) in the file, the model expects \(1, 80, 48\)"):
        DiT.from_pretrained(saved, num_attention_heads=3)
    _edit_single_file(saved, lambda sd: sd.update({"proj_out.bias": torch.zeros(5)}))
    with pytest.raises(ValueError, match="proj_out.bias"):
        DiT.from_pretrained(saved)


def test_learned_pe_size_error_names_both_sizes():
    model = DiT(PRESETS["toy"])
    x, text, t = inputs(model.config, 3, 16, 24)
    with pytest.raises(ValueError, match="16x16.*16x24"):
        model(x, text, t)


# -----------------------------------------------------------------------------
# Training hooks and from-scratch init


def test_activation_checkpointing_same_grads():
    torch.manual_seed(0)
    model = randomize_(DiT(PRESETS["toy"]))
    x, text, t = inputs(model.config, 3, 16, 16)
    grads = []
    for ac in (False, True):
        model.zero_grad()
        model.set_activation_checkpointing(ac)(x, text, t).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(*grads))


def test_init_weights_starts_at_zero_prediction():
    model = DiT(PRESETS["toy"])
    x, text, t = inputs(model.config, 3, 16, 16)
    out = model(x, text, t)
    assert out.shape == (2, 16, 3, 16, 16) and out.abs().max() == 0  # proj_out is zero-initialised
    assert model.patch_embed.pos_embedding.abs().sum() > 0
