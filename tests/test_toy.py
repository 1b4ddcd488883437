"""toy.py builds a base-model folder our loaders (and diffusers' scheduler) read; the shipped one reconstructs."""
import json
import math
from pathlib import Path

import pytest
import torch

import data
import text
import toy
import vae as V

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "toy-base"


def check_folder(out):
    assert json.loads((out / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKLCogVideoX"]
    tok = text.Tokenizer.from_pretrained(out)
    enc = text.T5Encoder.from_pretrained(out)
    vae = V.VAE.from_pretrained(out)
    assert enc.config.vocab_size == tok.sp.get_piece_size() + 100  # sentinels appended, as T5
    caption = data.toy_clip(0)["caption"]
    ids = tok([caption, "a purple boat sailing on the water at night"])
    assert ids.shape == (2, 226) and tok.sp.unk_id() not in ids[0].tolist()  # every toy word is in the vocab
    with torch.no_grad():
        emb = enc(ids[:, :32])
    assert emb.shape == (2, 32, 64) and not torch.allclose(emb[0], emb[1])  # captions map apart
    x = data.to_tensor(data.toy_clip(123)["video"])[None]                 # (1, 3, 9, 64, 64)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (1, 16, 3, 16, 16)
    sf = json.loads((out / "vae" / "config.json").read_text())["scaling_factor"]
    assert sf == vae.config.scaling_factor and sf != 1.0 and math.isfinite(sf) and sf > 0
    from diffusers import CogVideoXDDIMScheduler
    sch = CogVideoXDDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert sch.config.prediction_type == "v_prediction" and sch.config.rescale_betas_zero_snr
    assert sch.config.timestep_spacing == "trailing" and sch.alphas_cumprod[-1] < 1e-6  # zero terminal SNR
    return vae, x


def test_build_tiny(tmp_path):
    out = tmp_path / "base"
    r = toy.main(["--out", str(out), "--vae-steps", "2", "--batch", "1", "--scale-clips", "4", "--eval-clips", "2"])
    assert math.isfinite(r["psnr"]) and r["scaling_factor"] > 0
    check_folder(out)
    assert not [p for p in tmp_path.iterdir() if p.name != "base"]  # the temp build folder was renamed, not left
    toy.main(["--out", str(out), "--vae-steps", "1", "--batch", "1", "--scale-clips", "2", "--eval-clips", "1",
              "--vae-channels", "8", "16", "16"])
    assert len(list(tmp_path.iterdir())) == 1                                          # replaced in place
    assert json.loads((out / "vae" / "config.json").read_text())["block_out_channels"] == [8, 16, 16]
    assert V.VAE.from_pretrained(out).encoder.conv_out.conv.weight.shape[1] == 16       # the widths took effect


@pytest.mark.skipif(not (SHIPPED / "model_index.json").exists(), reason="assets/toy-base not built")
def test_shipped_base():
    vae, x = check_folder(SHIPPED)
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) < 5e6
    x, m = toy.clips([123], 9, 64, 64, masks=True)
    with torch.no_grad():
        y = vae.decode(vae.encode(x)[0])
    # an untrained VAE scores ~12 dB; the shipped one scores 28.2 dB on this clip (29.9 dB mean on 32 held-out clips)
    assert toy.psnr(y, x) > 26
    # ... 19.3 dB on the sprite and 3 px around it (toy.py --sprite-margin): a base weighted on the sprite pixels
    # only learned to dilate them (12.5 dB here; the bird's chevron came back as a dome) ...
    assert toy.psnr(y, x, toy.dilate(m, 3)) > 17
    # ... and 17.3 dB on the sprite's pixels alone: without --sprite-weight a VAE of this size scored 8.0 here
    # (the sprite blurred into the background), and a composer cannot draw what its VAE cannot
    assert toy.psnr(y, x, m) > 15


def test_vae_training_resumes_exactly(tmp_path, monkeypatch):
    """A build killed mid-way and rerun with --resume ends with the same VAE as one straight run."""
    from safetensors.torch import load_file
    common = ["--vae-steps", "4", "--ckpt-every", "2", "--batch", "1", "--scale-clips", "2", "--eval-clips", "1",
              "--minutes", "1000", "--vae-channels", "8", "8", "16"]
    toy.main(["--out", str(tmp_path / "straight")] + common)
    calls, clips = [0], toy.clips

    def dying(*args, **kw):                       # the 3rd training batch = step 2, just after its checkpoint
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return clips(*args, **kw)
    monkeypatch.setattr(toy, "clips", dying)
    with pytest.raises(KeyboardInterrupt):
        toy.main(["--out", str(tmp_path / "killed")] + common)
    monkeypatch.setattr(toy, "clips", clips)
    ckpt = tmp_path / "killed.ckpt.pt"
    assert ckpt.exists() and not (tmp_path / "killed").exists()     # nothing half-written at --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.ckpt.pt", "straight"]   # no temp folder left
    # a resume with other widths is refused with a message, not a shape error from deep inside torch
    with pytest.raises(SystemExit, match="another config"):
        toy.main(["--out", str(tmp_path / "killed"), "--resume"] + common[:-3] + ["8", "16", "16"])
    toy.main(["--out", str(tmp_path / "killed"), "--resume"] + common)
    assert not ckpt.exists()                                        # removed once the build completed
    a = load_file(tmp_path / "straight" / "vae" / V.WEIGHTS_NAME)
    b = load_file(tmp_path / "killed" / "vae" / V.WEIGHTS_NAME)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="no checkpoint"):                # a completed build leaves none
        toy.main(["--out", str(tmp_path / "w"), "--resume"] + common)


def test_init_continues_a_base(tmp_path):
    """--init starts from a base folder's VAE weights (to train the shipped VAE longer)."""
    toy.main(["--out", str(tmp_path / "a"), "--vae-steps", "1", "--batch", "1", "--scale-clips", "2", "--eval-clips", "1",
              "--vae-channels", "8", "8", "16"])
    a = V.VAE.from_pretrained(tmp_path / "a")
    toy.main(["--out", str(tmp_path / "b"), "--init", str(tmp_path / "a"), "--vae-steps", "0", "--scale-clips", "2",
              "--eval-clips", "1"])
    b = V.VAE.from_pretrained(tmp_path / "b")
    assert b.config.block_out_channels == (8, 8, 16)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_sprite_weight_covers_a_margin():
    """The VAE loss weights the sprite and --sprite-margin pixels around it, frame by frame: weighted inside only,
    colour spilled outwards is cheap and the VAE learns to dilate sprites (a base trained that way scored 30.3 dB
    on sprite pixels but 15.4 dB on them + 3 px around: a bird's chevron came back as a dome)."""
    m = torch.zeros(1, 1, 3, 16, 16)
    m[0, 0, 1, 8, 5] = 1
    d = toy.dilate(m, 2)
    assert torch.equal(toy.dilate(m, 0), m)
    assert d[0, 0, 1].sum() == 25 and d[0, 0, 1, 6:11, 3:8].sum() == 25       # a 5 x 5 square around the pixel
    assert d[0, 0, 0].sum() == d[0, 0, 2].sum() == 0                           # ... in its own frame only
    edge = torch.zeros(1, 1, 1, 4, 4)
    edge[..., 0, 0] = 1
    assert toy.dilate(edge, 1).sum() == 4                                      # clipped at the frame border
