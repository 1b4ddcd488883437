"""metrics.py: each network on tiny random weights written in its official file format and loaded
through the real loading path; parity against transformers' CLIP (here) and torchvision's Swin3D /
RAFT (skipped where torchvision is not importable); brute-force checks of the window attention and
the correlation lookup; the BPE tokenizer against transformers; the classical flow; the metric
arithmetic on hand-computed cases."""
import gzip
import importlib
import itertools
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from others import metrics
from figures import parity, rel_err  # tests/figures.py: the parity table of docs/results.md

torch.set_num_threads(2)


def torchvision_or_skip(module):
    """torchvision is a test-only oracle that cannot be installed beside this project's CPU torch 2.13.0: PyPI's
    matching torchvision 0.28.0 is built against CUDA torch (its _C.so needs libtorch_cuda), and importing it
    fails ('operator torchvision::nms does not exist'). These tests then skip, saying so; they run in a side
    venv (`pip install torch==2.14.1 torchvision==0.29.1`): `python tests/figures.py --side-python VENV/bin/python`."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # ImportError where absent; RuntimeError where a CUDA-built wheel meets CPU torch
        pytest.skip(f"torchvision oracle not importable here ({type(e).__name__}: {str(e).splitlines()[0][:70]}); "
                    f"run in a side venv: python tests/figures.py --side-python VENV/bin/python")


def _meta(cls, config):
    with torch.device("meta"):
        return cls(config)


def _randomise(model, seed=0):
    """Every parameter and float buffer random (layer norms near 1), so no part can be wrong silently."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = torch.randn(v.shape, generator=g) * 0.2
            if k.endswith("running_var") or ("norm" in k or "ln_" in k) and k.endswith("weight"):
                v = 1 + v.abs() * 0.5 if k.endswith("running_var") else 1 + v
        sd[k] = v
    model.load_state_dict(sd)
    return sd


# -----------------------------------------------------------------------------------------------
# Swin3D


def test_relative_position_index_matches_definition():
    w = (2, 3, 4)
    idx = metrics.relative_position_index_3d(w)
    pos = list(itertools.product(*[range(n) for n in w]))
    for i, p in enumerate(pos):
        for j, q in enumerate(pos):
            d = [a - b + n - 1 for a, b, n in zip(p, q, w)]  # each in [0, 2n-2]
            assert idx[i, j] == (d[0] * (2 * w[1] - 1) + d[1]) * (2 * w[2] - 1) + d[2]


def test_shifted_window_attention_matches_brute_force():
    """Token i of the cyclically shifted map attends to token j iff both are in the same window and,
    on every axis, both or neither were wrapped around by the shift; bias from the table."""
    torch.manual_seed(0)
    dim, heads, window, shift, size = 4, 2, (2, 3, 3), (1, 1, 1), (4, 6, 6)
    attn = metrics.WindowAttention3d(dim, heads, window, shift).eval()
    _randomise(attn)
    x = torch.randn(1, *size, dim)
    with torch.no_grad():
        ours = attn(x)
        rolled = torch.roll(x, [-s for s in shift], (1, 2, 3))[0]
        qkv = attn.qkv(rolled).view(*size, 3, heads, dim // heads)
        ref = torch.zeros(*size, dim)
        pts = list(itertools.product(*[range(n) for n in size]))
        for p in pts:
            keys = [q for q in pts if all(a // w == b // w and (a + s >= n) == (b + s >= n)
                                          for a, b, w, s, n in zip(p, q, window, shift, size))]
            rel = [metrics.relative_position_index_3d(window)[
                np.ravel_multi_index([a % w for a, w in zip(p, window)], window),
                np.ravel_multi_index([b % w for b, w in zip(q, window)], window)] for q in keys]
            logits = torch.stack([(qkv[p][0] * qkv[q][1]).sum(-1) for q in keys], -1) * (dim // heads) ** -0.5
            logits = logits + attn.relative_position_bias_table[torch.stack(rel)].T
            out = (logits.softmax(-1)[..., None] * torch.stack([qkv[q][2] for q in keys], 1)).sum(1).reshape(dim)
            ref[p] = attn.proj(out)
        ref = torch.roll(ref, shift, (0, 1, 2))
    torch.testing.assert_close(ours[0], ref, atol=1e-5, rtol=1e-5)


def test_swin3d_loads_official_pth_strictly(tmp_path):
    cfg = metrics.SWIN3D_PRESETS["tiny"]
    model = metrics.Swin3D(cfg).eval()
    sd = _randomise(model)
    assert "features.0.0.attn.relative_position_index" in sd and "features.1.reduction.weight" in sd
    assert "features.0.0.mlp.3.weight" in sd and "patch_embed.norm.weight" in sd
    torch.save(sd, tmp_path / "swin.pth")
    loaded = metrics.load_swin3d(tmp_path / "swin.pth", "tiny")
    x = torch.randn(2, 3, 7, 30, 26)  # odd sizes: padding, shrunk windows
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    n_params = sum(v.numel() for k, v in _meta(metrics.Swin3D, metrics.SWIN3D_PRESETS["swin3d_b"]).state_dict().items()
                   if not k.endswith("relative_position_index"))
    assert n_params == 88048984  # torchvision's num_params for swin3d_b


def test_swin3d_matches_torchvision():
    tv = torchvision_or_skip("torchvision.models.video.swin_transformer")
    cfg = metrics.SWIN3D_PRESETS["tiny"]
    ref = tv.SwinTransformer3d(patch_size=list(cfg.patch_size), embed_dim=cfg.embed_dim, depths=list(cfg.depths),
                               num_heads=list(cfg.num_heads), window_size=list(cfg.window_size),
                               num_classes=cfg.num_classes).eval()
    sd = _randomise(ref)
    ours = metrics.Swin3D(cfg).eval()
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 8, 34, 30)
    with torch.no_grad():
        got, want = ours(x), ref(x)
    parity("swin3d", rel_err(got, want))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_swin3d_preprocess_follows_recipe():
    frames = np.full((49, 360, 480, 3), (10, 128, 250), np.uint8)
    x = metrics.swin3d_preprocess(frames)
    assert x.shape == (1, 3, 32, 224, 224)
    mean, std = torch.tensor(metrics.IMAGENET_MEAN), torch.tensor(metrics.IMAGENET_STD)
    want = (torch.tensor([10, 128, 250]) / 255 - mean) / std
    torch.testing.assert_close(x[0, :, 0, 100, 100], want.float())
    # short side to 256 (360x480 -> 256x341), centre crop: the crop starts at row 16, column 58
    grad = np.broadcast_to((np.arange(480)[None, None, :, None] // 2).astype(np.uint8), (2, 360, 480, 3)).copy()
    y = metrics.swin3d_preprocess(grad, num_frames=2)
    col = F.interpolate(torch.arange(480.0).view(1, 1, 1, 480) // 2, size=(1, 341), mode="bilinear",
                        align_corners=False)
    expect = (col.round()[0, 0, 0, 58:58 + 224] / 255 - 0.485) / 0.229
    torch.testing.assert_close(y[0, 0, 0, 0], expect)


def test_swin3d_preprocess_matches_torchvision_transforms():
    video = torchvision_or_skip("torchvision.models.video")
    frames = (np.random.default_rng(0).random((12, 90, 122, 3)) * 255).astype(np.uint8)
    ours = metrics.swin3d_preprocess(frames, num_frames=4, resize=64, crop=56)
    tf = video.Swin3D_B_Weights.KINETICS400_V1.transforms(resize_size=(64,), crop_size=(56, 56))
    ref = tf(torch.from_numpy(metrics.sample_frames(frames, 4)).permute(0, 3, 1, 2))[None]
    parity("swin3d-preprocess", rel_err(ours, ref))
    torch.testing.assert_close(ours, ref)


def test_sample_frames_as_stm_release():
    vid = np.arange(49)[:, None]
    assert metrics.sample_frames(vid, 32)[:, 0].tolist() == list(range(32))
    assert metrics.sample_frames(vid, 8)[:, 0].tolist() == [0, 6, 12, 18, 24, 30, 36, 42]
    assert metrics.sample_frames(np.arange(5)[:, None], 8)[:, 0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


# -----------------------------------------------------------------------------------------------
# RAFT


def test_corr_lookup_matches_brute_force():
    torch.manual_seed(0)
    f1, f2 = torch.randn(1, 5, 6, 8), torch.randn(1, 5, 6, 8)
    pyr = metrics.corr_pyramid(f1, f2, 2)
    vol = torch.einsum("cyx,cvu->yxvu", f1[0], f2[0]) / math.sqrt(5)  # (y1, x1, y2, x2)
    coords = torch.rand(1, 2, 6, 8) * torch.tensor([7.0, 5.0]).view(1, 2, 1, 1)
    out = metrics.corr_lookup(pyr, coords, radius=1)
    assert out.shape == (1, 2 * 9, 6, 8)

    def bilinear(img, x, y):  # zeros outside
        total = 0.0
        for yy, xx in itertools.product((math.floor(y), math.floor(y) + 1), (math.floor(x), math.floor(x) + 1)):
            if 0 <= yy < img.shape[0] and 0 <= xx < img.shape[1]:
                total += (1 - abs(x - xx)) * (1 - abs(y - yy)) * img[yy, xx].item()
        return total

    for (y, x) in [(0, 0), (2, 3), (5, 7), (4, 1)]:
        cx, cy = coords[0, :, y, x].tolist()
        level1 = F.avg_pool2d(vol[y, x][None, None], 2)[0, 0]
        for lvl, img in enumerate((vol[y, x], level1)):
            for i, dx in enumerate((-1, 0, 1)):
                for j, dy in enumerate((-1, 0, 1)):
                    want = bilinear(img, cx / 2 ** lvl + dx, cy / 2 ** lvl + dy)
                    assert abs(out[0, lvl * 9 + i * 3 + j, y, x].item() - want) < 1e-5


def test_convex_upsample_with_one_hot_mask_is_nearest():
    flow = torch.randn(1, 2, 3, 4)
    mask = torch.full((1, 9, 8, 8, 3, 4), -1e4)
    mask[:, 4] = 0  # all weight on the centre neighbour
    up = metrics.convex_upsample(flow, mask.view(1, 576, 3, 4))
    torch.testing.assert_close(up, 8 * F.interpolate(flow, scale_factor=8, mode="nearest"))


def test_raft_loads_official_pth_strictly(tmp_path):
    model = metrics.RAFT(metrics.RAFT_PRESETS["tiny"]).eval()
    sd = _randomise(model)
    assert "context_encoder.convnormrelu.1.running_var" in sd and "feature_encoder.layer2.0.downsample.0.weight" in sd
    assert "update_block.recurrent_block.convgru2.convq.bias" in sd and "mask_predictor.conv.weight" in sd
    torch.save(sd, tmp_path / "raft.pth")
    loaded = metrics.load_raft(tmp_path / "raft.pth", "tiny")
    a, b = torch.rand(1, 3, 32, 40), torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        out = loaded(a * 2 - 1, b * 2 - 1)
        torch.testing.assert_close(out, model(a * 2 - 1, b * 2 - 1))
        torch.testing.assert_close(loaded.flow(a, b), out)
    assert out.shape == (1, 2, 32, 40)
    full = _meta(metrics.RAFT, metrics.RAFT_PRESETS["raft_large"]).state_dict()
    assert sum(v.numel() for k, v in full.items() if "running" not in k and "num_batches" not in k) == 5257536


def test_raft_matches_torchvision():
    raft = torchvision_or_skip("torchvision.models.optical_flow.raft")
    c = metrics.RAFT_PRESETS["tiny"]
    ref = raft._raft(
        feature_encoder_layers=c.feature_layers, feature_encoder_block=raft.ResidualBlock,
        feature_encoder_norm_layer=torch.nn.InstanceNorm2d, context_encoder_layers=c.context_layers,
        context_encoder_block=raft.ResidualBlock, context_encoder_norm_layer=torch.nn.BatchNorm2d,
        corr_block_num_levels=c.corr_levels, corr_block_radius=c.corr_radius,
        motion_encoder_corr_layers=c.motion_corr_layers, motion_encoder_flow_layers=c.motion_flow_layers,
        motion_encoder_out_channels=c.motion_out, recurrent_block_hidden_state_size=c.hidden,
        recurrent_block_kernel_size=((1, 5), (5, 1)), recurrent_block_padding=((0, 2), (2, 0)),
        flow_head_hidden_size=c.flow_head_hidden, use_mask_predictor=False,
        mask_predictor=raft.MaskPredictor(in_channels=c.hidden, hidden_size=c.mask_hidden, multiplier=0.25)).eval()
    sd = _randomise(ref)
    ours = metrics.RAFT(c).eval()
    ours.load_state_dict(sd, strict=True)
    a, b = torch.rand(1, 3, 32, 40) * 2 - 1, torch.rand(1, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        got, want = ours(a, b), ref(a, b, num_flow_updates=c.iterations)[-1]
    parity("raft", rel_err(got, want))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# -----------------------------------------------------------------------------------------------
# classical flow


@pytest.mark.parametrize("shift", [(3, -2), (-6, 1), (0.5, 1.5)])
def test_classical_flow_recovers_a_global_shift(shift):
    torch.manual_seed(0)
    base = F.interpolate(torch.rand(1, 3, 48, 48), size=(192, 192), mode="bicubic", align_corners=False).clamp(0, 1)
    dx, dy = shift
    # frame 2 shows frame 1's content moved by (dx, dy): frame2(p + shift) = frame1(p)
    img2 = metrics._warp(base, torch.tensor([-dx, -dy]).float().view(1, 2, 1, 1).expand(1, 2, 192, 192))
    f = metrics.classical_flow((base[0, :, 32:160, 32:160] * 255).round().byte().permute(1, 2, 0),
                               (img2[0, :, 32:160, 32:160] * 255).round().byte().permute(1, 2, 0))
    err = (f[0] - torch.tensor([dx, dy]).float().view(2, 1, 1)).norm(dim=0)[16:-16, 16:-16]
    assert err.mean() < 0.1 and err.quantile(0.99) < 0.5  # pixels >= 16 px from the border


# -----------------------------------------------------------------------------------------------
# ViCLIP and the tokenizer


def _viclip_tiny(seed=0):
    model = metrics.ViCLIP(metrics.VICLIP_PRESETS["tiny"]).eval()
    return model, _randomise(model, seed)


def test_viclip_loads_safetensors_and_pth_strictly(tmp_path):
    model, sd = _viclip_tiny()
    for k in ("vision_encoder.conv1.weight", "vision_encoder.temporal_positional_embedding", "temp",
              "vision_encoder.transformer.resblocks.1.attn.in_proj_weight", "text_encoder.text_projection",
              "text_encoder.transformer.resblocks.0.mlp.c_fc.weight", "text_encoder.token_embedding.weight"):
        assert k in sd
    save_file(dict(sd), str(tmp_path / "model.safetensors"))
    torch.save({"model": sd}, tmp_path / "ViClip-InternVid-10M-FLT.pth")
    video, ids = torch.randn(2, 3, 4, 28, 28), torch.randint(0, 299, (2, 12))
    ids[:, 5] = 299  # end token (largest id)
    with torch.no_grad():
        want_v, want_t = model.encode_video(video), model.encode_text(ids)
        for f in ("model.safetensors", "ViClip-InternVid-10M-FLT.pth"):
            loaded = metrics.load_viclip(tmp_path / f, "tiny")
            torch.testing.assert_close(loaded.encode_video(video), want_v)
            torch.testing.assert_close(loaded.encode_text(ids), want_t)
    assert want_v.norm(dim=-1).sub(1).abs().max() < 1e-5
    full = _meta(metrics.ViCLIP, metrics.VICLIP_PRESETS["viclip_l14"])
    assert full.text_encoder.positional_embedding.shape == (32, 768)
    assert full.vision_encoder.positional_embedding.shape == (257, 1024)


def _mha_to_hf(sd, hf, n):
    """our tower's blocks (keys without the tower prefix) -> transformers CLIP encoder layers."""
    out = {}
    for i in range(n):
        a, b = f"transformer.resblocks.{i}.", f"{hf}.encoder.layers.{i}."
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[b + f"self_attn.{name}.weight"] = sd[a + "attn.in_proj_weight"].chunk(3)[j]
            out[b + f"self_attn.{name}.bias"] = sd[a + "attn.in_proj_bias"].chunk(3)[j]
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for s, t in pairs.items():
            for p in ("weight", "bias"):
                out[b + f"{t}.{p}"] = sd[a + f"{s}.{p}"]
    return out


def test_viclip_towers_match_transformers_clip():
    tr = pytest.importorskip("transformers")
    model, sd = _viclip_tiny(1)
    c = model.config
    # text tower == CLIPTextModelWithProjection
    tcfg = tr.CLIPTextConfig(vocab_size=c.vocab_size, hidden_size=c.text_width, intermediate_size=4 * c.text_width,
                             num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads,
                             max_position_embeddings=c.context_length, projection_dim=c.embed_dim,
                             hidden_act="quick_gelu", eos_token_id=c.vocab_size - 1, bos_token_id=c.vocab_size - 2)
    text = tr.CLIPTextModelWithProjection(tcfg).eval()
    t = {k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")}
    hf = _mha_to_hf(t, "text_model", c.text_layers)
    hf.update({"text_model.embeddings.token_embedding.weight": t["token_embedding.weight"],
               "text_model.embeddings.position_embedding.weight": t["positional_embedding"],
               "text_model.final_layer_norm.weight": t["ln_final.weight"],
               "text_model.final_layer_norm.bias": t["ln_final.bias"],
               "text_projection.weight": t["text_projection"].T})
    missing, unexpected = text.load_state_dict(hf, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    ids = torch.randint(0, c.vocab_size - 2, (2, c.context_length))
    ids[:, 0], ids[0, 7], ids[0, 8:], ids[1, -1] = c.vocab_size - 2, c.vocab_size - 1, 0, c.vocab_size - 1
    with torch.no_grad():
        want = F.normalize(text(input_ids=ids).text_embeds, dim=-1)
        got = model.encode_text(ids)
    parity("viclip", rel_err(got, want))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # vision tower on one frame == CLIPVisionModelWithProjection (ViCLIP adds the mean temporal embedding)
    vcfg = tr.CLIPVisionConfig(hidden_size=c.vision_width, intermediate_size=4 * c.vision_width,
                               num_hidden_layers=c.vision_layers, num_attention_heads=c.vision_heads,
                               image_size=c.image_size, patch_size=c.patch_size, projection_dim=c.embed_dim,
                               hidden_act="quick_gelu")
    vision = tr.CLIPVisionModelWithProjection(vcfg).eval()
    v = {k[len("vision_encoder."):]: val for k, val in sd.items() if k.startswith("vision_encoder.")}
    hf = _mha_to_hf(v, "vision_model", c.vision_layers)
    pos = v["positional_embedding"].clone()
    pos[1:] += v["temporal_positional_embedding"].mean(1)
    hf.update({"vision_model.embeddings.patch_embedding.weight": v["conv1.weight"][:, :, 0],
               "vision_model.embeddings.class_embedding": v["class_embedding"],
               "vision_model.embeddings.position_embedding.weight": pos,
               "vision_model.pre_layrnorm.weight": v["ln_pre.weight"],
               "vision_model.pre_layrnorm.bias": v["ln_pre.bias"],
               "vision_model.post_layernorm.weight": v["ln_post.weight"],
               "vision_model.post_layernorm.bias": v["ln_post.bias"],
               "visual_projection.weight": v["proj"].T})
    missing, unexpected = vision.load_state_dict(hf, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    img = torch.randn(2, 3, c.image_size, c.image_size)
    with torch.no_grad():
        want = F.normalize(vision(pixel_values=img).image_embeds, dim=-1)
        got = model.encode_video(img[:, :, None])
    parity("viclip", rel_err(got, want))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_viclip_preprocess_shape_and_norm():
    x = metrics.viclip_preprocess(np.full((49, 48, 64, 3), 255, np.uint8))
    assert x.shape == (1, 3, 8, 224, 224)
    mean, std = torch.tensor(metrics.IMAGENET_MEAN), torch.tensor(metrics.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 0, 0, 0], ((1 - mean) / std).float())


MERGES = ["t h", "th e</w>", "a n", "an d</w>", "d o", "do g</w>", "c a", "ca t</w>", "r u", "ru n", "run s</w>",
          "i n", "in g</w>", "n n", "run n", "' s</w>", "a t", "c at", "t o", "to y</w>"]


@pytest.fixture
def bpe_files(tmp_path):
    with gzip.open(tmp_path / "bpe.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(["#version: 0.2"] + MERGES) + "\n")
    return tmp_path / "bpe.txt.gz"


def test_tokenizer_matches_transformers(bpe_files):
    tr = pytest.importorskip("transformers")
    ours = metrics.CLIPTokenizer(bpe_files)
    ref = tr.CLIPTokenizer(vocab=dict(ours.encoder), merges=[tuple(m.split()) for m in MERGES])
    texts = ["The dog runs!", "a  cat\tand THE dog", "running 123 cats", "it's a dog's toy", "Ünïcödé über-cats_x",
             "the!!", "x"]
    for t in texts:
        assert [ours.sot] + ours.encode(t) + [ours.eot] == ref(t)["input_ids"], t
    parity("clip-tokenizer")


def test_tokenizer_without_regex_package_splits_the_same(bpe_files, monkeypatch):
    full = metrics.CLIPTokenizer(bpe_files)
    monkeypatch.setitem(__import__("sys").modules, "regex", None)  # import regex -> ImportError
    plain = metrics.CLIPTokenizer(bpe_files)
    assert plain.pattern.__class__.__module__ == "re"
    for t in ["The dog's 123 toy!!", "über_cats x-_y", "a\tb  c", "it'll RUN"]:
        assert plain.encode(t) == full.encode(t), t


def test_tokenizer_pads_truncates_and_cleans(bpe_files):
    tok = metrics.CLIPTokenizer(bpe_files)
    ids = tok(["the dog", "the dog " * 20], context_length=8)
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    assert ids[0].tolist()[:4] == [tok.sot, tok.encoder["the</w>"], tok.encoder["dog</w>"], tok.eot]
    assert ids[0, 4:].eq(0).all()
    assert ids[1, 0] == tok.sot and ids[1, -1] == tok.eot and ids[1].argmax() == 7
    assert tok.encode("the &amp;amp; dog") == tok.encode("the & dog")  # html unescaped twice
    assert len(tok.encoder) == 512 + len(MERGES) + 2


# -----------------------------------------------------------------------------------------------
# loading errors


def test_loading_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        metrics.load_swin3d(tmp_path / "nothere.pth", "tiny")
    torch.save(metrics.RAFT(metrics.RAFT_PRESETS["tiny"]).state_dict(), tmp_path / "raft.pth")
    with pytest.raises(KeyError, match="raft.pth"):
        metrics.load_swin3d(tmp_path / "raft.pth", "tiny")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        metrics.load_viclip(tmp_path / "bad.safetensors", "tiny")
    with pytest.raises(FileNotFoundError, match="bpe"):
        metrics.CLIPTokenizer(tmp_path / "bpe.txt.gz")


# -----------------------------------------------------------------------------------------------
# metric arithmetic


def test_cosine_and_action_kl_by_hand():
    assert metrics.cosine(torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 1.0]])) == pytest.approx(1 / math.sqrt(2))
    ref, gen = torch.tensor([0.0, math.log(3.0)]), torch.tensor([0.0, 0.0])  # p = (1/4, 3/4), q = (1/2, 1/2)
    want = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert metrics.action_kl(ref, gen) == pytest.approx(want, abs=1e-6)
    assert metrics.action_kl(ref, ref) == pytest.approx(0, abs=1e-7)


def test_flow_mse_and_background_pairs_by_hand():
    a, b = torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)
    b[0, 0, 0], b[1, 0, 0], b[0, 1, 1] = 1.0, 2.0, 3.0  # errors per pixel: (0,0) 1+4=5, (1,1) 9
    assert metrics.flow_mse(a, b) == pytest.approx(14 / 4)
    valid = torch.tensor([[True, False], [False, False]])
    assert metrics.flow_mse(a, b, valid) == pytest.approx(5.0)
    assert math.isnan(metrics.flow_mse(a, b, torch.zeros(2, 2, dtype=torch.bool)))
    # frames are numbers; the stub flow of a pair is (next - this) everywhere; pairs t = 0, 4, 8 of 10 frames
    ref, gen = np.arange(10.0), np.arange(10.0) ** 2
    flow_fn = lambda x, y: torch.full((1, 2, 2, 2), float(y - x))
    mask = np.zeros((10, 2, 2), bool)
    mask[8] = True  # pair 8 has no background -> skipped
    want = np.mean([2 * (1 - (2 * t + 1)) ** 2 for t in (0, 4)])
    assert metrics.background_flow_mse(ref, gen, mask, flow_fn, stride=4) == pytest.approx(want)


def test_masked_psnr_and_ssim():
    a = np.zeros((2, 16, 16, 3), np.uint8)
    b = a.copy()
    b[:, :8] = 10
    mask = np.zeros((2, 16, 16), bool)
    mask[:, 8:] = True
    assert metrics.masked_psnr(a, b, mask) == math.inf
    assert metrics.masked_psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 50))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    assert metrics.masked_ssim(x, x) == pytest.approx(1.0)
    y = np.clip(x.astype(int) + rng.integers(-40, 41, x.shape), 0, 255).astype(np.uint8)
    y2 = y.copy()
    y2[:, :16] = x[:, :16]  # identical in rows 0-15: SSIM is 1 where the 11x11 window stays inside them
    rows = np.broadcast_to((np.arange(32) < 10)[None, :, None], (1, 32, 32))
    assert metrics.masked_ssim(x, y2, rows) == pytest.approx(1.0, abs=1e-6)
    low = np.broadcast_to((np.arange(32) >= 22)[None, :, None], (1, 32, 32))
    assert metrics.masked_ssim(x, y2, low) == pytest.approx(metrics.masked_ssim(x, y, low))
    assert metrics.masked_ssim(x, y, low) < 0.99
    assert 0 < metrics.masked_ssim(x, y) < 0.99
