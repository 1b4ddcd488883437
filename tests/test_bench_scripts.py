"""The measurement scripts of issue 16 run end to end at toy size, so the GPU ones never rot untested."""
import pytest
import importlib.util
import math
import re
from pathlib import Path

import torch

import dit
import toy
import vae
from plumbing import weights

HERE = Path(__file__).resolve().parent


def load(name):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def numbers(obj):
    """Every int/float inside a JSON-like object (None, the CPU's unmeasured memory, is left out)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.mark.slow
def test_realscale_tiny_prints_every_row(capsys):
    torch.set_num_threads(1)
    res = load("bench_realscale").main(["--tiny", "--device", "cpu", "--iters", "2"])
    out = capsys.readouterr().out
    for row in ["a1", "a2", "a3", "a4", "b", "c1", "c2", "c3", "c4", "d1", "d2"]:
        assert re.search(rf"^\| {row} \| .+ \|$", out, re.M), f"row {row} missing:\n{out}"
    assert "OOM" not in out
    assert [(r["mode"], r["batch"]) for r in res["a"]] == [("fp32+autocast", 1), ("fp32+autocast", 2),
                                                           ("bf16 params", 1), ("bf16 params", 2)]
    vals = numbers(res)
    assert len(vals) > 40 and all(math.isfinite(v) for v in vals)
    assert all(r["s_per_step"] > 0 and r["mfu"] > 0 for r in res["a"]) and res["b"][0]["out_finite"]
    assert [r["out"] for r in res["c"]] == [[1, 16, 3, 16, 16]] * 2 + [[1, 3, 9, 64, 64]] * 2
    assert all(r["out_finite"] for r in res["c"])
    for r in res["d"]:              # bf16 differs from fp32, but only by rounding (a zero output would give nan)
        assert 1e-4 < r["mean_rel"] < 0.05 and 1e-4 < r["max_rel"] < 0.05, r
    assert out.strip().splitlines()[-1].startswith("JSON {")


def test_realscale_flops_formula():
    b = load("bench_realscale")
    cfg = dit.PRESETS["stm-5b-i2v"]
    n = sum(p.numel() for p in weights.meta_model(dit.DiT, cfg).parameters())
    seq = 13 * 30 * 45 + 226                                      # video + text tokens at 49x480x720
    assert b.flops_per_sample(n, cfg, (13, 60, 90)) == 6 * n * seq + 12 * 42 * seq ** 2 * 3072
    assert b.flops_per_sample(n, cfg, (13, 60, 90), train=False) == 2 * n * seq + 4 * 42 * seq ** 2 * 3072


def test_bgnoise_tiny_one_row_per_sigma(tmp_path, capsys):
    torch.set_num_threads(1)
    write = toy.write_data
    write(tmp_path / "clips", 4)
    torch.manual_seed(0)
    vae.VAE(vae.PRESETS["toy"]).save_pretrained(tmp_path / "vae")
    rows = load("bench_bgnoise").main(["--data", str(tmp_path / "clips"), "--model", str(tmp_path / "vae"),
                                       "--clips", "4", "--draws", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    table = [l for l in out.splitlines() if re.match(r"^\| (2\.5|16|50|84|97\.5)%|^\| drawn", l)]
    assert len(table) == 6 and [r[0] for r in rows] == ["2.5%", "16%", "50%", "84%", "97.5%", "drawn"]
    sigmas = [r[1] for r in rows[:5]]
    assert sigmas == sorted(sigmas) and abs(sigmas[2] - math.exp(-3.0)) < 1e-12
    for name, sigma, r in rows:
        assert all(math.isfinite(v) for v in r.values()), (name, r)
        if sigma is not None:       # the shortcut adds sigma * N(0, 1): its rms is sigma (98k elements: ~0.3% noise)
            assert abs(r["S-c"] / sigma - 1) < 0.02, (name, r["S-c"], sigma)
        # F and S are independent: rms(F-S)^2 = rms(F-c)^2 + rms(S-c)^2 up to the cross term's noise
        assert abs(r["F-S/F-c"] ** 2 - 1 - r["S/F"] ** 2) < 0.1 * (1 + r["S/F"] ** 2), (name, r)
    assert re.search(r"^drawn sigma: .* -> (NOT )?negligible", out, re.M)


def test_intervals_of_a_scored_run():
    """tests/intervals.py: the mean over the records that have a number, a 95% interval around it that resampling
    makes (zero width for a constant metric), NaN / bool / missing values left out. (Mutation tried: the percentiles
    at 5 and 95 -> the interval narrows below the stated level and the bounds check against a wide draw fails.)"""
    import numpy as np
    intervals = load("intervals").intervals
    rng = np.random.default_rng(0)
    iou = rng.uniform(0, 1, 400)
    rows = [{"toy_shape_iou": float(v), "toy_bg_psnr": 30.0, "toy_tint_match": True} for v in iou]
    rows += [{"toy_shape_iou": float("nan")}, {}]
    got = intervals(rows, resamples=4000, seed=1)
    n, mean, lo, hi = got["toy_shape_iou"]
    assert n == 400 and mean == pytest.approx(iou.mean())
    se = iou.std() / np.sqrt(len(iou))                     # the normal 95% half-width is 1.96 standard errors
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(mean + 1.96 * se, abs=0.25 * se)
    assert got["toy_bg_psnr"] == (400, 30.0, 30.0, 30.0) and "toy_tint_match" not in got


def test_intervals_across_training_seeds():
    """tests/intervals.py --across: the mean of the runs' means with a Student-t 95% interval over the runs (checked
    against the formula by hand), a metric kept only where every run has it.
    (Mutation tried: the normal 1.96 instead of t(2) = 4.303 -> the 3-run interval is half as wide and this fails.)"""
    import numpy as np
    across = load("intervals").across
    runs = [[{"toy_shape_iou": v, "toy_colour_err": 10.0 * k} for v in (m - 0.1, m + 0.1)]
            for k, m in enumerate((0.4, 0.5, 0.9))]
    runs[1].append({"toy_shape_iou": float("nan")})                  # left out, not a 0
    runs[2][0]["toy_tint_match"] = 1.0                                # only one run has it: no interval
    got = across(runs)
    half = 4.303 * np.std([0.4, 0.5, 0.9], ddof=1) / np.sqrt(3)
    assert got["toy_shape_iou"][:2] == (3, pytest.approx(0.6))
    assert got["toy_shape_iou"][2:] == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    assert got["toy_colour_err"][1] == pytest.approx(10.0) and "toy_tint_match" not in got
    assert across(runs[:1])["toy_shape_iou"] == (1, pytest.approx(0.4), pytest.approx(0.4), pytest.approx(0.4))


def test_intervals_paired_differences():
    """tests/intervals.py --minus: per record, first run minus second, matched by folder and id (not by position);
    a metric only where both have a number. (Mutation tried: matching by position -> the shuffled second run's
    differences are wrong and this fails.)"""
    differences = load("intervals").differences
    a = [[{"id": "t0", "toy_shape_iou": 0.5, "toy_tint_match": 1.0}, {"id": "t1", "toy_shape_iou": 0.7}],
         [{"id": "t0", "toy_shape_iou": 0.2}]]
    b = [[{"id": "t1", "toy_shape_iou": 0.6}, {"id": "t0", "toy_shape_iou": 0.4, "toy_tint_match": None}],
         [{"id": "t0", "toy_shape_iou": 0.1}]]
    got = differences(a, b)
    assert [sorted(d) for d in got] == [["toy_shape_iou"]] * 3
    assert [d["toy_shape_iou"] for d in got] == [pytest.approx(v) for v in (0.1, 0.1, 0.1)]


def test_intervals_groups(tmp_path):
    """tests/intervals.py --by: a record's group is its triplet's sprite kind (from results.jsonl) or whether its
    subject stayed at the fg's place in at least half of the frames."""
    import json
    group_of = load("intervals").group_of
    (tmp_path / "results.jsonl").write_text("".join(json.dumps({"id": i, "expect": {"kind": k}}) + "\n"
                                                    for i, k in (("t0", "boat"), ("t1", "car"))))
    kind, place = group_of(tmp_path, "kind"), group_of(tmp_path, "placement")
    assert [kind({"id": i}) for i in ("t0", "t1", "t9")] == ["boat", "car", "?"]
    assert [place({"toy_copy_paste": v}) for v in (0.5, 0.49, None)] == ["kept", "moved", "moved"]
