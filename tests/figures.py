"""
The parity table of docs/results.md, measured: runs the parity tests with `pytest -s`, collects the one line each
prints (`PARITY <name>: max rel err <value>` or `PARITY <name>: identical ids`), and prints the table.

    python tests/figures.py                                   # the table, from this environment
    python tests/figures.py --side-python /tmp/tv29/bin/python  # + the torchvision rows, run in a side venv

The torchvision rows need a venv where torchvision imports (not beside the CPU torch 2.13.0 here):
    python -m venv /tmp/tv29 && /tmp/tv29/bin/pip install torch==2.14.1 torchvision==0.29.1 pytest \
        safetensors sentencepiece av numpy tqdm huggingface-hub einops      # requirements.txt but its torch pin
A row whose tests were skipped says so instead of a number.
The test files import `parity` from here to print their line, so the format lives in one place.
"""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["tests/test_dit.py", "tests/test_vae.py", "tests/test_text.py", "tests/test_diffusion.py",
         "tests/test_metrics.py", "tests/test_tapir.py", "tests/test_moseg.py"]

# name printed by the tests -> (ours, reference) as docs/results.md's table words them; the order is the table's
ROWS = {
    "dit": ("`dit.py`, four families: 2B (sin-cos PE), 5B (RoPE, sharded checkpoint), 5B-I2V (learned PE), "
            "1.5-I2V (temporal patches, ofs)", "diffusers `CogVideoXTransformer3DModel`"),
    "dit-composer": ("a 48-channel composer written by our `save_pretrained`",
                     "loaded by diffusers with `in_channels=48`"),
    "vae": ("`vae.py` encode (mean, logvar) and decode, 1/5/9/17 frames, chunked or not",
            "diffusers `AutoencoderKLCogVideoX`"),
    "vae-uneven": ("`vae.py`, 25 frames = windows 9 + 8 + 8, two windows per call (diffusers: one)",
                   "diffusers `AutoencoderKLCogVideoX`"),
    "t5": ("`text.py` T5 v1.1 encoder (sharded safetensors)", "transformers `T5EncoderModel`"),
    "t5-tokenizer": ("`text.py` tokenizer (empty, long, non-ASCII, extra-id prompts)", "transformers `T5Tokenizer`"),
    "samplers": ("`diffusion.py` DDIM and DPM loops, every step, fp32", "diffusers `CogVideoXDDIMScheduler` / "
                 "`CogVideoXDPMScheduler`"),
    "samplers-bf16": ("`diffusion.py` DDIM and DPM loops, bf16 latents (the pipeline's casts)", "the same, bf16"),
    "cfg-scale": ("`diffusion.py` `cfg_scale`, constant and dynamic, every step (recovered from the guided output)",
                  "diffusers `CogVideoXPipeline` with a stub transformer"),
    "viclip": ("`others/metrics.py` ViCLIP text and vision towers", "transformers `CLIPTextModel` / `CLIPVisionModel`"),
    "clip-tokenizer": ("`others/metrics.py` CLIP BPE tokenizer", "transformers `CLIPTokenizer`"),
    "swin3d": ("`others/metrics.py` Swin3D (tiny config, random weights)", "torchvision `SwinTransformer3d`"),
    "swin3d-preprocess": ("`others/metrics.py` Swin3D preprocessing", "torchvision `Swin3D_B_Weights` transforms"),
    "raft": ("`others/metrics.py` RAFT (tiny config, random weights)", "torchvision `raft._raft`"),
    "tapir": ("`others/tapir.py` BootsTAPIR: feature grids, cost-volume estimate, 4 refinements (tiny widths)",
              "DeepMind's torch port `tapnet_torch` (SegAnyMo's copy; golden by `tests/goldens/make_tapir.py`)"),
    "moseg": ("`others/moseg.py` motion classifier over tracks, with the release's input features (tiny config)",
              "SegAnyMo `traj_oa_depth` + `parse_tapir_track_info` (golden by `tests/goldens/make_moseg.py`)"),
    "dino-keys": ("`others/moseg.py` DINOv2 last-block keys, stride 7, head-minor (transformers `Dinov2Model`)",
                  "SegAnyMo `ViTExtractor` on the official dinov2 ViT (golden)"),
}
LINE = re.compile(r"^PARITY (?P<name>[\w-]+): (?:max rel err (?P<err>\S+)|(?P<ids>identical ids))\s*$")


def parity(name, err=None):
    """Print this test's figure for the table: a max relative error, or (err=None) identical token ids."""
    assert name in ROWS, name
    print(f"\nPARITY {name}: " + ("identical ids" if err is None else f"max rel err {float(err):.3g}"))


def rel_err(a, b):
    """max |a - b| / max |b| (the figure every parity row quotes)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def collect(text):
    """{name: worst figure} from pytest -s output: the largest error over a test's parametrisations."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if not m:
            continue
        v = "identical ids" if m["ids"] else float(m["err"])
        prev = out.get(m["name"])
        out[m["name"]] = v if prev is None or isinstance(v, str) else max(v, prev)
    return out


def table(figures, skipped_reason):
    rows = ["| ours | reference (test-only oracle, tiny random weights saved in the official layout) "
            "| max relative error |", "| --- | --- | ---: |"]
    for name, (ours, ref) in ROWS.items():
        v = figures.get(name, skipped_reason)
        v = f"{v:.2g}".replace("e-0", "e-") if isinstance(v, float) else v
        rows.append(f"| {ours} | {ref} | {'0.0' if v == '0' else v} |")
    return "\n".join(rows)


def run_pytest(python, args):
    """pytest -s in a subprocess -> {name: figure}; exits if any test fails (the table would not be a measurement)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [python, "-m", "pytest", "-q", "-s", "-rs", "-p", "no:cacheprovider", *args]
    print("$ " + " ".join(cmd), file=sys.stderr)
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in run.stdout.splitlines():                  # the closing line and each skip reason
        if line.startswith("SKIPPED") or re.match(r"^=*\s*\d+ (passed|failed)", line):
            print("  " + line.strip("= "), file=sys.stderr)
    if run.returncode != 0:
        sys.stdout.write(run.stdout[-4000:] + run.stderr[-2000:])
        sys.exit(f"pytest failed (exit {run.returncode}): the table would not be a measurement")
    return collect(run.stdout)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run the parity tests and print the parity table of docs/results.md.")
    ap.add_argument("files", nargs="*", default=FILES, help="test files to run (default: the five parity files)")
    ap.add_argument("--python", default=sys.executable, help="interpreter to run pytest with")
    ap.add_argument("--side-python", help="a second interpreter (a venv with torchvision) for the torchvision "
                    "oracle tests in tests/test_metrics.py, whose rows it fills")
    a = ap.parse_args(argv)
    figures = run_pytest(a.python, a.files)
    if a.side_python:
        side = run_pytest(a.side_python, ["tests/test_metrics.py", "-k", "torchvision"])
        figures.update({k: v for k, v in side.items() if k not in figures})
    print(table(figures, "not run (torchvision not importable; see --side-python)"))


if __name__ == "__main__":
    main()
