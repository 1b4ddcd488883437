"""toy.py: the toy world renders exact layers and answers (the ones evaluate.py scores with), writes test
triplets, and builds a base-model folder our loaders (and diffusers' scheduler) read; the shipped one reconstructs."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plumbing.video import dilate, read_video, to_tensor
import text
import toy
import vae as V

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "assets" / "toy-base"


def base(*argv):
    """`python toy.py base ARGV...`, in process."""
    return toy.main(toy.parser.parse_args(["base", *map(str, argv)]))


def test_toy_world_truth():
    for seed in range(20):
        c = toy.clip(seed)
        kind = c["sprite"]["kind"]
        y0, y1 = c["scene"]["bands"][toy.KINDS[kind]]
        rows = np.nonzero(c["mask"].any(axis=(0, 2)))[0]
        centre = np.nonzero(c["mask"])[1].mean()
        assert y0 <= centre < y1, (seed, kind)              # the subject sits in the band it belongs to
        assert 0.003 < c["mask"].mean() < 0.2 and len(rows) > 3
        # lit by the scene: the subject's colour is its base colour times the tint (up to shading)
        col = c["video"][c["mask"]].astype(float).mean(0)
        expect = np.clip(np.array(c["sprite"]["rgb"]) * c["scene"]["tint"], 0, 255)
        assert np.abs(col / max(col.max(), 1) - expect / max(expect.max(), 1)).max() < 0.2
        # outside the subject only the shadow differs: measured from the pixels, a shadow pixel is the bg darkened by
        # the gain (whatever geometry drew it); nothing else outside the mask may change, and birds cast none
        differs = (c["video"] != c["bg"]).any(-1) & ~c["mask"]
        darkened = (np.abs(c["video"].astype(float) - np.round(c["bg"] * toy.SHADOW_GAIN)) <= 1).all(-1)
        assert (darkened | ~differs).all(), seed
        assert (differs.any() if kind != "bird" else not differs.any()), (seed, kind)
    a, b = toy.clip(1), toy.clip(1)
    assert np.array_equal(a["video"], b["video"])           # a pure function of the seed


def test_exact_answers_are_the_renderers():
    """toy.expected_shadow / toy.sprite_model, placed at the true track, give exactly what render drew."""
    T, H, W = 9, 64, 64
    checked = set()
    for seed in range(12):
        c = toy.clip(seed, T, H, W)
        sp, scene = c["sprite"], c["scene"]
        xs, ys = toy.sprite_track(sp, T)
        _, _, _, mask, shadow = toy.render(scene, sp, T, H, W)
        ell = toy.expected_shadow(sp["kind"], np.stack([xs, ys], 1), sp["size"], H, W)
        # the shadow measured from the pixels alone (outside the sprite, darkened by the gain), not from any geometry
        # code: toy.expected_shadow, which evaluate.py scores with, must predict it
        v, bg = c["video"].astype(float), c["bg"].astype(float)
        seen = ((v != bg).any(-1) & (np.abs(v - np.round(bg * toy.SHADOW_GAIN)) <= 1).all(-1)) & ~mask
        if sp["kind"] == "bird":
            assert not shadow.any() and not seen.any() and ell.any()   # birds cast none; ell is what one would cover
        else:
            assert np.array_equal(ell & ~mask & (bg.max(-1) > 1), seen), seed    # where a darkening can show
            assert np.array_equal(ell, shadow), seed       # pixel for pixel, frame for frame
            # the shadow halves the surface's brightness there, and nothing else changes outside the sprite
            v, bg = c["video"].astype(float), c["bg"].astype(float)
            assert np.abs(v[shadow] - np.round(bg[shadow] * toy.SHADOW_GAIN)).max() <= 1
        offset, (col,) = toy.sprite_model(sp["kind"], sp["size"], sp["rgb"], [scene["tint"]])
        cy, cx = np.nonzero(mask)[1:]
        assert np.abs([cx.mean() - xs.mean() - offset[0], cy.mean() - ys.mean() - offset[1]]).max() < 0.2, seed
        assert np.abs(c["video"][mask].mean(0) - col).max() < 1.5, seed  # the exact mean colour, up to rasterisation
        checked.add(sp["kind"])
    assert checked == {"bird", "boat", "car"}
    nan = np.full((2, 2), np.nan)
    assert not toy.expected_shadow("car", nan, 10.0, 16, 16).any()     # no subject found: no shadow expected


def test_triplets(tmp_path):
    lines = toy.write_triplets(tmp_path / "tri", 3)
    back = [json.loads(line) for line in (tmp_path / "tri" / "triplets.jsonl").read_text().splitlines()]
    assert back == json.loads(json.dumps(lines)) and len(back) == 3
    t = back[0]
    ref = read_video(tmp_path / "tri" / t["reference"])[0]
    fg = read_video(tmp_path / "tri" / t["fg"])[0]
    assert ref.shape == fg.shape == (9, 64, 64, 3)
    assert t["expect"]["allowed_rows"][0] < t["expect"]["allowed_rows"][1]
    assert set(t["expect"]) >= {"kind", "colour", "tint", "shadow", "track"}
    a = toy.clip(10_000, 9, 64, 64)                                   # triplet 0 = the sprite of clip 10000 ...
    assert t["expect"]["track"] == [[float(x), float(y)] for x, y in zip(*toy.sprite_track(a["sprite"], 9))]
    assert t["expect"]["tint"] == list(toy.clip(10_001)["scene"]["tint"])   # ... under the light of clip 10001


def test_ceiling(tmp_path, tiny_base):
    """toy.py ceiling: a results folder whose results are the triplets' correct composites, exact or through a base's
    VAE (what evaluate.py scores as the ceilings of docs/toy-world.md); resumable, a triplet without a reference
    skipped with its reason. (Mutation tried: decoding the encoder's mean without the VAE -> the round trip equals
    the exact composite and the first check fails.)"""
    toy.write_triplets(tmp_path / "t", 2)
    lines = (tmp_path / "t" / "triplets.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad.pop("reference")
    (tmp_path / "t" / "triplets.jsonl").write_text(lines[0] + "\n" + json.dumps({**bad, "id": "noref"}) + "\n")
    run = lambda out, *vae: toy.main(toy.parser.parse_args(["ceiling", "--triplets", str(tmp_path / "t" /
                                                             "triplets.jsonl"), "--out", str(out), *vae]))
    exact, trip = run(tmp_path / "exact"), run(tmp_path / "vae", "--vae", str(tiny_base))
    assert [r["status"] for r in exact] == ["ok", "error"] and "no reference" in exact[1]["error"]
    ref = read_video(tmp_path / "t" / "t0000" / "reference.mp4")[0].astype(float)
    got = read_video(exact[0]["result"])[0].astype(float)
    assert np.abs(got - ref).mean() < 2.0                                  # the composite itself, re-encoded
    m = V.VAE.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        want = (m.decode(m.encode(to_tensor(ref.astype(np.uint8))[None])[0])[0].clamp(-1, 1) + 1) * 127.5
    want = want.permute(1, 2, 3, 0).numpy()
    rt = read_video(trip[0]["result"])[0].astype(float)
    assert np.abs(rt - want).mean() < 6.0 and np.abs(rt - ref).mean() > 30     # through the (random) VAE: measured
    #                                                                          3.6 (its noisy output re-encoded) / 54
    assert trip[0]["settings"] == {"ceiling": "vae round trip", "base": str(Path(tiny_base).resolve())}
    stamp = (tmp_path / "vae" / "t0000.mp4").stat().st_mtime_ns
    assert [r["status"] for r in run(tmp_path / "vae", "--vae", str(tiny_base))] == ["ok", "error"]
    assert (tmp_path / "vae" / "t0000.mp4").stat().st_mtime_ns == stamp   # done work is kept
    with pytest.raises(toy.BadInput, match="--vae .*not a base model folder"):
        run(tmp_path / "x", "--vae", str(tmp_path))


def test_novel_colour_and_light(tmp_path):
    """--colour / --tint change the sprite's colour / the scene's light and nothing else a clip draws; a novel one
    never appears in the usual world; triplets expect the new colour under the new light."""
    for seed in (3, 41):
        a, b = toy.clip(seed), toy.clip(seed, colour="cyan", tint="under violet light")
        assert np.array_equal(a["mask"], b["mask"]) and a["sprite"]["x0"] == b["sprite"]["x0"]
        assert b["sprite"]["rgb"] == toy.NOVEL_COLOURS["cyan"] and b["scene"]["tint"] == (1.1, 0.7, 1.3)
        assert b["caption"].startswith("a cyan ") and b["caption"].endswith("under violet light")
        lit = b["video"][b["mask"]].astype(float).mean(0)                # the sprite is drawn in the new colour
        assert lit[2] > lit[0] + 60 and not np.array_equal(a["video"], b["video"])
    assert not set(toy.NOVEL_COLOURS) & set(toy.COLOURS) and not set(toy.NOVEL_TINTS) & set(toy.TINTS)
    assert all(toy.clip(s)["sprite"]["colour"] in toy.COLOURS for s in range(30))
    r = toy.main(toy.parser.parse_args(["triplets", "--out", str(tmp_path / "t"), "--n", "2", "--colour", "cyan",
                                        "--tint", "under violet light"]))
    assert all(t["expect"]["rgb"] == [40, 200, 210] and t["expect"]["tint"] == [1.1, 0.7, 1.3]
               for t in json.loads(json.dumps(r)))
    base = toy.write_triplets(tmp_path / "u", 2)                      # the same triplets otherwise
    assert [t["expect"]["track"] for t in base] == [t["expect"]["track"] for t in r]


@pytest.mark.slow
def test_cli(tmp_path):
    """`python toy.py data|triplets` write the dataset lists and the triplets with their references."""
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], cwd=ROOT, capture_output=True, text=True)
    for cmd in (["toy.py", "data", "--clips", "2"], ["toy.py", "triplets", "--n", "1"]):
        r = run(*cmd, "--out", tmp_path / "new")
        assert r.returncode == 0, r.stderr
    assert len((tmp_path / "new" / "prompts.txt").read_text().splitlines()) == 2
    assert read_video(tmp_path / "new" / "t0000" / "reference.mp4")[0].shape[0] >= 1


def test_vae_forward_is_encode_then_decode_with_grad():
    """VAE.forward (the toy VAE's training pass) sees the same time windows as encode / decode, with autograd."""
    torch.manual_seed(0)
    vae = V.VAE(V.PRESETS["toy"])
    x = toy.batch([3], 17, 32, 32)                                       # 17 frames: two windows of 9 + 8
    torch.manual_seed(1)
    y, mean, logvar = vae(x)
    assert y.shape == x.shape and y.requires_grad and mean.requires_grad
    m0, lv0 = vae.encode(x, chunk_frames=8)                              # inference: no graph, chunked calls
    assert not m0.requires_grad and torch.equal(mean.detach(), m0) and torch.equal(logvar.detach(), lv0)
    torch.manual_seed(1)
    z = m0 + (0.5 * lv0).exp() * torch.randn_like(m0)
    assert torch.allclose(y.detach(), vae.decode(z), atol=1e-6)
    y.square().mean().backward()
    assert vae.encoder.conv_in.conv.weight.grad.abs().sum() > 0           # the gradient reaches the encoder


def check_folder(out):
    assert json.loads((out / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKLCogVideoX"]
    tok = text.Tokenizer.from_pretrained(out)
    enc = text.T5Encoder.from_pretrained(out)
    vae = V.VAE.from_pretrained(out)
    assert enc.config.vocab_size == tok.sp.get_piece_size() + 100  # sentinels appended, as T5
    caption = toy.clip(0)["caption"]
    ids = tok([caption, "a purple boat sailing on the water at night"])
    assert ids.shape == (2, 226) and tok.sp.unk_id() not in ids[0].tolist()  # every toy word is in the vocab
    with torch.no_grad():
        emb = enc(ids[:, :32])
    assert emb.shape == (2, 32, 64) and not torch.allclose(emb[0], emb[1])  # captions map apart
    x = to_tensor(toy.clip(123)["video"])[None]                    # (1, 3, 9, 64, 64)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (1, 16, 3, 16, 16)
    sf = json.loads((out / "vae" / "config.json").read_text())["scaling_factor"]
    assert sf == vae.config.scaling_factor and sf != 1.0 and math.isfinite(sf) and sf > 0
    from diffusers import CogVideoXDDIMScheduler
    sch = CogVideoXDDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert sch.config.prediction_type == "v_prediction" and sch.config.rescale_betas_zero_snr
    assert sch.config.timestep_spacing == "trailing" and sch.alphas_cumprod[-1] < 1e-6  # zero terminal SNR
    return vae, x


@pytest.mark.slow
def test_build_tiny(tmp_path):
    out = tmp_path / "base"
    r = base("--out", out, "--vae-steps", "2", "--batch", "1", "--scale-clips", "4", "--eval-clips", "2")
    assert math.isfinite(r["psnr"]) and r["scaling_factor"] > 0
    check_folder(out)
    assert not [p for p in tmp_path.iterdir() if p.name != "base"]  # the temp build folder was renamed, not left
    base("--out", out, "--vae-steps", "1", "--batch", "1", "--scale-clips", "2", "--eval-clips", "1",
         "--vae-channels", "8", "16", "16")
    assert len(list(tmp_path.iterdir())) == 1                                          # replaced in place
    assert json.loads((out / "vae" / "config.json").read_text())["block_out_channels"] == [8, 16, 16]
    assert V.VAE.from_pretrained(out).encoder.conv_out.conv.weight.shape[1] == 16       # the widths took effect


@pytest.mark.skipif(not (SHIPPED / "model_index.json").exists(), reason="assets/toy-base not built")
def test_shipped_base():
    vae, x = check_folder(SHIPPED)
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) < 5e6
    x, m = toy.batch([123], 9, 64, 64, masks=True)
    with torch.no_grad():
        y = vae.decode(vae.encode(x)[0])
    # an untrained VAE scores ~12 dB; the shipped one scores 28.2 dB on this clip (29.9 dB mean on 32 held-out clips)
    assert toy.psnr(y, x) > 26
    # ... 19.3 dB on the sprite and 3 px around it (toy.py --sprite-margin): a base weighted on the sprite pixels
    # only learned to dilate them (12.5 dB here; the bird's chevron came back as a dome) ...
    assert toy.psnr(y, x, dilate(m, 3)) > 17
    # ... and 17.3 dB on the sprite's pixels alone: without --sprite-weight a VAE of this size scored 8.0 here
    # (the sprite blurred into the background), and a composer cannot draw what its VAE cannot
    assert toy.psnr(y, x, m) > 15


@pytest.mark.slow
def test_vae_training_resumes_exactly(tmp_path, monkeypatch):
    """A build killed mid-way and rerun with --resume ends with the same VAE as one straight run."""
    from safetensors.torch import load_file
    common = ["--vae-steps", "4", "--ckpt-every", "2", "--batch", "1", "--scale-clips", "2", "--eval-clips", "1",
              "--minutes", "1000", "--vae-channels", "8", "8", "16"]
    base("--out", tmp_path / "straight", *common)
    calls, batch = [0], toy.batch

    def dying(*args, **kw):                       # the 3rd training batch = step 2, just after its checkpoint
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return batch(*args, **kw)
    monkeypatch.setattr(toy, "batch", dying)
    with pytest.raises(KeyboardInterrupt):
        base("--out", tmp_path / "killed", *common)
    monkeypatch.setattr(toy, "batch", batch)
    ckpt = tmp_path / "killed.ckpt.pt"
    assert ckpt.exists() and not (tmp_path / "killed").exists()     # nothing half-written at --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.ckpt.pt", "straight"]   # no temp folder left
    # a resume with other widths is refused with a message, not a shape error from deep inside torch
    with pytest.raises(SystemExit, match="another config"):
        base("--out", tmp_path / "killed", "--resume", *common[:-3], "8", "16", "16")
    base("--out", tmp_path / "killed", "--resume", *common)
    assert not ckpt.exists()                                        # removed once the build completed
    a = load_file(tmp_path / "straight" / "vae" / V.WEIGHTS_NAME)
    b = load_file(tmp_path / "killed" / "vae" / V.WEIGHTS_NAME)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="no checkpoint"):                # a completed build leaves none
        base("--out", tmp_path / "w", "--resume", *common)


def test_init_continues_a_base(tmp_path):
    """--init starts from a base folder's VAE weights (to train the shipped VAE longer)."""
    base("--out", tmp_path / "a", "--vae-steps", "1", "--batch", "1", "--scale-clips", "2", "--eval-clips", "1",
         "--vae-channels", "8", "8", "16")
    a = V.VAE.from_pretrained(tmp_path / "a")
    base("--out", tmp_path / "b", "--init", tmp_path / "a", "--vae-steps", "0", "--scale-clips", "2",
         "--eval-clips", "1")
    b = V.VAE.from_pretrained(tmp_path / "b")
    assert b.config.block_out_channels == (8, 8, 16)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_resume_refuses_a_crafted_checkpoint(tmp_path):
    """`toy.py base --resume` reads <out>.ckpt.pt with weights_only=True: a pickle that would run code is refused
    in one line and runs nothing (mutation: weights_only=False -> the marker file appears)."""
    import pickle
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    out = tmp_path / "b"
    out.with_name(out.name + ".ckpt.pt").write_bytes(pickle.dumps({"vae": Evil()}))
    r = subprocess.run([sys.executable, str(ROOT / "toy.py"), "base", "--out", str(out), "--resume", "--vae-steps", "2",
                        "--scale-clips", "2", "--eval-clips", "2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "not a checkpoint this script wrote" in r.stderr, r.stderr[-2000:]
    assert not marker.exists()


def test_size_ratio_reads_a_subject_drawn_too_wide():
    """A sprite scored against itself has size ratio 1; dilated by one pixel (what a blurred subject looks like
    through the threshold) clearly more, while its shape IoU drops; no subject at all: nan."""
    m = toy.clip(3)["mask"]
    c = toy.centroids(m)
    wide = toy.dilate(torch.as_tensor(m), 1).numpy()
    assert toy.size_ratio(m, m) == 1.0 and toy.shape_iou(m, m, c, c) == 1.0
    assert toy.size_ratio(wide, m) > 1.3 and toy.shape_iou(wide, m, toy.centroids(wide), c) < 0.8
    assert np.isnan(toy.size_ratio(np.zeros_like(m), m))
