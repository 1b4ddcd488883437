"""sample.py end to end on a tiny random composer: files, sizes, length, determinism, bad inputs."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import toy
from conftest import tiny_composer
from plumbing.video import read_video, write_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def composer(tiny_base, tmp_path_factory):
    """A train.py-style output folder: transformer/ + args.json naming the base model."""
    return tiny_composer(tmp_path_factory.mktemp("composer"), tiny_base)


def sample(args):
    r = subprocess.run([sys.executable, str(ROOT / "sample.py")] + args, capture_output=True, text=True, timeout=300)
    return r


@pytest.mark.slow
def test_end_to_end_size_length_determinism(composer, tmp_path):
    c = toy.clip(5, T=17, H=80, W=96)          # other size and length: resampled with a notice
    write_video(tmp_path / "fg.mp4", c["fg"], fps=10)
    write_video(tmp_path / "bg.mp4", toy.clip(6)["bg"], fps=10)
    args = ["--ckpt", str(composer), "--fg", str(tmp_path / "fg.mp4"), "--bg", str(tmp_path / "bg.mp4"),
            "--prompt", "a red boat", "--steps", "3", "--guidance", "3"]
    r1 = sample(args + ["--out", str(tmp_path / "a.mp4"), "--grid"])
    assert r1.returncode == 0, r1.stderr[-2000:]
    assert "resampled to 9 frames of 64x64" in r1.stdout
    v, fps = read_video(tmp_path / "a.mp4")
    assert v.shape == (9, 64, 64, 3) and fps == 10
    assert read_video(tmp_path / "a_grid.mp4")[0].shape == (9, 64, 192, 3)
    assert read_video(tmp_path / "a_grid.gif")[0].shape == (9, 64, 192, 3)
    assert sample(args + ["--out", str(tmp_path / "b.mp4")]).returncode == 0
    assert np.array_equal(read_video(tmp_path / "b.mp4")[0], v)              # same seed, same video
    assert sample(args + ["--out", str(tmp_path / "c.mp4"), "--seed", "1", "--sampler", "dpm"]).returncode == 0
    assert not np.array_equal(read_video(tmp_path / "c.mp4")[0], v)


@pytest.mark.slow
def test_composer_samples_with_the_schedule_it_was_trained_with(composer, tiny_base, tmp_path):
    """OUT/scheduler/ (train.py writes it) over the base's scheduler/ over CogVideoX-5B's; sample.py composes with it
    (a different video at another SNR shift) and its records change with it."""
    import shutil

    import composer as C
    from diffusion import Schedule
    run = tmp_path / "run"
    shutil.copytree(composer, run)
    assert C.load_schedule(run / "transformer", tiny_base).config["snr_shift_scale"] == 1.0      # the base's
    Schedule(snr_shift_scale=3.0).save(tmp_path / "base" / "scheduler")
    assert C.load_schedule(run / "transformer", tmp_path / "base").config["snr_shift_scale"] == 3.0
    Schedule(snr_shift_scale=0.5).save(run / "scheduler")
    assert C.load_schedule(run / "transformer", tmp_path / "base").config["snr_shift_scale"] == 0.5  # the run's
    assert C.load_schedule(tmp_path / "nowhere" / "transformer", tmp_path / "none").config == Schedule().config
    c = toy.clip(5)
    write_video(tmp_path / "fg.mp4", c["fg"], fps=10)
    write_video(tmp_path / "bg.mp4", c["bg"], fps=10)
    args = ["--fg", str(tmp_path / "fg.mp4"), "--bg", str(tmp_path / "bg.mp4"), "--prompt", "a red boat", "--steps",
            "2", "--guidance", "1", "--sampler", "ddim"]
    videos = {}
    for name, ckpt in (("base", composer), ("run", run)):
        r = sample(["--ckpt", str(ckpt), "--out", str(tmp_path / f"{name}.mp4")] + args)
        assert r.returncode == 0, r.stderr[-2000:]
        videos[name] = read_video(tmp_path / f"{name}.mp4")[0].astype(float)
    assert np.abs(videos["base"] - videos["run"]).mean() > 1.0               # same weights, other noise levels
    (run / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "epsilon"}')
    r = sample(["--ckpt", str(run), "--out", str(tmp_path / "bad.mp4")] + args)
    assert r.returncode != 0 and "noise schedule" in r.stderr and "prediction_type" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_triplet_batch(composer, tmp_path):
    toy.write_triplets(tmp_path / "tri", 3)
    r = sample(["--ckpt", str(composer), "--triplets", str(tmp_path / "tri" / "triplets.jsonl"), "--steps", "2",
                "--batch", "2", "--out", str(tmp_path / "res")])
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(l) for l in (tmp_path / "res" / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["t0000", "t0001", "t0002"]
    assert all(read_video(r["result"])[0].shape == (9, 64, 64, 3) for r in recs)


@pytest.mark.slow
def test_bad_inputs(composer, tmp_path):
    r = sample(["--ckpt", str(composer), "--fg", str(tmp_path / "missing.mp4"), "--bg", str(tmp_path / "missing.mp4")])
    assert r.returncode != 0 and "missing.mp4: no such video file" in r.stderr
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 100)
    r = sample(["--ckpt", str(composer), "--fg", str(tmp_path / "junk.mp4"), "--bg", str(tmp_path / "junk.mp4")])
    assert r.returncode != 0 and "junk.mp4: not a readable video" in r.stderr
    r = sample(["--ckpt", str(tmp_path / "nothing-here"), "--fg", "a", "--bg", "b"])
    assert r.returncode != 0 and "nothing-here" in r.stderr and "Traceback" not in r.stderr
    black = np.zeros((9, 64, 64, 3), np.uint8)
    write_video(tmp_path / "black.mp4", black)
    r = sample(["--ckpt", str(composer), "--fg", str(tmp_path / "black.mp4"), "--bg", str(tmp_path / "black.mp4")])
    assert r.returncode != 0 and "mask is empty" in r.stderr


@pytest.mark.slow
def test_bundled_default_runs(tmp_path):
    """The quick start: no --ckpt, no inputs -> the shipped toy composer on the shipped examples."""
    r = sample(["--steps", "2", "--grid", "--out", str(tmp_path)])
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 3
    for rec in recs:
        assert read_video(rec["result"])[0].shape == (9, 64, 64, 3)
        assert read_video(tmp_path / "grid" / f"{rec['id']}.gif")[0].shape == (9, 64, 192, 3)
    # the stacked overview: 3 rows of fg | bg | result | reference | reference through the VAE, 2-px separators
    assert read_video(tmp_path / "grid.gif")[0].shape == (9, 3 * 64 + 2 * 2, 5 * 64, 3)
    g = read_video(tmp_path / "grid.mp4")[0].astype(np.float64)
    assert g.shape == (9, 3 * 64 + 2 * 2, 5 * 64, 3)
    ref, via_vae = g[:, :64, 3 * 64:4 * 64], g[:, :64, 4 * 64:]
    psnr = 10 * np.log10(255 ** 2 / ((ref - via_vae) ** 2).mean())
    assert 18 < psnr < 40, psnr                                   # the same scene, re-rendered by the toy VAE (~34 dB)
