"""
lora.py and train.py --lora: merged == unmerged, B = 0 is the base, the adapter file loads in diffusers + peft
(test-only oracles) with our output, and --resume is exact under torchrun (FSDP2 with frozen weights, gloo).

    python -m pytest -q tests/test_lora.py
"""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import composer
import toy
from safetensors import safe_open
from safetensors.torch import load_file

from plumbing.video import read_video
import dit
import lora
import sample
import train
from dit import DiT
from figures import rel_err
from test_dit import randomize_, run_reference
from test_train import dcp_state, run

ROOT = Path(__file__).resolve().parents[1]
# a tiny 5B-I2V: RoPE + learned PE, 32 input channels [noisy | image]; the composer widens it to 48
I2V = dataclasses.replace(dit.PRESETS["cogvideox-5b-i2v"], num_attention_heads=2, attention_head_dim=16,
                          num_layers=2, text_embed_dim=24, time_embed_dim=32, max_text_seq_length=8,
                          sample_height=8, sample_width=12, sample_frames=9)
ALL = lora.ATTN + lora.FF


def inputs(B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 48, 3, I2V.sample_height, I2V.sample_width, generator=g)       # (B, 48, T', H', W')
    return x, torch.randn(B, I2V.max_text_seq_length, I2V.text_embed_dim, generator=g), torch.tensor([3, 700])


def random_lora_(model, seed=2):
    """Random A, B and patch projection: B = 0 would hide every bug of the low-rank path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random 32-channel I2V transformer in a base-model folder (fp32)."""
    out = tmp_path_factory.mktemp("i2v")
    torch.manual_seed(0)
    randomize_(DiT(I2V)).save_pretrained(out / "transformer")
    return out


def test_zero_B_is_base_and_merged_equals_unmerged(base):
    model = DiT.from_pretrained(base, in_channels=48, dtype=torch.float32).eval()
    x, text, t = inputs()
    with torch.no_grad():
        y_base = model(x, text, t)
        lora.add_lora(model, 4, 2.0, ALL)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trained == {"patch_embed.proj.weight", "patch_embed.proj.bias"} | {
            f"transformer_blocks.{i}.{m}.lora_{ab}.weight" for i in range(2) for m in ALL for ab in "AB"}
        opt = train.make_optimizer(model, 1e-3, (0.9, 0.95), 1e-8, 1e-4)            # AdamW sees the trained ones only
        in_opt = [id(p) for g in opt.param_groups for p in g["params"]]
        assert sorted(in_opt) == sorted(id(p) for p in model.parameters() if p.requires_grad)
        assert torch.equal(model(x, text, t), y_base)                       # B = 0: exactly the base model
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                m.lora_B.weight.normal_(0, 0.2)
        y = model(x, text, t)
        assert rel_err(y, y_base) > 0.01                                    # the adapter does change the output
        y_merged = lora.merge_lora(model)(x, text, t)
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(DiT.from_pretrained(base, in_channels=48).state_dict())
    assert rel_err(y_merged, y) <= 1e-5, rel_err(y_merged, y)


def test_adapter_loads_in_diffusers_peft(base, tmp_path):
    """Ours (unmerged, and merged at load as sample.py does) == diffusers' CogVideoXTransformer3DModel with the
    patch projection and the adapter file loaded through diffusers + peft, alpha != rank."""
    pytest.importorskip("peft")
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel
    x, text, t = inputs()
    model = random_lora_(lora.add_lora(DiT.from_pretrained(base, in_channels=48, dtype=torch.float32), 4, 2.0, ALL))
    with torch.no_grad():
        y = model.eval()(x, text, t)
    lora.save_adapter(model.state_dict(), tmp_path / "lora", lora.lora_config(4, 2.0, ALL, base))
    keys = load_file(tmp_path / "lora" / lora.WEIGHTS)
    assert "transformer.transformer_blocks.1.attn1.to_out.0.lora_B.weight" in keys and len(keys) == 2 * 2 * 6
    with torch.no_grad():
        y_merged = lora.load_composer(tmp_path / "lora", base, dtype=torch.float32)(x, text, t)

    ref = CogVideoXTransformer3DModel.from_pretrained(base / "transformer", in_channels=48, low_cpu_mem_usage=False,
                                                      ignore_mismatched_sizes=True).eval()
    ref.load_state_dict(load_file(tmp_path / "lora" / lora.PATCH), strict=False)
    sd, meta = CogVideoXImageToVideoPipeline.lora_state_dict(tmp_path / "lora", return_lora_metadata=True)
    ref.load_lora_adapter(sd, prefix="transformer", metadata=meta)
    y_ref = run_reference(ref, x, text, t)
    ref.disable_adapters()
    assert rel_err(run_reference(ref, x, text, t), y_ref) > 0.05            # the adapter is really applied
    assert rel_err(y, y_ref) <= 1e-5, rel_err(y, y_ref)
    assert rel_err(y_merged, y_ref) <= 1e-5, rel_err(y_merged, y_ref)


def lora_run(base, data_dir, out):
    return ["--model", str(base), "--data", str(data_dir), "--out", str(out), "--size", "64", "96", "--batch", "2",
            "--grad-accum", "2", "--steps", "4", "--warmup", "2", "--lr", "1e-2", "--log-every", "1",
            "--ckpt-every", "100", "--val-every", "0", "--workers", "1", "--threads", "1", "--ac",
            "--lora", "4", "--lora-alpha", "2", "--lora-ff"]


def ckpt_keys(ck):
    import torch.distributed.checkpoint as dcp
    return set(dcp.FileSystemReader(str(ck)).read_metadata().state_dict_metadata)


@pytest.mark.slow
def test_torchrun_lora_resume_is_exact_and_sample_uses_it(mini_i2v, tiny_data, tmp_path):
    run(lora_run(mini_i2v, tiny_data, tmp_path / "straight") + ["--merge", "--save-dtype", "fp32"])
    run(lora_run(mini_i2v, tiny_data, tmp_path / "split") + ["--stop-at", "2"])
    keys = ckpt_keys(tmp_path / "split" / "ckpt" / "step_0000002")        # trained weights only, + their AdamW state
    assert "model.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys and "model.patch_embed.proj.weight" in keys
    assert not any(k.endswith("attn1.to_q.weight") or "text_proj" in k for k in keys)
    run(lora_run(mini_i2v, tiny_data, tmp_path / "split") + ["--resume"])
    assert not (tmp_path / "split" / "transformer").exists()
    for name in (lora.WEIGHTS, lora.PATCH):
        a, b = (load_file(tmp_path / r / "lora" / name) for r in ("straight", "split"))
        assert a.keys() == b.keys() and len(a) >= 2
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert a["patch_embed.proj.weight"].shape[1] == 48
    trained = load_file(tmp_path / "straight" / "lora" / lora.WEIGHTS)
    assert min(v.abs().max() for k, v in trained.items() if "lora_B" in k) > 0        # every B has moved off zero
    with safe_open(str(tmp_path / "straight" / "lora" / lora.WEIGHTS), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 2.0
    log = lambda r: [json.loads(l)["loss"] for l in (tmp_path / r / "log.jsonl").read_text().splitlines()]
    assert log("straight") == log("split")
    # sample.py --ckpt OUT (no transformer/ there): --model's transformer + the adapter, merged at load, holds
    # exactly the weights of the --merge export (its videos are not compared bit for bit: the same weights in
    # other memory can round differently in the CPU matmuls)
    ck = [composer.composer_folders(tmp_path / r, str(mini_i2v)) for r in ("split", "straight")]
    assert ck[0][0] == tmp_path / "split" / "lora" and ck[1][0] == tmp_path / "straight" / "transformer"
    m0, m1 = (composer.load_models(tf, b, torch.device("cpu"), torch.float32)[0] for tf, b in ck)
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    toy.write_triplets(tmp_path / "tri", 1)
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--ckpt", str(tmp_path / "split"), "--model",
                        str(mini_i2v), "--triplets", str(tmp_path / "tri" / "triplets.jsonl"), "--steps", "2",
                        "--guidance", "1", "--out", str(tmp_path / "res")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_video(tmp_path / "res" / "t0000.mp4")[0].shape == (9, 64, 96, 3)


@pytest.mark.slow
def test_one_process_bf16_frozen_fp32_trained(mini_i2v, tiny_data, tmp_path):
    """--bf16 in one process: frozen weights in bf16 under autocast, the adapters, the patch projection and their
    AdamW state in fp32 (the checkpoint holds nothing else); --lora with --preset is refused before anything loads."""
    model = train.build_composer(mini_i2v, None, 0, False, False, True, (4, 2.0, lora.ATTN))
    assert {(p.requires_grad, p.dtype) for p in model.parameters()} == {(True, torch.float32), (False, torch.bfloat16)}
    run(lora_run(mini_i2v, tiny_data, tmp_path / "one")[:-1] + ["--steps", "2", "--bf16"], nproc=0)
    dtypes, trained = dcp_state(tmp_path / "one" / "ckpt" / "step_0000002", tmp_path)
    assert {dtypes[k] for k in dtypes if "pos_embedding" not in k} == {torch.float32}      # (a frozen bf16 buffer)
    assert len(dtypes) > 3 * len(trained) - 3                                                # + exp_avg(_sq), step
    assert {k for k in trained if "lora_" not in k} == {"patch_embed.proj.weight", "patch_embed.proj.bias",
                                                         "patch_embed.pos_embedding"}          # (a buffer)
    assert len(load_file(tmp_path / "one" / "lora" / lora.WEIGHTS)) == 2 * 2 * 4               # attention only
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "toy", "--lora", "4", "--data",
                        str(tiny_data), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot start from --preset" in r.stderr
