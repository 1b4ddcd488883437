"""
Models from other papers that transformers ships, loaded once per process: the video-capable VLM that captions
clips (Split) and judges pairs (Evaluate), and the cache SAM 2 shares.
"""
import functools
import inspect
import json
from pathlib import Path

import numpy as np
import torch


@functools.lru_cache
def cached_model(cls, path):
    """Models are loaded once per process (each worker holds its own copy)."""
    return cls.from_pretrained(path).eval()


def vlm_caption(frames, model_path, n=8, prompt="Describe the video in detail", max_new_tokens=256):
    """Caption a clip with a video-capable VLM through transformers (optional): `n` frames at segment
    centres, each introduced as "Frame-i: <image>" as in the StM release's InternVL prompt (greedy)."""
    model, proc = load_vlm(model_path)
    idx = ((np.arange(n) + 0.5) * len(frames) / n).astype(int)
    content = [c for i in range(n) for c in ({"type": "text", "text": f"Frame-{i + 1}: "}, {"type": "image"})]
    content.append({"type": "text", "text": "\n" + prompt})
    text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = proc(text=[text], images=[[np.asarray(frames[i]) for i in idx]], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return " ".join(proc.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].split())


@functools.lru_cache
def load_vlm(path):
    """-> (model, processor). Without torchvision, transformers 5 cannot build a video processor, and
    so no processor that holds one (InternVL, Qwen2-VL, LLaVA-OneVision, SmolVLM): the frames go in as
    images, so such a processor is assembled from its tokenizer and (PIL) image processor instead."""
    try:
        import transformers as tf
    except ImportError:
        raise SystemExit("--captioner vlm needs transformers (pip install transformers)") from None
    model = cached_model(tf.AutoModelForImageTextToText, path)
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
