"""sample.py --offload / --compile and the VAE's automatic tiling (composer.Offload, compile_blocks, plan_decode).
On the CPU a move is a no-op, so the outputs must be bit-equal across modes and the move log shows what a GPU does;
the "meta" device stands in for a real one where a test needs the weights to really leave."""
import time

import pytest
import torch

import composer
import toy
from conftest import tiny_composer
from dit import DiT
from plumbing.video import to_tensor
from vae import VAE, VAEConfig

PROMPTS = ["a red boat", "a small dog on grass"]


@pytest.fixture(scope="module")
def folder(tiny_base, tmp_path_factory):
    """A train.py-style output (transformer/ + args.json naming the tiny base), as test_sample.py makes it."""
    return composer.composer_folders(str(tiny_composer(tmp_path_factory.mktemp("composer"), tiny_base)), None)


@pytest.fixture(scope="module")
def inputs():
    cs = [toy.clip(s) for s in (1, 2)]
    fg = torch.stack([to_tensor(c["fg"]) for c in cs])
    bg = torch.stack([to_tensor(c["bg"]) for c in cs])
    mask = torch.stack([torch.from_numpy(c["mask"]).float()[None] for c in cs])
    return fg, bg, mask


def run(folder, inputs, mode, steps=2, compile=False):
    """sample.py's batch path: load, encode every prompt, T5 leaves, compose -> (video, move log)."""
    off = composer.Offload(mode, "cpu")
    model, vae, texts = composer.load_models(*folder, "cpu", torch.float32, off, compile)
    table = composer.embed_all(texts, PROMPTS, off)
    off.release("t5")
    video = composer.compose(model, vae, composer.text_of(table, PROMPTS), *inputs, PROMPTS, steps=steps,
                             sampler="ddim", guidance=3.0, progress=False, offload=off)
    return video, off.events, model


def blocks(name, n):
    return [e for i in range(n) for e in ((f"{name}.{i}", "device"), (f"{name}.{i}", "host"))]


@pytest.mark.slow
def test_same_video_in_every_mode_and_the_moves(folder, inputs):
    torch.set_num_threads(1)
    v_none, ev_none, model = run(folder, inputs, "none")
    v_model, ev_model, _ = run(folder, inputs, "model")
    v_seq, ev_seq, _ = run(folder, inputs, "sequential")
    assert torch.equal(v_none, v_model) and torch.equal(v_none, v_seq)
    assert v_none.shape == (2, 3, 9, 64, 64) and v_none.abs().sum() > 0
    # none: everything on the device at load, T5 leaves once the prompts are encoded, nothing moves after
    assert ev_none == [("t5", "device"), ("transformer", "device"), ("vae", "device"), ("t5", "host")]
    # model: each model on the device only while it runs
    vae = [("vae", "device"), ("vae", "host")]
    assert ev_model == [("t5", "device"), ("t5", "host")] + vae + [("transformer", "device"),
                                                                   ("transformer", "host")] + vae
    # sequential: the rest of the model comes in, then each block in turn, once per DiT call (one per step: CFG's
    # two halves are one batch)
    n, steps = len(model.transformer_blocks), 2
    assert ev_seq == ([("t5", "device")] + blocks("t5", 1) + [("t5", "host")] + vae + [("transformer", "device")]
                      + blocks("transformer", n) * steps + [("transformer", "host")] + vae)


def test_compose_keeps_its_train_py_signature(folder, inputs):
    """train.py's validation passes the prompt encoder itself (a callable), no offload: the same video."""
    torch.set_num_threads(1)
    model, vae, texts = composer.load_models(*folder, "cpu", torch.float32)
    a = composer.compose(model, vae, texts, *inputs, PROMPTS, steps=2, sampler="ddim", guidance=3.0, progress=False)
    b, _, _ = run(folder, inputs, "model")
    assert torch.equal(a, b)
    assert torch.equal(composer.embed(texts, PROMPTS), composer.text_of(composer.embed_all(texts, PROMPTS), PROMPTS))


def test_weights_really_leave():
    """With a device that is not the host ("meta"), a model is there only inside use(), its host tensors are the
    same objects afterwards (no copy back), and a streamed block is there only during its own forward."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)]))
    host = [p.data for p in m.parameters()]
    off = composer.Offload("model", "meta")
    off.add("m", m)
    assert not any(p.is_meta for p in m.parameters())
    with off.use("m"):
        assert all(p.is_meta for p in m.parameters())
    assert all(p.data_ptr() == h.data_ptr() for p, h in zip(m.parameters(), host))
    off = composer.Offload("sequential", "meta")
    off.add("s", m, m[1])
    seen = []
    m[1][1].register_forward_pre_hook(lambda mod, args: seen.append((mod.weight.is_meta, m[1][0].weight.is_meta)))
    with off.use("s"):
        assert m[0].weight.is_meta and not m[1][0].weight.is_meta
        m[1][1](torch.zeros(1, 4, device="meta"))
    assert seen == [(True, False)] and not any(p.is_meta for p in m.parameters())
    with pytest.raises(ValueError):
        composer.Offload("all")


def test_decode_plan_from_free_memory():
    """The 5B VAE at 49x480x720 (meta weights: only its config matters): untiled with more frames per call when
    memory is plentiful (within half of it), tiled when not, smaller tiles with less, never over 80% of it."""
    with torch.device("meta"):
        vae = VAE(VAEConfig())
    z = (1, 16, 13, 60, 90)
    gib = 2 ** 30
    kw, need, _ = vae.plan_decode(z, 80 * gib)
    assert kw == {"tile": False, "chunk_frames": 10} and need <= 0.5 * 80 * gib
    kw, need, _ = vae.plan_decode(z, 16 * gib)
    assert kw == {"tile": False, "chunk_frames": 2}
    kw, need, why = vae.plan_decode(z, 8 * gib)
    assert kw == {"tile": True, "tile_size": (240, 360), "chunk_frames": 2} and "untiled decode needs" in why
    kw, need, _ = vae.plan_decode(z, 2 * gib)
    assert kw["tile"] and kw["tile_size"][0] < 240 and need <= 0.8 * 2 * gib
    # the CPU keeps its rule
    assert composer.decode_tiling(vae, (1, 16, 3, 8, 8), "cpu", torch.float32) == {"tile": False}
    assert composer.decode_tiling(vae, (1, 16, 3, 60, 90), "cpu", torch.float32) == {"tile": True}


@pytest.mark.slow
def test_compile_same_output_and_speed(folder):
    """--compile: each block compiled; the DiT's output equal to fp32 rounding. Prints the CPU speed ratio."""
    torch.set_num_threads(1)
    model = DiT.from_pretrained(folder[0], subfolder="", dtype=torch.float32, device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 48, 3, 16, 16, generator=g)
    text = torch.randn(2, model.config.max_text_seq_length, model.config.text_embed_dim, generator=g)
    t = torch.tensor([999, 500])
    with torch.no_grad():
        ref = model(x, text, t)
        eager = timed(lambda: model(x, text, t))
        composer.compile_blocks(model)
        t0 = time.perf_counter()
        out = model(x, text, t)
        first = time.perf_counter() - t0
        comp = timed(lambda: model(x, text, t))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    print(f"COMPILE first call {first:.1f} s; eager {eager * 1e3:.1f} ms, compiled {comp * 1e3:.1f} ms per forward, "
          f"ratio {eager / comp:.2f}")


def timed(f, n=5):
    f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n


@pytest.mark.slow
def test_bench_offload_tiny(capsys):
    """tests/bench_offload.py (the docs' table, on a GPU) runs end to end at toy size on the CPU: one row per mode,
    finite outputs, the move counts of each mode."""
    import importlib.util
    from pathlib import Path
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("bench_offload", Path(__file__).parent / "bench_offload.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--tiny", "--device", "cpu"])
    out = capsys.readouterr().out
    assert [r["mode"] for r in res["rows"]] == ["none", "model", "sequential"]
    for r in res["rows"]:
        assert r["out"] == [1, 3, 9, 64, 64] and r["out_finite"] and r["s"] > 0 and r["peak_gib"] is None
        assert f"| {r['mode']} | - | " in out
    # none: 3 placed + T5 leaving twice (warm-up and timed); model: 2 x (T5 2 + VAE 4 + DiT 2); sequential adds
    # the 4 toy blocks twice per step (3 DiT calls: 1 warm-up step + 2) and T5's one block twice per composition
    assert [r["moves"] for r in res["rows"]] == [5, 16, 16 + 3 * 4 * 2 + 2 * 2]
    assert out.strip().splitlines()[-1].startswith("JSON {")


@pytest.mark.slow
def test_sample_py_offload_flag(folder, tmp_path):
    """sample.py --offload sequential writes the same video as without it; a bad mode fails in argparse."""
    import subprocess
    import sys
    from pathlib import Path
    import numpy as np
    from plumbing.video import read_video, write_video
    c = toy.clip(3)
    write_video(tmp_path / "fg.mp4", c["fg"], fps=8)
    write_video(tmp_path / "bg.mp4", c["bg"], fps=8)
    sample = Path(__file__).resolve().parents[1] / "sample.py"
    args = [sys.executable, str(sample), "--ckpt", str(folder[0].parent), "--fg", str(tmp_path / "fg.mp4"), "--bg",
            str(tmp_path / "bg.mp4"), "--prompt", "a red boat", "--steps", "2", "--device", "cpu"]
    runs = [subprocess.run(args + ["--out", str(tmp_path / f"{m}.mp4"), "--offload", m], capture_output=True,
                           text=True, timeout=300) for m in ("none", "sequential")]
    assert all(r.returncode == 0 for r in runs), runs[1].stderr[-2000:]
    assert "nothing to move" in runs[1].stdout and "nothing to move" not in runs[0].stdout
    assert np.array_equal(read_video(tmp_path / "none.mp4")[0], read_video(tmp_path / "sequential.mp4")[0])
    r = subprocess.run(args + ["--out", str(tmp_path / "x.mp4"), "--offload", "all"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'all'" in r.stderr and "Traceback" not in r.stderr
