"""train.py's guards, one test per class of failure: a run is never overwritten or resumed with another recipe
unasked; a checkpoint counts as good only once the next step's loss was finite; every flag is range-checked before
any model loads; a clip whose layers disagree is skipped before step 1; a failed checkpoint or export write is one
line and leaves no .tmp; a checkpoint's pickles cannot run code. In-process runs of the toy preset (seconds each).

    python -m pytest -q tests/test_train_guards.py
"""
import errno
import json
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

import dit
import train
from conftest import single_thread
from plumbing.cli import BadInput
from plumbing.dataset import LayeredClips
from plumbing.video import read_video, write_video

one_thread = single_thread()


def flags(base, data, out, *extra):
    """train.py's parsed flags for a 2-step toy run that checkpoints every step."""
    return train.parser.parse_args([str(x) for x in [
        "--model", base, "--preset", "toy", "--data", data, "--out", out, "--batch", "2", "--steps", "2", "--warmup",
        "1", "--val-every", "0", "--workers", "1", "--threads", "1", "--log-every", "1", "--ckpt-every", "1",
        *extra]])


def refused(a, *needles):
    """train.main(a) stops with one line holding every needle."""
    with pytest.raises(BadInput) as e:
        train.main(a)
    assert "\n" not in str(e.value)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))
    return str(e.value)


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def steps_logged(out):
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- 1. never destroy a run

@pytest.mark.slow
def test_a_run_is_never_overwritten_or_resumed_with_another_recipe(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "run"
    train.main(flags(tiny_base, tiny_data, out))
    before = files(out)
    refused(flags(tiny_base, tiny_data, out, "--lr", "5e-4"), f"--out {out}",
            "--resume to continue it, or another --out")
    refused(flags(tiny_base, tiny_data, out, "--resume", "--lr", "5e-4", "--seed", "3"),
            "--lr 0.001 -> 0.0005", "--seed 0 -> 3", "--resume-with-new-flags")
    refused(flags(tiny_base, tiny_data, out, "--resume", "--steps", "1"), "--steps 1", "at step 2")
    refused(flags(tiny_base, tiny_data, out, "--resume", "--steps", "4", "--stop-at", "2"), "--stop-at 2", "at step 2")
    assert files(out) == before                                              # nothing was touched
    # run-only flags may change; recipe flags with --resume-with-new-flags; the log stays one run's history
    train.main(flags(tiny_base, tiny_data, out, "--resume", "--steps", "3", "--workers", "2", "--lr", "5e-4",
                     "--resume-with-new-flags"))
    assert steps_logged(out) == [1, 2, 3]
    assert json.loads((out / "args.json").read_text())["lr"] == 5e-4


# ---------------------------------------------------------------------------------------------- 2. a good checkpoint

@pytest.mark.slow
def test_finite_but_useless_weights_never_replace_the_last_good_checkpoint(tiny_base, tiny_data, tmp_path,
                                                                          monkeypatch, capsys):
    """A step at a huge learning rate leaves finite weights whose next loss is NaN (injected: every weight set to
    1e30 by the step-3 update). With --keep 1 the step-3 checkpoint is saved, yet the step-2 one, confirmed by step
    3's finite loss, stays; the NaN message names it, and a plain --resume continues from it."""
    out = tmp_path / "run"
    train.main(flags(tiny_base, tiny_data, out, "--keep", "1"))
    real_step = torch.optim.AdamW.step

    def huge_lr(self, *args, **kw):
        real_step(self, *args, **kw)
        if self.state[self.param_groups[0]["params"][0]]["step"] >= 3:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(1e30)
    monkeypatch.setattr(torch.optim.AdamW, "step", huge_lr)
    with pytest.raises(SystemExit):
        train.main(flags(tiny_base, tiny_data, out, "--keep", "1", "--resume", "--steps", "5"))
    said = capsys.readouterr().out
    assert "step 3: loss" in said and "step_0000002" in said.split("last good checkpoint is")[1], said[-500:]
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["step_0000002", "step_0000003"]
    assert train.checkpoint_record(out / "ckpt" / "step_0000002")["good"] is True
    assert train.checkpoint_record(out / "ckpt" / "step_0000003")["good"] is False
    monkeypatch.undo()
    train.main(flags(tiny_base, tiny_data, out, "--keep", "1", "--resume", "--steps", "4"))
    said = capsys.readouterr().out
    assert "resumed from" in said and "step_0000002 at step 2" in said, said[-500:]
    assert steps_logged(out) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- 3. flag ranges

@pytest.mark.parametrize("extra, needle", [
    (["--lr", "nan"], "--lr nan"), (["--lr", "inf"], "--lr inf"), (["--min-lr", "0.01"], "--min-lr 0.01"),
    (["--min-lr", "-1"], "--min-lr -1"), (["--min-lr", "nan"], "--min-lr nan"), (["--warmup", "-1"], "--warmup"),
    (["--betas", "0.9", "1.0"], "--betas"), (["--betas", "nan", "0.9"], "--betas"), (["--eps", "0"], "--eps 0"),
    (["--eps", "inf"], "--eps"), (["--wd", "-0.1"], "--wd"), (["--wd", "nan"], "--wd"), (["--clip", "-1"], "--clip"),
    (["--clip", "nan"], "--clip"), (["--alpha", "1.5"], "--alpha"), (["--alpha", "nan"], "--alpha"),
    (["--fg-noise", "nan"], "--fg-noise nan"), (["--fg-noise=inf"], "--fg-noise inf"),
    (["--bg-noise", "2.5"], "--bg-noise -3.0"), (["--text-drop", "nan"], "--text-drop"),
    (["--flip-p", "-0.1"], "--flip-p"), (["--crop-p", "2"], "--crop-p"), (["--crop-scale", "0", "1"], "--crop-scale"),
    (["--crop-scale", "2", "1"], "--crop-scale"), (["--crop-scale", "0.5", "inf"], "--crop-scale"),
    (["--val-guidance", "inf"], "--val-guidance"), (["--val-guidance", "-1"], "--val-guidance"),
    (["--threads", "-1"], "--threads"), (["--workers", "-2"], "--workers"), (["--seed", "-1"], "--seed -1"),
    (["--seed", str(2**63)], "--seed"), (["--lora", "4", "--lora-alpha", "nan"], "--lora-alpha"),
    (["--resume-with-new-flags"], "goes with --resume"),
])
def test_every_flag_is_range_checked_before_any_model_loads(tiny_base, tiny_data, tmp_path, extra, needle):
    refused(flags(tiny_base, tiny_data, tmp_path / "x", *extra), needle)
    assert not (tmp_path / "x").exists()


def test_the_edges_of_the_ranges_are_accepted(tiny_base, tiny_data, tmp_path):
    train.check_flags(flags(tiny_base, tiny_data, tmp_path / "x", "--fg-noise=-inf", "--bg-noise", "2", "--clip",
                            "0", "--min-lr", "1e-3", "--betas", "0", "0.999", "--wd", "0", "--alpha", "1", "--seed",
                            str(2**63 - 1), "--crop-scale", "1", "1", "--threads", "0", "--workers", "0"))


def test_minus_inf_is_a_value_as_the_helps_write_it(tiny_base, tiny_data, tmp_path):
    """argparse takes "-inf" for a flag; "--fg-noise -inf" must mean no fg noise, "--bg-noise=-inf" the same."""
    a = train.parser.parse_args(["--data", str(tiny_data), "--fg-noise", "-inf", "--bg-noise=-inf", "--lr", "1e-3"])
    assert a.fg_noise == a.bg_noise == float("-inf") and a.lr == 1e-3


# ---------------------------------------------------------------------------------------------- 4. clip layers

def test_a_clip_whose_layers_disagree_is_skipped_before_step_one(tiny_base, tiny_data, tmp_path, capsys):
    """Clip 3's mask has 13 frames for its fg's 9, clip 5's bg twice its video's size: both pass the length probe,
    and the first would stop training when drawn. They are reported by file before step 1 and skipped."""
    d = tmp_path / "data"
    d.mkdir()
    for f in tiny_data.iterdir():
        (d / f.name).symlink_to(f) if f.is_dir() else (d / f.name).write_text(f.read_text())
    item = LayeredClips(tiny_data).items
    mask = read_video(item[3]["mask"])[0]
    write_video(d / "long_mask.mp4", np.concatenate([mask, mask[:4]]), fps=8)
    bg = read_video(item[5]["bg"])[0]
    write_video(d / "big_bg.mp4", bg.repeat(2, 1).repeat(2, 2), fps=8)
    for name, i, new in (("masks.txt", 3, "long_mask.mp4"), ("bg.txt", 5, "big_bg.mp4")):
        lines = (d / name).read_text().splitlines()
        lines[i] = new
        (d / name).write_text("\n".join(lines) + "\n")
    a = flags(tiny_base, d, tmp_path / "run", "--steps", "1")
    ds = LayeredClips(d, frames=9, size=(64, 64))
    bad = train.check_clips(train.Run(a, pool=ThreadPoolExecutor(1)), ds)
    assert sorted(bad) == [3, 5] and len(ds) == len(item) - 2
    assert "long_mask.mp4 is 13x64x64" in bad[3] and "9x64x64" in bad[3]
    assert "big_bg.mp4 is 9x128x128" in bad[5]
    train.main(a)
    said = capsys.readouterr().out
    assert "clip 3 skipped" in said and "long_mask.mp4" in said and "2 unusable ones skipped" in said


# ---------------------------------------------------------------------------------------------- 5. a full disk

def no_space(*args, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.slow
def test_a_failed_checkpoint_or_export_write_is_one_line_and_leaves_no_tmp(tiny_base, tiny_data, tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "run"

    def partial_save(state, checkpoint_id):                    # a few files written, then the disk is full
        Path(checkpoint_id).mkdir(parents=True)
        (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"\0" * 4096)
        no_space()
    monkeypatch.setattr(dcp, "save", partial_save)
    refused(flags(tiny_base, tiny_data, out), "step_0000001.tmp", "No space left on device", "--resume")
    assert list((out / "ckpt").iterdir()) == []
    monkeypatch.undo()
    out = tmp_path / "run2"
    monkeypatch.setattr(dit.DiT, "save_pretrained", no_space)
    refused(flags(tiny_base, tiny_data, out), str(out / "transformer"), "No space left on device", "--resume")
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    train.main(flags(tiny_base, tiny_data, out, "--resume"))                # the last checkpoint holds the run
    assert (out / "transformer" / "config.json").exists()


# ---------------------------------------------------------------------------------------------- 6. code from files

class RunsCode:
    """Unpickling this creates the file `path`: what a crafted pickle could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
def test_a_checkpoint_pickle_cannot_run_code(tiny_base, tiny_data, tmp_path, capsys):
    """A .metadata that is not the one saved (its sha256 is in step.json) is refused before it is unpickled; a
    crafted non-tensor value in a .distcp (its .metadata digest right) fails torch.load(weights_only=True) and the
    checkpoint is skipped."""
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    train.main(flags(tiny_base, tiny_data, out))
    ck = out / "ckpt"
    good_meta = (ck / "step_0000002" / ".metadata").read_bytes()
    (ck / "step_0000002" / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    refused(flags(tiny_base, tiny_data, out, "--resume", "--steps", "3"), "step_0000002/.metadata", "sha256")
    assert not marker.exists()
    (ck / "step_0000002" / ".metadata").write_bytes(good_meta)
    # step 3: the run's own state with the optimiser's lr replaced by the crafted object, its digest recorded
    model = train.build_composer(str(tiny_base), "toy", 0, False, False, False)
    opt = train.make_optimizer(model, 1e-3, (0.9, 0.95), 1e-8, 1e-4)
    train.load_checkpoint(model, opt, ck / "step_0000002")
    msd, osd = get_state_dict(model, opt)
    osd["param_groups"][0]["lr"] = RunsCode(marker)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(ck / "step_0000003"))
    record = {"step": 3, "metadata_sha256": train.sha256(ck / "step_0000003" / ".metadata"), "good": None}
    (ck / "step_0000003" / "step.json").write_text(json.dumps(record))
    capsys.readouterr()
    train.main(flags(tiny_base, tiny_data, out, "--resume", "--steps", "3"))
    said = capsys.readouterr().out
    assert not marker.exists()
    assert "skipping checkpoint" in said and "step_0000003: it does not load" in said, said[-800:]
    assert "step_0000002 at step 2" in said
    # a crafted .metadata whose digest in step.json was forged to match: SafeUnpickler refuses to build it (mutation:
    # dcp.load with the default reader -> the marker file appears)
    (ck / "step_0000002" / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    forged = {**json.loads((ck / "step_0000002" / "step.json").read_text()),
              "metadata_sha256": train.sha256(ck / "step_0000002" / ".metadata")}
    (ck / "step_0000002" / "step.json").write_text(json.dumps(forged))
    shutil.rmtree(ck / "step_0000003")
    capsys.readouterr()
    with pytest.raises(BadInput, match="none of the checkpoints"):
        train.main(flags(tiny_base, tiny_data, out, "--resume", "--steps", "3"))
    assert not marker.exists() and "step_0000002: it does not load" in capsys.readouterr().out
    # a user's step_old backup and a step.json that is a list are no checkpoints: said, never a traceback
    (ck / "step_old").mkdir()
    (ck / "step_0000002" / "step.json").write_text("[1]")
    refused(flags(tiny_base, tiny_data, out, "--resume", "--steps", "3"), "step_0000002/.metadata", "sha256")
