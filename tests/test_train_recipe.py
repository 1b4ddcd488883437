"""train.py's recipe follows the base: the toy base gets the toy's defaults, a base in the CogVideoX-5B-I2V layout
(tests/conftest.py: mini_i2v, the miniature the rehearsal trains) the paper's (lr 5e-6, warm-up 1,000, 20,000
steps, global batch 64 whatever the number of processes, the base's sample size, bf16 + AC on CUDA); every default
can be overridden, a flag far from the recipe gets a one-line warning, args.json stores what was resolved.

    python -m pytest -q tests/test_train_recipe.py
"""
import json

import pytest
import torch

import train
from conftest import single_thread
from plumbing.cli import BadInput

one_thread = single_thread()
KEYS = ("recipe", "frames", "size", "batch", "grad_accum", "global_batch", "lr", "warmup", "steps", "bf16", "ac",
        "ckpt_every", "val_every")


def resolved(model, *extra, world=None, monkeypatch=None):
    """train.py's flags for `model`, resolved -> (the resolved values, the summary line, the warnings)."""
    if world:
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", str(world))
    args = ["--data", "unused", "--out", "unused"] + (["--model", str(model)] if model else []) + list(extra)
    a = train.parser.parse_args([str(x) for x in args])
    summary, warn = train.resolve_recipe(a)
    return {k: getattr(a, k) for k in KEYS}, summary, warn


def test_the_defaults_follow_the_base(mini_i2v, monkeypatch):
    cuda = torch.cuda.is_available()
    toy, summary, warn = resolved(None)                               # assets/toy-base, the default --model
    assert toy == {"recipe": "toy", "frames": 9, "size": [64, 64], "batch": 8, "grad_accum": 1, "global_batch": 8,
                   "lr": 1e-3, "warmup": 100, "steps": 1500, "bf16": False, "ac": False, "ckpt_every": 250,
                   "val_every": 500} and not warn
    assert summary.startswith("recipe toy (")
    real, summary, warn = resolved(mini_i2v)
    assert real == {"recipe": "cogvideox-5b-i2v", "frames": 9, "size": [64, 96], "batch": 2, "grad_accum": 32,
                    "global_batch": 64, "lr": 5e-6, "warmup": 1000, "steps": 20000, "bf16": cuda, "ac": cuda,
                    "ckpt_every": 500, "val_every": 1000} and not warn          # 9x64x96: the miniature's sample size
    assert "global batch 64 = 2 per process x 32 accum x 1 processes" in summary
    for world, accum in ((8, 4), (16, 2), (32, 1)):                   # global batch 64 whatever the world
        got, _, _ = resolved(mini_i2v, world=world, monkeypatch=monkeypatch)
        assert (got["global_batch"], got["grad_accum"]) == (64, accum)
    assert resolved(mini_i2v, "--lora", "16")[0]["lr"] == 1e-4       # LoRA: the release's lr
    assert resolved(None, "--preset", "toy-l")[0]["recipe"] == "toy"
    assert resolved(None, "--recipe", "cogvideox-5b-i2v")[0]["frames"] == 49      # forced: the paper's 49x480x720
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)      # on CUDA: bf16 compute and AC by default
    assert resolved(mini_i2v)[0]["bf16"] is True and resolved(mini_i2v)[0]["ac"] is True
    assert resolved(None)[0]["bf16"] is False
    assert resolved(mini_i2v, "--no-bf16", "--no-ac")[0]["bf16"] is False


def test_every_default_is_overridable_and_the_batch_must_add_up(mini_i2v, monkeypatch):
    got, summary, _ = resolved(mini_i2v, "--frames", "5", "--size", "32", "48", "--lr", "1e-5", "--warmup", "7",
                               "--steps", "9", "--batch", "4", "--global-batch", "16", "--ckpt-every", "3",
                               "--val-every", "0", "--bf16", "--ac")
    assert got == {"recipe": "cogvideox-5b-i2v", "frames": 5, "size": [32, 48], "batch": 4, "grad_accum": 4,
                   "global_batch": 16, "lr": 1e-5, "warmup": 7, "steps": 9, "bf16": True, "ac": True,
                   "ckpt_every": 3, "val_every": 0}
    assert "given: --frames, --size, --batch, --global-batch, --steps, --lr" in summary
    # an explicit --grad-accum still works: the global batch follows it (README: 2 x 8 x 4)
    got, _, _ = resolved(mini_i2v, "--batch", "2", "--grad-accum", "4", world=8, monkeypatch=monkeypatch)
    assert (got["global_batch"], got["grad_accum"]) == (64, 4)
    assert resolved(mini_i2v, "--batch", "2", "--grad-accum", "4", "--global-batch", "64", world=8,
                    monkeypatch=monkeypatch)[0]["grad_accum"] == 4
    for extra, needle in ((["--batch", "3"], "--global-batch 64: not a multiple of --batch 3 x 8 processes = 24"),
                          (["--global-batch", "60"], "--global-batch 60: not a multiple of --batch 2 x 8"),
                          (["--grad-accum", "2", "--global-batch", "64"], "--global-batch 64 but --batch 2 x "
                                                                         "--grad-accum 2 x 8 processes = 32"),
                          (["--global-batch", "0"], "need at least 1")):
        with pytest.raises(BadInput) as e:
            resolved(mini_i2v, *extra, world=8, monkeypatch=monkeypatch)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_flag_far_from_the_recipe_is_warned_about_in_one_line(mini_i2v):
    _, _, warn = resolved(mini_i2v, "--lr", "1e-3")
    assert warn == ["warning: --lr 0.001 is far above the cogvideox-5b-i2v recipe for a full fine-tune of this base: "
                    "the paper used lr 5e-06 (full fine-tune), warm-up 1000, global batch 64, 49x480x720, "
                    "20000 steps"]
    assert not resolved(mini_i2v, "--lr", "1e-4")[2]                   # 20x: the edge is accepted
    assert "far above" in resolved(mini_i2v, "--lr", "1e-2", "--lora", "4")[2][0]     # LoRA: against 1e-4
    assert not resolved(mini_i2v, "--lr", "1e-3", "--lora", "4")[2]
    warn = resolved(mini_i2v, "--batch", "1", "--grad-accum", "2", "--size", "64", "64")[2]
    assert [w.split(":")[1].strip().split(" ")[0] for w in warn] == ["global", "--frames/--size"]
    assert all("\n" not in w and w.startswith("warning: ") for w in warn)
    assert not resolved(None, "--lr", "2e-3")[2]                       # the toy's own range


@pytest.mark.slow
def test_the_resolved_recipe_is_printed_and_stored(mini_i2v, tiny_data, tmp_path, capsys):
    """A one-step run on the miniature with only the sizes it needs: the recipe line is printed first and args.json
    holds the resolved values, so a --resume compares what was really trained (and does not trip on defaults)."""
    out = tmp_path / "run"
    flags = ["--model", mini_i2v, "--data", tiny_data, "--out", out, "--steps", "1", "--batch", "1",
             "--global-batch", "2", "--val-every", "0", "--workers", "1", "--threads", "1", "--log-every", "1"]
    train.main(train.parser.parse_args([str(x) for x in flags]))
    said = capsys.readouterr().out
    assert said.startswith("recipe cogvideox-5b-i2v (") and "global batch 2 = 1 per process x 2 accum" in said
    stored = json.loads((out / "args.json").read_text())
    assert {k: stored[k] for k in ("recipe", "lr", "warmup", "frames", "size", "grad_accum", "global_batch")} == {
        "recipe": "cogvideox-5b-i2v", "lr": 5e-6, "warmup": 1000, "frames": 9, "size": [64, 96], "grad_accum": 2,
        "global_batch": 2}
    a = train.parser.parse_args([str(x) for x in flags + ["--resume"]])
    train.resolve_recipe(a)
    assert train.recipe_changes(a, out) == []


def test_log_to_a_missing_package_is_one_line(tiny_base, tiny_data, tmp_path, monkeypatch):
    for kind, module in (("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")):
        monkeypatch.setitem(__import__("sys").modules, module, None)        # import -> ImportError, installed or not
        a = train.parser.parse_args(["--model", str(tiny_base), "--preset", "toy", "--data", str(tiny_data),
                                     "--out", str(tmp_path / "x"), "--log-to", kind])
        with pytest.raises(BadInput) as e:
            train.main(a)
        assert f"--log-to {kind}: the {kind} package is not installed (pip install {kind})" in str(e.value)
        assert "\n" not in str(e.value) and not (tmp_path / "x").exists()
