"""Shared fixtures: a tiny base model folder (CogVideoX layout) and a tiny toy dataset, made by the tests."""
import json
import os
import signal
import string
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def single_thread(scope="function"):
    """An autouse fixture for a test module (`one_thread = single_thread()`): torch on one thread while each test
    (with scope="module": also the module's fixtures) runs, the old count restored after. Many tiny ops run 3-4x
    faster on one thread than on two fighting on a shared 2-core box, and a torchrun worker computes on one."""
    @pytest.fixture(scope=scope, autouse=True)
    def one_thread():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(n)
    return one_thread


# decompose.py at test size: 9 frames of 64x64, one clip a source, no inpainter (tests of Split and its bad input)
SPLIT_FAST = ["--frames", "9", "--size", "64", "64", "--strides", "1", "2", "--threads", "1", "--dilate", "2",
              "--min-fg", "0", "--max-clips", "1", "--inpainter", "none"]


def split(*argv):
    """decompose.py in this process: `split("--videos", d, "--out", o, *SPLIT_FAST)`."""
    import decompose
    return decompose.main(decompose.parser.parse_args([str(a) for a in argv]))


def rel(a, b):
    """Max abs error relative to the reference's largest magnitude (the parity tests' measure)."""
    return ((a - b).abs().max() / b.abs().max()).item()


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


def tiny_vlm(path, family="qwen2_vl"):
    """A tiny random Qwen2-VL (family "qwen2_vl", the captioner's tests) or Qwen2.5-VL ("qwen2_5_vl", the judge's)
    saved the way hub checkpoints are, built offline: the model, a character-level tokenizer from `tokenizers`, the
    PIL image processor at 56x56 pixels (4 tokens a frame), the chat template and processor_config.json. No
    processor object is saved: without torchvision, transformers 5 cannot build a Qwen-VL processor (it requires a
    video processor), which is what others.hf.load_vlm works around. -> (path, the vision-start token id)."""
    tf = pytest.importorskip("transformers")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
    vocab = {w: i for i, w in enumerate(special + ["[UNK]"] + list(string.printable))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Split(Regex("."), behavior="isolated"), decoders.Fuse()
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>", extra_special_tokens=special[1:])
    ids = {k: vocab[f"<|{k}|>"]
           for k in ("image_pad", "video_pad", "vision_start", "vision_end", "endoftext", "im_end")}
    qwen25 = family == "qwen2_5_vl"
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048 if qwen25 else 512,
                rope_parameters=dict(rope_type="default", rope_theta=1e4, mrope_section=[2, 3, 3]),
                bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"], pad_token_id=ids["endoftext"])
    vision = (dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0]) if qwen25
              else dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                        spatial_merge_size=2, temporal_patch_size=2))
    config, model, processor = ((tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor")
                                if qwen25 else (tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration,
                                                "Qwen2VLProcessor"))
    cfg = config(text_config=text, vision_config=vision, image_token_id=ids["image_pad"],
                 video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
                 vision_end_token_id=ids["vision_end"])
    torch.manual_seed(0)
    model(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56).save_pretrained(path)
    (path / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (path / "processor_config.json").write_text(json.dumps({"processor_class": processor}))
    return path, ids["vision_start"]


def tiny_composer(out, base):
    """A train.py-style output folder in `out`: a toy-preset composer random everywhere (so its output depends on
    every input) in transformer/, and args.json naming the base model. -> out"""
    import dit
    torch.manual_seed(0)
    m = dit.DiT(dit.PRESETS["toy"])
    for p in m.parameters():
        p.data.normal_(0, 0.05)
    m.save_pretrained(Path(out) / "transformer")
    (Path(out) / "args.json").write_text(json.dumps({"model": str(base)}))
    return Path(out)
