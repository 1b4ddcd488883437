"""decompose.py, sample.py --triplets and evaluate.py under `torchrun --standalone --nproc_per_node=2` (CPU, gloo):
two processes write what one writes (the dataset's records and lists in the same order and byte-identical clip
files; the same results and metrics), and a SIGKILL of every process mid-job followed by a rerun of the same command
ends with every item exactly once (Ranks, Progress, the per-rank record files joined by rank 0)."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from plumbing.records import read_records
from plumbing.video import read_video, write_video
import decompose
import evaluate
import sample
import toy
from conftest import kill_all, single_thread, tiny_composer

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
SPLIT = ["--frames", "9", "--size", "64", "64", "--strides", "1", "2", "--threads", "1", "--dilate", "2",
         "--min-fg", "0", "--max-clips", "2", "--inpainter", "none"]


one_thread = single_thread()


def torchrun(script, *argv, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / script),
           *map(str, argv)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def kill_when_written(p, folder, stem, tag):
    """Once a rank has appended its first record to <stem>.rank-*.jsonl: SIGKILL torchrun and both workers (every
    process whose command line holds `tag`), as when a node dies mid-job."""
    t0 = time.time()
    while not any(f.stat().st_size for f in Path(folder).glob(f"{stem}.rank-*.jsonl")):
        assert p.poll() is None and time.time() - t0 < 120, "no record appeared"
        time.sleep(0.02)
    kill_all(tag)
    p.wait()
    return [r for f in sorted(Path(folder).glob(f"{stem}.rank-*.jsonl")) for r in read_records(f).values()]


def shares(stdout, desc):
    """The items each rank did, from its last progress line `[rank R/W] desc: n/N items, ...`."""
    last = {}
    for m in re.finditer(rf"\[rank (\d+)/\d+\] {desc}[^:\n]*: (\d+)/\d+ items", stdout):
        last[int(m[1])] = int(m[2])
    return [last[k] for k in sorted(last)]


def lines(path):
    return Path(path).read_text().splitlines()


# ---- decompose.py --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for s in range(4):
        write_video(root / f"toy{s}.mp4", toy.clip(s, 25, 64, 64)["video"], 8)
    return root


def check_same_dataset(one, two, ordered=True):
    """The records and the five lists of `two` are those of `one` (in order, or as sets) and every clip file is the
    same bytes."""
    # the records, less the stamps (size and time) of the files each wrote: the same bytes at other times
    unstamped = lambda f: [json.dumps({k: v for k, v in json.loads(x).items() if k != "stamps"}) for x in lines(f)]
    a, b = unstamped(one / "metadata.jsonl"), unstamped(two / "metadata.jsonl")
    ids = [json.loads(x)["id"] for x in b]
    assert len(ids) == len(set(ids)), "a clip recorded twice"
    assert (a == b) if ordered else (sorted(a) == sorted(b))
    for name in ("videos.txt", "fg.txt", "bg.txt", "masks.txt", "prompts.txt"):
        assert (lines(one / name) == lines(two / name)) if ordered else sorted(lines(one / name)) == sorted(
            lines(two / name)), name
    for rel in (x for n in ("videos.txt", "fg.txt", "bg.txt", "masks.txt") for x in lines(one / n)):
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    assert not list(two.glob("metadata.rank-*.jsonl"))                   # joined, then removed


@pytest.mark.slow
def test_decompose_two_processes_and_kill(videos, tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    decompose.main(decompose.parser.parse_args(["--videos", str(videos), "--out", str(one), *SPLIT]))
    n = len(lines(one / "metadata.jsonl"))
    assert n >= 6 and len(lines(one / "videos.txt")) >= 3
    r = torchrun("decompose.py", "--videos", videos, "--out", two, *SPLIT)
    assert shares(r.stdout, "decompose") == [n - n // 2, n // 2] and "clips/s, 2 process(es)" in r.stdout
    check_same_dataset(one, two)
    p = torchrun("decompose.py", "--videos", videos, "--out", killed, *SPLIT, wait=False)
    first = kill_when_written(p, killed, "metadata", str(killed))
    assert 1 <= len(first) < n and not (killed / "videos.txt").exists()
    r = torchrun("decompose.py", "--videos", videos, "--out", killed, *SPLIT)     # the same command again
    assert f": {n - len(first)} to do" in r.stdout and sum(shares(r.stdout, "decompose")) == n - len(first)
    check_same_dataset(one, killed, ordered=False)


# ---- sample.py --triplets and evaluate.py ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def composer(tiny_base, tmp_path_factory):
    """A tiny random composer (train.py output layout) and 6 toy triplets."""
    out = tiny_composer(tmp_path_factory.mktemp("composer"), tiny_base)
    toy.write_triplets(out / "tri", 6)
    return out


def results_by_id(folder):
    recs = [json.loads(x) for x in lines(folder / "results.jsonl")]
    assert len(recs) == len({r["id"] for r in recs}), "a triplet recorded twice"
    # less the stamps (size and time) of the files each record wrote: the same videos, written at other times
    return {r["id"]: {**{k: v for k, v in r.items() if k != "stamps"}, "result": Path(r["result"]).name} for r in recs}


@pytest.mark.slow
def test_sample_two_processes_and_kill(composer, tmp_path):
    args = ["--ckpt", composer, "--triplets", composer / "tri" / "triplets.jsonl", "--steps", "2", "--batch", "1",
            "--sampler", "ddim", "--guidance", "2"]
    sample.main(sample.parser.parse_args([str(a) for a in args + ["--out", tmp_path / "one"]]))
    one = results_by_id(tmp_path / "one")
    assert sorted(one) == [f"t{i:04d}" for i in range(6)]
    killed = tmp_path / "killed"
    p = torchrun("sample.py", *args, "--out", killed, wait=False)
    first = kill_when_written(p, killed, "results", str(killed))
    assert 1 <= len(first) < 6
    r = torchrun("sample.py", *args, "--out", killed)                     # the same command again
    assert f"{6 - len(first)} composition(s)" in r.stdout and sum(shares(r.stdout, "sample")) == 6 - len(first)
    two = results_by_id(killed)
    assert two == one and not list(killed.glob("results.rank-*.jsonl"))
    for k, rec in one.items():
        assert np.array_equal(read_video(tmp_path / "one" / rec["result"])[0],
                              read_video(killed / rec["result"])[0]), k


@pytest.mark.slow
def test_evaluate_two_processes_and_kill(composer, tmp_path):
    tri = composer / "tri"
    recs = [json.loads(x) for x in lines(tri / "triplets.jsonl")]
    res = tmp_path / "res"
    res.mkdir()
    (res / "results.jsonl").write_text("".join(json.dumps({**r, **{k: str(tri / r[k]) for k in (
        "fg", "mask", "bg", "reference")}, "result": str(tri / r["reference"])}) + "\n" for r in recs))
    one = evaluate.main(evaluate.parser.parse_args(["results", str(res), "--out", str(res / "one")]))
    assert one["n"] == 6
    r = torchrun("evaluate.py", "results", res, "--out", res / "two")
    assert shares(r.stdout, "evaluate") == [3, 3] and "6 records in" in r.stdout
    assert lines(res / "one" / "metrics.jsonl") == lines(res / "two" / "metrics.jsonl")
    assert (res / "one" / "summary.json").read_text() == (res / "two" / "summary.json").read_text()
    p = torchrun("evaluate.py", "results", res, "--out", res / "killed", wait=False)
    first = kill_when_written(p, res / "killed", "metrics", str(res / "killed"))
    assert 1 <= len(first) < 6
    r = torchrun("evaluate.py", "results", res, "--out", res / "killed")     # the same command again
    assert f"{6 - len(first)} records in" in r.stdout
    assert sorted(lines(res / "one" / "metrics.jsonl")) == sorted(lines(res / "killed" / "metrics.jsonl"))
    assert not list((res / "killed").glob("metrics.rank-*.jsonl"))
