"""
LoRA for the composer, in plain torch (no peft at run time): low-rank adapters on the attention projections of
every DiT block (to_q, to_k, to_v, to_out.0; --lora-ff adds the feed-forward layers), the widened 48-channel
patch projection trained in full (its 16 new input channels must learn, which a low-rank update cannot do well),
everything else frozen. The files use the diffusers / PEFT names, so the adapter also loads in diffusers.

    python train.py --model BASE --data data/toy --lora 16 --lora-alpha 8 --lr 1e-4 --out runs/toy-lora   # toy, CPU
    python train.py --model THUDM/CogVideoX-5b-I2V --data data/stm --lora 16 --lora-alpha 8 --lr 1e-4 --batch 1 \\
        --frames 49 --size 480 720 --bf16 --ac --cache-latents --out runs/stm5b-lora      # one GPU (or torchrun)
    python sample.py --ckpt runs/toy-lora ...       # --model's transformer, widened, + the adapter, merged at load
    python train.py ... --lora 16 --merge           # also write runs/toy-lora/transformer/ (a plain full composer)
    python lora.py runs/toy-lora [--model BASE]     # the same merge, after the fact

OUT/lora/ holds
    pytorch_lora_weights.safetensors   transformer.transformer_blocks.N.attn1.to_q.lora_A.weight (r, in) and
                                       ...lora_B.weight (out, r), fp32; rank, alpha and targets also in its
                                       metadata (diffusers' `lora_adapter_metadata`), so diffusers scales it right
    patch_embed.safetensors            patch_embed.proj.weight / .bias: the whole trained 48-channel projection
    lora_config.json                   rank, alpha, targets, base model
In diffusers (what tests/test_lora.py checks against ours):
    t = CogVideoXTransformer3DModel.from_pretrained(BASE, subfolder="transformer", in_channels=48,
                                                    low_cpu_mem_usage=False, ignore_mismatched_sizes=True)
    t.load_state_dict(safetensors.torch.load_file("OUT/lora/patch_embed.safetensors"), strict=False)
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(BASE, transformer=t); pipe.load_lora_weights("OUT/lora")
"""
import argparse
import dataclasses
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from plumbing import weights
from plumbing.cli import BadInput, run_cli
from plumbing.files import atomic_write_text
from dit import DiT, DiTConfig

ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")   # in every block; diffusers' CogVideoX targets
FF = ("ff.net.0.proj", "ff.net.2")                                     # with --lora-ff
PREFIX = "transformer."                                                # diffusers' name of the DiT in a pipeline
WEIGHTS, PATCH, CONFIG = "pytorch_lora_weights.safetensors", "patch_embed.safetensors", "lora_config.json"


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) B A x: a frozen Linear plus a trainable rank-r update.
    W and b keep their names (`to_q.weight`), so base checkpoints still load; A and B are `to_q.lora_A.weight`,
    `to_q.lora_B.weight` as in PEFT. B starts at zero: training starts exactly from the base model."""

    def __init__(self, base: nn.Linear, rank, alpha):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias                             # (out, in), (out,): frozen
        fp32 = dict(device=base.weight.device, dtype=torch.float32)                  # trainable: fp32 masters
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **fp32)         # A (r, in): Kaiming-uniform
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **fp32)        # B (out, r)
        nn.init.zeros_(self.lora_B.weight)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(x)) * self.scale

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def add_lora(model: DiT, rank, alpha, targets=ATTN):
    """Freeze `model`, wrap every target Linear of every block in a LoRALinear, and train the patch projection in
    full -> the model (changed in place)."""
    model.requires_grad_(False)
    for block in model.transformer_blocks:
        for name in targets:
            parent, child = name.rsplit(".", 1)                 # "attn1.to_out", "0": setattr works on ModuleLists
            holder = block.get_submodule(parent)
            setattr(holder, child, LoRALinear(getattr(holder, child), rank, alpha))
    model.patch_embed.proj.requires_grad_(True)
    return model


@torch.no_grad()
def merge_lora(model):
    """Replace every LoRALinear by a plain Linear with W + (alpha / r) B A (summed in fp32, stored in W's dtype):
    the same function, no extra cost at inference -> the model."""
    for parent in list(model.modules()):
        for name, m in list(parent.named_children()):
            if isinstance(m, LoRALinear):
                w = m.weight.float() + m.scale * (m.lora_B.weight.float() @ m.lora_A.weight.float())   # (out, in)
                lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
                lin.weight = nn.Parameter(w.to(m.weight.dtype), requires_grad=False)
                lin.bias = m.bias
                setattr(parent, name, lin)
    return model


def lora_config(rank, alpha, targets, base_model):
    return {"rank": rank, "alpha": alpha, "targets": list(targets), "base_model": str(base_model),
            "in_channels": 48, "trained_in_full": ["patch_embed.proj"]}


def save_adapter(sd, folder, config):
    """The composer's state dict (its trainable part is enough) -> folder/ with the adapter under PEFT names, the
    patch projection and lora_config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = {PREFIX + k: v.detach().float().contiguous().cpu() for k, v in sd.items() if ".lora_" in k}
    peft = {"r": config["rank"], "lora_alpha": config["alpha"],
            "target_modules": [t.split(".", 1)[1] for t in config["targets"]]}         # matched by name suffix
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps({PREFIX + k: v for k, v in peft.items()})}
    weights.atomic_save(adapter, folder / WEIGHTS, metadata=meta)                     # written, then renamed
    weights.save_state_dict({k: v.float() for k, v in sd.items() if k.startswith("patch_embed.proj.")}, folder, PATCH)
    atomic_write_text(folder / CONFIG, json.dumps(config, indent=2) + "\n")


def is_adapter(folder):
    return (Path(folder) / CONFIG).is_file()


def composer_config(base):
    """The composer an adapter makes of `base`: its transformer's config, widened to 48 input channels."""
    return dataclasses.replace(weights.read_config(weights.resolve(base, "transformer"), DiTConfig), in_channels=48)


def read_config(folder):
    try:
        cfg = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{folder}: not a LoRA folder with a readable {CONFIG} ({e})") from None
    need = {"rank", "alpha", "targets", "base_model"}
    if not isinstance(cfg, dict) or not need <= set(cfg) or not isinstance(cfg["rank"], int) or cfg["rank"] < 1 \
            or not isinstance(cfg["alpha"], (int, float)) or not isinstance(cfg["targets"], list):
        raise ValueError(f"{folder}: {CONFIG} is not the one train.py --lora writes (it needs "
                         f"{', '.join(sorted(need))})")
    return cfg


def load_adapter(model, folder):
    """Put folder's adapter and patch projection on `model` (a widened base, unmerged LoRALinears) -> model."""
    cfg = read_config(folder)
    add_lora(model, cfg["rank"], cfg["alpha"], cfg["targets"])
    try:
        with safe_open(str(Path(folder) / WEIGHTS), "pt") as f:
            sd = {k.removeprefix(PREFIX): f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{Path(folder) / WEIGHTS}: not a readable safetensors file ({e})") from None
    sd.update(weights.read_state_dict(folder, PATCH))
    want = {k: v for k, v in model.state_dict().items() if ".lora_" in k or k.startswith("patch_embed.proj.")}
    if set(sd) != set(want) or any(sd[k].shape != want[k].shape for k in sd):
        bad = sorted(set(sd) ^ set(want)) or [k for k in sd if sd[k].shape != want[k].shape]
        raise ValueError(f"{folder}: the adapter does not fit this base model (e.g. {bad[:3]}); is --model the one "
                         f"it was trained on ({cfg['base_model']})?")
    model.load_state_dict(sd, strict=False)                   # copies, in each parameter's own dtype
    return model


def load_composer(folder, base, dtype=None, device=None):
    """base's transformer widened to 48 channels + folder's adapter and patch projection, merged -> a plain DiT."""
    model = DiT.from_pretrained(base, in_channels=48, dtype=dtype, device=device)
    return merge_lora(load_adapter(model, folder)).requires_grad_(False).eval()


def write_merged(folder, base, out, dtype=torch.bfloat16):
    """A plain, full `transformer/` folder (diffusers format) of the merged composer."""
    load_composer(folder, base, dtype=torch.float32).to(dtype).save_pretrained(out, max_shard_bytes=5 * 2**30)


parser = argparse.ArgumentParser(description="merge a train.py --lora output into OUT/transformer/")
parser.add_argument("out", help="train.py --out of a --lora run (holds lora/)")
parser.add_argument("--model", default=None, help="base model (default: the one in lora/lora_config.json)")
parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of transformer/")


def main(a):
    """python lora.py OUT: OUT/lora/ merged into OUT/transformer/ (what train.py --lora --merge writes)."""
    try:
        base = a.model or read_config(Path(a.out) / "lora")["base_model"]
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
        write_merged(Path(a.out) / "lora", base, Path(a.out) / "transformer", dt)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, SafetensorError) as e:   # a file cut short too
        raise BadInput(f"{a.out}: {str(e).splitlines()[0]}") from None
    print(f"wrote {Path(a.out) / 'transformer'}")


if __name__ == "__main__":
    run_cli(main, parser)
