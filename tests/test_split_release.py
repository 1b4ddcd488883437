"""Split at corpus scale and the StM release's data rules (issue 29): every Split model on this rank's device in
the dtype upstream runs it (others.hf.placement), the release's metadata.csv with is_training and --val-videos, the
release's static-clip score, the VLM captioner's settings, --resize crop/stretch on a 16:9 subject, the remover's
UniPC against diffusers, bench_split.py --tiny, and the new flags' one-line errors.

    python -m pytest -q tests/test_split_release.py
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import decompose
from conftest import SPLIT_FAST, single_thread, split, tiny_sam2, tiny_vlm
from others import hf, inpaint, remover as R, segment
from plumbing.cli import BadInput
from plumbing.dataset import LayeredClips, read_lists
from plumbing.ranks import Ranks
from plumbing.video import fit_video, mask_to_rgb, read_mask, write_video
from toy import clip as toy_clip

ROOT = Path(__file__).resolve().parents[1]
FAST = SPLIT_FAST

one_thread = single_thread()


def toy_videos(folder, seeds, masks=None, T=25, S=64):
    for s in seeds:
        c = toy_clip(s, T, S, S)
        write_video(folder / f"toy{s}.mp4", c["video"], 8)
        if masks:
            write_video(masks / f"toy{s}.mp4", mask_to_rgb(c["mask"]), 8)
    return folder


# ---- 1. every Split model on this rank's device, in upstream's dtype -------------------------------------------


def test_placement_rule():
    """GPU: SAM 2 and the VLM bf16, the remover fp16, SegAnyMo fp32, each on the very device given; CPU: fp32."""
    want = {"sam2": torch.bfloat16, "vlm": torch.bfloat16, "remover": torch.float16, "segmo": torch.float32}
    for model, dtype in want.items():
        assert hf.placement(model, "cuda:3") == (torch.device("cuda", 3), dtype)
        assert hf.placement(model, torch.device("cuda", 1)) == (torch.device("cuda", 1), dtype)
        assert hf.placement(model, "cpu") == (torch.device("cpu"), torch.float32)


class Recorder:
    """Stands in for a model-running function: records its arguments (positional ones under 0, 1, ...), returns
    `out(*args)`."""

    def __init__(self, out):
        self.calls, self.out = [], out

    def __call__(self, *args, **kw):
        self.calls.append({**dict(enumerate(args)), **kw})
        return self.out(*args)


def test_decompose_gives_every_model_this_ranks_device(tmp_path, monkeypatch):
    """decompose.main -> Settings.device = Ranks.device (cuda:LOCAL_RANK under torchrun) -> sam2_mask, the VLM
    captioner and the remover each get it, the remover also the sampler; the remover is loaded once for all clips."""
    class Rank3(Ranks):
        def __init__(self):
            super().__init__()
            self.device = torch.device("cuda", 3)
    for name in ("sam2", "vlm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    for f in decompose.REMOVER_FILES:
        (tmp_path / "rm" / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "rm" / f).write_text("{}")
    sam2 = Recorder(lambda video, prompt, path: prompt)
    vlm = Recorder(lambda video, path: "a toy")
    loads = Recorder(lambda path, device, sampler: lambda video, mask, **kw: video)
    monkeypatch.setattr(decompose, "Ranks", Rank3)
    monkeypatch.setattr(decompose, "sam2_mask", sam2)
    monkeypatch.setattr(decompose, "vlm_caption", vlm)
    monkeypatch.setattr(decompose, "load_remover", loads)
    videos = toy_videos(tmp_path / "v", [0, 1])
    split("--videos", videos, "--out", tmp_path / "out", *FAST, "--segmenter", "sam2", "--sam2", tmp_path / "sam2",
          "--captioner", "vlm", "--vlm", tmp_path / "vlm", "--inpainter", "minimax", "--remover", tmp_path / "rm",
          "--remover-sampler", "euler", "--static", "0")
    assert len(read_lists(tmp_path / "out")) == 2 and len(sam2.calls) == 2 and len(vlm.calls) == 2
    assert [c["device"] for c in sam2.calls + vlm.calls] == ["cuda:3"] * 4
    assert all(c["n"] == 12 and c["max_new_tokens"] == 1024 and c["sample"] for c in vlm.calls)   # the release's
    assert len({c["seed"] for c in vlm.calls}) == 2                                                # one per clip
    assert [(c[0], c[1], c[2]) for c in loads.calls] == [(str(tmp_path / "rm"), "cuda:3", "euler")] * 2


def test_remover_loads_once_on_the_device_in_fp16(monkeypatch):
    """load_remover(path, device, sampler): fp16 on cuda:3 (minimax-remover's dtype), fp32 on a CPU, loaded once."""
    calls = []
    monkeypatch.setattr(R.Remover, "from_pretrained", classmethod(lambda cls, *a, **kw: calls.append((a, kw)) or 7))
    inpaint.load_remover.cache_clear()
    try:
        assert inpaint.load_remover("rm", "cuda:3", "euler") == 7
        inpaint.load_remover("rm", "cuda:3", "euler")
        inpaint.load_remover("rm", "cpu")
    finally:
        inpaint.load_remover.cache_clear()
    assert calls == [(("rm",), dict(dtype=torch.float16, device=torch.device("cuda", 3), sampler="euler")),
                     (("rm",), dict(dtype=torch.float32, device=torch.device("cpu"), sampler="unipc"))]


@pytest.mark.slow
def test_sam2_runs_where_and_as_its_placement_says(tmp_path, monkeypatch):
    """sam2_mask: the model (loaded once) and the propagation session on the placement's device and dtype; here
    bf16 (its GPU dtype) on the CPU, so the dtype path a GPU takes runs in CI."""
    tf = pytest.importorskip("transformers")
    tiny_sam2(tmp_path / "sam2")
    sessions = []

    class Session(tf.Sam2VideoInferenceSession):
        def __init__(self, **kw):
            sessions.append(kw)
            super().__init__(**kw)
    import transformers.models.sam2_video.modeling_sam2_video as sam2_module      # where `from transformers` finds it
    for where in (tf, sam2_module):
        monkeypatch.setattr(where, "Sam2VideoInferenceSession", Session)
    monkeypatch.setattr(segment, "placement", lambda model, device: (torch.device(device), torch.bfloat16))
    hf.cached_model.cache_clear()
    c = toy_clip(3, 9, 64, 96)
    try:
        masks = [segment.sam2_mask(c["video"], c["mask"], str(tmp_path / "sam2"), device="cpu") for _ in range(2)]
        model = hf.cached_model(tf.Sam2VideoModel, str(tmp_path / "sam2"), torch.device("cpu"), torch.bfloat16)
        assert hf.cached_model.cache_info().misses == 1                   # loaded once, kept resident
    finally:
        hf.cached_model.cache_clear()
    assert model.dtype == torch.bfloat16 and len(sessions) == 2
    for kw in sessions:
        assert kw["inference_device"] == model.device and kw["inference_state_device"] == model.device
        assert kw["dtype"] == torch.bfloat16
    assert masks[0].shape == c["mask"].shape and masks[0].dtype == bool and np.array_equal(*masks)


def test_vlm_frames_are_the_releases_segment_centres():
    """InternVL's get_index as the release calls it: int(seg/2 + round(seg i)) with seg = (n - 1) / segments."""
    assert hf.frame_indices(10, 4).tolist() == [1, 3, 5, 8]
    assert hf.frame_indices(49, 12).tolist() == list(range(2, 49, 4))


@pytest.mark.slow
def test_vlm_captioner_runs_where_and_as_its_placement_says(tmp_path, monkeypatch):
    """The captioner on the placement's device and dtype (bf16, its GPU dtype, here on the CPU); sampled captions
    repeat for a seed and change with it; greedy decoding on request."""
    path, _ = tiny_vlm(tmp_path / "vlm")
    monkeypatch.setattr(hf, "placement", lambda model, device: (torch.device(device), torch.bfloat16))
    hf.cached_model.cache_clear(), hf.load_vlm.cache_clear()
    video = toy_clip(2, 13, 64, 64)["video"]
    try:
        caps = [hf.vlm_caption(video, str(path), n=4, max_new_tokens=8, seed=s) for s in (0, 0, 1)]
        greedy = hf.vlm_caption(video, str(path), n=4, max_new_tokens=8, sample=False)
        model, _ = hf.load_vlm(str(path), "cpu")
    finally:
        hf.cached_model.cache_clear(), hf.load_vlm.cache_clear()
    assert next(model.parameters()).dtype == torch.bfloat16
    assert all(isinstance(c, str) and c for c in caps + [greedy])
    assert caps[0] == caps[1] and caps[0] != caps[2], caps


# ---- 2. metadata.csv with is_training, and --val-videos -------------------------------------------------------


def test_release_csv_and_validation_sources(tmp_path):
    """--val-videos: their clips get is_training False in metadata.csv (the release's columns, rows aligned with
    the lists), so the layered dataset leaves them out of training and gives them to validation."""
    train = toy_videos(tmp_path / "train", [0, 1], masks=tmp_path / "masks")
    val = toy_videos(tmp_path / "davis", [2], masks=tmp_path / "masks")
    out = tmp_path / "out"
    split("--videos", train, "--val-videos", val, "--out", out, *FAST, "--segmenter", "gt", "--masks",
          tmp_path / "masks", "--static", "0")
    with open(out / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == decompose.CSV_COLUMNS
    videos = (out / "videos.txt").read_text().splitlines()
    assert [f"videos/{r['vid_name']}.mp4" for r in rows] == videos                     # aligned with the lists
    assert {r["vid_name"][:4]: r["is_training"] for r in rows} == {"toy0": "True", "toy1": "True", "toy2": "False"}
    assert {r["dataset_type"] for r in rows} == {"train", "davis"} and {r["mask_source"] for r in rows} == {"gt"}
    assert all(r["num_frames"] == "9" and (r["height"], r["width"]) == ("64", "64") for r in rows)
    assert [it["split"] for it in read_lists(out)] == ["train", "train", "val"]
    assert len(LayeredClips(out)) == 2 and len(LayeredClips(out, split="val")) == 1


# ---- 3. the release's static-clip score ---------------------------------------------------------------------


def grey_clip(values, H=128, W=128):
    """uint8 (T, H, W, 3): frame t is grey `values[t]` everywhere."""
    return np.repeat(np.asarray(values, np.uint8)[:, None, None, None], H * W * 3).reshape(len(values), H, W, 3)


def test_static_score_at_the_threshold():
    """Frames 4 apart, 128x128: frame 4 is 3 brighter on exactly half the columns -> 1.5, kept at --static 1.5;
    on one column fewer -> below, static. Neighbouring frames 1 apart never count."""
    v = grey_clip([50] * 5)
    half, less = v.copy(), v.copy()
    half[4, :, :64] += 3
    less[4, :, :63] += 3
    assert decompose.motion_score(half) == 1.5 and not decompose.motion_score(half) < 1.5
    assert decompose.motion_score(less) == pytest.approx(3 * 63 / 128) and decompose.motion_score(less) < 1.5
    flicker = grey_clip([0, 100] * 5)                                  # changes every frame, repeats every 2
    assert decompose.motion_score(flicker) == 0 and decompose.adjacent_motion(flicker) == 100
    assert decompose.motion_score(grey_clip([0] * 4 + [200])[:4]) == 0  # no pair 4 apart


def test_static_score_grey_and_128x128():
    """Grey in OpenCV's fixed point (pure red 100 -> 30), and the 128x128 area resize: a one-pixel checkerboard
    that flips every frame averages away (score 0) where the full-size rule sees 255."""
    red = np.zeros((5, 128, 128, 3), np.uint8)
    red[4, ..., 0] = 100
    assert decompose.motion_score(red) == 30
    board = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    flips = np.stack([board if t % 2 else 255 - board for t in range(9)])[..., None].repeat(3, -1)
    assert decompose.motion_score(flips) == 0 and decompose.adjacent_motion(flips) == 255
    tall = grey_clip([0] * 4 + [90], H=480, W=720)                    # non-integer factors: 3.75, 5.625
    assert decompose.motion_score(tall) == 90


def test_area_weights():
    for n, m in ((256, 128), (480, 128), (720, 128), (64, 128), (100, 7)):
        w = decompose.area_weights(n, m)
        assert w.shape == (m, n) and np.allclose(w.sum(1), 1) and (w >= 0).all()
    x = np.random.default_rng(0).random(256)
    assert np.allclose(decompose.area_weights(256, 128) @ x, x.reshape(128, 2).mean(1))     # 2 -> 1: block mean
    assert np.allclose(decompose.area_weights(64, 128) @ x[:64], x[:64].repeat(2))          # 1 -> 2: copies
    w = decompose.area_weights(3, 2)                                   # output 0 covers input [0, 1.5)
    assert np.allclose(w, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])


def test_static_rule_flag_decides_what_is_static(tmp_path):
    """decompose.py: a clip that flickers every frame but repeats every 2 frames is static under the release's
    rule (the default) and moving under --static-rule adjacent."""
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "v" / "flicker.mp4", np.stack([a if t % 2 else 255 - a for t in range(25)]), 8, crf=0)
    write_video(tmp_path / "m" / "flicker.mp4", mask_to_rgb(np.ones((25, 64, 64), bool)), 8)
    status = {}
    for rule in ("release", "adjacent"):
        out = tmp_path / rule
        split("--videos", tmp_path / "v", "--out", out, *FAST, "--static-rule", rule, "--max-fg", "1",
              "--segmenter", "gt", "--masks", tmp_path / "m", "--strides", "1")     # stride 2 would hide it
        status[rule] = [json.loads(line)["status"] for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert status == {"release": ["static"], "adjacent": ["ok"]}


# ---- 5. --resize: what the release's stretch and our crop do to a round subject -------------------------------


def subject_aspect(mask):
    """Width / height of the mask's bounding box on frame 0."""
    ys, xs = np.nonzero(mask[0])
    return (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


def round_subject_16x9(T=9, H=270, W=480, r=60):
    """A 16:9 clip with a round subject of radius r in the middle: (video, mask)."""
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - H / 2 + 0.5) ** 2 + (xx - W / 2 + 0.5) ** 2 <= r * r
    mask = np.repeat(disc[None], T, 0)
    video = np.where(mask[..., None], np.array([220, 60, 60]), np.array([30, 90, 30])).astype(np.uint8)
    return video, mask


def test_resize_crop_keeps_a_round_subject_round():
    """16:9 (270x480) -> 3:2 (480x720): the crop keeps the disc round (aspect 1.00), the release's stretch makes
    it 0.84 as wide as tall (720/480 across vs 480/270 down)."""
    video, mask = round_subject_16x9()
    aspect = {}
    for flag, mode in decompose.RESIZE.items():
        m = fit_video(mask, 9, 480, 720, mode=mode, mask=True)
        aspect[flag] = subject_aspect(m)
    print(f"subject aspect after 16:9 -> 480x720: crop {aspect['crop']:.3f}, stretch {aspect['stretch']:.3f}")
    assert aspect["crop"] == pytest.approx(1.0, abs=0.01)
    assert aspect["stretch"] == pytest.approx((720 / 480) / (480 / 270), abs=0.01)


def test_resize_flag_reaches_the_clips(tmp_path):
    """decompose.py --resize stretch squeezes the written clip's subject as the release does; the default crops."""
    video, mask = round_subject_16x9(T=9, H=36, W=64, r=12)
    write_video(tmp_path / "v" / "disc.mp4", video, 8, crf=0)
    write_video(tmp_path / "m" / "disc.mp4", mask_to_rgb(mask), 8, crf=0)
    got = {}
    for flag in ("crop", "stretch"):
        out = tmp_path / flag
        split("--videos", tmp_path / "v", "--out", out, "--frames", "9", "--size", "48", "72", "--resize", flag,
              "--segmenter", "gt", "--masks", tmp_path / "m", "--inpainter", "none", "--static", "0",
              "--threads", "1", "--max-fg", "1")
        got[flag] = subject_aspect(read_mask(out / read_lists(out)[0]["mask"]))
    assert got["crop"] == pytest.approx(1.0, abs=0.1) and got["stretch"] == pytest.approx(0.84, abs=0.1), got


# ---- 6. the remover's UniPC against diffusers -------------------------------------------------------------------


def toy_velocity():
    """A fixed nonlinear stand-in for the remover's DiT: v(x, t)."""
    W = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 0.3
    return lambda x, t: torch.tanh(torch.einsum("ij,bj...->bi...", W, x)) + 1e-3 * t * x


@pytest.mark.parametrize("steps,shift", [(12, 3.0), (5, 5.0), (2, 1.0), (1, 3.0)])
def test_unipc_matches_diffusers(steps, shift):
    """FlowUniPC against diffusers' UniPCMultistepScheduler as the remover's checkpoint configures it (flow sigmas,
    flow_prediction, order 2, bh2), on the ladder diffusers 0.33-0.35 (minimax-remover's, the release's) made:
    every step's sample, fp32, <= 1e-5 relative; the model sees the same integer timesteps."""
    from diffusers import UniPCMultistepScheduler
    from conftest import rel
    N = 1000
    ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                  solver_order=2, solver_type="bh2")
    ref.set_timesteps(sigmas=np.flip(1.0 - np.linspace(1, 1 / N, steps + 1))[:-1].copy())   # shifted by diffusers
    ours = R.FlowUniPC(R.SchedulerConfig(flow_shift=shift, use_flow_sigmas=True, prediction_type="flow_prediction"))
    assert torch.equal(ours.timesteps(steps), ref.timesteps) and torch.equal(ours.sigmas(steps), ref.sigmas)
    v = toy_velocity()
    x0 = torch.randn(1, 4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    x, theirs = x0.clone(), []
    for t in ref.timesteps:
        theirs.append((x, int(t)))
        x = ref.step(v(x, float(t)), t, x, return_dict=False)[0]
    mine = []
    y = ours.run(lambda z, t: mine.append((z, t)) or v(z, t), x0.clone(), steps)
    worst = max(rel(y, x), *(rel(a[0], b[0]) for a, b in zip(mine, theirs)))     # the sample after every step
    print(f"PARITY unipc steps={steps} shift={shift}: worst rel {worst:.1e}")
    assert [t for _, t in mine] == [t for _, t in theirs] and worst <= 1e-5


def test_remover_sampler_follows_the_checkpoint_or_the_flag(tmp_path):
    """Remover.from_pretrained: the scheduler the checkpoint names (UniPC config -> FlowUniPC, FlowMatchEuler ->
    FlowEuler) unless `sampler` says otherwise."""
    R.WanVAE(R.VAE_PRESETS["toy"]).save_pretrained(tmp_path / "vae")
    R.RemoverDiT(R.PRESETS["toy"]).save_pretrained(tmp_path / "transformer")
    (tmp_path / "scheduler").mkdir()
    unipc = {"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "use_flow_sigmas": True,
             "prediction_type": "flow_prediction", "solver_order": 2}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(unipc))
    assert type(R.Remover.from_pretrained(tmp_path).scheduler) is R.FlowUniPC
    assert type(R.Remover.from_pretrained(tmp_path, sampler="euler").scheduler) is R.FlowEuler
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"shift": 3.0}))
    assert type(R.Remover.from_pretrained(tmp_path).scheduler) is R.FlowEuler
    assert type(R.Remover.from_pretrained(tmp_path, sampler="unipc").scheduler) is R.FlowUniPC
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(unipc, solver_order=3)))
    with pytest.raises(ValueError, match="solver_order=3"):
        R.Remover.from_pretrained(tmp_path)


# ---- bench_split.py keeps working; the new flags' one-line errors ----------------------------------------------


@pytest.mark.slow
def test_bench_split_tiny_runs():
    """python tests/bench_split.py --tiny: every stage runs and reports a positive clips/hour."""
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "bench_split.py"), "--tiny"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("stage ")]
    stages = {row[1] for row in rows}
    assert {"read", "static", "motion", "sam2", "caption", "remover"} <= stages, r.stdout
    assert all(float(row[row.index("clips/hour") - 1]) > 0 for row in rows), r.stdout


BAD_FLAGS = [(["--resize", "squash"], "--resize squash"), (["--static-rule", "mean"], "--static-rule mean"),
             (["--remover-sampler", "ddim"], "--remover-sampler ddim"), (["--vlm-tokens", "0"], "--vlm-tokens 0"),
             (["--vlm-tokens", "99999"], "--vlm-tokens 99999"), (["--val-videos", "NOPE"], "--val-videos NOPE")]


@pytest.mark.parametrize("flags,words", BAD_FLAGS, ids=[w for _, w in BAD_FLAGS])
def test_bad_release_flag_is_one_line_before_any_work(tmp_path, flags, words):
    toy_videos(tmp_path, [0])
    with pytest.raises(BadInput) as e:
        split("--videos", tmp_path, "--out", tmp_path / "out", *FAST, *flags)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
