"""
remover.py against diffusers' Wan 2.1 classes (test-only oracles), CPU, fp32, no network.

    python -m pytest -q tests/test_remover.py

How the DiT reference is built: MiniMax-Remover's transformer is diffusers' WanTransformer3DModel with the text
path removed. Block by block, Wan runs norm1 -> self-attention -> norm2 -> cross-attention(text) -> norm3 -> FFN;
the remover runs norm1 -> self-attention -> norm2 -> FFN, where its norm2 is Wan's norm3 (both affine-free, so
no key). So a Wan model whose cross-attention output projection is zero (attn2.to_out.0 = 0, cross_attn_norm off)
computes exactly the remover, and its checkpoint minus `condition_embedder.text_embedder.*` and
`blocks.*.attn2.*` is a remover checkpoint with the remover's key names.
"""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from others import remover as R  # noqa: E402
from plumbing import weights  # noqa: E402
from conftest import rel, single_thread  # noqa: E402

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel  # noqa: E402


one_thread = single_thread("module")


def kwargs(cfg):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def randomize_(model, seed=0):
    """Norm weights (default 1) and biases (some default 0) made random, so a misplaced one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("gamma", "norm_q.weight", "norm_k.weight")):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            elif name.endswith("bias") or "scale_shift_table" in name:
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return model

# -- VAE -----------------------------------------------------------------------------------------------

# real layout (4 levels, 2 time halvings at the last two transitions) with 4..16 channels, and a variant
# with the time halvings elsewhere, one resnet per level and a wider decoder
VAE_CONFIGS = {
    "wan-shaped": R.WanVAEConfig(base_dim=4, z_dim=4, latents_mean=(0.1, -0.2, 0.3, 0.0),
                                 latents_std=(1.5, 0.5, 2.0, 1.0)),
    "variant": R.WanVAEConfig(base_dim=4, decoder_base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                              temperal_downsample=(True, False, True)),
}


@pytest.fixture(scope="module", params=list(VAE_CONFIGS))
def vae_pair(request, tmp_path_factory):
    torch.manual_seed(0)
    ref = randomize_(AutoencoderKLWan(**kwargs(VAE_CONFIGS[request.param])).eval())
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)  # the official layout: config.json + diffusion_pytorch_model.safetensors
    return ref, R.WanVAE.from_pretrained(folder)


def test_real_vae_meta_names_and_shapes():
    with torch.device("meta"):
        ref = AutoencoderKLWan()  # diffusers' defaults are the Wan 2.1 VAE the remover ships
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.meta_model(R.WanVAE, R.VAE_PRESETS["wan2.1"]).state_dict().items()}
    assert got == want
    assert ref.config.latents_std == list(R.WanVAEConfig().latents_std)


@pytest.mark.parametrize("frames", [1, 5, 9, 13])
def test_vae_encode_parity(vae_pair, frames):
    ref, ours = vae_pair
    x = torch.rand(1, 3, frames, 16, 24, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        post = ref.encode(x).latent_dist
    for chunk in (4, 8, None):  # diffusers' own chunking, bigger chunks, and the whole clip in one call
        mean, logvar = ours.encode(x, chunk_frames=chunk)
        assert mean.shape == post.mean.shape == (1, ours.config.z_dim, 1 + (frames - 1) // ours.time, 2, 3)
        assert rel(mean, post.mean) < 1e-5, chunk
        assert rel(logvar, post.logvar) < 1e-5, chunk


@pytest.mark.parametrize("latent_frames", [1, 2, 4])
def test_vae_decode_parity(vae_pair, latent_frames):
    ref, ours = vae_pair
    z = torch.randn(1, ours.config.z_dim, latent_frames, 2, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref.decode(z).sample
    for chunk in (1, 3, None):
        got = ours.decode(z, chunk_frames=chunk)
        assert got.shape == want.shape == (1, 3, 1 + ours.time * (latent_frames - 1), 16, 24)
        assert rel(got, want) < 1e-5, chunk


def test_vae_latent_normalization_round_trips():
    vae = R.WanVAE(VAE_CONFIGS["wan-shaped"])
    z = torch.randn(2, 4, 3, 2, 2)
    n = vae.normalize(z)
    assert torch.allclose(n[:, 1], (z[:, 1] + 0.2) / 0.5)
    assert torch.allclose(vae.denormalize(n), z, atol=1e-6)


def test_vae_rejects_bad_frames_and_sizes():
    vae = R.WanVAE(VAE_CONFIGS["wan-shaped"])
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 5, 12, 16))
    with pytest.raises(ValueError, match="chunk_frames"):
        vae.encode(torch.zeros(1, 3, 5, 16, 16), chunk_frames=3)
    with pytest.raises(ValueError, match="Wan 2.2"):
        R.WanVAE(R.WanVAEConfig(is_residual=True))

# -- DiT -----------------------------------------------------------------------------------------------


def wan_kwargs(cfg, text_dim):
    """diffusers WanTransformer3DModel arguments for a remover config (cross-attention norm off)."""
    k = kwargs(cfg)
    return dict(k, text_dim=text_dim, cross_attn_norm=False, image_dim=None)


def remover_keys(sd):
    """A Wan checkpoint -> the remover's (drop the text path: text embedder and cross-attention)."""
    return {k: v for k, v in sd.items() if "text_embedder" not in k and ".attn2." not in k}


# head dim 16: RoPE gives t 8, h 4, w 4 dims (unequal, so a swapped split shows)
DIT_CONFIG = R.RemoverConfig(num_attention_heads=2, attention_head_dim=16, in_channels=12, out_channels=4,
                             freq_dim=32, ffn_dim=40, num_layers=2)


def make_wan(cfg, seed=0):
    torch.manual_seed(seed)
    ref = randomize_(WanTransformer3DModel(**wan_kwargs(cfg, text_dim=8)).eval(), seed)
    with torch.no_grad():
        for b in ref.blocks:  # no text: the cross-attention adds exactly 0
            b.attn2.to_out[0].weight.zero_()
            b.attn2.to_out[0].bias.zero_()
    return ref


def save_remover_transformer(ref, cfg, folder):
    weights.save_state_dict(remover_keys(ref.state_dict()), folder, R.WEIGHTS_NAME)
    (Path(folder) / "config.json").write_text(json.dumps({"_class_name": "Transformer3DModel", **kwargs(cfg)}))


def test_real_dit_meta_names_and_shapes():
    cfg = R.PRESETS["minimax-remover"]
    with torch.device("meta"):
        ref = WanTransformer3DModel(**dict(wan_kwargs(cfg, text_dim=4096), cross_attn_norm=True))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()
            if "text_embedder" not in k and ".attn2." not in k and ".norm2." not in k}
    got = {k: tuple(v.shape) for k, v in weights.meta_model(R.RemoverDiT, cfg).state_dict().items()}
    assert got == want
    # hand-derived from the remover's definition: 48 -> 1536 patch conv (1, 2, 2), 16 * 4 outputs per token
    assert got["patch_embedding.weight"] == (1536, 48, 1, 2, 2) and got["proj_out.weight"] == (64, 1536)
    assert got["blocks.29.scale_shift_table"] == (1, 6, 1536) and "blocks.30.ffn.net.2.weight" not in got
    n = sum(int(np.prod(s)) for s in got.values())
    assert 2 * n + 200_000 > 2_254_156_824 > 2 * n  # Kijai's fp16 single file: 2 bytes/param + a header


@pytest.mark.parametrize("shape", [(1, 1, 4, 6), (2, 3, 2, 4)])
def test_dit_parity(tmp_path, shape):
    B, T, H, W = shape
    ref = make_wan(DIT_CONFIG)
    save_remover_transformer(ref, DIT_CONFIG, tmp_path)
    ours = R.RemoverDiT.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, DIT_CONFIG.in_channels, T, H, W, generator=g)
    t = torch.tensor([937.5, 250.0][:B])
    text = torch.randn(B, 5, 8, generator=g)  # any text: its path is zeroed
    with torch.no_grad():
        want = ref(x, t, text, return_dict=False)[0]
        got = ours(x, t)
    assert got.shape == want.shape == (B, DIT_CONFIG.out_channels, T, H, W)
    assert rel(got, want) < 1e-5


def test_dit_loads_strict(tmp_path):
    ref = make_wan(DIT_CONFIG)
    sd = remover_keys(ref.state_dict())
    sd.pop("blocks.1.attn1.norm_k.weight")
    weights.save_state_dict(sd, tmp_path, R.WEIGHTS_NAME)
    (tmp_path / "config.json").write_text(json.dumps(kwargs(DIT_CONFIG)))
    with pytest.raises(KeyError, match="norm_k"):
        R.RemoverDiT.from_pretrained(tmp_path)

# -- sampler -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift,steps", [(1.0, 12), (3.0, 12), (5.0, 6)])
def test_flow_euler_matches_diffusers_step_for_step(shift, steps):
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(steps)
    ours = R.FlowEuler(R.SchedulerConfig(shift=shift))
    assert torch.allclose(ours.sigmas(steps), ref.sigmas, rtol=1e-6, atol=0)
    assert torch.allclose(ours.timesteps(steps), ref.timesteps, rtol=1e-6, atol=0)
    g = torch.Generator().manual_seed(3)
    x_ref = x = torch.randn(1, 4, 2, 3, 3, generator=g)
    sig = ours.sigmas(steps).tolist()
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(x.shape, generator=g) + 0.5 * x  # a velocity that depends on the state
        x_ref = ref.step(v, t, x_ref, return_dict=False)[0]
        x = ours.step(v, x, sig[i], sig[i + 1])
        assert rel(x, x_ref) < 1e-6, i


def test_scheduler_config_reading(tmp_path):
    # the remover ships a UniPC config: its flow_shift is the shift; a DDPM-style config is refused
    (tmp_path / "scheduler").mkdir()
    cfg = {"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "shift": 1.0, "use_flow_sigmas": True,
           "prediction_type": "flow_prediction", "solver_order": 2}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    assert R.FlowEuler.from_pretrained(tmp_path).shift == 3.0
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(cfg, prediction_type="epsilon")))
    with pytest.raises(ValueError, match="flow"):
        R.FlowEuler.from_pretrained(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no scheduler_config.json"):
        R.FlowEuler.from_pretrained(tmp_path / "empty")

# -- the remover ---------------------------------------------------------------------------------------


def test_dilate_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    mask = rng.random((3, 20, 17)) > 0.97
    mask[1, 0, :] = True  # touching the border
    for it in (1, 3, 6):
        # the original dilates each (H, W, 1) frame with scipy's default (cross) structure
        want = np.stack([ndimage.binary_dilation(m[..., None], iterations=it)[..., 0] for m in mask])
        assert np.array_equal(R.dilate(torch.from_numpy(mask), it).numpy(), want), it


def write_tiny_remover(folder, vae_cfg, dit_cfg, shift):
    torch.manual_seed(0)
    vae_ref = randomize_(AutoencoderKLWan(**kwargs(vae_cfg)).eval())
    vae_ref.save_pretrained(folder / "vae")
    dit_ref = make_wan(dit_cfg)
    save_remover_transformer(dit_ref, dit_cfg, folder / "transformer")
    FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(folder / "scheduler")
    return vae_ref, dit_ref


def test_remover_end_to_end_matches_a_diffusers_loop(tmp_path):
    """The whole remover against the upstream pipeline's recipe, spelled out with diffusers parts:
    dilate, blank the hole, encode holed video and mask video (posterior modes, normalised), Euler from noise
    over [noise | video latent | mask latent], denormalise, decode."""
    vae_cfg = VAE_CONFIGS["wan-shaped"]
    dit_cfg = dataclasses.replace(DIT_CONFIG, in_channels=3 * vae_cfg.z_dim, out_channels=vae_cfg.z_dim)
    vae_ref, dit_ref = write_tiny_remover(tmp_path, vae_cfg, dit_cfg, shift=3.0)
    rm = R.Remover.from_pretrained(tmp_path)

    g = np.random.default_rng(1)
    video = g.integers(0, 256, (5, 16, 32, 3), dtype=np.uint8)
    mask = np.zeros((5, 16, 32), bool)
    mask[:, 4:9, 10:15] = True
    got = rm(video, mask, steps=4, dilate=2, seed=7)

    ndimage = pytest.importorskip("scipy.ndimage")
    m = np.stack([ndimage.binary_dilation(f, iterations=2) for f in mask]).astype(np.float32)
    x = torch.from_numpy(video).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
    m = torch.from_numpy(m)[None, None].expand_as(x)
    mean = torch.tensor(vae_cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae_cfg.latents_std).view(1, -1, 1, 1, 1)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(4)
    with torch.no_grad():
        enc = lambda v: (vae_ref.encode(v).latent_dist.mode() - mean) / std
        cond = torch.cat([enc(x * (1 - m)), enc(2 * m - 1)], dim=1)
        z = torch.randn(1, vae_cfg.z_dim, *cond.shape[2:], generator=torch.Generator().manual_seed(7))
        for t in sched.timesteps:
            v = dit_ref(torch.cat([z, cond], 1), t.expand(1), torch.zeros(1, 1, 8), return_dict=False)[0]
            z = sched.step(v, t, z, return_dict=False)[0]
        out = vae_ref.decode(z * std + mean).sample
    # in float first: tiny random VAEs damp latent differences, so uint8 alone would hide small errors
    got_float = rm.inpaint(x, m[:, :1], steps=4, generator=torch.Generator().manual_seed(7))
    assert rel(got_float, out) < 1e-5
    want = ((out[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert got.shape == video.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # equal but for rounding ties of ~1e-6 float noise


def test_remover_rejects_bad_inputs(tmp_path):
    rm = R.Remover(R.WanVAE(VAE_CONFIGS["wan-shaped"]),
                   R.RemoverDiT(dataclasses.replace(DIT_CONFIG, in_channels=12, out_channels=4)),
                   R.FlowEuler(R.SchedulerConfig()))
    video, mask = np.zeros((5, 16, 16, 3), np.uint8), np.zeros((5, 16, 16), bool)
    with pytest.raises(ValueError, match="4k\\+1"):
        rm(video[:4], mask[:4])
    with pytest.raises(ValueError, match="multiples of 16"):
        rm(video[:, :8], mask[:, :8])
    with pytest.raises(ValueError, match="uint8"):
        rm(video.astype(np.float32), mask)


@pytest.mark.slow
def test_decompose_splits_with_the_remover(tmp_path):
    """decompose.py --inpainter minimax on raw clips: the Split stage fills the hole with the remover (a tiny random
    one here, saved in the zibojia/minimax-remover layout); offline, a remover that cannot be had stops the run in
    one line before any clip, naming the weight-free choice."""
    import subprocess
    from plumbing.video import mask_to_rgb, read_mask, read_video, write_video
    import toy
    vae_cfg = VAE_CONFIGS["wan-shaped"]
    write_tiny_remover(tmp_path / "rm", vae_cfg, dataclasses.replace(DIT_CONFIG, in_channels=12, out_channels=4), 3.0)
    for i in range(2):
        c = toy.clip(30 + i, T=9, H=64, W=64)
        write_video(tmp_path / "clips" / f"c{i}.mp4", c["video"], fps=8)
        write_video(tmp_path / "masks" / f"c{i}.mp4", mask_to_rgb(c["mask"]), fps=8)
    root = Path(__file__).resolve().parents[1]
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, str(root / "decompose.py"), "--videos", str(tmp_path / "clips"), "--frames", "9",
           "--size", "64", "64", "--segmenter", "gt", "--masks", str(tmp_path / "masks"), "--min-fg", "0.001",
           "--static", "0", "--inpainter", "minimax", "--remover-steps", "2"]
    r = subprocess.run(cmd + ["--out", str(tmp_path / "out"), "--remover", str(tmp_path / "rm")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(l) for l in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    recs = [x for x in recs if x["status"] == "ok"]
    assert recs, "no clip was kept"
    bg = read_video(tmp_path / "out" / recs[0]["bg"])[0]
    video = read_video(tmp_path / "out" / recs[0]["videos"])[0]
    hole = read_mask(tmp_path / "out" / recs[0]["masks"])
    assert bg.shape == video.shape and np.abs(bg[hole].astype(int) - video[hole]).mean() > 5   # the hole was redrawn
    direct = R.Remover.from_pretrained(tmp_path / "rm")(video, hole, steps=2, dilate=6, seed=42)   # by the remover
    grown = R.dilate(torch.from_numpy(hole), 6).numpy()
    assert np.abs(bg[grown].astype(int) - direct[grown]).mean() < 4 < np.abs(bg[grown].astype(int)).mean()
    r = subprocess.run(cmd + ["--out", str(tmp_path / "out2"), "--remover", "nobody/nothing"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "--inpainter temporal" in r.stderr and not (tmp_path / "out2" / "metadata.jsonl").exists()
