"""
How many clips an hour does one GPU split, stage by stage (issue 29)? Each stage of decompose.py runs on the same
clips with the models on --device, placed as decompose.py places them under torchrun (others.hf.placement: SAM 2
and the VLM in bf16, the remover in fp16 on a GPU; fp32 on a CPU) and kept resident.

    python tests/bench_split.py --device cuda --videos DIR          # real models from the hub (or local folders)
    python tests/bench_split.py --device cuda --videos DIR --stages motion,sam2 --clips 8
    python tests/bench_split.py --device cuda --random --stages read,static,motion,sam2,remover   # offline GPU
    python tests/bench_split.py --tiny                              # toy clips, tiny random models, CPU (a test)

--random times the real architectures with random weights where nothing can be downloaded (SAM 2.1 hiera-tiny,
MiniMax-Remover's Wan 2.1 VAE + 1.1B DiT; the time of a forward pass does not depend on the weights, though SAM 2's
masks and so nothing downstream of them are meaningful); without --videos it makes toy clips at --frames x --size.
The VLM has no random stand-in (it needs its tokenizer and processor): leave `caption` out of --stages, or give
--vlm a local folder.

One line per stage: seconds per clip (mean over --clips clips, after one warm-up clip whose time, model loading
included, is shown apart), clips/hour, and the peak GPU memory of the stage; then the whole Split's clips/hour per
GPU (the sum of the stages timed; sam2 takes its box from the motion mask, so a sam2 run pays for motion too; of
the two inpainters only the remover counts when both are timed). Stages:
    read      decode --frames frames and crop to --size (plumbing.video)
    static    the release's static-clip score (decompose.motion_score)
    motion    camera motion + the weight-free motion segmenter (others.segment)
    sam2      SAM 2 video propagation from the motion mask's box (--sam2)
    caption   the VLM captioner with the release's settings (--vlm: 12 frames, sampled, --vlm-tokens new tokens)
    remover   MiniMax-Remover, 12 UniPC steps (--remover)
    temporal  the weight-free temporal inpainter
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import decompose  # noqa: E402
from others import hf, inpaint, segment  # noqa: E402
from plumbing.video import fit_video, read_frames, video_paths  # noqa: E402

STAGES = ("read", "static", "motion", "sam2", "caption", "remover", "temporal")

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--videos", help="folder of videos (or a quoted glob); one clip is taken from the start of each")
ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
ap.add_argument("--clips", type=int, default=4, help="clips timed per stage, after one warm-up clip")
ap.add_argument("--frames", type=int, default=49)
ap.add_argument("--size", type=int, nargs=2, default=[480, 720], metavar=("H", "W"))
ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of: " + " ".join(STAGES))
ap.add_argument("--sam2", default="facebook/sam2.1-hiera-tiny")
ap.add_argument("--vlm", default="OpenGVLab/InternVL3-1B-hf")
ap.add_argument("--vlm-tokens", type=int, default=1024, help="at most this many new caption tokens (StM: 1024)")
ap.add_argument("--remover", default="zibojia/minimax-remover")
ap.add_argument("--remover-steps", type=int, default=12)
ap.add_argument("--tiny", action="store_true", help="toy clips and tiny random models on the CPU, in a temp folder")
ap.add_argument("--random", action="store_true", help="random weights of the real SAM 2 (hiera-tiny) and remover "
                "architectures, in a temp folder (offline timing)")


def toy_videos(folder, n, T, H, W):
    from plumbing.video import write_video
    import toy
    for s in range(n):
        write_video(folder / "videos" / f"toy{s}.mp4", toy.clip(s, T, H, W)["video"], 16)
    return folder / "videos"


def random_setup(folder, stages):
    """Real-size SAM 2.1 hiera-tiny (transformers' default Sam2VideoConfig) and MiniMax-Remover (Wan 2.1 VAE + the
    remover DiT, fp16, UniPC config) with random weights in `folder`, those `stages` use -> (sam2, remover)."""
    import json
    import transformers as tf
    from others import remover as R
    if "sam2" in stages:
        tf.Sam2VideoModel(tf.Sam2VideoConfig()).save_pretrained(folder / "sam2")
    if "remover" not in stages:
        return str(folder / "sam2"), None
    R.WanVAE(R.VAE_PRESETS["wan2.1"]).half().save_pretrained(folder / "rm" / "vae")
    R.RemoverDiT(R.PRESETS["minimax-remover"]).half().save_pretrained(folder / "rm" / "transformer")
    (folder / "rm" / "scheduler").mkdir()
    (folder / "rm" / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "use_flow_sigmas": True,
         "prediction_type": "flow_prediction", "solver_order": 2}))
    return str(folder / "sam2"), str(folder / "rm")


def tiny_setup(folder):
    """Toy clips and tiny random SAM 2, VLM and remover checkpoints in `folder` -> (videos dir, sam2, vlm, remover)."""
    from conftest import tiny_sam2, tiny_vlm
    from others import remover as R
    import json
    videos = toy_videos(folder, 3, 9, 64, 64)
    torch.manual_seed(0)
    R.WanVAE(R.VAE_PRESETS["toy"]).save_pretrained(folder / "rm" / "vae")
    R.RemoverDiT(R.PRESETS["toy"]).save_pretrained(folder / "rm" / "transformer")
    (folder / "rm" / "scheduler").mkdir()
    (folder / "rm" / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "use_flow_sigmas": True,
         "prediction_type": "flow_prediction", "solver_order": 2}))
    return videos, str(tiny_sam2(folder / "sam2")), str(tiny_vlm(folder / "vlm")[0]), str(folder / "rm")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_stage(name, clips, device, args):
    """-> (outputs per clip, seconds of the warm-up clip, seconds per later clip, peak GiB)."""
    fns = {
        "read": lambda c: fit_video(read_frames(c["path"], np.arange(args.frames)), args.frames, *args.size),
        "static": lambda c: decompose.motion_score(c["video"]),
        "motion": lambda c: segment.motion_mask(c["video"]),
        "sam2": lambda c: segment.sam2_mask(c["video"], c["motion"], args.sam2, device=device),
        "caption": lambda c: hf.vlm_caption(c["video"], args.vlm, max_new_tokens=args.vlm_tokens, device=device),
        "remover": lambda c: inpaint.load_remover(args.remover, str(device))(c["video"], c["motion"],
                                                                             steps=args.remover_steps),
        "temporal": lambda c: inpaint.inpaint_temporal(c["video"], c["motion"]),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    outs, times = [], []
    for c in clips:
        sync(device)
        t0 = time.perf_counter()
        outs.append(fns[name](c))
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else 0.0
    return outs, times[0], float(np.mean(times[1:] or times)), peak


def main(args):
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        sys.exit(f"--stages: unknown {bad}; choose from {', '.join(STAGES)}")
    tmp = tempfile.TemporaryDirectory()
    videos = args.videos
    if args.tiny:
        videos, args.sam2, args.vlm, args.remover = tiny_setup(Path(tmp.name))
        args.device, args.frames, args.size, args.vlm_tokens, args.remover_steps = "cpu", 9, [64, 64], 8, 2
        args.clips = min(args.clips, 2)
    elif args.random:
        args.sam2, args.remover = random_setup(Path(tmp.name), stages)
        videos = videos or toy_videos(Path(tmp.name), args.clips + 1, args.frames, *args.size)
    elif not videos:
        sys.exit("--videos is required (or --random, or --tiny)")
    device = torch.device(args.device)
    clips = [{"path": p} for p in video_paths(str(videos))[: args.clips + 1]]
    print(f"{len(clips)} clips ({len(clips) - 1} timed after 1 warm-up) of {args.frames}x{args.size[0]}x"
          f"{args.size[1]} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    # every stage needs the clip; the ones after the mask need the motion mask
    need = ["read"] + (["motion"] if {"sam2", "remover", "temporal"} & set(stages) else []) + stages
    total = 0.0
    for name in dict.fromkeys(need):
        outs, warm, sec, peak = run_stage(name, clips, device, args)
        key = {"read": "video", "motion": "motion"}.get(name)
        for c, o in zip(clips, outs):
            if key:
                c[key] = o
        if name in stages:
            total += sec if name != "temporal" or "remover" not in stages else 0.0     # one inpainter per run
            print(f"stage {name:9s} {sec:9.3f} s/clip {3600 / sec:10.1f} clips/hour  (first clip {warm:.2f} s, "
                  f"peak {peak:.2f} GiB)", flush=True)
    used = [s for s in stages if s != "temporal" or "remover" not in stages]
    print(f"split ({' + '.join(used)}): {3600 / max(total, 1e-9):.1f} clips/hour per {device.type.upper()}")
    tmp.cleanup()


if __name__ == "__main__":
    main(ap.parse_args())
