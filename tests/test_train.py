"""train.py: exact resume under torchrun with FSDP2 + activation checkpointing + DCP (CPU, gloo)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def run(args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "train.py")] if nproc else [sys.executable, str(ROOT / "train.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def common(base, data, out):
    return ["--model", str(base), "--preset", "toy", "--data", str(data), "--out", str(out), "--batch", "2",
            "--steps", "4", "--warmup", "2", "--log-every", "1", "--ckpt-every", "100", "--val-every", "0",
            "--workers", "1", "--threads", "1", "--ac", "--grad-accum", "2"]


def test_torchrun_fsdp2_resume_is_exact(tiny_base, tiny_data, tmp_path):
    run(common(tiny_base, tiny_data, tmp_path / "straight"))
    run(common(tiny_base, tiny_data, tmp_path / "split") + ["--stop-at", "2"])
    assert (tmp_path / "split" / "ckpt" / "step_0000002").is_dir()
    assert not (tmp_path / "split" / "transformer").exists()
    run(common(tiny_base, tiny_data, tmp_path / "split") + ["--resume"])
    a = load_file(tmp_path / "straight" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "split" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = [json.loads(l) for l in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(l) for l in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    # the consolidated composer loads in diffusers, which names it CogVideoXTransformer3DModel
    from diffusers import CogVideoXTransformer3DModel
    m = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "straight" / "transformer")
    assert m.config.in_channels == 48


def test_single_process_with_cache_and_ablations(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "one"
    run(common(tiny_base, tiny_data, out) + ["--cache-latents", "--no-augment", "--plain-loss", "--val-every", "4",
                                             "--val-steps", "2"], nproc=0)
    assert len(list((out / "cache").glob("latents_*/*.safetensors"))) == 12
    assert list((out / "val").glob("*.mp4"))
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(r["loss"] == r["loss_fg"] for r in log)    # plain loss logs one number


def test_bad_arguments_are_clear(tiny_base, tiny_data, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--model", str(tiny_base), "--preset", "toy",
                        "--data", str(tiny_data), "--frames", "8", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--frames 8" in r.stderr + r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--model", str(tiny_base), "--preset", "toy",
                        "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode != 0 and "nope: no such dataset folder" in r.stderr
