"""The paper's test protocol, end to end (docs/evaluation.md, "The test protocol"): a folder of triplet folders (the
StM release's sample-*/ test set, or any) made into a triplets file, `sample.py --guidance G1 G2` composing one
results set per value, `evaluate.py results` scoring a sweep and `evaluate.py compare` putting its sets side by side
by guidance with each metric plotted against it. The documented toy commands are read from the docs and run.
(Mutations tried: every set composed at the first guidance -> the sets' videos are equal and the test fails;
released ids kept with their prompt -> the id check fails; the sweep's sets sorted as strings (gs-10 before gs-2)
-> test_sweep_sets_by_guidance_value fails.)"""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plumbing.cli import BadInput
from plumbing.dataset import folder_triplets, read_triplets
from plumbing.video import read_video

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
REAL = ROOT.parent / "shared" / "real"


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def released_folder(root):
    """The bundled examples laid out as the StM release's test set: sample-<i>_gs-<g>_<prompt with spaces>-<hash>/
    holding fg.mp4 (subject on black), bg.mp4 and prompt.txt, beside a method's output; numbered 2 and 10 so that
    a string sort would misorder them."""
    recs = lines(EXAMPLES / "triplets.jsonl")
    for i, rec in zip((10, 2, 7), recs):
        d = root / f"sample-{i}_gs-{4 + i % 3}_{rec['prompt'][:20]}-ab12"
        d.mkdir(parents=True)
        for k in ("fg", "bg"):
            shutil.copy(EXAMPLES / rec[k], d / f"{k}.mp4")
        shutil.copy(EXAMPLES / rec["reference"], d / "gen-recomposer.mp4")
        (d / "prompt.txt").write_text(rec["prompt"] + "\n  ")
    return root


def test_folder_triplets_released_and_generic(tmp_path):
    items, left = folder_triplets(released_folder(tmp_path / "Organized_Results"))
    recs = lines(EXAMPLES / "triplets.jsonl")
    assert [it["id"] for it in items] == ["sample-2", "sample-7", "sample-10"]       # by number, names shortened
    assert [it["prompt"] for it in items] == [recs[1]["prompt"], recs[2]["prompt"], recs[0]["prompt"]]
    assert [it["released_guidance"] for it in items] == [6.0, 5.0, 5.0] and left == []
    assert all(Path(it["fg"]).is_absolute() and "mask" not in it for it in items)   # the mask: fg not black
    # any folder of triplet folders: an id that is its name, a PNG-frame mask, and a folder that is no triplet
    g = tmp_path / "mine"
    (g / "boat").mkdir(parents=True)
    for k in ("fg", "bg"):
        shutil.copy(EXAMPLES / recs[0][k], g / "boat" / f"{k}.mp4")
    frames = read_video(EXAMPLES / recs[0]["mask"])[0]
    (g / "boat" / "mask").mkdir()
    from PIL import Image
    for t, f in enumerate(frames):
        Image.fromarray(f).save(g / "boat" / "mask" / f"{t:03d}.png")
    (g / "half").mkdir()
    shutil.copy(EXAMPLES / recs[0]["fg"], g / "half" / "fg.mp4")
    (g / "notes").mkdir()                                                           # no video: not reported
    items, left = folder_triplets(g)
    assert [(it["id"], Path(it["mask"]).name, it["prompt"]) for it in items] == [("boat", "mask", "")]
    assert left == [("half", "no bg.<video> in it")]
    with pytest.raises(BadInput, match="no triplet folders"):
        folder_triplets(g / "notes")


@pytest.mark.skipif(not REAL.is_dir(), reason="no ../shared/real beside the checkout")
def test_folder_triplets_of_the_real_examples():
    items, left = folder_triplets(REAL)
    assert len(items) == 7 and left == [] and all(Path(it["mask"]).name == "mask.mp4" for it in items)
    assert items[0]["id"] == "fig1-bird" and items[0]["prompt"] == ""


def run(script, *args, cwd=ROOT):
    r = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                       timeout=600, cwd=cwd)
    return r.returncode, r.stdout + r.stderr


def documented_commands():
    """The three commands of docs/evaluation.md's runnable example (the block after `<!-- protocol -->`)."""
    doc = (ROOT / "docs" / "evaluation.md").read_text()
    block = re.search(r"<!-- protocol -->\s*```bash\n(.*?)```", doc, re.S).group(1)
    return [shlex.split(c) for c in block.strip().splitlines()]


@pytest.mark.slow
def test_documented_guidance_sweep(tmp_path):
    cmds = documented_commands()
    assert [c[1:3] for c in cmds] == [["sample.py", "--triplets"], ["evaluate.py", "results"],
                                      ["evaluate.py", "compare"]]
    shutil.copytree(EXAMPLES, tmp_path / "assets" / "examples")      # run in a folder of its own, as documented
    for c in cmds:
        args = c[2:] + (["--steps", "2"] if c[1] == "sample.py" else [])   # fewer steps: the same path, faster
        rc, out = run(c[1], *args, cwd=tmp_path)
        assert rc == 0, out
    sweep = tmp_path / "results" / "sweep"
    for g in (1, 2):
        recs = lines(sweep / f"gs-{g}" / "results.jsonl")
        assert [r["status"] for r in recs] == ["ok"] * 3 and {r["settings"]["guidance"] for r in recs} == {g}
        assert len(lines(sweep / f"gs-{g}" / "eval" / "metrics.jsonl")) == 3
    a, b = (read_video(sweep / f"gs-{g}" / "t0001.mp4")[0] for g in (1, 2))
    assert np.abs(a.astype(int) - b).mean() > 0.5                    # guidance took effect, set by set
    table = (sweep / "compare" / "compare.md").read_text().splitlines()
    assert table[0].startswith("| run | guidance | n |")
    assert [r.split("|")[1:4] for r in table[2:]] == [[" gs-1 ", " 1 ", " 3 "], [" gs-2 ", " 2 ", " 3 "]]
    plots = (sweep / "compare" / "guidance.html").read_text()
    iou = re.search(r'data-key="toy_shape_iou".*?</svg>', plots, re.S).group(0)
    assert 'data-points="2"' in iou and iou.count("<circle") == 2 and "guidance 1" in iou and "guidance 2" in iou
    assert "Against guidance" in (sweep / "compare" / "report.html").read_text()
    # a rerun resumes (nothing recomposed); one set alone at guidance 1 gives the sweep's set: the same noise
    rc, out = run("sample.py", *cmds[0][2:], "--steps", "2", cwd=tmp_path)
    assert rc == 0 and out.count("0 composition(s)") == 2 and out.count("3 done before") == 2, out
    rc, out = run("sample.py", "--triplets", EXAMPLES / "triplets.jsonl", "--sampler", "ddim", "--guidance", "1",
                  "--steps", "2", "--out", tmp_path / "one", cwd=tmp_path)
    assert rc == 0, out
    assert np.array_equal(read_video(tmp_path / "one" / "t0001.mp4")[0], a)


@pytest.mark.slow
def test_folder_of_released_triplets_is_composed_and_resumed(tmp_path):
    src = released_folder(tmp_path / "Organized_Results")
    out = tmp_path / "res"
    argv = ["--triplets", src, "--sampler", "ddim", "--steps", "1", "--guidance", "2", "--out", out]
    rc, msg = run("sample.py", *argv)
    assert rc == 0, msg
    items, bad = read_triplets(out / "triplets.jsonl")           # the triplets file made of the folder
    assert [it["id"] for it in items] == ["sample-2", "sample-7", "sample-10"] and not bad
    assert json.loads((out / "triplets.jsonl").read_text().splitlines()[0])["fg"].startswith("../")  # relative
    assert sorted(r["id"] for r in lines(out / "results.jsonl")) == ["sample-10", "sample-2", "sample-7"]
    # the paper's own output of the same folder gets the same ids (--layout released), so compare pairs them
    from plumbing.dataset import released_records
    recs, left = released_records(src, "gen-recomposer")
    assert [r["id"] for r in recs] == ["sample-2", "sample-7", "sample-10"] and not left
    assert all(Path(r["result"]).is_file() and Path(r["result"]).parent == Path(r["fg"]).parent for r in recs)
    fg7 = next(src.glob("sample-7_*")) / "fg.mp4"                  # a sample without its fg is reported, not scored
    fg7.rename(fg7.with_suffix(".bak"))
    recs, left = released_records(src, "gen-recomposer")
    assert [r["id"] for r in recs] == ["sample-2", "sample-10"] and left == [(fg7.parent.name, "no fg.<video> in it")]
    fg7.with_suffix(".bak").rename(fg7)
    # the folder changed: its triplets file is not silently replaced
    shutil.rmtree(next(src.glob("sample-7_*")))
    rc, msg = run("sample.py", *argv)
    assert rc == 2 and "triplets.jsonl lists other triplets" in msg and msg.count("\n") == 1, msg
    rc, msg = run("sample.py", *argv, "--overwrite")
    assert rc == 0 and len(read_triplets(out / "triplets.jsonl")[0]) == 2, msg


def test_released_folder_without_inputs_is_one_clear_error(tmp_path):
    """Sample folders holding a method's video but no fg / bg: the error names the folder and the released layout,
    not sample.py's --triplets."""
    from plumbing.dataset import released_records
    for i in (1, 2):
        (tmp_path / f"sample-{i}").mkdir()
        (tmp_path / f"sample-{i}" / "gen.mp4").write_bytes(b"")
    with pytest.raises(BadInput, match=re.escape(f"{tmp_path}: none of its sample-*/ folders holds fg.<video>")):
        released_records(tmp_path, "gen")
    # an fg that links to a file elsewhere: the method's video is still the one in the sample folder
    (tmp_path / "elsewhere.mp4").write_bytes(b"")
    (tmp_path / "sample-1" / "fg.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    (tmp_path / "sample-1" / "bg.mp4").write_bytes(b"")
    recs, left = released_records(tmp_path, "gen")
    assert [r["result"] for r in recs] == [str(tmp_path / "sample-1" / "gen.mp4")]
    assert left == [("sample-2", "no fg.<video> in it")]


@pytest.mark.parametrize("argv, words", [
    (["--guidance", "2", "2.0"], "a value twice"),
    (["--guidance", "2", "4", "--out", "x.mp4", "--fg", "a.mp4", "--bg", "b.mp4"], "give a folder --out"),
    (["--triplets", "t.jsonl", "--out", "x.mp4"], "give a folder --out"),
    (["--guidance", "2", "nan"], "--guidance nan: need a finite number"),
])
def test_sweep_flags_refused_in_one_line(argv, words):
    import sample
    with pytest.raises(BadInput, match=re.escape(words)):
        sample.check_flags(sample.parser.parse_args(argv))


def test_sweep_sets_by_guidance_value(tmp_path):
    from plumbing.dataset import guidance_set, sweep_sets
    for g in ("10", "2", "4.5", "x"):
        (tmp_path / f"gs-{g}" / "eval").mkdir(parents=True)
        (tmp_path / f"gs-{g}" / "eval" / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "gs-8").mkdir()                                      # a set not scored yet: not in compare
    assert [d.name for d in sweep_sets(tmp_path, "eval/metrics.jsonl")] == ["gs-2", "gs-4.5", "gs-10",
                                                                                     "gs-x"]
    assert sweep_sets(tmp_path / "gs-2", "eval/metrics.jsonl") == []
    assert guidance_set(tmp_path, 4.5) == tmp_path / "gs-4.5" and guidance_set(tmp_path, 2.0).name == "gs-2"
