"""Bad input to decompose.py and evaluate.py (issue 17): every unusable flag value or file ends the run with one
line naming it (BadInput -> `<script>: error: ...`, exit code 2) before any clip or record is computed and
before anything is written; batch work skips and reports a bad item and goes on; nothing an earlier run wrote is
lost (merge adds to a dataset, evaluate appends and resumes, runs with other flags are refused)."""
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plumbing.cli import BadInput
from plumbing.records import read_records
from plumbing.dataset import read_lists, read_metadata
from plumbing.video import mask_to_rgb, read_video, write_video
import decompose
import evaluate
import toy
from conftest import SPLIT_FAST, single_thread, split

ROOT = Path(__file__).resolve().parents[1]
FAST = SPLIT_FAST


one_thread = single_thread()


def score(*argv):
    return evaluate.main(evaluate.parser.parse_args([str(a) for a in argv]))


def videos(folder, seeds):
    for s in seeds:
        write_video(folder / f"toy{s}.mp4", toy.clip(s, 25, 64, 64)["video"], 8)
    return folder


def cli(script, *argv):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_line_error(r, script, *words):
    """Exit code 2, and stderr is one line `<script>: error: ...` holding `words`: no traceback."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), r.stderr
    assert all(w in lines[0] for w in words), lines[0]


# ---- decompose.py --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["abc", "1", "0/0", "2/2", "5/2", "1/-2", "-1/2", "1/2/3", "a/b", ""])
def test_shard_must_be_i_of_n(tmp_path, spec):
    with pytest.raises(BadInput, match="--shard"):
        split("--videos", tmp_path, "--out", tmp_path / "out", f"--shard={spec}")
    assert not (tmp_path / "out").exists()                              # refused before anything is written


def test_shard_parses():
    assert decompose.parse_shard("3/8") == (3, 8) and decompose.parse_shard("0/1") == (0, 1)


BAD_SPLIT_FLAGS = [
    (["--frames", "0"], "--frames 0"), (["--frames", "-3"], "--frames -3"), (["--size", "0", "64"], "--size 0 64"),
    (["--strides", "1", "0"], "--strides 1 0"), (["--max-clips", "0"], "--max-clips"), (["--fps", "0"], "--fps 0"),
    (["--seed", "-1"], "--seed"), (["--min-fg", "0.5", "--max-fg", "0.1"], "--min-fg/--max-fg"),
    (["--max-fg", "1.5"], "--min-fg/--max-fg"), (["--dilate", "-1"], "--dilate"), (["--workers", "0"], "--workers"),
    (["--threads", "-2"], "--threads"), (["--vlm-frames", "0"], "--vlm-frames"),
    (["--template", "{foo} walks"], "--template"), (["--template", "a {"], "--template"),
    (["--segmenter", "gt"], "--masks is required"), (["--segmenter", "gt", "--masks", "NOPE"], "--masks NOPE"),
    (["--inpainter", "cmd"], "--inpaint-cmd is required"),
    (["--inpainter", "cmd", "--inpaint-cmd", "no_such_program_xyz {video} {mask} {out}"], "no_such_program_xyz"),
    (["--inpainter", "cmd", "--inpaint-cmd", "cp {video} {oops}"], "--inpaint-cmd"),
    (["--inpainter", "cmd", "--inpaint-cmd", "cp {video} x.mp4"], "{out}"),
    (["--inpainter", "cmd", "--inpaint-cmd", "cp 'unclosed {out}"], "--inpaint-cmd"),
    (["--captioner", "file"], "--captions is required"),
    (["--captioner", "file", "--captions", "NOPE"], "--captions NOPE"),
]


@pytest.mark.parametrize("flags,words", BAD_SPLIT_FLAGS, ids=[w for _, w in BAD_SPLIT_FLAGS])
def test_bad_split_flag_is_one_line_before_any_work(tmp_path, flags, words):
    videos(tmp_path, [0])
    with pytest.raises(BadInput, match=None) as e:
        split("--videos", tmp_path, "--out", tmp_path / "out", *FAST, *flags)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_bad_split_inputs_refused_before_any_clip(tmp_path):
    """Files that do not fit the sources are found from the headers alone, before a clip is split or written."""
    src = videos(tmp_path / "v", [0, 1])
    out = tmp_path / "out"
    (tmp_path / "caps.tsv").write_text("toy0\ta toy clip\n")                       # toy1 has none
    with pytest.raises(BadInput, match=r"--captions .*no caption for 1 source\(s\): toy1"):
        split("--videos", src, "--out", out, *FAST, "--captioner", "file", "--captions", tmp_path / "caps.tsv")
    (tmp_path / "caps.jsonl").write_text('{"video": "toy0", "caption": "a"}\n{"video": "toy1", "caption"\n')
    with pytest.raises(BadInput, match=r"caps.jsonl:2: not a JSON object"):
        split("--videos", src, "--out", out, *FAST, "--captioner", "file", "--captions", tmp_path / "caps.jsonl")
    (tmp_path / "m").mkdir()
    write_video(tmp_path / "m" / "toy0.mp4", mask_to_rgb(toy.clip(0, 25, 64, 64)["mask"]), 8)
    with pytest.raises(BadInput, match=r"--masks .*no mask folder or video for 1 source\(s\): .*toy1.mp4"):
        split("--videos", src, "--out", out, *FAST, "--segmenter", "gt", "--masks", tmp_path / "m")
    with pytest.raises(BadInput, match=r"--frames 33: longer than every readable video \(the longest has 25"):
        split("--videos", src, "--out", out, *[a if a != "9" else "33" for a in FAST])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "bad" / "b.mp4").write_bytes(b"")
    with pytest.raises(BadInput, match="none of the 2 videos could be read"):
        split("--videos", tmp_path / "bad", "--out", out, *FAST)
    with pytest.raises(BadInput, match="no videos"):
        split("--videos", tmp_path / "nothing-here", "--out", out, *FAST)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="--out .*is a file"):
        split("--videos", src, "--out", tmp_path / "file", *FAST)
    assert not out.exists()


def test_source_names_never_collide_or_split_a_line(tmp_path):
    """'a b.mp4' beside 'a_b.mp4', 'c.mp4' beside 'c.mov', a name holding a newline: every source keeps its own
    clips (mutation: the old source_keys -> one source lost, or a traceback for c.mp4 + c.mov), and the five lists
    stay aligned, one line per kept clip."""
    src = tmp_path / "v"
    src.mkdir()
    for i, name in enumerate(["a b.mp4", "a_b.mp4", "c.mp4", "c.mov", "d\ne.mp4"]):
        write_video(src / name, toy.clip(i, 25, 64, 64)["video"], 8)
    split("--videos", src, "--out", tmp_path / "out", *FAST)
    recs = read_records(tmp_path / "out" / "metadata.jsonl")
    assert len({r["source"] for r in recs.values()}) == 5 and len(recs) == 5
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", i) for i in recs)
    kept = [r for r in recs.values() if r["status"] == "ok"]
    lists = {n: (tmp_path / "out" / n).read_text().split("\n")[:-1] for n in
             ("prompts.txt", "videos.txt", "fg.txt", "bg.txt", "masks.txt")}
    assert all(len(v) == len(kept) for v in lists.values()), {k: len(v) for k, v in lists.items()}


def test_captions_with_line_breaks_keep_the_lists_aligned(tmp_path):
    """A --template (or caption) holding \\r, U+0085 or U+2028 is one line in prompts.txt (mutation: one_line
    left out of finalize -> prompts.txt longer than videos.txt and train.py refuses the dataset)."""
    out = tmp_path / "out"
    split("--videos", videos(tmp_path / "v", [0, 1]), "--out", out, *FAST, "--template", "a\rb\u0085c\u2028d {stem}")
    rows = read_lists(out)
    assert len(rows) == len((out / "videos.txt").read_text().split("\n")) - 1 == 2
    assert [r["caption"] for r in rows] == ["a b c d toy0", "a b c d toy1"]


def test_a_byte_order_mark_in_the_lists_loses_no_clip(tmp_path):
    """Lists saved by an editor that adds a BOM: clip 0 is read like the others (mutation: read_text() without
    utf-8-sig -> its path starts with U+FEFF and the clip is missing)."""
    d = tmp_path / "d"
    toy.write_data(d, 2)
    for name in ("prompts.txt", "videos.txt", "fg.txt", "bg.txt", "masks.txt"):
        (d / name).write_bytes(b"\xef\xbb\xbf" + (d / name).read_bytes().replace(b"\n", b"\r\n"))
    rows = read_lists(d)
    assert len(rows) == 2 and all(Path(r[k]).is_file() for r in rows for k in ("video", "fg", "bg", "mask"))
    assert not rows[0]["caption"].startswith("\ufeff") and not rows[0]["caption"].endswith("\r")


def test_rerun_with_other_flags_is_refused_and_changes_nothing(tmp_path):
    """A rerun resumes by clip id, and ids do not say how a clip was made: other flags would mix two kinds of
    clip in one dataset, so they are refused; the same flags resume (nothing to do)."""
    src, out = videos(tmp_path / "v", [0]), tmp_path / "out"
    split("--videos", src, "--out", out, *FAST)
    before = (out / "metadata.jsonl").read_text()
    assert before and json.loads((out / "metadata.settings.json").read_text())["frames"] == 9
    with pytest.raises(BadInput, match="--frames 9, this run's flags say --frames 13"):
        split("--videos", src, "--out", out, *[a if a != "9" else "13" for a in FAST])
    with pytest.raises(BadInput, match="--min-fg 0.0.*--min-fg 0.2"):
        split("--videos", src, "--out", out, *FAST, "--min-fg", "0.2")
    split("--videos", src, "--out", out, *FAST, "--workers", "2", "--threads", "1")   # no clip depends on these
    assert (out / "metadata.jsonl").read_text() == before


def test_merge_adds_to_an_existing_dataset(tmp_path, capsys):
    """<out> already holds clips of its own; shards of other videos merged into it add theirs; none is lost, and
    merging again adds nothing twice."""
    out = tmp_path / "out"
    split("--videos", videos(tmp_path / "a", [0, 1]), "--out", out, *FAST)
    own = {r["id"] for r in read_metadata(out)}
    for i in range(2):
        split("--videos", videos(tmp_path / "b", [2, 3, 4]), "--out", out, *FAST, "--shard", f"{i}/2")
    sharded = {r["id"] for i in range(2) for r in read_records(out / f"metadata.shard-{i}-of-2.jsonl").values()}
    assert len(own) == 2 and len(sharded) == 3 and not own & sharded
    for _ in range(2):
        split("--merge", "--out", out)
        recs = read_metadata(out)
        assert sorted(r["id"] for r in recs) == sorted(own | sharded)           # all, each once
        rows = read_lists(out)
        assert len(rows) == sum(r["status"] == "ok" for r in recs) == 5
        assert all(Path(r[k]).is_file() for r in rows for k in ("video", "fg", "bg", "mask"))
    assert "0 new records" in capsys.readouterr().out                           # the second merge added none


def test_merge_refuses_lists_it_would_drop(tmp_path):
    """A folder whose lists hold clips that no metadata.jsonl record accounts for (another tool's dataset) would
    lose them when the lists are rewritten: refused, and the folder is left as it was."""
    out = tmp_path / "out"
    split("--videos", videos(tmp_path / "b", [2, 3]), "--out", out, *FAST, "--shard", "0/2")
    (out / "videos.txt").write_text("videos/theirs.mp4\n")
    (out / "prompts.txt").write_text("their clip\n")
    with pytest.raises(BadInput, match="videos.txt lists 1 clips that its metadata.jsonl does not hold"):
        split("--merge", "--out", out)
    assert (out / "videos.txt").read_text() == "videos/theirs.mp4\n" and not (out / "metadata.jsonl").exists()
    with pytest.raises(BadInput, match="videos.txt lists 1 clips"):                    # nor written into
        split("--videos", videos(tmp_path / "b", [2, 3]), "--out", out, *FAST)
    with pytest.raises(BadInput, match="no metadata.shard-"):
        split("--merge", "--out", tmp_path / "empty")


@pytest.mark.parametrize("argv,words", [(["--shard", "0/0"], ["--shard 0/0"]), (["--frames", "0"], ["--frames 0"]),
                                        (["--merge"], ["no metadata.shard-"])])
def test_split_cli_prints_one_line_and_exits_2(tmp_path, argv, words):
    one_line_error(cli("decompose.py", "--videos", tmp_path, "--out", tmp_path / "out", *argv), "decompose.py", *words)


# ---- evaluate.py ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triplets(tmp_path_factory):
    """2 toy triplets as results records (their reference composites as the results), absolute paths."""
    root = tmp_path_factory.mktemp("trip")
    lines = toy.write_triplets(root, 2)
    return [{**l, **{k: str(root / l[k]) for k in ("fg", "mask", "bg", "reference")},
             "result": str(root / l["reference"])} for l in lines]


def results(folder, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(l if isinstance(l, str) else json.dumps(l) + "\n" for l in lines))
    return folder


def strict_json(text):
    """json.loads that refuses NaN / Infinity, as every other JSON reader does."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


BAD_EVAL_FLAGS = [("results", ["--limit", "-1"], "--limit -1"),
                  ("results", ["--max-frames", "-2"], "--max-frames -2"),
                  ("results", ["--max-side", "-1"], "--max-side -1"),
                  ("results", ["--cp-radius", "0"], "--cp-radius 0"),
                  ("results", ["--toy-threshold", "-5"], "--toy-threshold"),
                  ("results", ["--device", "nonsense"], "--device nonsense"),
                  ("results", ["--swin", "NOPE.pth"], "NOPE.pth"),
                  ("results", ["--raft", "RAFT", "--raft-config", "NOCFG"], "NOCFG"),
                  ("results", ["--segmenter", "sam2"], "--segmenter sam2 needs --sam2"),
                  ("results", ["--segmenter", "sam2", "--sam2", "NOSAM"], "--sam2 NOSAM"),
                  ("results", ["--method", "stm"], "add --layout released"),
                  ("results", ["--layout", "released"], "needs --method"),
                  ("results", ["--layout", "released", "--method", "a", "b"], "at most 1"),
                  ("judge", ["--judge-frames", "0"], "--judge-frames 0"), ("judge", ["--limit", "-1"], "--limit -1"),
                  ("judge", ["--device", "nonsense"], "--device nonsense"),
                  ("judge", ["--layout", "released", "--method", "a", "b", "c"], "at most 2"),
                  ("study", ["--study-n", "-1"], "--study-n -1"), ("study", ["--method", "a"], "add --layout released"),
                  pytest.param("results", ["--device", "cuda"], "CUDA is not available",
                               marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"))]


@pytest.mark.parametrize("command,flags,words", BAD_EVAL_FLAGS)
def test_bad_eval_flag_is_one_line_before_any_work(tmp_path, triplets, command, flags, words):
    res = results(tmp_path / "res", triplets[:1])
    with pytest.raises(BadInput) as e:
        score(command, *([res] if command == "results" else [res, res]), *flags)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert [f.name for f in res.iterdir()] == ["results.jsonl"]                # nothing written, no eval/ nor judge-*/


@pytest.mark.parametrize("argv,words", [
    (["results", "R", "--compare", "X"], ["unrecognized arguments: --compare X"]),
    (["results", "R", "--judge-frames", "2"], ["unrecognized arguments: --judge-frames"]),
    (["compare", "R", "--layout", "released"], ["unrecognized arguments: --layout"]),
    (["judge", "A", "B", "--viclip", "V"], ["unrecognized arguments: --viclip"]),
    (["study", "A", "B", "--backend", "qwen"], ["unrecognized arguments: --backend"]),
    (["tally", "S", "A.json", "--method", "x"], ["unrecognized arguments: --method"]),
    (["tally", "S"], ["required: ANSWERS"]), (["judge", "A"], ["required: RUN_B"]),
    ([], ["required: {results,compare,judge,study,tally}"]), (["--results", "R"], ["invalid choice"])])
def test_each_subcommand_takes_only_its_own_flags(argv, words, capsys):
    """A flag of another subcommand (or none) is argparse's usage error, exit code 2, before anything is read."""
    with pytest.raises(SystemExit) as e:
        evaluate.parser.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and all(w in err for w in words), err


def test_bad_eval_inputs(tmp_path, triplets):
    with pytest.raises(BadInput, match="^results .*nope: no results.jsonl"):
        score("results", tmp_path / "nope")
    with pytest.raises(BadInput, match="^compare .*nope: no metrics.jsonl"):
        score("compare", tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="--out .*is a file"):
        score("results", results(tmp_path / "res", triplets[:1]), "--out", tmp_path / "file")
    good = results(tmp_path / "res", triplets[:1])
    for argv, words in ((["judge", tmp_path / "nope", good], "^judge .*nope: no results.jsonl"),
                        (["study", good, tmp_path / "nope"], "^study .*nope: no results.jsonl"),
                        (["judge", good, good], "the two runs are the same videos"),
                        (["tally", good, good / "results.jsonl"], "no readable key.json"),
                        (["results", tmp_path, "--layout", "released", "--method", "x"], "no sample-\\*/ folders")):
        with pytest.raises(BadInput, match=words):
            score(*argv)
    res = results(tmp_path / "allbad", [{**triplets[0], "result": str(tmp_path / "gone.mp4")}, "not json\n"])
    with pytest.raises(BadInput, match="none of its 1 records can be scored"):
        score("results", res)
    assert not (res / "eval").exists()


def test_bad_records_are_skipped_reported_and_the_rest_scored(tmp_path, triplets, capsys):
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    good, other = triplets
    res = results(tmp_path / "res", [
        good,                                                                   # 1: scored
        {**other, "result": str(tmp_path / "missing.mp4")},                     # 2: result not there
        "[1, 2]\n",                                                             # 3: not an object
        {**other, "fg": str(tmp_path / "junk.mp4")},                            # 4: fg unreadable
        {**other, "mask": str(tmp_path / "nomask.mp4")},                        # 5: mask not there
        {"id": "nokeys", "prompt": "x"},                                        # 6: no paths
        {**good, "id": "again"},                                                # 7: the same result as line 1
        {**other, "expect": {"kind": "circle"}},                                # 8: fails while scored
        json.dumps(other)[:50]])                                                # 9: torn last line
    s = score("results", res)
    err = capsys.readouterr().err
    rows = [strict_json(l) for l in (res / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows if r["status"] == "ok"] == [good["id"]] and s["n"] == 1
    failed = [r for r in rows if r["status"] != "ok"]                # recorded with its reason, not retried
    assert [r["line"] for r in failed] == [8] and failed[0]["error"].startswith("KeyError")
    summary = strict_json((res / "eval" / "summary.json").read_text())
    assert [k["line"] for k in summary["skipped"]] == [2, 3, 4, 5, 6, 7, 8, 9]
    again = score("results", res)                                     # nothing left to score: the same report
    assert again["n"] == 1 and again["skipped"] == summary["skipped"]
    md = (res / "eval" / "summary.md").read_text()
    for line, words in ((2, "missing.mp4: not found"), (3, "not a JSON object"), (4, "junk.mp4"),
                        (5, "nomask.mp4: not found"), (6, "no 'result' path"), (7, "same result as line 1"),
                        (8, "KeyError"), (9, "torn last line")):
        said = f"results.jsonl line {line}"
        assert any(said in e and words in e for e in err.splitlines()), (line, err)
        assert any(l.startswith(f"- line {line}") and words in l for l in md.splitlines()), (line, md)


def test_one_frame_result_says_why_m3_is_missing_and_writes_valid_json(tmp_path, triplets, capsys):
    rec = triplets[0]
    write_video(tmp_path / "one.mp4", read_video(rec["result"])[0][:1])
    res = results(tmp_path / "res", [{**rec, "result": str(tmp_path / "one.mp4")}])
    score("results", res)
    row = strict_json((res / "eval" / "metrics.jsonl").read_text())
    assert row["frames"] == 1 and "wf_m3_flow_mse" in row and row["wf_m3_flow_mse"] is None
    assert strict_json((res / "eval" / "summary.json").read_text())["wf_m3_flow_mse"] is None
    why = "M3 (bg flow) needs at least 2 frames, the result has 1"
    assert why in capsys.readouterr().err and why in (res / "eval" / "summary.md").read_text()


def test_compare_reads_a_half_written_metrics_file(tmp_path, capsys):
    rows = [{"id": f"r{i}", "wf_bg_psnr": 20.0 + i} for i in range(3)]
    ev = tmp_path / "run" / "eval"
    ev.mkdir(parents=True)
    (ev / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]) + json.dumps(rows[2])[:9])
    runs = score("compare", tmp_path / "run", "--out", tmp_path / "cmp")
    assert runs["run"]["n"] == 2 and runs["run"]["wf_bg_psnr"] == 20.5             # the complete rows, only
    assert "metrics.jsonl:3: torn last line" in capsys.readouterr().err
    assert "| run | 2 | 20.5 |" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.slow
def test_eval_resumes_and_never_destroys_earlier_scores(tmp_path, triplets, capsys, monkeypatch):
    """Kept: what a killed run scored, what another setting scored (refused, untouched). Scored again: a record whose
    result changed, every record once the scoring code changed (mutation: the code left out of the inputs -> the
    records are kept and the last step fails)."""
    (tmp_path / "gen").mkdir()
    recs = [{**r, "result": str(shutil.copy(r["result"], tmp_path / "gen" / f"{r['id']}.mp4"))} for r in triplets]
    res = results(tmp_path / "res", recs)
    metrics = res / "eval" / "metrics.jsonl"
    score("results", res, "--limit", "1")
    first = metrics.read_text()
    assert len(first.splitlines()) == 1
    with open(res / "eval" / "metrics.rank-0.jsonl", "a") as f:         # a run killed mid-line: its record torn
        f.write('{"id": "t0001", "wf_bg')
    capsys.readouterr()
    s = score("results", res)
    assert "1 records already scored" in capsys.readouterr().out
    text = metrics.read_text()
    assert text.startswith(first) and len(text.splitlines()) == 2 and s["n"] == 2
    [strict_json(l) for l in text.splitlines()]
    assert not list((res / "eval").glob("metrics.rank-*.jsonl"))               # joined into metrics.jsonl
    # scores of another setting: refused in one line (the command line, as a user meets it), nothing touched
    r = cli("evaluate.py", "results", res, "--max-frames", "3")
    one_line_error(r, "evaluate.py", "--max-frames 0", "--max-frames 3", "--overwrite")
    assert metrics.read_text() == text
    write_video(recs[1]["result"], read_video(recs[1]["result"])[0][::-1].copy())   # a new result: scored again
    capsys.readouterr()
    score("results", res)
    assert "1 records already scored" in capsys.readouterr().out
    now = metrics.read_text().splitlines()
    assert len(now) == 2 and now[0] == text.splitlines()[0] and now[1] != text.splitlines()[1]
    score("results", res, "--out", tmp_path / "eval2")                        # another --out scores afresh
    assert len((tmp_path / "eval2" / "metrics.jsonl").read_text().splitlines()) == 2
    s = score("results", res, "--max-frames", "3", "--overwrite")              # or the same, rescored
    assert s["n"] == 2 and all(strict_json(l)["settings"]["max_frames"] == 3 for l in metrics.read_text().splitlines())
    capsys.readouterr()
    score("results", res, "--max-frames", "3")
    assert "2 records already scored" in capsys.readouterr().out
    monkeypatch.setattr(evaluate, "SCORING_CODE", evaluate.SCORING_CODE[1:])  # as if a metric changed in the code
    score("results", res, "--max-frames", "3")
    assert "already scored" not in capsys.readouterr().out


@pytest.mark.parametrize("argv,words", [(["--limit", "-1"], ["--limit -1"]), (["compare", "NOPE"], ["NOPE"])])
def test_eval_cli_prints_one_line_and_exits_2(tmp_path, argv, words):
    res = results(tmp_path / "res", [])
    argv = argv if argv[0] == "compare" else ["results", res, *argv]
    one_line_error(cli("evaluate.py", *argv), "evaluate.py", *words)


@pytest.mark.slow
def test_evaluate_odd_records_are_recorded_not_fatal(tmp_path):
    """A 10000x10 result is recorded with its reason and the others are scored; the rerun does not meet it again.
    An all-black input mask gives null fg measures and an all-white one null bg measures, each with a note saying
    why (mutations: the size check removed -> a RuntimeError from deep inside torch as the reason; the empty-mask
    rule removed -> wf_fg_hist 0.0 instead of null)."""
    c = toy.clip(1)
    write_video(tmp_path / "fg.mp4", c["fg"], 8)
    write_video(tmp_path / "bg.mp4", c["bg"], 8)
    write_video(tmp_path / "mask.mp4", mask_to_rgb(c["mask"]), 8)
    write_video(tmp_path / "black.mp4", np.zeros((9, 64, 64, 3), np.uint8), 8)
    write_video(tmp_path / "white.mp4", np.full((9, 64, 64, 3), 255, np.uint8), 8)
    write_video(tmp_path / "wide.mp4", np.random.default_rng(0).integers(0, 255, (9, 10, 10000, 3), np.uint8), 8)
    for i in range(3):
        write_video(tmp_path / f"r{i}.mp4", toy.clip(1 + i)["video"], 8)
    rec = lambda i, result, mask: {"id": i, "fg": "fg.mp4", "bg": "bg.mp4", "mask": mask, "result": result}
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        rec("wide", "wide.mp4", "mask.mp4"), rec("ok", "r0.mp4", "mask.mp4"), rec("black", "r1.mp4", "black.mp4"),
        rec("white", "r2.mp4", "white.mp4")]))
    r = cli("evaluate.py", "results", tmp_path, "--max-frames", "3")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    rows = {x["id"]: x for x in map(json.loads, (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines())}
    assert rows["wide"]["status"] == "error" and "10000x10: too small" in rows["wide"]["error"]
    assert rows["ok"]["status"] == "ok" and rows["ok"]["wf_fg_hist"] > 0
    assert rows["black"]["wf_fg_hist"] is None and "input mask is empty" in rows["black"]["notes"][0]
    assert rows["white"]["wf_bg_psnr"] is None and "no background" in " ".join(rows["white"]["notes"])
    r = cli("evaluate.py", "results", tmp_path, "--max-frames", "3")
    assert r.returncode == 0 and "skipping wide" not in r.stderr, r.stderr[-2000:]
