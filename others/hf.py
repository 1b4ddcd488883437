"""
Models from other papers that transformers ships, loaded once per process: the video-capable VLM that captions
clips (Split) and judges pairs (Evaluate), and the cache SAM 2 shares; and `placement`, the one rule that puts
every Split model (SAM 2, the VLM, the remover, Segment-Any-Motion's networks) on this rank's device.
"""
import functools
import inspect
import json
from pathlib import Path

import numpy as np
import torch


# The dtype each Split model runs in upstream when it has a GPU. On a CPU everything runs fp32: no reference runs
# there, and half-precision kernels on a CPU are slow or missing.
GPU_DTYPES = {
    "sam2": torch.bfloat16,      # SegAnyMo (and so the StM release) runs SAM 2 under bf16 autocast
    "vlm": torch.bfloat16,       # the StM release loads InternVL2.5 with torch_dtype=bfloat16
    "remover": torch.float16,    # minimax-remover's pipeline and the StM release: VAE and DiT in float16
    "segmo": torch.float32,      # SegAnyMo's depth, DINOv2, BootsTAPIR and moseg: fp32 (its default, not "fast")
}


def placement(model, device):
    """-> (torch.device, dtype) for one Split model ("sam2", "vlm", "remover", "segmo") on this rank's device
    (plumbing.ranks.Ranks.device: cuda:LOCAL_RANK under torchrun, cpu where there is no GPU)."""
    device = torch.device(device)
    return device, GPU_DTYPES[model] if device.type == "cuda" else torch.float32


@functools.lru_cache
def cached_model(cls, path, device=None, dtype=None):
    """Models are loaded once per process and stay resident (each worker holds its own copy), on `device` in
    `dtype` (None: where and as transformers loads them: cpu, the checkpoint's dtype)."""
    model = cls.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {})).eval()
    return model.to(device) if device is not None else model


def frame_indices(n, segments):
    """The StM release's (InternVL's get_index) frames: the centre of each of `segments` equal spans of n frames."""
    seg = (n - 1) / segments
    return np.clip([int(seg / 2 + np.round(seg * i)) for i in range(segments)], 0, n - 1)


def vlm_caption(frames, model_path, n=12, prompt="Describe the video in detail", max_new_tokens=1024, sample=True,
                seed=0, device="cpu"):
    """Caption a clip with a video-capable VLM through transformers (optional), with the StM release's settings:
    `n` frames at segment centres, each introduced as "Frame-i: <image>", the prompt, sampled decoding (seeded by
    `seed`, so a rerun writes the same caption; sample=False: greedy), up to `max_new_tokens`."""
    model, proc = load_vlm(model_path, str(device))
    dev, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    content = [c for i in range(n) for c in ({"type": "text", "text": f"Frame-{i + 1}: "}, {"type": "image"})]
    content.append({"type": "text", "text": "\n" + prompt})
    text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = proc(text=[text], images=[[np.asarray(frames[i]) for i in frame_indices(len(frames), n)]],
                  return_tensors="pt")
    inputs = {k: v.to(dev, dtype) if v.is_floating_point() else v.to(dev) for k, v in inputs.items()}
    with torch.no_grad(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=sample)
    return " ".join(proc.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].split())


@functools.lru_cache
def load_vlm(path, device=None):
    """-> (model, processor); device: where the model lives, in the VLM's placement dtype (None: as loaded, on the
    CPU; the judge). Without torchvision, transformers 5 cannot build a video processor, and
    so no processor that holds one (InternVL, Qwen2-VL, LLaVA-OneVision, SmolVLM): the frames go in as
    images, so such a processor is assembled from its tokenizer and (PIL) image processor instead."""
    try:
        import transformers as tf
    except ImportError:
        raise SystemExit("--captioner vlm needs transformers (pip install transformers)") from None
    model = cached_model(tf.AutoModelForImageTextToText, path, *(placement("vlm", device) if device else ()))
    try:
        return model, tf.AutoProcessor.from_pretrained(path)
    except (ImportError, ValueError, TypeError, AttributeError):
        if tf.utils.is_torchvision_available():
            raise
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    cls = PROCESSOR_MAPPING[type(model.config)]
    cls = type(cls.__name__, (cls,), {"check_argument_for_proper_class": lambda self, name, arg: None})
    tok = tf.AutoTokenizer.from_pretrained(path)
    cfg = Path(path) / "processor_config.json"
    kw = {k: v for k, v in (json.loads(cfg.read_text()) if cfg.exists() else {}).items()
          if k in inspect.signature(cls.__init__).parameters and k not in ("image_processor", "tokenizer")}
    kw.update(video_processor=None) if "video_processor" in cls.get_attributes() else None
    return model, cls(image_processor=tf.AutoImageProcessor.from_pretrained(path), tokenizer=tok,
                      chat_template=kw.pop("chat_template", None) or tok.chat_template, **kw)
