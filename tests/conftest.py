"""Shared fixtures: a tiny base model folder (CogVideoX layout) and a tiny toy dataset, made by the tests."""
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """tokenizer/ text_encoder/ vae/ of random toy models (a real base folder, written by our savers)."""
    import text
    import toy
    import vae
    out = tmp_path_factory.mktemp("base")
    words = [toy.clip(s)["caption"] for s in range(60)]
    text.train_spiece(words * 3, out / "tokenizer" / "spiece.model", 64)
    torch.manual_seed(0)
    t5 = text.T5Encoder(text.T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4))
    t5.save_pretrained(out / "text_encoder")
    vae.VAE(vae.PRESETS["toy"]).save_pretrained(out / "vae")
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    import toy
    out = tmp_path_factory.mktemp("toydata")
    toy.write_data(out, 12)
    return out


# Captions of the paper's real example clips (../shared/real), as a VLM would write them; also the text the
# miniature base's tokenizer is trained on.
REAL_CAPTIONS = {
    "fig1-bird": "a small bird flies over a calm lake in the morning light",
    "fig1-pig-jungle": "a pig walks through a green jungle among tall plants",
    "fig1-pig-moon": "a pig walks across the grey surface of the moon",
    "fig5-ex1": "a cheetah runs across a dry savanna under a bright sky",
    "fig5-ex2": "a man runs along a road in a city at sunset",
    "fig5-ex3": "a duck swims on a pond next to green reeds",
    "fig5-ex5": "a dog walks on a beach while waves roll in",
}


@pytest.fixture(scope="session")
def mini_i2v(tmp_path_factory):
    """A miniature THUDM/CogVideoX-5b-I2V: the same folder layout (model_index.json, transformer/ vae/
    text_encoder/ tokenizer/ scheduler/), the same storage (every component in bf16, the T5 sharded with an
    index) and the 5B-I2V transformer's flags (RoPE + learned PE at its sample size, 32 input channels,
    226 text tokens), at toy size: 9 frames of 64x96 (latent 3x16x24) through the toy VAE (x4 space)."""
    import json
    import dit
    import text
    import vae
    out = tmp_path_factory.mktemp("mini-i2v")
    text.train_spiece(list(REAL_CAPTIONS.values()) * 20, out / "tokenizer" / "spiece.model", 64)
    torch.manual_seed(0)
    t5 = text.T5Encoder(text.T5Config(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))
    t5.to(torch.bfloat16).save_pretrained(out / "text_encoder", max_shard_bytes=20_000)   # sharded, as T5-XXL
    vae.VAE(vae.PRESETS["toy"]).to(torch.bfloat16).save_pretrained(out / "vae")
    cfg = dit.dataclasses.replace(dit.PRESETS["cogvideox-5b-i2v"], num_attention_heads=2, attention_head_dim=32,
                                  num_layers=2, text_embed_dim=32, time_embed_dim=32, sample_frames=9,
                                  sample_height=16, sample_width=24)
    base = dit.DiT(cfg)
    with torch.no_grad():                      # a "pretrained" model: no zero-initialised layer left
        for p in base.parameters():
            p.add_(0.02 * torch.randn_like(p))
    base.to(torch.bfloat16).save_pretrained(out / "transformer")
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(
        (ROOT / "assets" / "toy-base" / "scheduler" / "scheduler_config.json").read_text())
    index = {"_class_name": "CogVideoXImageToVideoPipeline", "_diffusers_version": "0.31.0",
             "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLCogVideoX"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def kill_all(tag):
    """SIGKILL every process whose command line holds `tag`: torchrun and each of its workers (a node dies)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and tag.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def tiny_sam2(path, S=64):
    """A tiny random SAM 2 video model (transformers' Sam2VideoModel) saved to `path`, as hub checkpoints are."""
    import transformers as tf
    cfg = tf.Sam2VideoConfig(
        vision_config=dict(backbone_config=dict(
            model_type="sam2_hiera_det_model", hidden_size=12, num_attention_heads=1, image_size=[S, S],
            blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[12, 24, 48, 96], num_attention_heads_per_stage=[1] * 4,
            window_size_per_stage=[4] * 4, global_attention_blocks=[3],
            window_positional_embedding_background_size=[4, 4]),
            backbone_channel_list=[96, 48, 24, 12], backbone_feature_sizes=[[S // 4] * 2, [S // 8] * 2, [S // 16] * 2],
            fpn_hidden_size=128),
        prompt_encoder_config=dict(hidden_size=128, image_size=S, patch_size=16),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=S, memory_attention_hidden_size=128, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[S // 16] * 2,
        memory_encoder_hidden_size=128, mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64)      # memory channels stay 64: SAM 2 hard-codes them
    tf.Sam2VideoModel(cfg).eval().save_pretrained(path)
    return path
