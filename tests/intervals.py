"""
Bootstrap intervals of a scored run's means (on demand, not part of the suite): each metric's mean over the records
of RESULTS_DIR/eval/metrics.jsonl with a 95% percentile interval from resampling the records (seeded).

    python tests/intervals.py results/heldout-50000                # the held-out check of docs/toy-world.md
    python tests/intervals.py results/toy-full --resamples 5000 --seed 1
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluate import COLUMNS  # noqa: E402  (the metrics and their order, as the summary tables show them)


def intervals(rows, resamples=2000, seed=0, level=0.95):
    """metrics.jsonl rows -> {metric: (n, mean, low, high)} over the records that have a number for it."""
    rng, out = np.random.default_rng(seed), {}
    for key, _, _ in COLUMNS:
        v = np.array([r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
                      and not math.isnan(r[key])], float)
        if len(v):
            means = v[rng.integers(0, len(v), (resamples, len(v)))].mean(1)
            lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
            out[key] = (len(v), float(v.mean()), float(lo), float(hi))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a results folder holding eval/metrics.jsonl (evaluate.py results), or the eval "
                                   "folder itself")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the records")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    a = p.parse_args()
    f = next((x for x in (Path(a.results) / "eval" / "metrics.jsonl", Path(a.results) / "metrics.jsonl")
              if x.is_file()), None)
    if f is None:
        sys.exit(f"{a.results}: no eval/metrics.jsonl (run python evaluate.py results {a.results} first)")
    rows = [r for r in map(json.loads, filter(str.strip, f.read_text().splitlines())) if r.get("status", "ok") == "ok"]
    labels = {k: lab for k, lab, _ in COLUMNS}
    for key, (n, mean, lo, hi) in intervals(rows, a.resamples, a.seed).items():
        print(f"{labels[key]}: n={n} mean {mean:.3f} 95% [{lo:.3f}, {hi:.3f}]")
