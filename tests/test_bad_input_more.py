"""Bad-input cases found by the probe (tests/probe_bad_input.py, docs/bad-input-probe.md) and fixed by class, in
process and fast. Each names the guard whose removal makes it fail."""
import json
import os
import time
from pathlib import Path

import pytest

import decompose
import evaluate
import lora
import toy
from plumbing.cli import BadInput
from plumbing.dataset import read_captions, read_metadata, read_triplets, release_splits
from plumbing.files import Lock
from plumbing.records import read_jsonl


@pytest.mark.parametrize("argv, words", [
    (["data", "--clips", "-1"], "--clips -1"), (["data", "--frames", "8"], "--frames 8"),
    (["data", "--size", "0", "0"], "--size 0 0"), (["triplets", "--n", "0"], "--n 0"),
    (["data", "--fps", "0"], "--fps 0"), (["triplets", "--fps", "1001"], "--fps 1001"),
    (["base", "--batch", "0"], "--batch 0"), (["base", "--threads", str(2 ** 40)], "--threads"),
])
def test_toy_flags_are_checked_before_anything_is_written(tmp_path, argv, words):
    """(toy.check_flags removed: a silent empty dataset, or a traceback from the encoder.)"""
    with pytest.raises(BadInput, match=words):
        toy.main(toy.parser.parse_args([argv[0], "--out", str(tmp_path / "o"), *argv[1:]]))
    assert not (tmp_path / "o").exists()


def test_toy_never_replaces_a_folder_it_did_not_write_nor_mixes_shapes(tmp_path):
    """base replaces its --out whole: a dataset folder there is refused (it was deleted); data into a folder of
    other-shaped clips is refused (it said 'wrote 2 clips' and kept the old shape)."""
    toy.write_data(tmp_path / "d", 1)
    before = sorted(p.name for p in (tmp_path / "d").rglob("*"))
    with pytest.raises(BadInput, match="not a toy base"):
        toy.main(toy.parser.parse_args(["base", "--out", str(tmp_path / "d"), "--vae-steps", "1"]))
    with pytest.raises(BadInput, match="holds clips of 9 frames"):
        toy.main(toy.parser.parse_args(["data", "--out", str(tmp_path / "d"), "--clips", "1", "--frames", "13"]))
    assert sorted(p.name for p in (tmp_path / "d").rglob("*")) == before


def test_captions_files_with_odd_text(tmp_path):
    """A TSV caption holding U+2028, a JSONL caption holding a raw U+0085, a BOM: each read as one caption of one
    line (read_list instead of splitlines; utf-8-sig)."""
    (tmp_path / "a.tsv").write_bytes("\ufefftoy0\ta red\u2028toy\ntoy1\tblue\r\n".encode())
    assert read_captions(tmp_path / "a.tsv") == {"toy0": "a red toy", "toy1": "blue"}
    (tmp_path / "b.jsonl").write_text('{"video": "toy0", "caption": "a\u0085b"}\n', encoding="utf-8")
    assert read_captions(tmp_path / "b.jsonl") == {"toy0": "a b"}
    (tmp_path / "c.jsonl").write_text("[1]\n")
    with pytest.raises(BadInput, match="c.jsonl:1: expected"):
        read_captions(tmp_path / "c.jsonl")


def test_record_files_with_odd_lines(tmp_path):
    """A Latin-1 line among UTF-8 ones costs that line only (read_jsonl decodes line by line); a stray '[]' in
    metadata.jsonl is passed over; a BOM'd metadata.csv keeps its is_training column; a BOM in the middle of a
    triplets file (two files joined by cat) starts a line like any other; a NUL in a path is that item's error."""
    (tmp_path / "r.jsonl").write_bytes(b'{"id": "a"}\n{"id": "caf\xe9"}\n{"id": "b"}\n')
    rows, problems = read_jsonl(tmp_path / "r.jsonl")
    assert [r["id"] for _, r in rows] == ["a", "b"] and problems[0][0] == 2
    (tmp_path / "metadata.jsonl").write_text('{"id": "x", "status": "ok"}\n[]\n[1]\n')
    assert [r["id"] for r in read_metadata(tmp_path)] == ["x"]
    (tmp_path / "metadata.csv").write_text("\ufeffis_training\nFalse\nTrue\n", encoding="utf-8")
    assert release_splits(tmp_path, 2) == ["val", "train"]
    t = tmp_path / "t.jsonl"
    t.write_bytes(b'\xef\xbb\xbf{"id": "a", "fg": "f.mp4", "bg": "b.mp4"}\n\xef\xbb\xbf{"id": "b", "fg": "f.mp4", '
                  b'"bg": "b.mp4"}\n{"id": "c", "fg": "a\\u0000b.mp4", "bg": "b.mp4"}\n')
    items, bad = read_triplets(t)
    assert [i["id"] for i in items] == ["a", "b", "c"] and set(bad) == {"c"} and "NUL" in bad["c"]


def test_an_empty_lock_left_by_a_full_disk_is_stale(tmp_path):
    """A lock file created but never written (the disk filled at that moment) must not refuse every later run."""
    lock = Lock(tmp_path, ".x.lock")
    lock.path.write_text("")
    old = time.time() - 60
    os.utime(lock.path, (old, old))
    assert lock.acquire() is None and json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()


def test_evaluate_folders_keep_one_runs_scores(tmp_path):
    """results of another run into an eval folder (same flags) is refused (the run is part of the settings), and
    compare --out on an eval folder would replace its report: refused."""
    import numpy as np
    from plumbing.video import mask_to_rgb, write_video
    for run in ("r1", "r2"):
        d = tmp_path / run
        d.mkdir()
        c = toy.clip(1)
        for k in ("fg", "bg", "video"):
            write_video(d / f"{k}.mp4", c[k], 8)
        write_video(d / "mask.mp4", mask_to_rgb(c["mask"]), 8)
        (d / "results.jsonl").write_text(json.dumps({"id": "a", "fg": "fg.mp4", "bg": "bg.mp4", "mask": "mask.mp4",
                                                     "result": "video.mp4"}) + "\n")
    go = lambda *a: evaluate.main(evaluate.parser.parse_args([str(x) for x in a]))
    go("results", tmp_path / "r1", "--max-frames", "3")
    before = (tmp_path / "r1" / "eval" / "metrics.jsonl").read_bytes()
    with pytest.raises(BadInput, match="--results"):
        go("results", tmp_path / "r2", "--out", tmp_path / "r1" / "eval", "--max-frames", "3")
    with pytest.raises(BadInput, match="holds a run's scores"):
        go("compare", tmp_path / "r1", "--out", tmp_path / "r1" / "eval")
    assert (tmp_path / "r1" / "eval" / "metrics.jsonl").read_bytes() == before
    assert np.isfinite(json.loads(before)["wf_bg_psnr"])


def test_odd_config_files_are_one_line(tmp_path):
    """lora.py on a lora_config.json that is a list; tally on a key.json that is a list."""
    (tmp_path / "run" / "lora").mkdir(parents=True)
    (tmp_path / "run" / "lora" / "lora_config.json").write_text("[1, 2]")
    with pytest.raises(BadInput, match="not the one train.py --lora writes"):
        lora.main(lora.parser.parse_args([str(tmp_path / "run")]))
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "key.json").write_text("[]")
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(BadInput, match="key.json is not the one"):
        evaluate.main(evaluate.parser.parse_args(["tally", str(tmp_path / "study"), str(tmp_path / "a.json")]))


def test_decompose_redoes_a_clip_whose_caption_changed_and_keeps_rates_sane(tmp_path):
    """--captions edited under the same name: the clips whose caption changed are split again (the caption is part
    of each clip's fingerprint); --fps 5000 and --threads 2^40 are refused."""
    from plumbing.video import write_video
    (tmp_path / "v").mkdir()
    for s in (0, 1):
        write_video(tmp_path / "v" / f"toy{s}.mp4", toy.clip(s, 25, 64, 64)["video"], 8)
    fast = ["--frames", "9", "--size", "64", "64", "--strides", "1", "--threads", "1", "--min-fg", "0",
            "--max-clips", "1", "--inpainter", "none", "--captioner", "file", "--captions", str(tmp_path / "c.tsv")]
    go = lambda *a: decompose.main(decompose.parser.parse_args(["--videos", str(tmp_path / "v"), "--out",
                                                                str(tmp_path / "o"), *fast, *a]))
    (tmp_path / "c.tsv").write_text("toy0\ta red toy\ntoy1\ta blue toy\n")
    go()
    (tmp_path / "c.tsv").write_text("toy0\ta red toy\ntoy1\ta green toy\n")
    go()
    assert sorted((tmp_path / "o" / "prompts.txt").read_text().split("\n")[:-1]) == ["a green toy", "a red toy"]
    for flag, val in (("--fps", "5000"), ("--threads", str(2 ** 40))):
        with pytest.raises(BadInput, match=flag):
            go(flag, val)
