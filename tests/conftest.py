"""Shared fixtures: a tiny base model folder (CogVideoX layout) and a tiny toy dataset, made by the tests."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """tokenizer/ text_encoder/ vae/ of random toy models (a real base folder, written by our savers)."""
    import data
    import text
    import vae
    out = tmp_path_factory.mktemp("base")
    words = [data.toy_caption(data.toy_clip(s)["sprite"], data.toy_clip(s)["scene"]) for s in range(60)]
    text.train_spiece(words * 3, out / "tokenizer" / "spiece.model", 64)
    torch.manual_seed(0)
    t5 = text.T5Encoder(text.T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4))
    t5.save_pretrained(out / "text_encoder")
    vae.VAE(vae.PRESETS["toy"]).save_pretrained(out / "vae")
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    import data
    out = tmp_path_factory.mktemp("toydata")
    data.write_toy(out, 12)
    return out
