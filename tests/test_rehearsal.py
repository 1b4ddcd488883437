"""The real-scale path, rehearsed end to end on a miniature CogVideoX-5B-I2V (tests/conftest.py: mini_i2v).

The commands are read from the README's "Real scale" section and run as written there, except for sizes, step
counts, paths and CPU/gloo (2 processes): Split on the paper's real clips, torchrun + FSDP2 + bf16 + AC + the
latent cache + gradient accumulation + validation with CFG, a SIGKILL mid-run and --resume, the bf16 export,
sample.py with the README's sampler settings, evaluate.py on the result. Every code path only real scale takes
runs here: a base stored in bf16, its 32-channel patch projection widened to 48, the learned PE at the base's
sample size, a sharded T5 with 226 tokens, DPM + CFG, fp32 master weights under FSDP2 mixed precision.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REAL_CAPTIONS, kill_all

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}


def readme_commands():
    """The shell commands of the README's "Real scale" code block, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Real scale", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    cmds = [c for c in re.sub(r"\\\n\s*", " ", block).splitlines() if c.strip() and not c.strip().startswith("#")]
    return [shlex.split(c.split("  #")[0]) for c in cmds]


def command(cmds, script):
    hits = [c for c in cmds if script in c]
    assert len(hits) == 1, f"the README's real-scale section should hold one {script} command, found {len(hits)}"
    return hits[0]


def override(cmd, **flags):
    """Replace the values of `--flag value...` options (or add them); None removes the option."""
    out, i = [], 0
    names = {"--" + k.replace("_", "-"): v for k, v in flags.items()}
    while i < len(cmd):
        if cmd[i] in names:
            i += 1
            while i < len(cmd) and not cmd[i].startswith("--"):
                i += 1
            continue
        out.append(cmd[i])
        i += 1
    for k, v in names.items():
        if v is not None:
            out += [k] + ([str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)] if v != "" else [])
    return out


def results_folder(cmd, folder):
    """The README's `evaluate.py results FOLDER ...` with FOLDER replaced (an older `--results FOLDER` becomes the
    subcommand's form: evaluate.py takes no --results flag)."""
    i = next(k for k, a in enumerate(cmd) if a.endswith("evaluate.py")) + 1
    rest = override(cmd[i:], results=None)
    return cmd[:i] + ["results", str(folder)] + (rest[2:] if rest[:1] == ["results"] else rest)


def run(cmd, timeout=600, ok=True):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=timeout)
    if ok:
        assert r.returncode == 0, " ".join(cmd) + "\n" + r.stdout[-3000:] + r.stderr[-3000:]
    return r


def python(cmd):
    """`python X.py ...` / `torchrun --nproc_per_node=8 X.py ...` -> this interpreter, 2 processes, standalone."""
    if cmd[0] == "torchrun":
        args = [a for a in cmd[1:] if not a.startswith("--nproc_per_node")]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + args
    assert cmd[0] == "python", cmd
    return [sys.executable] + cmd[1:]


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/real (the paper's example clips) is not here")
def test_real_scale_rehearsal(mini_i2v, tmp_path):
    cmds = readme_commands()

    # --- Split: the README's command fails at once offline, naming the offline choice -------------------------
    split = python(command(cmds, "decompose.py"))
    split = override(split, videos=str(REAL / "*" / "stm_output.mp4"), out=tmp_path / "data", frames=9, size=(64, 96))
    t0 = time.time()
    r = run(split, ok=False)
    assert r.returncode != 0 and time.time() - t0 < 60
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert any(c in err[0] for c in ("--captioner file", "--segmenter motion", "--inpainter temporal")), err[0]
    assert not (tmp_path / "data" / "metadata.jsonl").exists()               # nothing was processed
    # ... and with the weight-free segmenter and the captions a VLM would give, it splits the real clips
    captions = tmp_path / "captions.tsv"
    captions.write_text("".join(f"{k}_stm_output\t{v}\n" for k, v in REAL_CAPTIONS.items()))
    run(override(split, segmenter="motion", sam2=None, captioner="file", vlm=None, captions=captions,
                 inpainter="temporal", max_clips=2))
    prompts = (tmp_path / "data" / "prompts.txt").read_text().splitlines()
    assert len(prompts) >= 4 and set(prompts) <= set(REAL_CAPTIONS.values()), prompts   # real, per-clip captions

    # --- Merge: torchrun, 2 processes, killed after its first checkpoint, then resumed -------------------------
    out = tmp_path / "run"
    train = override(python(command(cmds, "train.py")), model=mini_i2v, data=tmp_path / "data", frames=9,
                     size=(64, 96), batch=1, grad_accum=2, warmup=2, steps=6, ckpt_every=2, val_every=2,
                     val_steps=6, out=out, workers=1, threads=1, log_every=1)
    for flag in ("--bf16", "--ac", "--cache-latents"):
        assert flag in train, f"the README's training command lost {flag}"
    with open(tmp_path / "killed.log", "w") as logf:
        p = subprocess.Popen(train, cwd=ROOT, env=ENV, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 400
        while not list((out / "ckpt").glob("step_*[0-9]")) and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert p.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        kill_all(str(out))                                                    # the node dies mid-run
        p.wait()
    assert not (out / "transformer").exists()
    r = run(train + ["--resume"])
    resumed = re.search(r"resumed from .*step_\d+ at step (\d+)\b", r.stdout)
    assert resumed and 2 <= int(resumed.group(1)) < 6, r.stdout[-2000:]

    # fp32 master weights and optimiser state, although the base is stored in bf16
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    last = sorted((out / "ckpt").glob("step_*[0-9]"))[-1]
    meta = dcp.FileSystemReader(str(last)).read_metadata().state_dict_metadata
    dtypes = {k: v.properties.dtype for k, v in meta.items() if hasattr(v, "properties")}
    assert len(dtypes) > 50 and set(dtypes.values()) == {torch.float32}, set(dtypes.values())
    dcp_to_torch_save(str(last), str(tmp_path / "last.pt"))
    trained = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    base = load_file(mini_i2v / "transformer" / "diffusion_pytorch_model.safetensors")
    for k in ("transformer_blocks.0.attn1.to_q.weight", "proj_out.weight"):   # lr 5e-6: below half a bf16 ulp
        moved = (trained[k] != base[k].float()).float().mean().item()
        assert moved > 0.9, (k, moved)
    widened = trained["patch_embed.proj.weight"]                              # 32 -> 48 input channels
    assert widened.shape[1] == 48 and torch.allclose(widened[:, 32:], widened[:, 16:32], atol=1e-3)

    # the export: diffusers format, bf16 like the official weights, a 48-channel composer
    sd = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in sd.values()} == {torch.bfloat16}
    cfg = json.loads((out / "transformer" / "config.json").read_text())
    assert cfg["in_channels"] == 48 and cfg["max_text_seq_length"] == 226 and cfg["use_learned_positional_embeddings"]
    assert {p.name for p in (out / "val").glob("*.mp4")} >= {"step0000006_0.mp4", "step0000006_1.mp4"}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 6 and all(r["loss"] == r["loss"] for r in log)

    # --- Sample with the README's sampler settings, then evaluate ---------------------------------------------
    ex = REAL / "fig1-bird"
    samp = override(python(command(cmds, "sample.py")), model=mini_i2v, ckpt=out, fg=ex / "fg.mp4",
                    mask=ex / "mask.mp4", bg=ex / "bg.mp4", prompt=REAL_CAPTIONS["fig1-bird"], out=tmp_path / "res")
    assert samp[samp.index("--sampler") + 1] == "dpm" and samp[samp.index("--steps") + 1] == "50"
    run(samp)
    from plumbing.video import read_video
    video, _ = read_video(tmp_path / "res" / "result.mp4")
    assert video.shape == (9, 64, 96, 3)
    ev = results_folder(python(command(cmds, "evaluate.py")), tmp_path / "res")
    run(ev)
    rows = [json.loads(line) for line in (tmp_path / "res" / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
