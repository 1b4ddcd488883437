"""SegAnyMo (others/segmo.py): the SAM 2 prompting loop against the official code's masks (golden made by
tests/goldens/make_segmo_loop.py with a stub SAM 2), its pieces on hand-computed cases, the transformers SAM 2
predictor on a tiny random model, and the pipeline's glue (dtypes, the fg gate, seg with stand-in stages)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import single_thread
from others import segmo

one_thread = single_thread()
GOLDENS = Path(__file__).with_name("goldens")


def golden_script():
    spec = importlib.util.spec_from_file_location("make_segmo_loop", GOLDENS / "make_segmo_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dilate_matches_cv2_anchor():
    """cv2.dilate, 6x6 kernel, anchor (3, 3): one lit pixel at 8 grows to 6..11 per pass (2 up/left, 3
    down/right), 2..17 after three passes; at the corner the frame clips it. (Numbers from cv2 5 by hand.)"""
    m = torch.zeros(20, 20, dtype=torch.bool)
    m[8, 8] = True
    one = segmo.dilate(m, iters=1)
    rows, cols = one.any(1).nonzero()[:, 0], one.any(0).nonzero()[:, 0]
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 11, 6, 11) and one.sum() == 36
    three = segmo.dilate(m)
    rows = three.any(1).nonzero()[:, 0]
    assert (rows.min(), rows.max()) == (2, 17) and three.sum() == 16 * 16
    c = torch.zeros(20, 20, dtype=torch.bool)
    c[0, 0] = True
    assert segmo.dilate(c, iters=1).sum() == 4 * 4                           # rows/cols 0..3


def test_point_helpers():
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[0, 0] = mask[3, 4] = mask[1, 2] = True
    xy = np.array([[-0.7, -3.0], [9.0, 9.0], [2.9, 1.99], [2.0, 2.0]], np.float32)    # truncated, then clipped
    assert segmo.points_in(mask, xy).tolist() == [True, True, True, False]
    pts = np.array([[0, 0], [1, 0], [2, 0], [10, 0]], np.float32)
    assert segmo.densest_point(pts).tolist() == [[1, 0]]                     # sums 13, 11, 11, 28: the first
    sq = np.array([[0, 0], [4, 0], [0, 4], [4, 4], [2.2, 2.1]], np.float32)
    p = segmo.centre_and_extremes(sq)
    assert p[0].tolist() == pytest.approx([2.2, 2.1]) and len(p) == 3
    line = np.array([[0, 0], [1, 0], [5, 0], [-3, 0]], np.float32)            # centroid 0.75: 0.75, 0.25, 4.25, 3.75
    assert segmo.centre_and_extremes(line).tolist() == [[1, 0], [-3, 0], [5, 0]]    # second-farthest first
    assert segmo.centre_and_extremes(sq[:1]).tolist() == [[0, 0], [0, 0]]
    assert segmo.centre_and_extremes(sq[:2]).tolist() == [[0, 0], [4, 0]]
    counts = np.zeros(49, np.int64)
    counts[[3, 7, 11, 20, 22, 30, 31, 40, 44]] = np.arange(10, 19)          # the 9 busiest frames
    assert segmo.prompt_frame(counts, 49) == 22                              # their median
    assert segmo.prompt_frame(np.zeros(49, np.int64), 49) == 0


def test_merge_objects_one_step_groups():
    """The official grouping: A~C and B~C (A, B apart) give two groups, A|C and B|C (C in both); D stays alone
    after them; a pair alike on 14 of 49 frames (< 30%) does not merge, on 15 it does."""
    T = 49
    def box(x0, x1, frames=range(T)):
        m = torch.zeros(T, 8, 40, dtype=torch.bool)
        m[list(frames), :, x0:x1] = True
        return m
    A, B, C, D = box(0, 10), box(20, 30), box(0, 30), box(34, 37)
    # C covers all of A and B: A~C and B~C on every frame; A and B never overlap
    out = segmo.merge_objects([A, B, C, D])
    assert len(out) == 3
    assert torch.equal(out[0], A | C) and torch.equal(out[1], B | C) and torch.equal(out[2], D)
    E14, E15 = box(0, 10, range(14)), box(0, 10, range(15))
    assert len(segmo.merge_objects([A, E14])) == 2 and len(segmo.merge_objects([A, E15])) == 1
    assert segmo.same_object(A[0], box(1, 11)[0]) and not segmo.same_object(A[0], box(2, 12)[0])   # cover 9/10, 8/10
    assert segmo.merge_objects([]) == []


def test_loop_matches_official_golden():
    """Ours against SegAnyMo's run_sam2.main (same stub SAM 2, same tracks): every object before merging and every
    merged object, bit for bit; the scenarios reach every branch of the loop (checked by a spy)."""
    g, gold = golden_script(), load_file(GOLDENS / "segmo_loop.safetensors")
    seen = dict(reprompt=0, backward=0, take_all=0, merged=0)
    for name, (_, stub_kw) in g.SCENARIOS.items():
        xy, vis = gold[f"{name}.xy"].numpy(), gold[f"{name}.visible"].numpy()
        n_obj, n_merged = gold[f"{name}.n"].tolist()
        p = g.DiscPredictor(g.T, g.H, g.W, **stub_kw)
        calls = []
        prompt, propagate = p.prompt, p.propagate
        p.prompt = lambda t, pts: calls.append(len(pts)) or prompt(t, pts)
        p.propagate = lambda reverse=False: (calls.append("rev") if reverse else None) or propagate(reverse)
        found = segmo.find_objects(p, xy, vis, g.T)
        objects = [segmo.track_object(p, xy[i], vis[i], t, g.T, g.H, g.W) for t, i in found]
        assert torch.equal(torch.stack(objects), g.unpack(gold[f"{name}.objects"], (n_obj, g.T, g.H, g.W))), name
        merged = segmo.prompt_objects(g.DiscPredictor(g.T, g.H, g.W, **stub_kw), torch.from_numpy(xy),
                                      torch.from_numpy(vis), g.T, g.H, g.W)
        assert torch.equal(torch.stack(merged), g.unpack(gold[f"{name}.merged"], (n_merged, g.T, g.H, g.W))), name
        seen["reprompt"] += calls.count(3)
        seen["backward"] += calls.count("rev")
        seen["take_all"] += len(xy) <= 5
        seen["merged"] += n_merged < n_obj
    assert all(v > 0 for v in seen.values()), seen


def test_fill_holes_8_connected():
    """SAM 2's hole filling: background pieces of <= 8 pixels (8-connected) become 0.1; larger ones stay."""
    x = -torch.ones(1, 1, 30, 30)                                             # the frame's background: big, stays
    x[0, 0, 5:25, 5:25] = 2.0                                                 # an object, with holes:
    x[0, 0, 7:9, 7:9] = -1                                                    # 4 px: filled
    x[0, 0, 12:15, 12:15] = -1                                                # 9 px: kept
    x[0, 0, 18:20, 7:11] = -1                                                 # 8 px ...
    x[0, 0, 20, 11] = -1                                                      # ... + 1 diagonal = 9: kept
    x[0, 0, 7, 20:24] = x[0, 0, 8, 20:24] = -1                                # 8 px: filled
    y = segmo.fill_holes(x)
    assert (y[0, 0, 7:9, 7:9] == 0.1).all() and (y[0, 0, 7:9, 20:24] == 0.1).all()
    assert int((y <= 0).sum()) == 30 * 30 - 20 * 20 + 9 + 9
    assert torch.equal(segmo.fill_holes(torch.ones(2, 1, 4, 4)), torch.ones(2, 1, 4, 4))


def test_find_objects_needs_six_points():
    """5 tracks in one disc (and 1 far away) are no object; 6 are; with <= 5 tracks in all, anything is kept."""
    stub = golden_script().DiscPredictor(49, 48, 64)
    for n, expected in ((5, 0), (6, 1)):
        xy = np.concatenate([20 + np.arange(n)[:, None, None] * [0.5, 0.3] + np.zeros((1, 49, 2)),
                             np.full((1, 49, 2), 50.0)]).astype(np.float32)
        assert len(segmo.find_objects(stub, xy, np.ones((n + 1, 49), bool), 49)) == expected, n
    xy = np.full((3, 49, 2), 30.0, np.float32) + np.array([[0, 0], [20, 0], [-20, 5]], np.float32)[:, None]
    assert [len(i) for _, i in segmo.find_objects(stub, xy, np.ones((3, 49), bool), 49)] == [1]


def test_find_objects_stops_without_visible_points():
    class Never:
        def reset(self):
            pass

        def prompt(self, t, pts):
            raise AssertionError("no prompt without a visible point")
    xy = np.zeros((8, 49, 2), np.float32)
    assert segmo.find_objects(Never(), xy, np.zeros((8, 49), bool), 49) == []


@pytest.fixture(scope="module")
def sam2_path(tmp_path_factory):
    pytest.importorskip("transformers")
    from conftest import tiny_sam2
    torch.manual_seed(0)
    return tiny_sam2(tmp_path_factory.mktemp("sam2"))


@pytest.fixture(scope="module")
def sam2(sam2_path):
    from transformers import Sam2VideoModel
    return Sam2VideoModel.from_pretrained(sam2_path).eval()


@pytest.mark.slow
def test_sam2_predictor_tiny(sam2, monkeypatch):
    """transformers' SAM 2 behind the protocol: a prompt gives a frame-sized mask, propagation covers frames from
    the earliest prompt forward, and backward to 0; the session runs where the model is."""
    video = np.random.default_rng(0).integers(0, 256, (5, 24, 32, 3), dtype=np.uint8)
    p = segmo.Sam2Predictor(sam2, video)
    assert p.session.inference_device == next(sam2.parameters()).device
    from PIL import Image
    ref = np.asarray(Image.fromarray(video[3]).resize((64, 64), Image.BICUBIC)) / 255       # as SAM 2 loads frames
    ref = (ref - np.array(p.mean)) / np.array(p.std)
    assert np.allclose(p.session.get_frame(3).permute(1, 2, 0).numpy(), ref, atol=1e-6)
    m = p.prompt(2, torch.tensor([[10.0, 12.0]]))
    assert m.shape == (24, 32) and m.dtype == torch.bool
    p.prompt(2, torch.tensor([[10.0, 12.0], [20.0, 5.0], [3.0, 3.0]]))       # replaces the first click
    fwd = [(t, m.shape) for t, m in p.propagate()]
    back = [t for t, _ in p.propagate(reverse=True)]
    assert fwd == [(t, (24, 32)) for t in range(2, 5)] and back == [2, 1, 0]
    p.reset()
    p.prompt(0, torch.tensor([[5.0, 5.0]]))
    assert [t for t, _ in p.propagate()] == list(range(5)) and list(p.propagate(reverse=True)) == []
    filled = []                                                               # every mask goes through fill_holes
    monkeypatch.setattr(segmo, "fill_holes", lambda x, area: filled.append((x.shape, area)) or x)
    p.prompt(1, torch.tensor([[5.0, 5.0]]))
    assert filled == [((1, 1, 16, 16), 8)]                                    # SAM 2's low-res logits (S / 4)
    segmo.Sam2Predictor(sam2, video, fill_hole_area=0).prompt(1, torch.tensor([[5.0, 5.0]]))
    assert len(filled) == 1


def test_stage_dtype():
    gpu, cpu = torch.device("cuda", 1), torch.device("cpu")
    assert segmo.stage_dtype(gpu, "sam2") == torch.bfloat16
    assert {segmo.stage_dtype(gpu, s) for s in ("depth", "dino", "tapir", "moseg")} == {torch.float32}
    assert {segmo.stage_dtype(cpu, s) for s in ("depth", "dino", "tapir", "moseg", "sam2")} == {torch.float32}
    assert segmo.stage_dtype("cuda:0", "sam2") == torch.bfloat16
    with pytest.raises(ValueError):
        segmo.stage_dtype(cpu, "raft")


def test_fg_gate():
    m = torch.zeros(2, 10, 10, dtype=torch.bool)
    assert segmo.fg_gate(m) == "no_dynamic_object"
    m[0, 0, 0] = True                                                         # 0.005
    assert segmo.fg_gate(m) == "fg_ratio:0.0050"
    m[0, 0, :2] = True                                                        # 0.01: inside, bounds inclusive
    assert segmo.fg_gate(m) is None
    m[0] = True
    m[1, :9] = True                                                           # 0.95
    assert segmo.fg_gate(m) == "fg_ratio:0.9500"


def stand_in_segmo(g, name, stub_kw):
    """SegAnyMo whose stages 1-4 return a golden scenario's tracks and whose SAM 2 is the golden's disc stub."""
    gold = load_file(GOLDENS / "segmo_loop.safetensors")
    seg = segmo.SegAnyMo(*[None] * 5)
    seg.moving = lambda video: (gold[f"{name}.xy"], gold[f"{name}.visible"])
    seg.predictor = lambda video: g.DiscPredictor(g.T, g.H, g.W, **stub_kw)
    return seg, gold


def test_seg_union_and_count_with_stand_ins():
    """seg = the union of the merged objects and their number (stages stood in for by a golden scenario); the
    empty path: no moving track -> all False, 0 objects, and the gate names it."""
    g = golden_script()
    video = np.zeros((g.T, g.H, g.W, 3), np.uint8)
    for name in ("merge_4_to_2", "two_objects"):
        seg, gold = stand_in_segmo(g, name, g.SCENARIOS[name][1])
        mask, n = seg.seg(video)
        n_merged = int(gold[f"{name}.n"][1])
        assert n == n_merged and torch.equal(mask, g.unpack(gold[f"{name}.merged"],
                                                            (n_merged, g.T, g.H, g.W)).any(0))
    seg.moving = lambda video: (torch.zeros(0, g.T, 2), torch.zeros(0, g.T, dtype=torch.bool))
    mask, n = seg.seg(video)
    assert n == 0 and mask.shape == (g.T, g.H, g.W) and not mask.any() and segmo.fg_gate(mask) == "no_dynamic_object"


@pytest.mark.slow
def test_seg_end_to_end_tiny(sam2):
    """All five stages with tiny random models (TAPIR, classifier, transformers DINOv2 / Depth-Anything, SAM 2) on
    a toy clip: a (T, H, W) bool mask, as many objects as SAM 2 found, a gate verdict."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, Dinov2Model
    from others import moseg, tapir
    torch.manual_seed(0)
    dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                    patch_size=14, image_size=70)).eval()
    bc = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                      image_size=28, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    depth = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=bc, neck_hidden_sizes=[8, 16], reassemble_hidden_size=16, fusion_hidden_size=8,
        head_hidden_size=8, reassemble_factors=[2, 1], patch_size=14)).eval()
    tracker = tapir.TAPIR(widths=(8, 16, 16, 24), extra_conv_layers=2, extra_conv_multiplier=2, mixer_hidden_dim=32,
                          num_mixer_blocks=2).eval()
    classifier = moseg.MotionClassifier(point_dim=16, point_heads=2, point_ff=32, point_depth=2, dino_dim=32).eval()
    import toy
    video = toy.clip(0, T=11, H=16, W=24)["video"]                         # (11, 16, 24, 3) uint8, a moving subject
    seg = segmo.SegAnyMo(depth, dino, tracker, classifier, sam2)
    stages, moving = [], seg.moving
    seg.moving = lambda v: stages.append(moving(v)) or stages[-1]
    mask, n = seg.seg(video)
    tracks, visible = stages[0]
    assert tracks.shape[1:] == (11, 2) and visible.shape == tracks.shape[:2] and len(tracks) >= 3
    assert mask.shape == (11, 16, 24) and mask.dtype == torch.bool and n >= (1 if mask.any() else 0)
    verdict = segmo.fg_gate(mask)
    assert verdict is None or verdict.startswith(("fg_ratio:", "no_dynamic_object"))


@pytest.mark.slow
def test_load_segmo_wiring(sam2_path, monkeypatch):
    """load_segmo hands each loader its model name and the device, and each stage its dtype (a forced one too)."""
    from others import moseg, tapir
    calls = {}
    def loader(name):
        return lambda *a: calls.setdefault(name, a) and torch.nn.Linear(2, 2)
    for mod, name in ((moseg, "load_depth"), (moseg, "load_dino"), (moseg, "load_moseg"), (tapir, "load_tapir")):
        monkeypatch.setattr(mod, name, loader(name))
    spec = segmo.SegAnyMoSpec(sam2=str(sam2_path))
    seg = segmo.load_segmo(spec, "cpu")
    assert calls["load_depth"] == (spec.depth, torch.device("cpu")) and calls["load_moseg"][0] == "Changearthmore/moseg"
    assert calls["load_dino"] == (spec.dino, torch.device("cpu"), torch.float32)
    assert calls["load_tapir"] == ("bootstapir_checkpoint_v2.pt", torch.device("cpu"))
    assert next(seg.sam2.parameters()).dtype == torch.float32 and seg.tapir.weight.dtype == torch.float32
    calls.clear()
    seg = segmo.load_segmo(spec, "cpu", dtype=torch.bfloat16)
    assert next(seg.sam2.parameters()).dtype == torch.bfloat16 and calls["load_dino"][2] == torch.bfloat16
    assert seg.moseg.weight.dtype == seg.depth.weight.dtype == torch.bfloat16


def tiny_segmo_folder(d, sam2_path):
    """The five SegAnyMo models, tiny and random, saved as their real files are: Depth-Anything and DINOv2 folders
    (transformers), a BootsTAPIR state dict, moseg.pth (with the `config` our loader reads for narrow models), and
    the SAM 2 folder -> the decompose.py flags that name them."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, Dinov2Model
    from others import moseg, tapir
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, patch_size=14,
                             image_size=70)).save_pretrained(d / "dino")
    bc = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                      image_size=28, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=bc, neck_hidden_sizes=[8, 16], reassemble_hidden_size=16, fusion_hidden_size=8,
        head_hidden_size=8, reassemble_factors=[2, 1], patch_size=14)).save_pretrained(d / "depth")
    torch.save(tapir.TAPIR(widths=(8, 16, 16, 24), extra_conv_layers=2, extra_conv_multiplier=2, mixer_hidden_dim=32,
                           num_mixer_blocks=2).state_dict(), d / "tapir.pt")
    config = dict(point_dim=16, point_heads=2, point_ff=32, point_depth=2, dino_dim=32)
    torch.save({"model_state_dict": moseg.MotionClassifier(**config).state_dict(), "config": config}, d / "moseg.pth")
    return ["--segmo-depth", d / "depth", "--segmo-dino", d / "dino", "--segmo-tapir", d / "tapir.pt",
            "--segmo-moseg", d / "moseg.pth", "--segmo-sam2", sam2_path]


@pytest.mark.slow
def test_decompose_with_segmo_end_to_end_offline(sam2_path, tmp_path):
    """decompose.py --segmenter segmo on toy videos with every model tiny: every clip recorded with segmo's object
    count and a status the release's gates give; offline, a missing checkpoint stops in one line before any clip.
    (Mutation tried: clip_mask returning the motion mask for segmo -> no "objects" in the records, fails.)"""
    import decompose
    import toy
    from plumbing.cli import BadInput
    from plumbing.dataset import read_metadata
    from plumbing.video import write_video
    for s in (1, 2):
        write_video(tmp_path / "videos" / f"toy{s}.mp4", toy.clip(s, 9, 32, 48)["video"], 8)
    flags = tiny_segmo_folder(tmp_path, sam2_path)
    argv = ["--videos", tmp_path / "videos", "--out", tmp_path / "out", "--segmenter", "segmo", "--frames", "9",
            "--size", "32", "48", "--strides", "1", "--threads", "1", "--inpainter", "none", "--min-fg", "0",
            "--static", "0", *flags]
    decompose.main(decompose.parser.parse_args(list(map(str, argv))))
    recs = read_metadata(tmp_path / "out")
    assert len(recs) == 2 and all(r["segmenter"] == "segmo" for r in recs if r["status"] == "ok")
    assert all(r["status"] in ("ok", "fg_large", "no_dynamic_object") for r in recs), recs
    assert all(isinstance(r["objects"], int) and (r["objects"] == 0) == (r["status"] == "no_dynamic_object")
               for r in recs), recs
    bad = argv[:-len(flags)] + flags[:4] + ["--segmo-tapir", tmp_path / "none.pt"] + flags[6:]
    with pytest.raises(BadInput, match="--segmo-tapir .*none.pt: no such file .*--segmenter motion"):
        decompose.check_flags(decompose.parser.parse_args(list(map(str, bad))))


@pytest.mark.slow
def test_evaluate_redecomposes_with_segmo(sam2_path, tmp_path):
    """evaluate.py results --segmenter segmo: the generated videos' layers come from SegAnyMo (tiny models), the
    summary names it and the scores record its models. (Mutation tried: subject_mask ignoring "segmo" -> the mask
    differs from SegAnyMo's own on the same video and the ratio check fails.)"""
    import json
    import subprocess
    import sys
    import evaluate
    from plumbing.video import read_video
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "sample.py"), "--sampler", "ddim", "--steps", "1", "--guidance",
                        "1", "--out", str(tmp_path / "res")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    flags = list(map(str, tiny_segmo_folder(tmp_path, sam2_path)))
    s = evaluate.main(evaluate.parser.parse_args(["results", str(tmp_path / "res"), "--limit", "1", "--segmenter",
                                                  "segmo", "--device", "cpu", *flags]))
    assert s["n"] == 1 and "Segment-Any-Motion" in s["segmenter"]
    row = json.loads((tmp_path / "res" / "eval" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["settings"]["segmo_tapir"] == str(tmp_path / "tapir.pt")
    spec = segmo.SegAnyMoSpec(*(flags[i] for i in (1, 3, 5, 7, 9)))
    mask = segmo.resident(spec, "cpu").seg(read_video(row["result"])[0])[0]
    assert row["gen_fg_ratio"] == pytest.approx(float(mask.float().mean()), abs=1e-6)


REAL = Path(__file__).resolve().parents[2] / "shared" / "real"


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/real (the paper's example clips) is not here")
def test_segmo_on_the_real_clips(sam2_path, tmp_path):
    """The paper's seven example clips through decompose.py --segmenter segmo, every model tiny and random, at a
    CPU-sized 9x32x56 (BootsTAPIR's cost volumes are 64x64 per query and frame whatever the widths: ~1 ms each on a
    CPU, so 49x480x720's 48,000 queries are GPU work): one record per clip, each with an object count, a status the
    release's gates give, metadata.csv's num_objects matching the records."""
    import csv
    import decompose
    from plumbing.dataset import read_metadata
    flags = tiny_segmo_folder(tmp_path, sam2_path)
    argv = ["--videos", str(REAL / "*" / "stm_output.mp4"), "--out", tmp_path / "out", "--segmenter", "segmo",
            "--frames", "9", "--size", "32", "56", "--max-clips", "1", "--threads", "2", "--inpainter", "none",
            "--static", "0", *flags]
    decompose.main(decompose.parser.parse_args(list(map(str, argv))))
    recs = read_metadata(tmp_path / "out")
    assert len(recs) == 7, recs
    for r in recs:
        assert r["status"] in ("ok", "fg_small", "fg_large", "no_dynamic_object"), r
        assert isinstance(r["objects"], int) and r["objects"] >= 0 and (r["objects"] == 0) == (
            r["status"] == "no_dynamic_object"), r
        if r["status"] != "no_dynamic_object":
            assert (0.01 <= r["fg_ratio"] <= 0.45) == (r["status"] == "ok"), r
    rows = list(csv.DictReader((tmp_path / "out" / "metadata.csv").open()))
    ok = {r["id"]: r["objects"] for r in recs if r["status"] == "ok"}
    assert {row["vid_name"]: int(row["num_objects"]) for row in rows} == ok
