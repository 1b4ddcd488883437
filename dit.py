"""
The CogVideoX diffusion transformer (DiT), written from scratch, with StM's multi-layer input.

A video latent is cut into 2x2 patches (1.5: 2x2x2), projected to tokens and concatenated with
the projected T5 text tokens; N "expert adaLN" blocks run full joint attention over [text, video]
with 3D RoPE on the video tokens; the video tokens are projected back to latent patches.
Parameter names equal the diffusers `CogVideoXTransformer3DModel` checkpoint keys, so the
official `transformer/` folders load with strict=True and no rename table.

Multi-layer input (StM, paper Eq. 1): the composer reads [noisy | fg | bg] latents, 48 channels,
through the same patch projection. Loading a 32-channel I2V checkpoint into a 48-channel config
widens `patch_embed.proj`; see `widen_patch_embed` for how the new channels are initialised.

    python dit.py                                       # toy forward on CPU + preset sizes
    python -m pytest -q tests/test_dit.py               # parity with diffusers (CPU, no network)
    python tests/bench_dit.py                           # speed/memory vs diffusers
    python -c "import dit, torch; m = dit.DiT.from_pretrained('THUDM/CogVideoX-5b-I2V', in_channels=48)"

Training hooks: `model.set_activation_checkpointing(True)` recomputes each block in backward;
for FSDP wrap every module of `model.transformer_blocks` (an nn.ModuleList), then the root.
"""
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from plumbing import weights

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass
class DiTConfig:
    num_attention_heads: int = 30          # heads; width D = heads * head dim
    attention_head_dim: int = 64           # head dim (split t/h/w = 1/4, 3/8, 3/8 by RoPE)
    in_channels: int = 16                  # latent channels in: 16 T2V, 32 I2V [noisy|image], 48 StM [noisy|fg|bg]
    out_channels: int = 16                 # latent channels predicted (v)
    flip_sin_to_cos: bool = True           # timestep sinusoid order (cos, sin)
    freq_shift: int = 0                    # timestep sinusoid frequency shift
    time_embed_dim: int = 512              # width of the timestep embedding that drives adaLN
    ofs_embed_dim: int | None = None       # 1.5-I2V only: width of the extra "ofs" embedding (added to time)
    text_embed_dim: int = 4096             # T5-XXL width
    num_layers: int = 30                   # transformer blocks
    dropout: float = 0.0                   # embedding and feed-forward dropout
    attention_bias: bool = True            # bias on to_q/to_k/to_v
    sample_width: int = 90                 # latent width the position embeddings were made for
    sample_height: int = 60                # latent height the position embeddings were made for
    sample_frames: int = 49                # *pixel* frames of the PE table (49 -> 13 latent; kept for b/w compat)
    patch_size: int = 2                    # spatial patch
    patch_size_t: int | None = None        # temporal patch: None for 1.0 (per-frame Conv2d), 2 for 1.5 (Linear)
    temporal_compression_ratio: int = 4    # VAE time compression, to turn sample_frames into latent frames
    max_text_seq_length: int = 226         # text tokens (T5 padded to 226)
    activation_fn: str = "gelu-approximate"  # feed-forward activation (tanh GELU; the only one supported)
    timestep_activation_fn: str = "silu"   # activation inside the timestep MLP (the only one supported)
    norm_elementwise_affine: bool = True   # LayerNorms have weight and bias
    norm_eps: float = 1e-5                 # LayerNorm eps (q/k norms use 1e-6, as the original)
    spatial_interpolation_scale: float = 1.875  # sin-cos PE: spatial positions divided by this (2B)
    temporal_interpolation_scale: float = 1.0   # sin-cos PE: temporal positions divided by this (2B)
    use_rotary_positional_embeddings: bool = False   # 3D RoPE in attention (5B family) instead of sin-cos PE (2B)
    use_learned_positional_embeddings: bool = False  # 5B-I2V 1.0 only: a PE table tied to sample size
    patch_bias: bool = True                # bias of the 1.0 Conv2d patch projection (1.5: False; its Linear has one)


_5B = dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
_15 = dict(_5B, patch_size_t=2, patch_bias=False, sample_frames=81, sample_height=300, sample_width=300)
PRESETS: dict[str, DiTConfig] = {
    "cogvideox-2b": DiTConfig(),  # 30 heads x 64, 30 layers, sin-cos PE
    "cogvideox-5b": DiTConfig(**_5B),
    "cogvideox-5b-i2v": DiTConfig(**_5B, in_channels=32, use_learned_positional_embeddings=True),
    "cogvideox1.5-5b-i2v": DiTConfig(**_15, in_channels=32, ofs_embed_dim=512),
    # StM composers: the I2V models with [noisy | fg | bg] input
    "stm-5b-i2v": DiTConfig(**_5B, in_channels=48, use_learned_positional_embeddings=True),
    "stm1.5-5b-i2v": DiTConfig(**_15, in_channels=48, ofs_embed_dim=512),
    # CPU toy that mimics stm-5b-i2v: latent 16ch x 3 frames x 16x16 -> 192 video tokens
    "toy": DiTConfig(num_attention_heads=4, attention_head_dim=32, in_channels=48, out_channels=16,
                     num_layers=4, text_embed_dim=64, time_embed_dim=128, max_text_seq_length=32,
                     sample_height=16, sample_width=16, sample_frames=9, patch_size=2,
                     use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
}
# 4.6M: the shipped toy composer
PRESETS["toy-l"] = dataclasses.replace(PRESETS["toy"], num_attention_heads=6, num_layers=6)
# 6.1M: toy-l 8 layers deep, an ablation of docs/toy-world.md ("what limits it"): not better enough to ship
PRESETS["toy-xl"] = dataclasses.replace(PRESETS["toy"], num_attention_heads=6, num_layers=8)

# -----------------------------------------------------------------------------
# Sinusoids: timestep embedding, sin-cos position table, 3D RoPE


def timestep_embedding(t, dim, flip_sin_to_cos=True, shift=0, max_period=10000):
    """(B,) float timesteps -> (B, dim) sinusoids, frequencies max_period^(-i/(dim/2 - shift)) (DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    args = t.float()[:, None] * freqs[None]                               # (B, half)
    sin_cos = (args.cos(), args.sin()) if flip_sin_to_cos else (args.sin(), args.cos())
    return torch.cat(sin_cos, dim=-1)                                     # (B, dim)


def sincos_1d(dim, pos):
    """Positions (n,) -> (n, dim) [sin | cos], the classic Transformer table (float64 for accuracy)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2))
    angles = torch.outer(pos.double(), omega)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_3d(dim, T, H, W, spatial_scale, temporal_scale, device=None):
    """The 2B model's fixed PE for a (T, H, W) token grid -> (T*H*W, dim), tokens ordered t, h, w.
    Channel layout of the original: [t (dim/4) | w (3dim/8) | h (3dim/8)], each half sin, half cos."""
    ar = lambda n: torch.arange(n, dtype=torch.float32, device=device)
    d_s = 3 * dim // 4
    emb_t = sincos_1d(dim // 4, ar(T) / temporal_scale)                   # (T, dim/4)
    emb_w = sincos_1d(d_s // 2, ar(W) / spatial_scale)                    # (W, 3dim/8)
    emb_h = sincos_1d(d_s // 2, ar(H) / spatial_scale)                    # (H, 3dim/8)
    grid = torch.cat([emb_t[:, None, None].expand(T, H, W, -1), emb_w[None, None].expand(T, H, W, -1),
                      emb_h[None, :, None].expand(T, H, W, -1)], dim=-1)  # (T, H, W, dim)
    return grid.reshape(T * H * W, dim)


def rope_3d(head_dim, pos_t, pos_h, pos_w, theta=10000.0):
    """Rotary tables for a (T, H, W) token grid -> cos, sin of shape (T*H*W, head_dim).
    The head dim is split t/h/w = 1/4, 3/8, 3/8; each axis uses its own frequency ladder, and
    each frequency is repeated twice because it rotates one adjacent pair (x[2i], x[2i+1])."""
    d_t, d_hw = head_dim // 4, head_dim // 8 * 3

    def angles(dim, pos):                                                 # (n,) -> (n, dim/2)
        return torch.outer(pos, 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim))

    T, H, W = len(pos_t), len(pos_h), len(pos_w)
    a = torch.cat([angles(d_t, pos_t)[:, None, None].expand(T, H, W, -1),
                   angles(d_hw, pos_h)[None, :, None].expand(T, H, W, -1),
                   angles(d_hw, pos_w)[None, None].expand(T, H, W, -1)], dim=-1).reshape(T * H * W, -1)
    return a.cos().repeat_interleave(2, dim=-1), a.sin().repeat_interleave(2, dim=-1)


def apply_rope(x, cos, sin):
    """Rotate adjacent pairs of x (B, heads, N, head_dim) by the angles in cos/sin (N, head_dim), in fp32."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)                  # even, odd elements
    rotated = torch.stack([-x2, x1], dim=-1).flatten(-2)                  # (-x_odd, x_even) per pair
    return (x.float() * cos + rotated * sin).to(x.dtype)


def rope_positions(config, T, H, W, device):
    """Token positions along t, h, w. 1.0 models map the grid onto the training grid
    (sample_height/p x sample_width/p, centre-cropped to the input's aspect ratio, then linspace);
    at the training aspect this is just 0..n-1. 1.5 models use plain integer positions."""
    ar = lambda n: torch.arange(n, dtype=torch.float32, device=device)
    if config.patch_size_t is not None:
        return ar(T), ar(H), ar(W)
    base_h, base_w = config.sample_height // config.patch_size, config.sample_width // config.patch_size
    if H / W > base_h / base_w:
        rh, rw = base_h, int(round(base_h / H * W))
    else:
        rh, rw = int(round(base_w / W * H)), base_w
    top, left = int(round((base_h - rh) / 2)), int(round((base_w - rw) / 2))
    lin = lambda start, stop, n: torch.linspace(start, stop * (n - 1) / n, n, device=device)
    return lin(0, T, T), lin(top, top + rh, H), lin(left, left + rw, W)


# -----------------------------------------------------------------------------
# Modules (names mirror the diffusers checkpoint keys)


class PatchEmbed(nn.Module):
    """Latent patches and text tokens -> D-wide tokens, plus the fixed or learned position embedding."""

    def __init__(self, c: DiTConfig):
        super().__init__()
        D, p = c.num_attention_heads * c.attention_head_dim, c.patch_size
        self.c = c
        if c.patch_size_t is None:  # 1.0: every latent frame is patchified on its own
            self.proj = nn.Conv2d(c.in_channels, D, kernel_size=p, stride=p, bias=c.patch_bias)
        else:                       # 1.5: 2x2x2 space-time patches, flattened (C, pt, p, p)
            self.proj = nn.Linear(c.in_channels * c.patch_size_t * p * p, D)
        self.text_proj = nn.Linear(c.text_embed_dim, D)
        # a persistent buffer, as in diffusers: part of the 5B-I2V checkpoint, but never trained further
        if c.use_learned_positional_embeddings:
            T = (c.sample_frames - 1) // c.temporal_compression_ratio + 1
            n = T * (c.sample_height // p) * (c.sample_width // p)
            self.register_buffer("pos_embedding", torch.empty(1, c.max_text_seq_length + n, D))

    def forward(self, text, x):
        c, p, pt = self.c, self.c.patch_size, self.c.patch_size_t
        B, C, T, H, W = x.shape
        text = self.text_proj(text)                                               # (B, L, D)
        if pt is None:
            v = self.proj(rearrange(x, "b c t h w -> (b t) c h w"))               # (B*T, D, H/p, W/p)
            v = rearrange(v, "(b t) d h w -> b (t h w) d", b=B)                   # (B, N, D)
        else:
            if T % pt:
                raise ValueError(f"{T} latent frames is not a multiple of patch_size_t={pt}")
            v = self.proj(rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=p, pw=p))
        if c.use_learned_positional_embeddings or not c.use_rotary_positional_embeddings:
            text, v = self.add_position(text, v, T, H, W)
        return text, v

    def add_position(self, text, v, T, H, W):
        c, p = self.c, self.c.patch_size
        pixel_frames = (T - 1) * c.temporal_compression_ratio + 1
        if c.use_learned_positional_embeddings:
            if (H, W) != (c.sample_height, c.sample_width):
                raise ValueError(f"the learned position embedding is tied to latent size "
                                 f"{c.sample_height}x{c.sample_width}, "
                                 f"got {H}x{W}; use that size or a config without use_learned_positional_embeddings")
            if text.shape[1] != c.max_text_seq_length:
                raise ValueError(f"the learned position embedding needs {c.max_text_seq_length} text tokens, "
                                 f"got {text.shape[1]}")
        if c.use_learned_positional_embeddings and pixel_frames == c.sample_frames:
            pe = self.pos_embedding.to(v.dtype)                                   # (1, L + N, D)
            return text + pe[:, :text.shape[1]], v + pe[:, text.shape[1]:]
        # 2B, and (as diffusers does) a learned-PE model fed another frame count: sin-cos for this grid
        pe = sincos_3d(v.shape[-1], T, H // p, W // p, c.spatial_interpolation_scale,
                       c.temporal_interpolation_scale, v.device)                  # (N, D), text gets none
        return text, v + pe.to(v.dtype)


class TimestepEmbedding(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, dim_out)
        self.linear_2 = nn.Linear(dim_out, dim_out)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class LayerNormZero(nn.Module):
    """Expert adaLN: one LayerNorm, but separate shift/scale/gate for video and for text tokens."""

    def __init__(self, c: DiTConfig, D):
        super().__init__()
        self.linear = nn.Linear(c.time_embed_dim, 6 * D)
        self.norm = nn.LayerNorm(D, eps=c.norm_eps, elementwise_affine=c.norm_elementwise_affine)

    def forward(self, x, text, emb):
        # (B, 1, D) each
        shift, scale, gate, t_shift, t_scale, t_gate = self.linear(F.silu(emb))[:, None].chunk(6, dim=-1)
        x = self.norm(x) * (1 + scale) + shift                                    # (B, N, D)
        text = self.norm(text) * (1 + t_scale) + t_shift                          # (B, L, D)
        return x, text, gate, t_gate


class Attention(nn.Module):
    """Joint multi-head attention over [text, video] with per-head q/k LayerNorm; RoPE on video only."""

    def __init__(self, c: DiTConfig, D):
        super().__init__()
        self.heads = c.num_attention_heads
        self.to_q = nn.Linear(D, D, bias=c.attention_bias)
        self.to_k = nn.Linear(D, D, bias=c.attention_bias)
        self.to_v = nn.Linear(D, D, bias=c.attention_bias)
        self.norm_q = nn.LayerNorm(c.attention_head_dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(c.attention_head_dim, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(D, D), nn.Dropout(0.0)])  # index 0 is the checkpoint key

    def forward(self, x, n_text, rope=None):
        split = lambda y: rearrange(y, "b n (h d) -> b h n d", h=self.heads)
        q, k = self.norm_q(split(self.to_q(x))), self.norm_k(split(self.to_k(x)))       # (B, h, L+N, d)
        v = split(self.to_v(x))
        if rope is not None:
            q = torch.cat([q[:, :, :n_text], apply_rope(q[:, :, n_text:], *rope)], dim=2)
            k = torch.cat([k[:, :, :n_text], apply_rope(k[:, :, n_text:], *rope)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)                             # (B, h, L+N, d)
        return self.to_out[1](self.to_out[0](rearrange(out, "b h n d -> b n (h d)")))  # (B, L+N, D)


class GELU(nn.Module):
    """Linear then tanh-approximated GELU (diffusers keeps the Linear inside as `.proj`)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, D, dropout):
        super().__init__()
        self.net = nn.Sequential(GELU(D, 4 * D), nn.Dropout(dropout), nn.Linear(4 * D, D), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    """adaLN-zero block; text and video share attention and MLP weights but not their modulation."""

    def __init__(self, c: DiTConfig, D):
        super().__init__()
        self.norm1 = LayerNormZero(c, D)
        self.attn1 = Attention(c, D)
        self.norm2 = LayerNormZero(c, D)
        self.ff = FeedForward(D, c.dropout)

    def forward(self, x, text, emb, rope=None):
        L = text.shape[1]
        h, h_text, gate, t_gate = self.norm1(x, text, emb)                        # (B, N, D), (B, L, D)
        a = self.attn1(torch.cat([h_text, h], dim=1), L, rope)                    # (B, L+N, D)
        x, text = x + gate * a[:, L:], text + t_gate * a[:, :L]
        h, h_text, gate, t_gate = self.norm2(x, text, emb)
        f = self.ff(torch.cat([h_text, h], dim=1))                                # (B, L+N, D)
        return x + gate * f[:, L:], text + t_gate * f[:, :L]


class AdaLayerNorm(nn.Module):
    """Final adaptive LayerNorm; the modulation is ordered (shift, scale) in the checkpoint."""

    def __init__(self, c: DiTConfig, D):
        super().__init__()
        self.linear = nn.Linear(c.time_embed_dim, 2 * D)
        self.norm = nn.LayerNorm(D, eps=c.norm_eps, elementwise_affine=c.norm_elementwise_affine)

    def forward(self, x, emb):
        shift, scale = self.linear(F.silu(emb))[:, None].chunk(2, dim=-1)        # (B, 1, D) each
        return self.norm(x) * (1 + scale) + shift


# -----------------------------------------------------------------------------
# The model


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        c = self.config = config
        if c.activation_fn != "gelu-approximate" or c.timestep_activation_fn != "silu":
            raise ValueError("only activation_fn='gelu-approximate' and timestep_activation_fn='silu' exist "
                             "in CogVideoX")
        if c.use_learned_positional_embeddings and not c.use_rotary_positional_embeddings:
            raise ValueError("no CogVideoX model has a learned PE without RoPE")
        D = c.num_attention_heads * c.attention_head_dim
        self.patch_embed = PatchEmbed(c)
        self.embedding_dropout = nn.Dropout(c.dropout)
        self.time_embedding = TimestepEmbedding(D, c.time_embed_dim)
        if c.ofs_embed_dim:  # 1.5-I2V: a second sinusoid-MLP, added to the time embedding
            self.ofs_embedding = TimestepEmbedding(c.ofs_embed_dim, c.ofs_embed_dim)
        self.transformer_blocks = nn.ModuleList([Block(c, D) for _ in range(c.num_layers)])
        self.norm_final = nn.LayerNorm(D, eps=c.norm_eps, elementwise_affine=c.norm_elementwise_affine)
        self.norm_out = AdaLayerNorm(c, D)
        self.proj_out = nn.Linear(D, c.patch_size ** 2 * (c.patch_size_t or 1) * c.out_channels)
        self.activation_checkpointing = False
        if not self.proj_out.weight.is_meta:  # on meta, weights come from a checkpoint instead
            self.init_weights()

    def forward(self, x, text, t, ofs=None):
        """x (B, C_in, T, H, W) latent, text (B, L, text_embed_dim), t (B,) in 0..999 -> (B, C_out, T, H, W).
        ofs: 1.5-I2V only, defaults to 2.0 as in the official pipeline and trainers."""
        c, p, pt = self.config, self.config.patch_size, self.config.patch_size_t or 1
        B, C, T, H, W = x.shape
        t = torch.as_tensor(t, device=x.device).expand(B)
        emb = self.time_embedding(timestep_embedding(t, self.time_embedding.linear_1.in_features,
                                                     c.flip_sin_to_cos, c.freq_shift).to(x.dtype))  # (B, E)
        if c.ofs_embed_dim:
            ofs = torch.as_tensor(2.0 if ofs is None else ofs, device=x.device).expand(B)
            emb = emb + self.ofs_embedding(timestep_embedding(ofs, c.ofs_embed_dim, c.flip_sin_to_cos,
                                                              c.freq_shift).to(x.dtype))
        text, v = self.patch_embed(text, x)                                       # (B, L, D), (B, N, D)
        text, v = self.embedding_dropout(text), self.embedding_dropout(v)
        rope = None
        if c.use_rotary_positional_embeddings:
            rope = rope_3d(c.attention_head_dim, *rope_positions(c, T // pt, H // p, W // p, x.device))  # 2 x (N, d)
        for block in self.transformer_blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                v, text = checkpoint(block, v, text, emb, rope, use_reentrant=False)
            else:
                v, text = block(v, text, emb, rope)                               # (B, N, D), (B, L, D)
        v = self.proj_out(self.norm_out(self.norm_final(v), emb))                 # (B, N, pt*p*p*C_out)
        return rearrange(v, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)",
                         t=T // pt, h=H // p, pt=pt, ph=p, pw=p)                  # (B, C_out, T, H, W)

    def set_activation_checkpointing(self, enabled=True):
        """Recompute every block in backward instead of storing its activations (per-block, non-reentrant)."""
        self.activation_checkpointing = enabled
        return self

    @torch.no_grad()
    def init_weights(self):
        """From-scratch init, DiT-style. Checkpoints overwrite all of it."""
        c = self.config
        for m in self.modules():
            if isinstance(m, nn.Linear):  # xavier for every projection, zero biases
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight  # like a Linear over the flattened patch, as in DiT / ViT
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        for emb in [self.time_embedding] + ([self.ofs_embedding] if c.ofs_embed_dim else []):
            for lin in (emb.linear_1, emb.linear_2):  # timestep MLP: small normal, as DiT
                nn.init.normal_(lin.weight, std=0.02)
        # adaLN-zero: shift/scale/gate start at 0, so every block starts as the identity (gate 0) and
        # the output as plain LayerNorm; proj_out starts at 0, so the first prediction is 0
        zero = [b.norm1.linear for b in self.transformer_blocks] + [b.norm2.linear for b in self.transformer_blocks]
        for lin in zero + [self.norm_out.linear, self.proj_out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        if c.use_learned_positional_embeddings:  # diffusers starts this table as the sin-cos one
            p, T = c.patch_size, (c.sample_frames - 1) // c.temporal_compression_ratio + 1
            pe = self.patch_embed.pos_embedding
            pe.zero_()
            pe[0, c.max_text_seq_length:] = sincos_3d(pe.shape[-1], T, c.sample_height // p, c.sample_width // p,
                                                      c.spatial_interpolation_scale, c.temporal_interpolation_scale)

    # -------------------------------------------------------------------------
    # Loading and saving the diffusers format

    @classmethod
    def from_pretrained(cls, path_or_hub_id, subfolder="transformer", dtype=None, device=None, config=None,
                        **overrides):
        """Load a diffusers `transformer/` folder (local, or downloaded from the hub).
        config: a DiTConfig to use instead of the folder's config.json; overrides: fields to change,
        e.g. in_channels=48 to widen a 32-channel I2V checkpoint into an StM composer."""
        folder = weights.resolve(path_or_hub_id, subfolder)
        config = dataclasses.replace(config or weights.read_config(folder, DiTConfig), **overrides)
        sd = weights.read_state_dict(folder, WEIGHTS_NAME)
        key = "patch_embed.proj.weight"
        if key in sd:
            sd[key] = widen_patch_embed(sd[key], config)
        model = weights.meta_model(cls, config)
        return weights.load_into(model, sd, folder, dtype=dtype, device=device)

    def save_pretrained(self, folder, max_shard_bytes=None, state_dict=None):
        """Write config.json + safetensors (sharded with an index if larger than max_shard_bytes),
        loadable by `DiT.from_pretrained` and by diffusers' CogVideoXTransformer3DModel.
        state_dict: the tensors to write instead of this module's own (e.g. gathered from FSDP shards)."""
        weights.save_state_dict(self.state_dict() if state_dict is None else state_dict, folder, WEIGHTS_NAME,
                                max_shard_bytes)
        weights.write_config(folder, self.config, extra={"_class_name": "CogVideoXTransformer3DModel"})


def widen_patch_embed(w, config):
    """Give a checkpoint's patch projection `w` the config's input channels (StM multi-layer input).

    The new channels (e.g. 32..47 for bg) start as a copy of the pretrained image-conditioning
    channels (16..31; repeated if more are added). Why: the new bg/fg conditions are, like the I2V
    image, clean VAE latents concatenated to the noisy one, so the weights that already read a clean
    latent give a sensible start, where random or zero weights would make the new layers look like
    noise or be ignored. (This is what the StM release does.) A T2V checkpoint has no conditioning
    channels; there the new ones start at zero. The bias is per output, so it is kept as is.
    """
    ps = config.patch_size ** 2 * (config.patch_size_t or 1)  # input features per channel
    c_old, c_new = w.shape[1] // (ps if w.ndim == 2 else 1), config.in_channels
    if c_new <= c_old:
        return w  # same size; a smaller config is left for load_into to report
    w3 = w.reshape(w.shape[0], c_old, -1)                                    # (D, C_old, features per channel)
    cond = w3[:, config.out_channels:]                                        # the image-conditioning channels
    extra = [cond[:, i % cond.shape[1]] if cond.shape[1] else torch.zeros_like(w3[:, 0]) for i in range(c_new - c_old)]
    w3 = torch.cat([w3, torch.stack(extra, dim=1)], dim=1)                    # (D, C_new, features)
    return w3.reshape(w.shape[0], -1) if w.ndim == 2 else w3.reshape(w.shape[0], c_new, *w.shape[2:])


if __name__ == "__main__":
    torch.manual_seed(0)
    model = DiT(PRESETS["toy"])
    x, text, t = torch.randn(2, 48, 3, 16, 16), torch.randn(2, 32, 64), torch.tensor([10, 900])
    print("toy:", tuple(model(x, text, t).shape), f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")
    for name, cfg in PRESETS.items():
        n = sum(p.numel() for p in weights.meta_model(DiT, cfg).parameters())
        print(f"{name:22s} {n / 1e9:.3f}B params")
