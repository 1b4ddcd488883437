"""text.py against transformers (test-only oracle): T5Tokenizer ids on a SentencePiece model
trained here, T5EncoderModel outputs from sharded safetensors it wrote, XXL names and shapes."""
import json
import warnings

import pytest
import torch

import text
from figures import parity  # tests/figures.py: the parity table of docs/results.md

CORPUS = ["a cat walks slowly on the green grass", "the brown dog runs in the park at night",
          "a red car drives down a long empty road", "white birds fly over the calm blue sea",
          "a young man plays an acoustic guitar on stage", "two children build a sandcastle on the beach",
          "héllo wörld, a café in the old town", "rain falls on the window of a quiet room"] * 8
PROMPTS = ["", "a cat", "A Dog runs!", "a cat walks " * 100,  # empty, short, long (truncated)
           "héllo wörld 日本語 🐱 ＡＢＣ ﬁne straße", "  tabs\tand\n\nnewlines  \u3000 and\u00a0spaces ",
           "a cat <extra_id_0> on<extra_id_99>grass <extra_id_100> <extra_id_7", "literal </s> and <pad> and <unk>"]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tokenizer"
    return text.train_spiece(CORPUS, folder / "spiece.model", vocab_size=200)


def test_tokenizer_matches_transformers(spiece):
    from transformers import T5Tokenizer  # transformers 5: the `tokenizers`-backed class, converted from spiece.model
    ref = T5Tokenizer.from_pretrained(spiece.parent)
    for max_length in (226, 12):
        tok = text.Tokenizer(spiece, max_length=max_length)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = tok(PROMPTS)
        want = ref(PROMPTS, padding="max_length", max_length=max_length, truncation=True,
                   add_special_tokens=True, return_tensors="pt").input_ids
        assert ours.dtype == torch.long and ours.shape == (len(PROMPTS), max_length)
        assert torch.equal(ours, want), (ours, want)
    parity("t5-tokenizer")
    assert ours[0, 0] == 1 and (ours[0, 1:] == 0).all()  # "" -> </s> then <pad>
    assert ref.convert_tokens_to_ids("<extra_id_0>") == tok.special["<extra_id_0>"] == len(ref) - 1


def test_tokenizer_warns_on_truncation_only(spiece):
    tok = text.Tokenizer(spiece)
    with pytest.warns(UserWarning, match="truncated.*a cat walks"):
        ids = tok(["a cat walks " * 100])
    assert ids[0, -1] == 1  # still ends in </s>
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(["a cat walks"])


def test_tokenizer_from_pretrained_layouts(spiece):
    base = spiece.parent.parent
    for where in (base, spiece.parent, spiece):
        assert text.Tokenizer.from_pretrained(where)("a cat").tolist() == text.Tokenizer(spiece)("a cat").tolist()


def test_tokenizer_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        text.Tokenizer(tmp_path / "spiece.model")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        text.Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="spiece.model"):
        text.Tokenizer(tmp_path / "spiece.model")


def _reference(config, seed):
    """A random transformers T5EncoderModel; norms randomised too so they are actually checked."""
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(seed)
    ref = T5EncoderModel(T5Config(**{f: getattr(config, f) for f in (
        "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
        "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj")})).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    return ref


CONFIGS = [text.PRESETS["toy"],
           text.T5Config(vocab_size=300, d_model=48, d_kv=8, d_ff=96, num_layers=3, num_heads=6,
                         relative_attention_num_buckets=8, relative_attention_max_distance=20)]


@pytest.mark.parametrize("config", CONFIGS, ids=["toy", "odd"])
def test_encoder_matches_transformers(config, tmp_path):
    ref = _reference(config, seed=0)
    ref.save_pretrained(tmp_path / "text_encoder", max_shard_size="40KB")
    assert (tmp_path / "text_encoder" / "model.safetensors.index.json").exists()
    ours = text.T5Encoder.from_pretrained(tmp_path)  # the base folder; subfolder text_encoder
    assert ours.shared.weight is ours.encoder.embed_tokens.weight
    ids = torch.randint(0, config.vocab_size, (2, 226))  # 226 > max distance: far buckets used
    with torch.no_grad():
        want = ref(input_ids=ids).last_hidden_state
        got = ours(ids)
    assert got.shape == (2, 226, config.d_model)
    parity("t5", ((got - want).abs().max() / want.abs().max()).item())
    assert (got - want).abs().max() / want.abs().max() < 1e-5


def test_save_pretrained_roundtrip_and_tied_key(tmp_path):
    from safetensors.torch import save_file
    from transformers import T5EncoderModel
    ref = _reference(text.PRESETS["toy"], seed=1)
    ids = torch.randint(0, 1000, (1, 40))
    with torch.no_grad():
        want = ref(input_ids=ids).last_hidden_state
    # an older layout: one file that stores the tied encoder.embed_tokens.weight as well
    (tmp_path / "a").mkdir()
    save_file({k: v.clone() for k, v in ref.state_dict().items()}, tmp_path / "a" / "model.safetensors")
    (tmp_path / "a" / "config.json").write_text(json.dumps(ref.config.to_dict()))
    ours = text.T5Encoder.from_pretrained(tmp_path / "a", dtype=torch.bfloat16)
    assert ours.shared.weight.dtype == torch.bfloat16 and ours.shared.weight is ours.encoder.embed_tokens.weight
    ours = text.T5Encoder.from_pretrained(tmp_path / "a")
    ours.save_pretrained(tmp_path / "b", max_shard_bytes=50_000)
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["architectures"] == ["T5EncoderModel"] and cfg["model_type"] == "t5"
    back = T5EncoderModel.from_pretrained(tmp_path / "b").eval()  # transformers reads what we wrote
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids).last_hidden_state, want, atol=1e-6)
        assert torch.allclose(text.T5Encoder.from_pretrained(tmp_path / "b")(ids), want, atol=1e-5)


def test_xxl_meta_names_and_shapes():
    from transformers import T5Config, T5EncoderModel
    c = text.PRESETS["t5-v1_1-xxl"]
    with torch.device("meta"):
        ref = T5EncoderModel(T5Config(vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff,
                                      num_layers=c.num_layers, num_heads=c.num_heads, feed_forward_proj="gated-gelu"))
    ours = text.weights.meta_model(text.T5Encoder, c)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 4_762_310_656  # shared counted once


def test_missing_shard(tmp_path):
    _reference(text.PRESETS["toy"], seed=2).save_pretrained(tmp_path, max_shard_size="40KB")
    shard = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]["shared.weight"]
    (tmp_path / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        text.T5Encoder.from_pretrained(tmp_path)


def test_embedding_cache(spiece, tmp_path):
    torch.manual_seed(0)
    encoder = text.T5Encoder(text.PRESETS["toy"]).eval()
    calls = []
    encoder.register_forward_hook(lambda *a: calls.append(1))
    tok = text.Tokenizer(spiece)
    prompts = ["a cat", "a dog", "a cat"]
    first = text.EmbeddingCache(tmp_path, tok, encoder)(prompts)
    assert first.shape == (3, 226, 64) and len(calls) == 1
    assert torch.equal(first, text.encode_prompts(prompts, tok, encoder)) and len(calls) == 2
    again = text.EmbeddingCache(tmp_path, tok, encoder)(prompts[::-1])  # a fresh cache on the same folder
    assert len(calls) == 2 and torch.equal(again, first.flip(0))
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 and not list(tmp_path.glob("*.tmp"))
    torch.manual_seed(1)  # another model of the same config must not hit the first one's entries
    other = text.T5Encoder(text.PRESETS["toy"]).eval()
    text.EmbeddingCache(tmp_path, tok, other)(["a cat"])
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
