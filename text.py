"""
Text side of CogVideoX: a SentencePiece tokenizer that pads and truncates like transformers'
T5Tokenizer, and the T5 v1.1 encoder whose parameter names equal the `T5EncoderModel` keys,
so `<base>/text_encoder` (sharded safetensors) loads with strict=True and no rename table.

    python -c "import text; tok = text.Tokenizer.from_pretrained('THUDM/CogVideoX-5b-I2V'); \
        enc = text.T5Encoder.from_pretrained('THUDM/CogVideoX-5b-I2V'); \
        print(text.encode_prompts(['a cat on a sofa'], tok, enc).shape)"    # (1, 226, 4096)
"""
import dataclasses
import hashlib
import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from plumbing import weights

# -----------------------------------------------------------------------------------------------
# tokenizer


class Tokenizer:
    """prompts -> LongTensor (B, max_length): pieces, then </s>, then <pad> (ids as T5Tokenizer)."""

    def __init__(self, spiece_model_path, max_length=226, extra_ids=100):
        path = Path(spiece_model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: SentencePiece model (spiece.model) not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a readable SentencePiece model ({e})") from None
        self.max_length, self.path = max_length, path
        n = self.sp.get_piece_size()
        self.pad_id, self.eos_id = self.sp.piece_to_id("<pad>"), self.sp.piece_to_id("</s>")
        # T5 appends 100 sentinels after the SentencePiece vocab, in reverse: <extra_id_0> is the last id
        self.special = {p: self.sp.piece_to_id(p) for p in ("<pad>", "</s>", "<unk>")}
        self.special |= {f"<extra_id_{i}>": n + extra_ids - 1 - i for i in range(extra_ids)}
        # specials typed in a prompt are single tokens (transformers matches them leftmost-longest)
        alts = sorted(self.special, key=len, reverse=True)
        self.split = re.compile("(" + "|".join(map(re.escape, alts)) + ")")

    @classmethod
    def from_pretrained(cls, path_or_hub_id, subfolder="tokenizer", **kw):
        """A base-model folder (`tokenizer/spiece.model`), the tokenizer folder, the file, or a hub id."""
        p = Path(path_or_hub_id)
        for f in (p / subfolder / "spiece.model", p / "spiece.model", p):
            if f.is_file():
                return cls(f, **kw)
        if p.exists():
            raise FileNotFoundError(f"{p}: no spiece.model here nor in {p / subfolder}")
        return cls(weights.resolve(path_or_hub_id, subfolder) / "spiece.model", **kw)

    def encode(self, prompt):
        ids = []
        for i, part in enumerate(self.split.split(prompt)):  # odd parts are the special tokens
            ids += [self.special[part]] if i % 2 else self.sp.encode(part)
        if len(ids) > self.max_length - 1:  # room for </s>, like truncation=True with special tokens
            short = prompt if len(prompt) <= 80 else prompt[:77] + "..."
            warnings.warn(f"prompt truncated from {len(ids) + 1} to {self.max_length} tokens: {short!r}")
            ids = ids[: self.max_length - 1]
        return ids + [self.eos_id] + [self.pad_id] * (self.max_length - 1 - len(ids))

    def __call__(self, prompts):
        prompts = [prompts] if isinstance(prompts, str) else prompts
        return torch.tensor([self.encode(p) for p in prompts], dtype=torch.long).view(len(prompts), self.max_length)


def train_spiece(texts, out_path, vocab_size):
    """Train a tiny SentencePiece model laid out like T5's (unigram, <pad>=0 </s>=1 <unk>=2, no bos).
    The vocabulary may come out smaller than asked when the corpus is small."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        hard_vocab_limit=False, character_coverage=1.0, num_threads=1, minloglevel=2)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out_path)
    return out_path

# -----------------------------------------------------------------------------------------------
# encoder


@dataclass
class T5Config:  # field names = transformers' config.json keys; defaults = google/t5-v1_1-xxl
    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    dense_act_fn: str = None
    is_gated_act: bool = None

    def __post_init__(self):  # older config.json files lack these two; transformers derives them so
        gated, act = self.feed_forward_proj.startswith("gated-"), self.feed_forward_proj.split("-")[-1]
        self.is_gated_act = gated if self.is_gated_act is None else self.is_gated_act
        self.dense_act_fn = self.dense_act_fn or ("gelu_new" if self.feed_forward_proj == "gated-gelu" else act)


PRESETS = {
    "t5-v1_1-xxl": T5Config(),
    "toy": T5Config(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
}
ACTS = {"gelu_new": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu, "relu": F.relu}


class T5LayerNorm(nn.Module):  # RMS norm: no mean, no bias; statistics in fp32 even under bf16
    def __init__(self, dim, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)


def relative_position_bucket(rel, num_buckets, max_distance):
    """Bidirectional T5 buckets for rel = key_pos - query_pos: half the buckets per direction;
    within each, small distances are exact and larger ones log-spaced up to max_distance."""
    half = num_buckets // 2
    bucket = (rel > 0).long() * half
    dist, exact = rel.abs(), half // 2
    # same float expression as the reference, so the boundaries land in the same buckets
    log_bucket = exact + (torch.log(dist.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                          * (half - exact)).long()
    return bucket + torch.where(dist < exact, dist, log_bucket.clamp(max=half - 1))


class T5Attention(nn.Module):
    def __init__(self, c: T5Config, has_bias):
        super().__init__()
        inner, self.n_head, self.c = c.num_heads * c.d_kv, c.num_heads, c
        self.q, self.k, self.v = (nn.Linear(c.d_model, inner, bias=False) for _ in range(3))
        self.o = nn.Linear(inner, c.d_model, bias=False)
        if has_bias:  # only block 0 owns the table; its bias is reused by every block
            self.relative_attention_bias = nn.Embedding(c.relative_attention_num_buckets, c.num_heads)

    def position_bias(self, L, device):
        pos = torch.arange(L, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.c.relative_attention_num_buckets,
                                           self.c.relative_attention_max_distance)  # (L, L)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (1, H, L, L)

    def forward(self, x, bias):
        B, L, _ = x.shape
        # (B, L, d_model) -> three (B, H, L, d_kv)
        q, k, v = (w(x).view(B, L, self.n_head, -1).transpose(1, 2) for w in (self.q, self.k, self.v))
        # T5 folds 1/sqrt(d_kv) into its init, so the logits are not scaled
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.o(y.transpose(1, 2).reshape(B, L, -1))  # (B, L, d_model)


class T5DenseGatedActDense(nn.Module):
    def __init__(self, c: T5Config):
        super().__init__()
        if not c.is_gated_act:
            raise ValueError(f"feed_forward_proj={c.feed_forward_proj!r}: only T5 v1.1's gated FF is implemented")
        self.wi_0, self.wi_1 = (nn.Linear(c.d_model, c.d_ff, bias=False) for _ in range(2))
        self.wo = nn.Linear(c.d_ff, c.d_model, bias=False)
        self.act = ACTS[c.dense_act_fn]

    def forward(self, x):
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, c, has_bias):
        super().__init__()
        self.SelfAttention, self.layer_norm = T5Attention(c, has_bias), T5LayerNorm(c.d_model, c.layer_norm_epsilon)

    def forward(self, x, bias):
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5LayerFF(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.DenseReluDense, self.layer_norm = T5DenseGatedActDense(c), T5LayerNorm(c.d_model, c.layer_norm_epsilon)

    def forward(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    def __init__(self, c, has_bias):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(c, has_bias), T5LayerFF(c)])

    def forward(self, x, bias):
        return self.layer[1](self.layer[0](x, bias))  # fp16 overflows in T5 v1.1: run it in bf16 or fp32


class T5Stack(nn.Module):
    def __init__(self, c, embed_tokens):
        super().__init__()
        self.embed_tokens = embed_tokens  # the same module as T5Encoder.shared (tied)
        self.block = nn.ModuleList([T5Block(c, has_bias=i == 0) for i in range(c.num_layers)])
        self.final_layer_norm = T5LayerNorm(c.d_model, c.layer_norm_epsilon)

    def forward(self, ids):
        x = self.embed_tokens(ids)  # (B, L, d_model); T5 does not scale embeddings
        bias = self.block[0].layer[0].SelfAttention.position_bias(ids.shape[1], ids.device)  # (1, H, L, L)
        for block in self.block:
            x = block(x, bias)
        return self.final_layer_norm(x)


class T5Encoder(nn.Module):
    """ids (B, L) -> (B, L, d_model), no attention mask: CogVideoX feeds all 226 positions, pads too."""
    TIED = "encoder.embed_tokens.weight"  # transformers writes only shared.weight; older files store both

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, self.shared)

    def forward(self, ids):
        return self.encoder(ids)

    @classmethod
    def from_pretrained(cls, path_or_hub_id, subfolder="text_encoder", dtype=None, device=None):
        folder = weights.resolve(path_or_hub_id, subfolder)
        model = weights.meta_model(cls, weights.read_config(folder, T5Config))
        sd = weights.read_state_dict(folder, "model.safetensors")
        tied = sd.pop(cls.TIED, None)
        shared = sd.get("shared.weight", tied)
        if shared is not None:  # convert once and give both names the same tensor, so the tie holds
            shared = shared.to(device=device or "cpu", dtype=dtype or shared.dtype)
            sd["shared.weight"] = sd[cls.TIED] = shared
        return weights.load_into(model, sd, folder, dtype=dtype, device=device).eval()

    def save_pretrained(self, folder, max_shard_bytes=None):
        sd = {k: v for k, v in self.state_dict().items() if k != self.TIED}
        weights.save_state_dict(sd, folder, "model.safetensors", max_shard_bytes)
        weights.write_config(folder, self.config, extra={"architectures": ["T5EncoderModel"], "model_type": "t5"})

# -----------------------------------------------------------------------------------------------
# prompts -> embeddings, cached


@torch.no_grad()
def encode_prompts(prompts, tokenizer, encoder, device=None, dtype=None):
    """list of prompts -> (B, max_length, d_model) on `device` (default: the encoder's) in `dtype`."""
    ids = tokenizer(prompts).to(encoder.shared.weight.device)
    out = encoder(ids)
    return out.to(device=device or out.device, dtype=dtype or out.dtype)


class EmbeddingCache:
    """prompt -> embedding, one safetensors file per (prompt, model) in `folder`, so T5 runs once
    per caption across epochs, processes and restarts. Files are written atomically; concurrent
    ranks writing the same key is harmless."""

    def __init__(self, folder, tokenizer, encoder, device=None, dtype=None):
        self.folder, self.tokenizer, self.encoder = Path(folder), tokenizer, encoder
        self.device, self.dtype = device, dtype
        w = encoder.shared.weight
        ident = {"config": dataclasses.asdict(encoder.config), "dtype": str(w.dtype),
                 "max_length": tokenizer.max_length, "spiece": hashlib.sha256(tokenizer.path.read_bytes()).hexdigest()}
        h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode())
        # a few weight values tell apart two checkpoints (or random inits) of the same config
        for t in (w[:4], encoder.encoder.final_layer_norm.weight):
            h.update(t.detach().float().cpu().numpy().tobytes())
        self.model_id = h.hexdigest()

    def path(self, prompt):
        key = hashlib.sha256(f"{self.model_id}\n{prompt}".encode()).hexdigest()
        return self.folder / f"{key}.safetensors"

    def load(self, prompt):  # None when absent; files are never half-written, so no retry on errors
        f = self.path(prompt)
        return load_file(str(f))["embedding"] if f.exists() else None

    def __call__(self, prompts):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        found = {p: self.load(p) for p in dict.fromkeys(prompts)}
        todo = [p for p, e in found.items() if e is None]
        if todo:  # one batched T5 call for all the misses
            for p, e in zip(todo, encode_prompts(todo, self.tokenizer, self.encoder, device="cpu")):
                weights.save_state_dict({"embedding": e.clone()}, self.folder, self.path(p).name)
                found[p] = e
        out = torch.stack([found[p] for p in prompts])  # (B, L, d_model)
        return out.to(device=self.device or out.device, dtype=self.dtype or out.dtype)
