"""
Weight files shared by dit.py, vae.py and text.py: find a model folder (local or on the hub),
read its config.json into our dataclass, read single-file or sharded safetensors, load them
into a model built on the meta device, and write the same layout back.

The official layouts this understands (diffusers and transformers write them):
    <folder>/config.json
    <folder>/<name>.safetensors                              one file, or
    <folder>/<name>.safetensors.index.json + the shards it names

    python -c "from plumbing import weights; print(weights.resolve('THUDM/CogVideoX-5b-I2V', 'vae'))"
"""
import dataclasses
import errno
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .cli import BadInput
from .files import atomic_write_text


def resolve(path_or_id, subfolder=""):
    """A local folder, or a hub id whose `subfolder` is downloaded (only that subfolder)."""
    p = Path(path_or_id)
    if p.exists():
        # accept both the base-model folder and the component folder itself
        if subfolder and (p / subfolder / "config.json").exists():
            return p / subfolder
        if (p / "config.json").exists():
            return p
        raise FileNotFoundError(f"{p}: no config.json here" + (f" nor in {p / subfolder}" if subfolder else ""))
    from huggingface_hub import snapshot_download
    # download only the component we need, not the whole 20 GB repository
    root = _from_hub(path_or_id, f"{path_or_id}/{subfolder}", lambda: snapshot_download(
        str(path_or_id), allow_patterns=[f"{subfolder}/*"] if subfolder else None))
    return Path(root) / subfolder


def _from_hub(path_or_id, what, fetch):
    """fetch() for a path that is no local folder: it must look like a hub id; a failed download is one line."""
    if str(path_or_id).count("/") != 1 or str(path_or_id).startswith((".", "/")):
        raise FileNotFoundError(f"{path_or_id}: no such folder, and not a hub id of the form owner/name")
    try:
        return fetch()
    except Exception as e:
        raise RuntimeError(f"could not fetch {what} from the hub ({type(e).__name__}: {e}); "
                           "download it on a machine with network and pass the local folder instead") from None


def config_file(path_or_id, subfolder, name):
    """A config file `name` in <folder>/<subfolder>, in <folder>, or in the hub repo's subfolder (only that file is
    downloaded) -> its local path."""
    p = Path(path_or_id)
    found = [f for f in (p / subfolder / name, p / name) if f.exists()]
    if found:
        return found[0]
    if p.exists():
        raise FileNotFoundError(f"{p}: no {name} here nor in {p / subfolder}")
    from huggingface_hub import hf_hub_download
    return Path(_from_hub(path_or_id, f"{path_or_id}/{subfolder}/{name}",
                          lambda: hf_hub_download(str(path_or_id), name, subfolder=subfolder)))


def read_config(folder, cls):
    """config.json -> dataclass `cls`; keys the dataclass does not know (_class_name, ...) are ignored."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in names}
    return cls(**kw)


def write_config(folder, config, extra=None):
    d = dataclasses.asdict(config)
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
    atomic_write_text(Path(folder) / "config.json", json.dumps({**(extra or {}), **d}, indent=2) + "\n")


def read_state_dict(folder, weights_name):
    """Read `<weights_name>` or the shards listed in `<weights_name>.index.json` (fp as stored)."""
    folder = Path(folder)
    single, index = folder / weights_name, folder / f"{weights_name}.index.json"
    if single.exists():
        return _load(single)
    if not index.exists():
        raise FileNotFoundError(f"{folder}: neither {weights_name} nor {index.name} found")
    weight_map = json.loads(index.read_text())["weight_map"]
    sd = {}
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).exists():
            raise FileNotFoundError(f"{folder / shard}: shard listed in {index.name} is missing")
        sd.update(_load(folder / shard))
    missing = set(weight_map) - set(sd)
    if missing:
        raise KeyError(f"{index}: keys listed but absent from their shards, e.g. {sorted(missing)[:3]}")
    return sd


def _load(path):
    try:
        return load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def load_into(model, sd, source, dtype=None, device=None):
    """Check names and shapes against `model` (usually on meta), then fill it with `assign=True`
    so no second copy of the weights is ever made."""
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or unexpected:
        raise KeyError(f"{source}: checkpoint does not match the model: "
                       f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
                       f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    for k, v in sd.items():
        if v.shape != want[k].shape:
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)} in the file, "
                             f"the model expects {tuple(want[k].shape)}")
    cast = lambda v: dtype if (dtype and v.is_floating_point()) else v.dtype
    sd = {k: v.to(device=device or "cpu", dtype=cast(v)) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def save_state_dict(sd, folder, weights_name, max_shard_bytes=None):
    """Write one file, or shards `<stem>-0000i-of-0000n.safetensors` plus the index, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    total = sum(v.numel() * v.element_size() for v in sd.values())
    if not max_shard_bytes or total <= max_shard_bytes:
        atomic_save(sd, folder / weights_name)
        return
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if cur and size + n > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + n
    shards.append(cur)
    stem, ext = weights_name.rsplit(".", 1)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}"
        atomic_save(shard, folder / name)
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    atomic_write_text(folder / f"{weights_name}.index.json", json.dumps(index, indent=2) + "\n")


def atomic_save(sd, path, metadata=None):
    """A safetensors file written then renamed; a failed write (a full disk) leaves no temporary file and raises
    OSError naming `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(sd, tmp, metadata=metadata or {"format": "pt"})
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except SafetensorError as e:              # safetensors' own error for a failed write: a full disk, said as such
        Path(tmp).unlink(missing_ok=True)
        full = "No space left" in str(e)
        raise OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else str(e),
                      str(path)) from None




def load_pretrained(cls, config_cls, path_or_hub_id, subfolder, weights_name, dtype=None, device=None):
    """The whole `from_pretrained` of a model with nothing to convert: find the folder, build `cls` from its
    config.json on meta, fill it from the (sharded) safetensors with strict checks, eval mode."""
    folder = resolve(path_or_hub_id, subfolder)
    model = meta_model(cls, read_config(folder, config_cls))
    return load_into(model, read_state_dict(folder, weights_name), folder, dtype=dtype, device=device).eval()


def meta_model(cls, config):
    """Build `cls(config)` on the meta device: no memory, no init cost; `load_into` fills it."""
    with torch.device("meta"):
        return cls(config)


def check_weights(path, flag, instead, need=("config.json",), patterns=None, library="transformers"):
    """Before any clip: the model a stage calls must be a local folder holding `need`, or a hub id whose weights
    (`patterns`: only those files) can be had from the local cache or downloaded now; `library`: the optional
    package the stage loads it with. Otherwise one line that names the flag and the offline choice."""
    p = Path(path)
    if p.exists():
        missing = [n for n in need if not (p / n).exists()]
        if missing:
            raise BadInput(f"{flag} {path}: no {', '.join(missing)} in this folder; pass a model folder, "
                           f"or use {instead}")
        return
    if library and importlib.util.find_spec(library) is None:
        raise BadInput(f"{flag} needs {library} (pip install {library}), or use {instead}")
    from huggingface_hub import snapshot_download
    try:
        snapshot_download(str(path), allow_patterns=patterns)
    except Exception as e:
        raise BadInput(f"{flag} {path}: no local folder of that name and the hub is out of reach "
                         f"({type(e).__name__}); pass a downloaded folder, or offline use {instead}") from None
