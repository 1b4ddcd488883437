"""
The StM composer: a CogVideoX-I2V DiT whose patch embedding reads [noisy | fg | bg] latents (48 channels).
compose() is the whole of inference (paper §3.4): encode the layers, mask the fg latent, sample with guidance on the
text, decode. sample.py runs it on your videos; train.py runs it on held-out pairs to validate.
Below it: where a trained composer is found (a train.py output, a transformer folder, a LoRA adapter, a hub id),
how it is loaded with the VAE and T5 of its base model, and how a composition's fg / mask / bg files become its
inputs (resampled to the composer's frames and size, the output rate keeping the bg's duration).
"""
import contextlib
import json
from pathlib import Path

import torch

import diffusion
import lora
from dit import DiT, DiTConfig
from plumbing import weights
from plumbing.cli import BadInput
from plumbing.video import STILL_FPS, check_shape, fit_video, read_mask, read_video, to_tensor
from text import T5Encoder, Tokenizer, encode_prompts
from vae import VAE, VAEConfig

ROOT = Path(__file__).resolve().parent
MAX_DERIVED_MASK = 0.6        # a "subject on black" whose non-black part covers more than this is no such thing


@torch.no_grad()
def compose(model, vae, texts, fg, bg, mask, prompts, steps=50, sampler="dpm", guidance=6.0, dynamic_cfg=False,
            seed=0, tile=False, device="cpu", dtype=torch.float32, progress=True, offload=None, sched=None,
            eps_scale=1.0, eps_below=None):
    """fg, bg (B,3,T,H,W), mask (B,1,T,H,W), prompts -> composed video (B,3,T,H,W) in [-1,1].
    The DiT input is [noisy | fg latent * latent mask | bg latent], latents times the VAE's scaling factor,
    as train.py's Conditioner builds it. texts: list of prompts -> (B, L, D) embeddings, or the (2B, L, D)
    [prompts | empty prompts] embeddings already computed (embed(); sample.py encodes every prompt first, so T5
    leaves the GPU before sampling). tile: True, False or "auto" (decode_tiling: from the free memory).
    offload: an Offload that brings each model to the device only while it runs (None: they stay where they are).
    sched: the diffusion.Schedule the composer was trained with (load_schedule; None: CogVideoX-5B's).
    eps_scale, eps_below: the steps with t < eps_below (None: all) move along eps_scale x the noise estimate
    (Schedule.scale_eps; 1: off)."""
    off = offload or Offload("none", device)
    s = vae.config.scaling_factor
    B = len(prompts)
    text = (texts if torch.is_tensor(texts) else embed(texts, prompts, off)).to(device, dtype)   # [cond | uncond]
    m_lat = diffusion.latent_mask(mask, vae.time, vae.space).to(device, dtype)
    dec = decode_tiling(vae, (B, vae.config.latent_channels) + tuple(m_lat.shape[2:]), device, dtype, off) \
        if tile == "auto" else {"tile": tile}
    enc = lambda x: vae.encode(x.to(device, dtype), tile=dec["tile"], tile_size=dec.get("tile_size"))[0] * s  # no noise
    with off.use("vae"):
        cond = torch.cat([enc(fg) * m_lat, enc(bg)], 1)                    # (B, 32, T', H', W')
    sched = sched or diffusion.Schedule()

    def v_fn(x, t, i):                     # classifier-free guidance on the text; fg and bg in both halves
        if guidance == 1:
            return model(torch.cat([x, cond], 1).to(dtype), text[:B], t).float()
        xx = torch.cat([x, cond], 1).repeat(2, 1, 1, 1, 1).to(dtype)
        v_c, v_u = model(xx, text, t.repeat(2)).float().chunk(2)
        return v_u + diffusion.cfg_scale(guidance, i, t[0].item(), steps, dynamic_cfg) * (v_c - v_u)

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((B, vae.config.latent_channels) + tuple(m_lat.shape[2:]), generator=g).to(device)
    with off.use("transformer"):
        z = sched.sample(v_fn, noise, steps=steps, sampler=sampler, generator=g, progress=progress,
                         eps_scale=eps_scale, eps_below=eps_below)
    with off.use("vae"):
        return vae.decode((z / s).to(dtype), **dec).float().clamp(-1, 1).cpu()


def embed(texts, prompts, offload=None):
    """prompts -> (2B, L, D) embeddings [prompts | empty prompts], what compose guides with; T5 on the device only
    for this call under offload."""
    with (offload or Offload()).use("t5"):
        return texts(list(prompts) + [""] * len(prompts))


def embed_all(texts, prompts, offload=None, batch=8):
    """Every distinct prompt (and the empty one) -> {prompt: (L, D) on the CPU}, in batches; a batch job calls it
    once before sampling, then T5 leaves the GPU (offload.release)."""
    todo = sorted(set(prompts) | {""})
    out = {}
    with (offload or Offload()).use("t5"):
        for i in range(0, len(todo), batch):
            out.update(zip(todo[i:i + batch], texts(todo[i:i + batch]).cpu()))
    return out


def text_of(table, prompts):
    """The (2B, L, D) [prompts | empty prompts] embeddings compose takes, from embed_all's table."""
    return torch.stack([table[p] for p in prompts] + [table[""]] * len(prompts))


class Offload:
    """Where each model lives during inference, and the log of every move (name, "device" | "host").
    none: every model is moved to the device when added and stays (T5 leaves once the prompts are encoded:
    release("t5")). model: each stays on the host and is on the device only inside use(name) (T5, VAE, the whole
    transformer in turn). sequential: as model for the VAE; the transformer's and T5's blocks come to the device one
    at a time, before their forward, and leave after it (forward hooks); the rest of those models (embeddings, norms,
    output head: small) comes inside use(name). The host copies are kept (pinned on CUDA), so leaving the device
    drops the device copy without copying back: inference never changes a weight. On the CPU every move is a no-op,
    so the outputs are the same in every mode (tests/test_offload.py) and only the log shows the moves."""
    MODES = ("none", "model", "sequential")

    def __init__(self, mode="none", device="cpu"):
        if mode not in self.MODES:
            raise ValueError(f"offload {mode!r}: one of {self.MODES}")
        self.mode, self.device, self.events, self.modules, self.host = mode, torch.device(device), [], {}, {}

    def add(self, name, module, blocks=None, keep=()):
        """Take charge of `module` (loaded on the host); blocks: its nn.ModuleList to stream (sequential); keep:
        modules inside the blocks that move with the rest instead (T5's position-bias table, read before block 0)."""
        self.modules[name] = module
        if self.mode == "none":
            self.to_device(name)
            return module
        stream = self.mode == "sequential" and blocks is not None
        kept = {m for k in keep for m in k.modules()}
        self.host[name] = self._tensors(module, skip=set(blocks.modules()) - kept if stream else set())
        for i, b in enumerate(blocks if stream else []):
            key = f"{name}.{i}"
            self.host[key] = self._tensors(b, skip=kept)
            b.register_forward_pre_hook(lambda m, args, k=key: self.to_device(k))
            b.register_forward_hook(lambda m, args, out, k=key: self.to_host(k))
        return module

    def _tensors(self, module, skip=()):
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        out = []
        for sub in module.modules():
            if sub in skip:
                continue
            for kind in ("_parameters", "_buffers"):
                for k, t in getattr(sub, kind).items():
                    if t is None:
                        continue
                    host = t.data.pin_memory() if pin and not t.is_pinned() else t.data
                    if kind == "_buffers":
                        sub._buffers[k] = t = host
                    else:
                        t.data = host                    # the unpinned original is freed now, not at first use
                    out.append((sub, kind, k, t, host))
        return out

    def _place(self, name, where):
        self.events.append((name, where))
        if name not in self.host:                        # mode none: a real move (T5 leaving for good)
            if name in self.modules:
                self.modules[name].to(self.device if where == "device" else "cpu")
            return
        for sub, kind, k, obj, host in self.host[name]:
            if kind == "_buffers":
                sub._buffers[k] = host.to(self.device, non_blocking=True) if where == "device" else host
            elif where == "host":
                sub._parameters[k] = obj                 # the same Parameter, its host data (never copied back)
                obj.data = host
            else:
                t = host.to(self.device, non_blocking=True)
                try:
                    obj.data = t                         # the same Parameter object: compiled code stays valid
                except RuntimeError:                     # a device whose tensors cannot swap in (meta, in tests)
                    sub._parameters[k] = torch.nn.Parameter(t, requires_grad=obj.requires_grad)

    def to_device(self, name):
        self._place(name, "device")

    def to_host(self, name):
        self._place(name, "host")

    @contextlib.contextmanager
    def use(self, name):
        """`name` on the device inside the block (model / sequential); nothing moves in mode none."""
        if self.mode == "none" or name not in self.modules:
            yield
            return
        self.to_device(name)
        try:
            yield
        finally:
            self.to_host(name)

    def release(self, name):
        """Mode none: `name` leaves the device for good (T5 once every prompt is encoded); else it is there only
        inside use() already."""
        if self.mode == "none" and name in self.modules:
            self.to_host(name)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


NOTED = set()


def decode_tiling(vae, z_shape, device, dtype, offload=None):
    """tile="auto" -> the VAE's decode kwargs: on CUDA from the free memory (vae.plan_decode; what PyTorch's cache
    holds unused counts as free, the VAE's own weights as used when offload brings it in later), elsewhere the rule
    H*W > 256*256; the choice printed once."""
    H, W = (s * vae.space for s in z_shape[-2:])
    dev = torch.device(device)
    if dev.type != "cuda":
        return {"tile": H * W > 256 * 256}
    free = torch.cuda.mem_get_info(dev)[0] + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    if offload is not None and offload.mode != "none" and "vae" in offload.modules:
        free -= sum(p.numel() * p.element_size() for p in offload.modules["vae"].parameters())
    kw, need, why = vae.plan_decode(z_shape, free, dtype)
    how = f"tiled, {'x'.join(map(str, kw['tile_size']))} px tiles" if kw["tile"] else "untiled"
    if (how, kw["chunk_frames"]) not in NOTED:                    # once per choice, not per composition
        NOTED.add((how, kw["chunk_frames"]))
        print(f"note: VAE decode {how}, {kw['chunk_frames']} latent frames per call ({why}; this one "
              f"~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free)")
    return kw


def composer_folders(ckpt, model):
    """-> (transformer folder, base model) from --ckpt/--model. A LoRA folder (train.py --lora: OUT/lora/) stands
    for the transformer folder: load_models puts it on --model's transformer."""
    p = Path(ckpt)
    if p.exists() and not (p / "transformer").is_dir() and lora.is_adapter(p / "lora"):
        p = p / "lora"
    if lora.is_adapter(p):
        try:
            return p, model or lora.read_config(p)["base_model"]
        except (ValueError, KeyError) as e:
            raise BadInput(f"--ckpt {e}") from None
    if p.exists() and (p / "transformer").is_dir():
        args = p / "args.json"
        base = model or (json.loads(args.read_text()).get("model") if args.exists() else None)
        return p / "transformer", base or str(ROOT / "assets" / "toy-base")
    if p.exists() and (p / "config.json").exists():
        return p, model or str(ROOT / "assets" / "toy-base")
    if p.exists():
        raise BadInput(f"--ckpt {ckpt}: neither a train.py output (transformer/) nor a transformer folder "
                       "(config.json)")
    try:
        return weights.resolve(ckpt, "transformer"), model or ckpt
    except (FileNotFoundError, RuntimeError) as e:
        raise BadInput(f"--ckpt {e}") from None


def load_schedule(tfolder, base):
    """The noise schedule a composer samples with: the one its training run wrote beside it (OUT/scheduler/, next to
    OUT/transformer/ or OUT/lora/), else its base model's scheduler/ config, else CogVideoX-5B's."""
    for where in (Path(tfolder).parent, base):
        try:
            return diffusion.Schedule.from_pretrained(where)
        except FileNotFoundError:
            continue
        except (ValueError, RuntimeError) as e:
            raise BadInput(f"the composer's noise schedule: {e}") from None
    return diffusion.Schedule()


def shape_of(tfolder, base, frames, size):
    """(T, H, W) to generate, from the composer's and the VAE's config.json (no weights read yet)."""
    try:
        c = lora.composer_config(base) if lora.is_adapter(tfolder) else weights.read_config(tfolder, DiTConfig)
        space = weights.meta_model(VAE, weights.read_config(weights.resolve(base, "vae"), VAEConfig)).space
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
        raise BadInput(f"could not read the model's config: {e}") from None
    if c.in_channels != 48:
        raise BadInput(f"--ckpt {tfolder}: in_channels={c.in_channels}; a StM composer takes 48 ([noisy | fg | bg])")
    T = frames or c.sample_frames
    H, W = size or (c.sample_height * space, c.sample_width * space)
    msg = check_shape(T, H, W, "--frames/--size")
    if msg:
        raise BadInput(msg)
    if c.use_learned_positional_embeddings and (H, W) != (c.sample_height * space, c.sample_width * space):
        raise BadInput(f"--size {H} {W}: this composer's learned position embedding is tied to "
                       f"{c.sample_height * space}x{c.sample_width * space}; use --size {c.sample_height * space} "
                       f"{c.sample_width * space} (or leave --size out)")
    return T, H, W


def load_models(tfolder, base, device, dtype, offload=None, compile=False):
    """-> (transformer, VAE, prompts -> embeddings). offload: an Offload (None: everything on `device`); with one
    the models are read onto the host and it places them (mode none: all on the device now). compile: torch.compile
    each transformer block (regional: the 42 blocks share one compiled graph; hooks of sequential offload stay
    outside it)."""
    at = device if offload is None or offload.mode == "none" else "cpu"
    try:
        model = (lora.load_composer(tfolder, base, dtype, at) if lora.is_adapter(tfolder)   # merged at load
                 else DiT.from_pretrained(tfolder, subfolder="", dtype=dtype, device=at).eval())
        vae = VAE.from_pretrained(base, dtype=dtype, device=at)
        tok = Tokenizer.from_pretrained(base, max_length=model.config.max_text_seq_length)
        t5 = T5Encoder.from_pretrained(base, dtype=dtype, device=at)
    except (FileNotFoundError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"could not load the models: {e}") from None
    if offload is not None:
        table = t5.encoder.block[0].layer[0].SelfAttention.relative_attention_bias     # read before block 0 runs
        offload.add("t5", t5, t5.encoder.block, keep=[table])
        offload.add("transformer", model, model.transformer_blocks)
        offload.add("vae", vae)
    if compile:
        compile_blocks(model)
    return model, vae, lambda p: encode_prompts(p, tok, t5, device=device, dtype=dtype)


def compile_blocks(model):
    """torch.compile every transformer block's forward in place (outputs equal to fp32 rounding: tested)."""
    for b in model.transformer_blocks:
        b.forward = torch.compile(b.forward)
    return model


def load_inputs(fg, bg, mask, T, H, W):
    """-> fg (3,T,H,W), bg (3,T,H,W), mask (1,T,H,W), and the frame rate that keeps bg's duration; notices for
    any resampling. Raises BadInput naming the file for anything unreadable."""
    try:
        fgv, _ = read_video(fg)
        bgv, bg_fps, bg_seconds = read_video(bg, duration=True)
        m = read_mask(mask) if mask else None
    except (FileNotFoundError, ValueError) as e:
        raise BadInput(str(e)) from None
    if m is None:                            # subject on black: the mask is wherever it is not black
        m = fgv.max(-1) > 16
        if m.mean() > MAX_DERIVED_MASK:
            raise BadInput(f"--fg {fg}: read as a subject on black, its mask would cover {m.mean():.0%} of the "
                           "frames; is it a whole video? Give its mask with --mask")
    elif m.shape != fgv.shape[:3]:
        print(f"note: {mask} is {m.shape[0]} frames of {m.shape[2]}x{m.shape[1]}; resampled to the fg's "
              f"{len(fgv)} frames of {fgv.shape[2]}x{fgv.shape[1]}")
        m = fit_video(m, len(fgv), *fgv.shape[1:3], mask=True, mode="stretch")
    if not m.any():
        raise BadInput(f"{mask or fg}: the mask is empty (no subject found)")
    for name, v in ((fg, fgv), (bg, bgv)):
        if v.shape[:3] != (T, H, W):
            print(f"note: {name} is {len(v)} frames of {v.shape[2]}x{v.shape[1]}; resampled to {T} frames of {W}x{H}")
    # the bg's duration over T frames; a still (an image, or one frame) is a still scene at CogVideoX's rate
    fps = T / bg_seconds if len(bgv) > 1 and bg_seconds > 0 else STILL_FPS
    if fps > 240:
        raise BadInput(f"{bg}: lasts {bg_seconds:.3g} s, so {T} frames would play at {fps:.0f} fps; give --fps (a "
                       "slow-motion clip: the rate to play it at)")
    fgv, bgv = fit_video(fgv, T, H, W), fit_video(bgv, T, H, W)
    m = fit_video(m, T, H, W, mask=True)
    fgv = fgv * m[..., None]
    return to_tensor(fgv), to_tensor(bgv), torch.from_numpy(m).float()[None], fps
