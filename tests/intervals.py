"""
Intervals of scored runs' means (on demand, not part of the suite).

Pooled (default): each metric's mean over the records of every RESULTS_DIR/eval/metrics.jsonl given, with a 95%
percentile interval from resampling the records (seeded): the spread of a mean over that many drawn triplets.
--across: each RESULTS_DIR is one training seed of the same recipe on the same triplets: the mean of the runs'
means with a 95% Student-t interval over the runs (the spread that retraining gives).

    python tests/intervals.py results/heldout-50000                # the held-out check of docs/toy-world.md
    python tests/intervals.py results/toy-full --resamples 5000 --seed 1
    python tests/intervals.py --across results/t4-full-s0 results/t4-full-s1 results/t4-full-s2 --row
    python tests/intervals.py results/ship-50000 --by placement     # kept in place vs moved (copy-paste >= 0.5 or not)
    python tests/intervals.py results/a-50000 results/a-60000 --minus results/b-50000 results/b-60000  # paired
--minus: the same triplets scored for a second run, folder for folder: the interval of the mean per-record
difference (first run minus second, records matched by id), which retraining noise between triplets cannot blur.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluate import COLUMNS  # noqa: E402  (the metrics and their order, as the summary tables show them)


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t_0.975(dof)


def numbers(rows, key):
    """The finite numbers of one metric over metrics.jsonl rows (None, NaN, booleans and missing ones left out)."""
    return np.array([r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
                     and not math.isnan(r[key])], float)


def across(runs, level=0.95):
    """[rows of one run, ...] -> {metric: (runs, mean of the run means, low, high)}: a Student-t interval over
    the runs' means (zero width for one run); a metric counts where every run has a number for it."""
    assert level == 0.95, "the t table holds the 95% quantiles only"
    out = {}
    for key, _, _ in COLUMNS:
        means = [v.mean() for v in (numbers(rows, key) for rows in runs) if len(v)]
        if len(means) == len(runs) and means:
            m = float(np.mean(means))
            half = T95[len(means) - 1] * float(np.std(means, ddof=1)) / math.sqrt(len(means)) if len(means) > 1 \
                else 0.0
            out[key] = (len(means), m, m - half, m + half)
    return out


def read_rows(results):
    """A results folder (or its eval/ folder) -> its scored records; exits with a one-line reason if unscored."""
    f = next((x for x in (Path(results) / "eval" / "metrics.jsonl", Path(results) / "metrics.jsonl")
              if x.is_file()), None)
    if f is None:
        sys.exit(f"{results}: no eval/metrics.jsonl (run python evaluate.py results {results} first)")
    return [r for r in map(json.loads, filter(str.strip, f.read_text().splitlines())) if r.get("status", "ok") == "ok"]


def group_of(results, by):
    """--by: a record -> its group: the sprite kind its triplet names ("kind", from RESULTS_DIR/results.jsonl), or
    "kept" / "moved" by whether the subject stays at the input fg's place in at least half of the frames."""
    if by == "placement":
        return lambda r: "kept" if (r.get("toy_copy_paste") or 0) >= 0.5 else "moved"
    kinds = {}
    for line in filter(str.strip, (Path(results) / "results.jsonl").read_text().splitlines()):
        rec = json.loads(line)
        kinds[str(rec.get("id"))] = (rec.get("expect") or {}).get("kind", "?")
    return lambda r: kinds.get(str(r.get("id")), "?")


def differences(runs, others):
    """[rows of one folder, ...] and the same folders of a second run -> one row per record both scored (matched by
    folder and id) holding, per metric, first minus second."""
    out = []
    for rows, other in zip(runs, others):
        by_id = {str(r.get("id")): r for r in other}
        for r in rows:
            o = by_id.get(str(r.get("id")))
            if o is not None:
                out.append({k: r[k] - o[k] for k, _, _ in COLUMNS if numbers([r], k).size and numbers([o], k).size})
    return out


def intervals(rows, resamples=2000, seed=0, level=0.95):
    """metrics.jsonl rows -> {metric: (n, mean, low, high)} over the records that have a number for it."""
    rng, out = np.random.default_rng(seed), {}
    for key, _, _ in COLUMNS:
        v = numbers(rows, key)
        if len(v):
            means = v[rng.integers(0, len(v), (resamples, len(v)))].mean(1)
            lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
            out[key] = (len(v), float(v.mean()), float(lo), float(hi))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results folders holding eval/metrics.jsonl (evaluate.py results), or "
                                              "their eval folders")
    p.add_argument("--across", action="store_true", help="one folder per training seed: a t interval over the "
                                                         "folders' means instead of pooling their records")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the records (pooled)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (pooled)")
    p.add_argument("--by", choices=["kind", "placement"], default=None,
                   help="pooled: also the intervals of each group of records (sprite kind, or kept / moved)")
    p.add_argument("--minus", nargs="+", default=None, metavar="RESULTS",
                   help="pooled: the same triplets scored by a second run, one folder per results folder, in order: "
                        "intervals of the paired differences instead")
    p.add_argument("--row", action="store_true", help="also print one markdown table row: 'mean [low, high]' per "
                                                      "metric, in evaluate.py's column order")
    a = p.parse_args()
    runs = [read_rows(r) for r in a.results]
    if a.minus and (a.across or len(a.minus) != len(a.results)):
        sys.exit(f"--minus takes one folder per results folder ({len(a.results)}), and not with --across")
    pooled = differences(runs, [read_rows(r) for r in a.minus]) if a.minus else [r for rows in runs for r in rows]
    got = across(runs) if a.across else intervals(pooled, a.resamples, a.seed)
    labels = {k: lab for k, lab, _ in COLUMNS}
    for key, (n, mean, lo, hi) in got.items():
        print(f"{labels[key]}: n={n}{' runs' if a.across else ''} mean {mean:.3f} 95% [{lo:.3f}, {hi:.3f}]")
    if a.by and not a.across:
        groups = {}
        for results, rows in zip(a.results, runs):
            key = group_of(results, a.by)
            for r in rows:
                groups.setdefault(key(r), []).append(r)
        for name, rows in sorted(groups.items()):
            for key, (n, mean, lo, hi) in intervals(rows, a.resamples, a.seed).items():
                if key in ("toy_shape_iou", "toy_size_ratio", "toy_colour_err"):
                    print(f"  {a.by} {name}: {labels[key]}: n={n} mean {mean:.3f} 95% [{lo:.3f}, {hi:.3f}]")
    if a.row:
        f = lambda v: f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        print("| " + " | ".join(f"{f(m)} [{f(lo)}, {f(hi)}]" for _, m, lo, hi in got.values()) + " |")
        print("| " + " | ".join(labels[k] for k in got) + " |")
