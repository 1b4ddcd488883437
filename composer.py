"""
The StM composer: a CogVideoX-I2V DiT whose patch embedding reads [noisy | fg | bg] latents (48 channels).
compose() is the whole of inference (paper §3.4): encode the layers, mask the fg latent, sample with guidance on the
text, decode. sample.py runs it on your videos; train.py runs it on held-out pairs to validate.
Below it: where a trained composer is found (a train.py output, a transformer folder, a LoRA adapter, a hub id),
how it is loaded with the VAE and T5 of its base model, and how a composition's fg / mask / bg files become its
inputs (resampled to the composer's frames and size, the output rate keeping the bg's duration).
"""
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
            seed=0, tile=False, device="cpu", dtype=torch.float32, progress=True):
    """fg, bg (B,3,T,H,W), mask (B,1,T,H,W), prompts -> composed video (B,3,T,H,W) in [-1,1].
    The DiT input is [noisy | fg latent * latent mask | bg latent], latents times the VAE's scaling factor,
    as train.py's Conditioner builds it. texts: list of prompts -> (B, L, D) embeddings."""
    s = vae.config.scaling_factor
    enc = lambda x: vae.encode(x.to(device, dtype), tile=tile)[0] * s     # the posterior mean: no noise at inference
    m_lat = diffusion.latent_mask(mask, vae.time, vae.space).to(device, dtype)
    cond = torch.cat([enc(fg) * m_lat, enc(bg)], 1)                        # (B, 32, T', H', W')
    B = len(prompts)
    text = texts(list(prompts) + [""] * B)                                # (2B, L, D): [cond | uncond]
    sched = diffusion.Schedule()

    def v_fn(x, t, i):                     # classifier-free guidance on the text; fg and bg in both halves
        if guidance == 1:
            return model(torch.cat([x, cond], 1).to(dtype), text[:B], t).float()
        xx = torch.cat([x, cond], 1).repeat(2, 1, 1, 1, 1).to(dtype)
        v_c, v_u = model(xx, text, t.repeat(2)).float().chunk(2)
        return v_u + diffusion.cfg_scale(guidance, i, t[0].item(), steps, dynamic_cfg) * (v_c - v_u)

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((B, vae.config.latent_channels) + tuple(m_lat.shape[2:]), generator=g).to(device)
    z = sched.sample(v_fn, noise, steps=steps, sampler=sampler, generator=g, progress=progress)
    return vae.decode((z / s).to(dtype), tile=tile).float().clamp(-1, 1).cpu()


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


def load_models(tfolder, base, device, dtype):
    try:
        model = (lora.load_composer(tfolder, base, dtype, device) if lora.is_adapter(tfolder)   # merged at load
                 else DiT.from_pretrained(tfolder, subfolder="", dtype=dtype, device=device).eval())
        vae = VAE.from_pretrained(base, dtype=dtype, device=device)
        tok = Tokenizer.from_pretrained(base, max_length=model.config.max_text_seq_length)
        t5 = T5Encoder.from_pretrained(base, dtype=dtype, device=device)
    except (FileNotFoundError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"could not load the models: {e}") from None
    return model, vae, lambda p: encode_prompts(p, tok, t5, device=device, dtype=dtype)


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
    fgv, bgv = fit_video(fgv, T, H, W), fit_video(bgv, T, H, W)
    m = fit_video(m, T, H, W, mask=True)
    fgv = fgv * m[..., None]
    return to_tensor(fgv), to_tensor(bgv), torch.from_numpy(m).float()[None], fps
