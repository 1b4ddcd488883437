"""
Golden tensors for tests/test_moseg.py, made with the OFFICIAL code (not run in CI):

    git -C /work/.mirror/nnanhuang+SegAnyMo/repo archive HEAD core configs | tar -x -C /tmp/seganymo
    git -C /work/.mirror/facebookresearch+dinov2/repo archive HEAD dinov2 | tar -x -C /tmp/dinov2
    python tests/goldens/make_moseg.py --official /tmp/seganymo --dinov2 /tmp/dinov2 --out tests/goldens

Writes
- moseg_classifier.safetensors: SegAnyMo's `traj_oa_depth` with example_train.yaml's switches, its point transformer
  shrunk through the official constructor (TransformerPointNet(net_channels=16, depth=2, num_heads=2,
  feedforward_dim=32)), seeded random weights ("model.*"); seeded BootsTAPIR-like inputs ("in.*"); the release's
  `_motion_seg` steps run on them with the official functions (parse_tapir_track_info, get_feat,
  normalize_point_traj_torch, the model) and the release's seeded draws: the selected track ids, the fixed
  visibility, the batch the model saw ("batch.*"), its output and the moving tracks ("out.*").
- moseg_dino.safetensors: the official DINOv2 ViT (dinov2/models/vision_transformer.py, tiny: 32-d, 2 blocks,
  4 heads, 5 x 5 position grid) run through SegAnyMo's `ViTExtractor` (stride 7, key facet of the last block, no
  CLS); its weights under their official names ("official.*"), the frames, the normalised pixels and the keys.
  torchvision does not import here, so the frames' Resize (torchvision's tensor Resize: bilinear, antialias) is
  re-derived with F.interpolate and stubbed out of dino_feat.py's imports.
- moseg_keys.json: key -> shape of the official model at full config (the real moseg.pth), built on the meta device.

Packages the official modules import but these paths never use are stubbed through sys.modules: cv2, matplotlib,
sklearn, h5py, imageio, torchvision.
"""
import argparse
import importlib.machinery
import importlib.util
import json
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def stub(name, **attrs):
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)    # torch._dynamo looks every module's spec up
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def stub_missing():
    nop = lambda *a, **k: None                                               # noqa: E731
    for name in ("cv2", "h5py", "imageio", "matplotlib", "matplotlib.pyplot"):
        stub(name)
    stub("sklearn")
    stub("sklearn.metrics", roc_curve=nop, auc=nop, precision_recall_curve=nop)
    tv = stub("torchvision", transforms=stub("torchvision.transforms"))
    tv.io = stub("torchvision.io", read_image=nop)
    if importlib.util.find_spec("yaml") is None:                         # load_config_file only
        stub("yaml")


def randomize(model, seed, scale=0.3):
    """Seeded random weights everywhere (LayerNorm gains around 1), so no part of the network is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g) * scale
            p.copy_(1 + r if ("norm" in name and name.endswith("weight")) else r)


def classifier_golden(out):
    from core.network.traj_oa_depth import traj_oa_depth
    from core.network.decoder import TransformerPointNet
    from core.dataset.kubric import parse_tapir_track_info
    from core.dataset.data_utils import normalize_point_traj_torch
    from core.utils.utils import get_feat

    # example_train.yaml through train_seq.setup_model's argument order
    switches = dict(extra_info=True, oanet=False, enable_pos_embed=True, load_dino=True, target_feature_dim=None,
                    dino_later=True, dino_woatt=True, time_att=True, tracks=True, depth=True)
    with torch.device("meta"):
        full = traj_oa_depth(**switches)
    keys = {k: list(v.shape) for k, v in full.state_dict().items()}
    (out / "moseg_keys.json").write_text(json.dumps(keys, indent=0) + "\n")
    print("full config:", sum(int(np.prod(s)) for s in keys.values()), "parameters,", len(keys), "tensors")

    torch.manual_seed(0)
    model = traj_oa_depth(**switches)
    model.decoder = TransformerPointNet(out_dim=16, net_channels=16, depth=2, num_heads=2, feedforward_dim=32,
                                        enable_dino=True)
    randomize(model, 1)
    model.eval()

    # A 12-frame 24 x 32 clip, query frames 0 and 10 (step 10), 40 tracks from each
    g = torch.Generator().manual_seed(2)
    T, H, W, step, per_q, cap = 12, 24, 32, 10, 40, 30
    q_ts = list(range(0, T, step))
    n0 = per_q * len(q_ts)
    tracks = torch.stack([torch.rand(n0, T, generator=g) * (W + 6) - 3,
                          torch.rand(n0, T, generator=g) * (H + 6) - 3], -1)  # a few off-frame
    occ = torch.randn(n0, T, generator=g) * 2.5 - 1
    dist = torch.randn(n0, T, generator=g) * 2.5 - 2
    occ[5:12] = 6.0                                                          # invisible everywhere: dropped
    occ[:, 7] = 6.0                                                          # a frame where no track is visible
    query_t = torch.tensor(q_ts).repeat_interleave(per_q)
    depth = torch.rand(T, H, W, generator=g)
    dino = (torch.randn(len(q_ts), 3, 4, 768, generator=g)).half()          # stored as float16, as the release does

    # The release's _motion_seg, step by step, with the official functions
    ratio = 1 / len(q_ts)
    draw = torch.Generator().manual_seed(42)
    ids, trk, vis, conf, vv, cv, dinos = [], [], [], [], [], [], []
    for i, q in enumerate(q_ts):
        own = torch.nonzero(query_t == q)[:, 0]
        t2d, o, d = tracks[own], occ[own], dist[own]
        visibles, _, confidences, visib_value, confi_value = parse_tapir_track_info(o, d, 0.5)
        sel = torch.randperm(len(own), generator=draw)[:int(len(own) * ratio)]
        ids.append(own[sel]), trk.append(t2d[sel]), vis.append(visibles[sel]), conf.append(confidences[sel])
        vv.append(visib_value[sel]), cv.append(confi_value[sel])
        dino_list = torch.from_numpy(dino[i].numpy()).unsqueeze(0).unsqueeze(0)
        factor = (dino_list[0].shape[1] / H, dino_list[0].shape[2] / W)
        dinos.append(get_feat(factor, t2d[sel].permute(2, 0, 1)[..., q:q + 1], dino_list))
    ids, trk, vis, conf = torch.cat(ids), torch.cat(trk), torch.cat(vis), torch.cat(conf)
    vv, cv, dn = torch.cat(vv), torch.cat(cv), torch.cat(dinos, dim=2)
    sel = torch.randperm(len(ids), generator=draw)[:cap]
    ids, trk, vis, conf, vv, cv, dn = ids[sel], trk[sel], vis[sel], conf[sel], vv[sel], cv[sel], dn[:, :, sel]
    keep = ~torch.all(~vis, dim=1)
    ids, trk, vis, conf, vv, cv, dn = ids[keep], trk[keep], vis[keep], conf[keep], vv[keep], cv[keep], dn[:, :, keep]
    for t in torch.nonzero(torch.all(~vis.permute(1, 0), dim=1))[:, 0].tolist():
        vis[torch.max(conf[:, t], dim=0)[1], t] = True
    track = trk.permute(2, 0, 1).unsqueeze(0)
    batch = {"traj": normalize_point_traj_torch(track, [H, W]).float(),
             "mask": (~vis).unsqueeze(0).unsqueeze(0).float(),
             "depth": depth.permute(1, 2, 0)[None, None].float(),
             "visib_value": vv[None, None].float(), "confi_value": cv[None, None].float(), "dino": dn.float()}
    with torch.no_grad():
        pred = model(batch)
    probs = pred[0, 0]
    print(f"{len(ids)} tracks kept; probs {probs.min():.3f}..{probs.max():.3f}")
    moving = None
    for thres in [0.95, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7]:
        if (probs > thres).sum() >= 10:
            moving = probs > thres
            break
    if moving is None:
        moving = torch.zeros_like(probs, dtype=torch.bool)
        moving[torch.topk(probs, 3)[1]] = True
    # depth the model gathered (its own gather_point), for a finer-grained test
    disp = model.gather_point(batch["traj"], batch["depth"])[0, 0]
    t = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    t.update({"in.tracks": tracks, "in.occlusion": occ, "in.expected_dist": dist, "in.query_t": query_t,
              "in.depth": depth, "in.dino": dino, "in.hw": torch.tensor([H, W]), "in.cap": torch.tensor(cap),
              "out.ids": ids, "out.visible": vis, "out.confidence": conf, "out.probs": probs, "out.moving": moving,
              "out.sam2_visible": vis & (conf > 0.9), "out.disp": disp})
    t.update({f"batch.{k}": v.contiguous() for k, v in batch.items()})
    save_file({k: v.contiguous() for k, v in t.items()}, str(out / "moseg_classifier.safetensors"))


def dino_golden(out, official):
    from dinov2.models.vision_transformer import DinoVisionTransformer
    from dinov2.layers import MemEffAttention, NestedTensorBlock as Block
    sys.path.insert(0, str(Path(official) / "core" / "utils"))
    from dino_feat import ViTExtractor

    torch.manual_seed(3)
    # hub's dinov2_vitb14 = vit_base(patch_size=14, img_size=518, init_values=1.0, block_chunks=0,
    # interpolate_antialias=False, interpolate_offset=0.1): the same switches at a tiny size (grid 5 x 5)
    vit = DinoVisionTransformer(img_size=70, patch_size=14, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4,
                                block_fn=partial(Block, attn_class=MemEffAttention), init_values=1.0,
                                block_chunks=0, num_register_tokens=0, interpolate_antialias=False,
                                interpolate_offset=0.1)
    randomize(vit, 4, scale=0.2)
    vit.eval()
    ex = ViTExtractor(model_type="dinov2_vitb14", stride=7, model=vit, device="cpu")
    g = torch.Generator().manual_seed(5)
    frames = torch.randint(0, 256, (2, 40, 60, 3), generator=g, dtype=torch.uint8)
    h14, w14 = (40 + 13) // 14 * 14, (60 + 13) // 14 * 14
    x = frames.permute(0, 3, 1, 2).float() / 255                         # ToTensor
    x = F.interpolate(x, size=[h14, w14], mode="bilinear", align_corners=False, antialias=True)   # tensor Resize
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)                  # Normalize
    keys = []
    with torch.no_grad():
        for img in x:                                                      # one frame at a time, as the release
            desc = ex.extract_descriptors(img[None], [1], "key", include_cls=False)
            keys.append(desc.reshape(1, ex.num_patches[0], ex.num_patches[1], -1)[0])
    keys = torch.stack(keys)
    print("dino keys", tuple(keys.shape))
    t = {f"official.{k}": v.contiguous() for k, v in vit.state_dict().items()}
    t.update({"frames": frames, "pixels": x.contiguous(), "keys": keys.contiguous()})
    save_file(t, str(out / "moseg_dino.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="an extracted SegAnyMo checkout (holds core/)")
    ap.add_argument("--dinov2", required=True, help="an extracted facebookresearch/dinov2 checkout (holds dinov2/)")
    ap.add_argument("--out", default="tests/goldens")
    a = ap.parse_args()
    stub_missing()
    sys.path[:0] = [a.official, a.dinov2]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    classifier_golden(out)
    dino_golden(out, a.official)
    for f in sorted(out.glob("moseg*")):
        print(f, f.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
