"""decompose.py: motion segmenter IoU and inpainter PSNR on the toy world (panning camera), the SAM 2
and VLM-caption paths with tiny random models loaded by path, kill-and-resume, shards + merge, bad inputs."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import decompose
from plumbing.records import read_records
from others import hf, inpaint, segment
from conftest import single_thread, tiny_sam2, tiny_vlm
from plumbing.dataset import read_lists, read_metadata
from plumbing.video import dilate, mask_to_rgb, read_mask, write_video
from toy import clip as toy_clip

ROOT = Path(__file__).resolve().parents[1]


one_thread = single_thread()


def moving_clips(n=4, T=33, S=96):
    """Toy clips with a panning camera whose subject moves at least twice its own size relative to
    the scene over the clip (a subject that keeps pace with the camera is static in the world, and
    no motion cue can find it)."""
    out, seed = [], 0
    while len(out) < n:
        c = toy_clip(seed, T, S, S)
        rel = abs(c["sprite"]["vx"] + c["scene"]["pan"]) * (T - 1) / c["sprite"]["size"]
        if abs(c["scene"]["pan"]) >= 0.25 and rel >= 2:
            out.append(c)
        seed += 1
    return out


@pytest.mark.slow
def test_motion_segmenter_iou():
    ious = []
    for c in moving_clips():
        m, g = segment.motion_mask(c["video"]), c["mask"]
        ious.append(((m & g).sum((1, 2)) / np.maximum((m | g).sum((1, 2)), 1)).mean())
    print("motion segmenter IoU per clip", np.round(ious, 3))
    assert np.mean(ious) >= 0.8, ious


def test_temporal_inpainter_psnr():
    psnr = []
    for c in moving_clips():
        hole = dilate(torch.from_numpy(c["mask"]), 1).numpy()
        bg = inpaint.inpaint_temporal(c["video"], hole)
        err = (bg.astype(float) - c["bg"])[c["mask"]]                    # the subject's own pixels
        psnr.append(10 * np.log10(255 ** 2 / max((err ** 2).mean(), 1e-3)))
        assert (bg[~hole] == c["video"][~hole]).all()                    # outside the hole: untouched
    print("inpainter PSNR on the hole (dB)", np.round(psnr, 1))
    assert np.mean(psnr) >= 30, psnr


def test_shadow_like_and_largest_component():
    """The two segmenter pieces evaluate.py shares: a cast shadow (uniform darkening) is not a subject, and of
    several space-time blobs only the largest is kept."""
    bg = torch.full((2, 4, 4, 3), 200.0)
    frames = bg.clone()
    frames[0, 0, 0] = bg[0, 0, 0] * 0.5                                 # a shadow: darker, same hue
    frames[0, 0, 1] = torch.tensor([100.0, 200, 200])                    # darker in red only: a subject's colour
    frames[0, 0, 2] = bg[0, 0, 2] * 0.95                                # barely darker: not a shadow
    sh = segment.shadow_like(frames, bg, -1)
    assert sh.shape == (2, 4, 4) and sh.sum() == 1 and sh[0, 0, 0]
    assert torch.equal(segment.shadow_like(frames.permute(0, 3, 1, 2), bg.permute(0, 3, 1, 2), 1), sh)
    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[0, 1, 1] = True                                                    # a one-pixel blob
    m[1, 4:6, 4:6] = m[2, 5:7, 5:7] = True                               # one blob moving through two frames
    big = segment.largest_component(m)
    assert big.sum() == 8 and not big[0].any() and torch.equal(big[1:], m[1:])
    assert not segment.largest_component(torch.zeros(2, 4, 4, dtype=torch.bool)).any()


def test_global_motion_recovers_pan():
    c = toy_clip(1, 17, 64, 96)
    G = segment.global_motion(c["video"])
    pan = c["scene"]["pan"]
    off = np.array([round(abs(pan) * t) if pan >= 0 else round(abs(pan) * (16 - t)) for t in range(17)])
    assert np.abs(G[:, 0, 2].numpy() * 96 / 2 - (off - off[8])).max() < 0.05


def test_sam2_tiny_random_model(tmp_path):
    pytest.importorskip("transformers")
    tiny_sam2(tmp_path / "sam2")
    c = toy_clip(3, 9, 64, 96)
    m = segment.sam2_mask(c["video"], c["mask"], str(tmp_path / "sam2"))
    assert m.shape == c["mask"].shape and m.dtype == bool


@pytest.mark.slow
def test_vlm_captioner_tiny_random_model(tmp_path):
    vlm, _ = tiny_vlm(tmp_path / "vlm")
    video = toy_clip(2, 9, 64, 64)["video"]
    caps = []
    for _ in range(2):                          # reload each time: loading and greedy decoding are deterministic
        hf.cached_model.cache_clear(), hf.load_vlm.cache_clear()
        caps.append(decompose.vlm_caption(video, str(vlm), n=4, max_new_tokens=12))
    assert isinstance(caps[0], str) and caps[0].strip() and caps[0] == caps[1], caps
    videos = toy_folder(tmp_path, [2])
    out = tmp_path / "out"
    r = cli("--videos", videos, "--out", out, "--captioner", "vlm", "--vlm", vlm, "--vlm-frames", "4",
            "--vlm-tokens", "12", "--max-clips", "1", "--inpainter", "none", *FAST)
    assert r.returncode == 0, r.stderr
    recs = [x for x in read_metadata(out) if x["status"] == "ok"]
    prompts = (out / "prompts.txt").read_text().splitlines()
    assert recs and len(prompts) == len(recs) and all(p.strip() for p in prompts)
    assert [x["caption"] for x in recs] == prompts and "a video" not in prompts    # not the template


def toy_folder(d, seeds, T=25, S=64, masks=False):
    for s in seeds:
        c = toy_clip(s, T, S, S)
        write_video(d / "videos" / f"toy{s}.mp4", c["video"], 8)
        if masks:
            write_video(d / "masks" / f"toy{s}.mp4", mask_to_rgb(c["mask"]), 8)
    return d / "videos"


def cli(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "decompose.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, **kw)


FAST = ["--frames", "9", "--size", "64", "64", "--strides", "1", "2", "--threads", "1", "--dilate", "2",
        "--min-fg", "0"]


def check_dataset(out, n):
    recs = read_metadata(out)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == n, ids                          # every clip exactly once
    rows = read_lists(out)                                              # raises if the lists misalign
    assert len(rows) == sum(r["status"] == "ok" for r in recs)
    assert all(os.path.exists(p) for r in rows for p in (r["video"], r["fg"], r["bg"], r["mask"]))
    return recs


@pytest.mark.slow
def test_kill_then_resume(tmp_path):
    videos = toy_folder(tmp_path, range(6))
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, str(ROOT / "decompose.py"), "--videos", videos, "--out", out, *FAST],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    journal = out / "metadata.rank-0.jsonl"                  # the record engine's journal, joined at the end
    while not journal.exists() or not journal.read_text().strip():
        assert p.poll() is None and time.time() - t0 < 120, "no clip record appeared"
        time.sleep(0.05)
    p.kill()
    p.wait()
    first = len(read_records(journal))
    r = cli("--videos", videos, "--out", out, *FAST)
    assert r.returncode == 0, r.stderr
    n = sum(len(decompose.plan_clips(f"toy{s}", 25, 9, [1, 2], 4)) for s in range(6))
    assert first < n
    check_dataset(out, n)
    assert "clips kept" in r.stdout


@pytest.mark.slow
def test_gt_masks_shards_and_merge(tmp_path):
    videos = toy_folder(tmp_path, range(3), masks=True)
    out = tmp_path / "out"
    args = ["--videos", videos, "--out", out, "--segmenter", "gt", "--masks", tmp_path / "masks",
            "--inpainter", "none", "--captioner", "file", "--captions", tmp_path / "caps.tsv", *FAST]
    (tmp_path / "caps.tsv").write_text("".join(f"toy{s}\ta toy clip {s}\n" for s in range(3)))
    for i in range(2):
        r = cli(*args, "--shard", f"{i}/2")
        assert r.returncode == 0, r.stderr
    assert cli("--merge", "--out", out).returncode == 0
    recs = check_dataset(out, sum(len(decompose.plan_clips(f"toy{s}", 25, 9, [1, 2], 4)) for s in range(3)))
    assert (out / "metadata.csv").exists()      # the release's csv, rewritten with the lists (check_dataset: aligned)
    assert {r["caption"] for r in recs if r["status"] == "ok"} <= {f"a toy clip {s}" for s in range(3)}
    rec = next(r for r in recs if r["status"] == "ok")
    c = toy_clip(int(rec["id"].split("_")[0][3:]), 25, 64, 64)
    gt = c["mask"][rec["start"]::rec["stride"]][:9]
    assert (read_mask(out / rec["masks"]) == gt).mean() > 0.99


@pytest.mark.slow
def test_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("--videos", tmp_path / "empty", "--out", tmp_path / "o")
    assert r.returncode != 0 and "empty" in r.stderr and "no videos" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.mp4").write_bytes(b"not a video at all")
    r = cli("--videos", bad, "--out", tmp_path / "o")
    assert r.returncode != 0 and "broken.mp4" in r.stderr and "could be read" in r.stderr
    r = cli("--videos", bad, "--out", tmp_path / "o", "--segmenter", "gt")
    assert r.returncode != 0 and "--masks" in r.stderr
