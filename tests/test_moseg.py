"""others/moseg.py against SegAnyMo's official code (goldens made by tests/goldens/make_moseg.py), PIL and tiny
transformers models. python -m pytest -q tests/test_moseg.py"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import rel, single_thread
from figures import parity
from others import moseg

one_thread = single_thread()
GOLD = Path(__file__).parent / "goldens"


@pytest.fixture(scope="module")
def clf():
    return load_file(str(GOLD / "moseg_classifier.safetensors"))


def tiny_classifier(g):
    model = moseg.MotionClassifier(point_dim=16, point_heads=2, point_ff=32, point_depth=2)
    model.load_state_dict({k[6:]: v for k, v in g.items() if k.startswith("model.")}, strict=True)
    return model.eval()


def test_full_config_has_the_checkpoint_keys():
    """Our real-config model has exactly moseg.pth's keys and shapes (official model on the meta device)."""
    want = json.loads((GOLD / "moseg_keys.json").read_text())
    with torch.device("meta"):
        model = moseg.MotionClassifier()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == 3443809


def test_load_moseg(tmp_path):
    src = moseg.MotionClassifier()
    torch.save({"model_state_dict": src.state_dict(), "epoch": 5}, tmp_path / "moseg.pth")
    model = moseg.load_moseg(str(tmp_path / "moseg.pth"))
    assert not model.training
    for (k, a), b in zip(src.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_classifier_matches_official(clf):
    """The network alone, fed the batch the official inference built: depth lookup exact, probabilities 1e-5."""
    model = tiny_classifier(clf)
    traj = clf["batch.traj"][0].permute(1, 2, 0)                          # (1, 2, N, T) -> (N, T, 2)
    disp = moseg.depth_at_tracks(clf["batch.depth"][0, 0].permute(2, 0, 1), traj)
    assert torch.equal(disp, clf["out.disp"])
    pad = clf["batch.mask"][0, 0] > 0.5
    p = model(traj, disp, pad, clf["batch.visib_value"][0, 0], clf["batch.confi_value"][0, 0],
              clf["batch.dino"][0, :, :, 0].t())
    parity("moseg", rel(p, clf["out.probs"]))
    assert rel(p, clf["out.probs"]) < 1e-5


def test_track_masked_everywhere_keeps_its_first_step(clf):
    """The original unmasks step 0 of a track with no visible step (else its time attention is all masked)."""
    model = tiny_classifier(clf)
    g = torch.Generator().manual_seed(0)
    N, T = 6, 5
    args = [torch.rand(N, T, 2, generator=g) * 2 - 1, torch.rand(N, T, generator=g)]
    pad = torch.rand(N, T, generator=g) > 0.6
    pad[:, 0], pad[2] = False, True
    rest = [torch.rand(N, T, generator=g), torch.rand(N, T, generator=g), torch.randn(N, 768, generator=g)]
    with torch.no_grad():
        p = model(*args, pad, *rest)
        pad[2, 0] = False
        q = model(*args, pad, *rest)
    assert torch.isfinite(p).all() and torch.equal(p, q)


def test_full_config_on_a_49_frame_clip():
    """Real-size model and clip geometry (random weights): one probability per track, track order does not matter."""
    torch.manual_seed(0)
    model = moseg.MotionClassifier().eval()
    N, T, H, W = 48, 49, 480, 720
    g = torch.Generator().manual_seed(1)
    tracks = torch.rand(N, T, 2, generator=g) * torch.tensor([W, H])
    visible, conf, vis = torch.rand(N, T, generator=g) > 0.3, torch.rand(N, T, generator=g), torch.rand(N, T)
    depth, dino, qt = torch.rand(T, H, W, generator=g), torch.randn(5, 69, 103, 768).half(), torch.arange(N) % 5 * 10
    p = moseg.classify(model, tracks, visible, conf, depth, dino, H, W, visibility=vis, query_t=qt)
    assert p.shape == (N,) and ((p > 0) & (p < 1)).all()
    perm = torch.randperm(N, generator=g)
    q = moseg.classify(model, tracks[perm], visible[perm], conf[perm], depth, dino, H, W, visibility=vis[perm],
                       query_t=qt[perm])
    assert rel(q, p[perm]) < 1e-5


def release_inputs(clf):
    visible, visibility, confidence = moseg.tapir_scores(clf["in.occlusion"], clf["in.expected_dist"])
    idx = moseg.select_tracks(clf["in.tracks"], visibility, confidence, clf["in.query_t"], keep=0.5,
                              cap=int(clf["in.cap"]), seed=42)
    return idx, visible, visibility, confidence


def test_select_tracks_matches_release(clf):
    """Same seeded draws, same order, invisible tracks dropped, the empty frame 7 given its most confident track."""
    idx, visible, _, confidence = release_inputs(clf)
    assert torch.equal(idx, clf["out.ids"])
    assert torch.equal(confidence[idx], clf["out.confidence"])
    assert not visible[idx][:, 7].any()
    fixed = moseg.frame_visible(visible[idx], confidence[idx])
    assert torch.equal(fixed, clf["out.visible"])
    assert fixed.any(0).all()


def test_classify_matches_release(clf):
    """Tracks to moving probabilities as the release builds the inputs (normalisation, depth quirk, DINO pick)."""
    model = tiny_classifier(clf)
    idx, visible, visibility, confidence = release_inputs(clf)
    H, W = clf["in.hw"].tolist()
    p = moseg.classify(model, clf["in.tracks"][idx], visible[idx], confidence[idx], clf["in.depth"], clf["in.dino"],
                       H, W, visibility=visibility[idx], query_t=clf["in.query_t"][idx], query_frames=[0, 10])
    assert rel(p, clf["out.probs"]) < 1e-5
    moving = moseg.moving_tracks(p, confidence[idx])
    assert torch.equal(moving, clf["out.moving"])
    assert torch.equal(moseg.sam2_visible(visible[idx], confidence[idx]), clf["out.sam2_visible"])


def test_moving_tracks_thresholds():
    p = torch.full((40,), 0.5)
    p[:12] = 0.96
    assert moseg.moving_tracks(p).sum() == 12                      # 0.95 already leaves >= 10
    p[:12] = torch.tensor([0.96] * 9 + [0.94] * 3)
    assert moseg.moving_tracks(p).sum() == 12                      # 0.95 leaves 9: 0.93 is taken
    p[:12] = torch.tensor([0.9] * 10 + [0.86] * 2)                 # strictly above: 10 at 0.9 do not pass 0.9
    assert moseg.moving_tracks(p).sum() == 12
    p = torch.linspace(0.1, 0.69, 40)
    assert torch.equal(torch.nonzero(moseg.moving_tracks(p))[:, 0], torch.tensor([37, 38, 39]))  # none over 0.7
    assert moseg.moving_tracks(torch.tensor([0.2, 0.1])).sum() == 2


def test_sam2_points_need_confidence():
    visible = torch.tensor([[True, False], [True, False]])
    confidence = torch.tensor([[0.95, 0.3], [0.9, 0.92]])
    # frame 1 has no visible track: the most confident (track 1) counts; track 1 frame 0 has exactly 0.9 (not > 0.9)
    assert moseg.sam2_visible(visible, confidence).tolist() == [[True, False], [False, True]]


# ---- DINOv2 --------------------------------------------------------------------------------------------------------

def dinov2_from_official(sd):
    """The tiny official ViT's weights in transformers' Dinov2Model (whichever naming it uses)."""
    from transformers import Dinov2Config, Dinov2Model
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, patch_size=14,
                       image_size=70, layerscale_value=1.0, qkv_bias=True)
    model = Dinov2Model(cfg).eval()
    names = set(model.state_dict())
    new = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
           "embeddings.mask_token": sd["mask_token"].reshape(model.embeddings.mask_token.shape),
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    v5 = "encoder.layer.0.attention.k_proj.weight" in names
    for i in range(2):
        o, n = f"blocks.{i}.", f"encoder.layer.{i}."
        att = n + "attention." if v5 else n + "attention.attention."
        qkv = zip(("q_proj", "k_proj", "v_proj") if v5 else ("query", "key", "value"),
                  sd[o + "attn.qkv.weight"].chunk(3), sd[o + "attn.qkv.bias"].chunk(3))
        for name, w, b in qkv:
            new[att + name + ".weight"], new[att + name + ".bias"] = w, b
        out = n + ("attention.o_proj." if v5 else "attention.output.dense.")
        new[out + "weight"], new[out + "bias"] = sd[o + "attn.proj.weight"], sd[o + "attn.proj.bias"]
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            new[n + b + ".weight"], new[n + b + ".bias"] = sd[o + a + ".weight"], sd[o + a + ".bias"]
        new[n + "layer_scale1.lambda1"], new[n + "layer_scale2.lambda1"] = sd[o + "ls1.gamma"], sd[o + "ls2.gamma"]
    model.load_state_dict(new, strict=True)
    return model


def test_dino_keys_match_official():
    """transformers' Dinov2Model run our way (stride 7, +0.1 pos-embedding scale, last block's keys head-minor)
    against dino_feat.py's ViTExtractor on the official dinov2 ViT."""
    pytest.importorskip("transformers")
    g = load_file(str(GOLD / "moseg_dino.safetensors"))
    model = dinov2_from_official({k[9:]: v for k, v in g.items() if k.startswith("official.")})
    x = moseg.dino_input(g["frames"])
    assert rel(x, g["pixels"]) < 1e-5
    with torch.no_grad():
        k = moseg.dino_keys(model, g["pixels"])
    assert k.shape == g["keys"].shape == (2, 5, 9, 32)
    parity("dino-keys", rel(k, g["keys"]))
    assert rel(k, g["keys"]) < 1e-5
    f = moseg.dino_features(model, g["frames"].numpy())
    assert f.dtype == torch.float16 and rel(f.float(), g["keys"]) < 1e-3


def test_dino_grid_at_480x720():
    """490 x 728 at stride 7 -> the 69 x 103 grid; the +0.1 offset is what makes scale_factor land on it."""
    x = moseg.dino_input(np.zeros((1, 480, 720, 3), np.uint8))
    assert x.shape == (1, 3, 490, 728)
    pos = torch.randn(1, 1 + 37 * 37, 4)
    assert moseg.dino_pos_embed(pos, 69, 103, 490, 728).shape == (1, 1 + 69 * 103, 4)


# ---- Depth ---------------------------------------------------------------------------------------------------------

def pil_clip(disp):
    """The release's recipe, verbatim in effect: uint16 by min-max, PIL convert('L'), min-max normalise."""
    from PIL import Image
    lo, hi = disp.min(), disp.max()
    u16 = (65535 * (disp - lo) / (hi - lo)).astype(np.uint16) if hi - lo > np.finfo("float").eps else \
        np.zeros(disp.shape, np.uint16)
    d8 = np.array(Image.fromarray(u16).convert("L")).astype(np.float32)
    return (d8 - d8.min()) / max(d8.max() - d8.min(), 1e-8)


def test_depth_clip_matches_pil():
    pytest.importorskip("PIL")
    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0, 1, 64)[:, None] * torch.linspace(0.5, 1, 48)[None] * 7 + 3.0    # a smooth disparity
    noisy = torch.rand(64, 48, generator=g) ** 6 * 5                       # many values near the minimum
    for disp in (smooth, noisy, torch.full((8, 8), 2.0)):
        want = pil_clip(disp.numpy())
        got = moseg.depth_clip(disp)
        assert np.array_equal(got.numpy(), want)
    assert (moseg.depth_clip(smooth) == 1).float().mean() > 0.95          # nearly everything saturates


def test_dpt_size():
    assert moseg.dpt_size(480, 720) == (518, 784)
    assert moseg.dpt_size(720, 480) == (784, 518)
    assert moseg.dpt_size(1080, 1920) == (518, 924)


def tiny_depth_model():
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    bc = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                      image_size=28, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=bc, neck_hidden_sizes=[8, 16], reassemble_hidden_size=16,
                              fusion_hidden_size=8, head_hidden_size=8, reassemble_factors=[2, 1], patch_size=14)
    torch.manual_seed(0)
    return DepthAnythingForDepthEstimation(cfg).eval()


def test_pil_bicubic_is_pil():
    """Bit-exact with PIL's bicubic resize, up and down, one axis or both (noise: the worst case for rounding)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    sizes = [((30, 40), (42, 56)), ((50, 70), (28, 42)), ((37, 53), (37, 20)), ((20, 30), (61, 30)),
             ((30, 40), (28, 42)), ((60, 40), (20, 30))]                   # the last two: height first
    for (H, W), (h, w) in sizes:
        a = rng.integers(0, 256, (2, H, W, 3)).astype(np.uint8)
        want = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in a])
        got = moseg.pil_bicubic(torch.from_numpy(a).permute(0, 3, 1, 2), h, w).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(got, want), (H, W, h, w)


def test_depth_maps_follow_the_pipeline():
    """Against the release's path done with PIL: DPT resize (PIL bicubic on uint8), ImageNet norm, model, torch
    bicubic back, uint16 PNG read as 'L' and min-max normalised."""
    pytest.importorskip("transformers")
    from PIL import Image
    model = tiny_depth_model()
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (2, 30, 40, 3), generator=g, dtype=torch.uint8).numpy()
    h, w = moseg.dpt_size(30, 40, 42)
    pil = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in video])
    x = torch.from_numpy(pil).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(moseg.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(moseg.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        d = model(pixel_values=x).predicted_depth
    d = torch.nn.functional.interpolate(d[:, None], size=(30, 40), mode="bicubic", align_corners=False)[:, 0]
    want = torch.stack([torch.from_numpy(pil_clip(f.numpy())) for f in d])
    got = moseg.depth_maps(model, video, size=42)
    assert got.shape == (2, 30, 40) and got.dtype == torch.float32
    assert moseg.depth_agreement(got, want) == 1.0
