"""plumbing/video.py and plumbing/dataset.py: video I/O, the shared mask / shape helpers, the layered dataset round
trip (on toy clips), and every bad input. The toy world itself is tested in test_toy.py."""
from pathlib import Path

import numpy as np
import pytest
import torch

from plumbing.dataset import LISTS, LayeredClips, LayeredWriter, read_lists, read_metadata
from plumbing.video import (DEFAULT_FPS, check_aligned, check_shape, dilate, fit_video, frame_indices, mask_to_rgb,
    probe, read_frames, read_mask, read_video, to_tensor, to_uint8, write_video)
import toy


def clip(T=9, H=32, W=48, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content so lossy H.264 stays close to the source
    base = rng.integers(0, 255, (T, H // 8, W // 8, 3)).astype(np.uint8)
    return np.repeat(np.repeat(base, 8, 1), 8, 2)


def test_mp4_round_trip(tmp_path):
    v = clip()
    write_video(tmp_path / "a.mp4", v, fps=12, crf=0)
    r, fps = read_video(tmp_path / "a.mp4")
    assert r.shape == v.shape and r.dtype == np.uint8 and fps == 12
    assert np.abs(r.astype(int) - v).mean() < 6          # yuv420p chroma subsampling only


def test_odd_size_is_padded_to_even(tmp_path):
    v = np.ascontiguousarray(clip(H=32, W=48)[:, :31, :47])
    write_video(tmp_path / "odd.mp4", v)
    assert read_video(tmp_path / "odd.mp4")[0].shape == (9, 32, 48, 3)


def test_gif_round_trip(tmp_path):
    v = clip(T=5)
    write_video(tmp_path / "a.gif", v, fps=5)
    r, _ = read_video(tmp_path / "a.gif")
    assert r.shape == v.shape
    assert np.abs(r.astype(int) - v).mean() < 6          # 256-colour palette of the clip


def test_frame_folder_and_davis_palette_masks(tmp_path):
    from PIL import Image
    v = clip(T=3)
    (tmp_path / "jpg").mkdir()
    (tmp_path / "ann").mkdir()
    ids = np.zeros((3, 32, 48), np.uint8)
    ids[:, 2:10, 2:10] = 1
    ids[:, 20:30, 30:40] = 2
    ids[:, 0, :] = 255                                    # DAVIS "void" border
    for t in range(3):
        Image.fromarray(v[t]).save(tmp_path / "jpg" / f"{t:05d}.png")
        im = Image.fromarray(ids[t], mode="P")
        im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        im.save(tmp_path / "ann" / f"{t:05d}.png")
    r, fps = read_video(tmp_path / "jpg")
    assert np.array_equal(r, v) and fps == 24 == DEFAULT_FPS
    assert probe(tmp_path / "jpg") == (3, 24.0)                    # a folder: its frame count, the default rate
    assert np.array_equal(read_frames(tmp_path / "jpg", [0, 2]), v[[0, 2]])
    union = read_mask(tmp_path / "ann")
    assert union.sum() == 3 * (64 + 100) and not union[:, 0].any()
    assert read_mask(tmp_path / "ann", obj_id=2).sum() == 3 * 100


def test_mask_video(tmp_path):
    m = np.zeros((5, 32, 32), bool)
    m[:, 8:24, 8:16] = True
    rgb = mask_to_rgb(m)
    assert rgb.shape == (5, 32, 32, 3) and rgb.dtype == np.uint8
    assert set(np.unique(rgb)) == {0, 255} and np.array_equal(rgb[..., 1] == 255, m)   # white = subject
    write_video(tmp_path / "m.mp4", rgb)
    assert (read_mask(tmp_path / "m.mp4") == m).mean() > 0.99


def test_probe_and_read_frames(tmp_path):
    v = clip(T=9)
    v[:, :8, :8] = (np.arange(9) * 25)[:, None, None, None]             # frame number, as a grey top-left block
    write_video(tmp_path / "a.mp4", v, fps=12, crf=0)
    assert probe(tmp_path / "a.mp4") == (9, 12.0)
    got = read_frames(tmp_path / "a.mp4", [1, 4, 7])
    assert got.shape == (3, 32, 48, 3) and np.abs(got.astype(int) - v[[1, 4, 7]]).mean() < 6
    assert np.abs(got[:, 4, 4, 0].astype(int) - [25, 100, 175]).max() < 8      # the frames asked for, in order
    with pytest.raises(ValueError, match="ended before frame 12"):
        read_frames(tmp_path / "a.mp4", [2, 12])
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="bad.mp4"):
        probe(tmp_path / "bad.mp4")


def test_dilate_grows_each_frame_by_a_square():
    """dilate: the toy VAE's sprite-loss margin, Split's inpainting hole and evaluate's bg exclusion."""
    m = torch.zeros(1, 1, 3, 16, 16)
    m[0, 0, 1, 8, 5] = 1
    d = dilate(m, 2)
    assert torch.equal(dilate(m, 0), m) and d.dtype == torch.bool and d.shape == m.shape
    assert d[0, 0, 1].sum() == 25 and d[0, 0, 1, 6:11, 3:8].sum() == 25       # a 5 x 5 square around the pixel
    assert d[0, 0, 0].sum() == d[0, 0, 2].sum() == 0                           # ... in its own frame only
    edge = torch.zeros(1, 1, 1, 4, 4)
    edge[..., 0, 0] = 1
    assert dilate(edge, 1).sum() == 4                                     # clipped at the frame border


def test_check_shape():
    assert check_shape(49, 480, 720) is None and check_shape(9, 64, 64) is None
    for bad in ((48, 480, 720), (49, 472, 720), (49, 480, 712)):
        msg = check_shape(*bad, what="--frames/--size")
        assert msg.startswith("--frames/--size: need 4k+1 frames") and "\n" not in msg
        assert f"got {bad[0]} frames of {bad[1]}x{bad[2]}" in msg


def test_fit_video_cover_crop_and_stride():
    v = np.zeros((20, 40, 80, 3), np.uint8)
    v[:, :, 30:50] = 255                                  # a centred white column
    v[:, 0, 0, 0] = np.arange(20)                         # frame number
    out = fit_video(v, 5, 16, 16, stride=3, start=2)
    assert out.shape == (5, 16, 16, 3)
    assert out[0, :, 8].min() > 200 and out[0, :, 0].max() < 30    # centre kept, sides cropped
    assert list(frame_indices(20, 5, 3, 2)) == [2, 5, 8, 11, 14]
    assert list(frame_indices(13, 4)) == [0, 4, 8, 12]         # resampled over the whole clip
    with pytest.raises(ValueError, match="clip.mp4: has 20 frames, needs 49"):
        fit_video(v, 49, 16, 16, stride=1, name="clip.mp4")


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"this is not a video at all" * 10)
    with pytest.raises(ValueError, match="bad.mp4"):
        read_video(tmp_path / "bad.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "nof").mkdir()
    with pytest.raises(ValueError, match="nof"):
        read_video(tmp_path / "nof")
    with pytest.raises(ValueError, match="fg.mp4 has 9 frames but mask.mp4 has 7"):
        check_aligned(clip(), np.zeros((7, 32, 48), bool), "fg.mp4", "mask.mp4")
    with pytest.raises(ValueError, match="fg.mp4 is 48x32 but mask.mp4 is 40x32"):
        check_aligned(clip(), np.zeros((9, 32, 40), bool), "fg.mp4", "mask.mp4")
    with pytest.raises(ValueError, match="expected uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((3, 8, 8), np.float32))


def test_toy_dataset_round_trip(tmp_path):
    n = toy.write_data(tmp_path / "toy", 6)
    assert n == 6
    ds = LayeredClips(tmp_path / "toy")
    assert len(ds) == 6
    it = ds[3]
    assert it["video"].shape == it["fg"].shape == it["bg"].shape == (3, 9, 64, 64)
    assert it["mask"].shape == (1, 9, 64, 64) and set(it["mask"].unique().tolist()) <= {0.0, 1.0}
    assert it["video"].min() >= -1 and it["video"].max() <= 1
    truth = toy.clip(3)
    assert it["caption"] == truth["caption"]
    assert (it["mask"][0].bool().numpy() == truth["mask"]).mean() > 0.995
    assert (to_uint8(it["bg"]).astype(int) - truth["bg"]).__abs__().mean() < 4
    # fg is black outside the mask, the video equals bg far from the subject and its shadow
    assert it["fg"][:, ~it["mask"][0].bool()].max() < -0.9
    # the dataset with a target shape resamples
    small = LayeredClips(tmp_path / "toy", frames=5, size=(32, 32), stride=2)[0]
    assert small["video"].shape == (3, 5, 32, 32) and small["mask"].shape == (1, 5, 32, 32)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["video"].shape == (2, 3, 9, 64, 64) and len(batch["caption"]) == 2


def test_writer_is_resumable_and_lists_stay_aligned(tmp_path):
    root = tmp_path / "toy"
    toy.write_data(root, 3)
    with open(root / "metadata.jsonl", "a") as f:
        f.write('{"id": "torn')                            # a writer killed mid-line
    w = LayeredWriter(root)
    assert len(w.done) == 3
    assert toy.write_data(root, 5) == 5                   # continues, nothing duplicated
    ids = [r["id"] for r in read_metadata(root)]
    assert len(ids) == len(set(ids)) == 5
    lines = {n: (root / n).read_text().splitlines() for n in LISTS.values()}
    assert all(len(v) == 5 for v in lines.values())


def test_stm_release_and_cogvideox_layouts(tmp_path):
    toy.write_data(tmp_path / "toy", 2)
    root = tmp_path / "toy"
    (root / "fg-black.txt").write_text((root / "fg.txt").read_text())
    (root / "fg.txt").write_text("does/not/exist.mp4\n" * 2)   # StM: fg.txt is not the black-bg layer
    assert LayeredClips(root)[1]["fg"].shape == (3, 9, 64, 64)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "prompts.txt").write_text("a clip\n")
    (plain / "videos.txt").write_text(str(root / "videos" / "toy000_000000.mp4") + "\n")
    assert LayeredClips(plain, layers=False)[0]["video"].shape == (3, 9, 64, 64)
    with pytest.raises(FileNotFoundError, match="fg.txt"):
        LayeredClips(plain)
    (plain / "videos.txt").write_text("a.mp4\nb.mp4\n")
    with pytest.raises(ValueError, match="prompts.txt has 1 lines but videos.txt has 2"):
        read_lists(plain)
    with pytest.raises(FileNotFoundError, match="missing prompts.txt"):
        read_lists(tmp_path)


def release_folder(root):
    """A small dataset in the StM release's layout: <source>/{videos,fg,bg,bg-inpainted,masks}/, fg-black.txt,
    metadata.csv (rows aligned with the lists). c0: a training clip with an inpainted clean plate; c1: a training
    clip without one; c2: fails the main_train_foreground_volume gate; c3: validation only (is_training False)."""
    src = root / "openvid"
    rows, lists = [], {k: [] for k in ("prompts", "videos", "fg", "fg-black", "bg", "masks")}
    for i in range(4):
        c = toy.clip(20 + i)
        holed = c["video"] * ~c["mask"][..., None]
        for sub, name, arr in (("videos", f"c{i}.mp4", c["video"]), ("fg", f"c{i}-00.mp4", c["fg"]),
                               ("bg", f"c{i}-bg.mp4", holed), ("masks", f"c{i}-00.mp4", mask_to_rgb(c["mask"]))):
            write_video(src / sub / name, arr, fps=8)
        if i == 0:
            write_video(src / "bg-inpainted" / "c0-bg.mp4", c["bg"], fps=8)
        lists["prompts"].append(toy.caption(c["sprite"], c["scene"]))
        lists["videos"].append(f"openvid/videos/c{i}.mp4")
        lists["fg"].append(f"openvid/fg/c{i}-00.mp4")
        lists["fg-black"].append(f"openvid/fg/c{i}-00.mp4")
        lists["bg"].append(f"openvid/bg/c{i}-bg.mp4")
        lists["masks"].append(f"openvid/masks/c{i}-00.mp4")
        rows.append(f"c{i},49,1,openvid,480,720,{i != 3},True,0.05,1,{i != 3},{i in (0, 1)},seganymo")
    for k, v in lists.items():
        (root / f"{k}.txt").write_text("\n".join(v) + "\n")
    head = ("vid_name,num_frames,foreground_num,dataset_type,height,width,is_training,1fg-1bg,foreground_ratio,"
            "num_objects,main_train,main_train_foreground_volume,mask_source")
    (root / "metadata.csv").write_text(head + "\n" + "\n".join(rows) + "\n")
    return root


def test_stm_release_layout_uses_clean_plates_and_metadata_gates(tmp_path):
    root = release_folder(tmp_path / "rel")
    train = LayeredClips(root, frames=9, size=(64, 64))
    assert [Path(it["video"]).name for it in train.items] == ["c0.mp4", "c1.mp4"]     # c2 gated out, c3 is val
    assert [Path(it["video"]).name for it in LayeredClips(root, split="val").items] == ["c3.mp4"]
    assert len(LayeredClips(root, split="all")) == 4
    # c0's bg is the inpainted clean plate (the subject's hole filled), c1 keeps its holed bg
    assert "bg-inpainted" in train.items[0]["bg"] and "bg-inpainted" not in train.items[1]["bg"]
    c0 = toy.clip(20)
    bg = train[0]["bg"]                                                          # (3, T, H, W) in [-1, 1]
    hole = torch.from_numpy(c0["mask"])[None].expand_as(bg)
    clean = to_tensor(c0["bg"])
    assert (bg[hole] - clean[hole]).abs().mean() < 0.05                         # the hole is filled, not black
    assert (to_tensor(c0["video"] * ~c0["mask"][..., None])[hole] + 1).abs().max() < 1e-6   # holed one is
    # a metadata.csv that does not align with the lists is refused
    (root / "metadata.csv").write_text((root / "metadata.csv").read_text().rsplit("\n", 2)[0] + "\n")
    with pytest.raises(ValueError, match="metadata.csv: 3 rows but videos.txt has 4"):
        LayeredClips(root)


def test_a_variable_frame_rate_video_keeps_its_real_length(tmp_path):
    """Six frames at t = 0, 1/30, 2/30, 1, 2, 3 s: the nominal rate (~5.5 fps) would say 1.1 s; the timestamps say
    3 s plus one mean frame interval (3.6 s), which is what sample.py keeps (mutation: n / nominal fps -> 1.1)."""
    import fractions
    import av
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        s.codec_context.time_base = fractions.Fraction(1, 30)
        for i, t in enumerate([0, 1, 2, 30, 60, 90]):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 40, np.uint8), format="rgb24")
            f.pts, f.time_base = t, fractions.Fraction(1, 30)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    frames, fps, seconds = read_video(path, duration=True)
    assert len(frames) == 6 and seconds == pytest.approx(3.6, abs=1e-6) and len(frames) / fps < 1.5
