"""
The layered-clip dataset: <root>/{prompts,videos,fg,bg,masks}.txt, aligned line by line, paths relative to <root>,
plus metadata.jsonl (one record per clip, skipped ones too). The metadata is the source of truth: it is appended one
line per clip, and the five lists are rewritten from it (atomically) by `LayeredWriter.finalize`, so a killed writer
never leaves them misaligned.

    python -m plumbing.dataset data/toy           # count and check a dataset
"""
import argparse
import csv
import json
import os
from pathlib import Path

import torch

from .files import atomic_write_text
from .video import check_aligned, fit_video, mask_to_rgb, read_mask, read_video, to_tensor, write_video

LISTS = {"caption": "prompts.txt", "video": "videos.txt", "fg": "fg.txt", "bg": "bg.txt", "mask": "masks.txt"}


def read_list(path):
    """A list file -> its lines. Only "\\n" ends a line (a stray U+2028 or U+0085 in a caption does not); a byte
    order mark and Windows line ends are dropped."""
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_lists(root):
    """-> list of dicts {caption, video, fg, bg, mask} (absolute paths; layers None if absent).
    Reads our layout, the StM release's (`fg-black.txt` as the fg list) and the plain CogVideoX
    fine-tuning layout (prompts.txt + videos.txt only)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    cols = {}
    for key, name in LISTS.items():
        p = root / name
        if key == "fg" and (root / "fg-black.txt").exists():
            p = root / "fg-black.txt"
        if p.exists():
            cols[key] = read_list(p)
    for key in ("caption", "video"):
        if key not in cols:
            raise FileNotFoundError(f"{root}: missing {LISTS[key]} (need at least prompts.txt and videos.txt)")
    n = len(cols["video"])
    for key, lines in cols.items():
        if len(lines) != n:
            raise ValueError(f"{root}: {LISTS[key]} has {len(lines)} lines but videos.txt has {n}; "
                             "the lists must align")
    items = [{k: (cols[k][i] if k == "caption" else str(root / cols[k][i].strip())) if k in cols else None
              for k in LISTS} for i in range(n)]
    for it, split in zip(items, release_splits(root, n)):
        it["split"] = split
        if it["bg"]:    # the release's loader prefers the inpainted clean plate beside the holed bg
            inpainted = Path(it["bg"]).parent.parent / "bg-inpainted" / Path(it["bg"]).name
            it["bg"] = str(inpainted) if inpainted.exists() else it["bg"]
    return items


def release_splits(root, n):
    """Per clip "train", "val" or "filtered" from the StM release's metadata.csv (rows aligned with the lists):
    validation-only clips have is_training False (DAVIS); training uses the `main_train_foreground_volume` gate
    (one subject, > 35 frames, fg ratio in [0.01, 0.45]) where the column exists. No metadata.csv: all "train"."""
    p = Path(root) / "metadata.csv"
    if not p.exists():
        return ["train"] * n
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != n:
        raise ValueError(f"{p}: {len(rows)} rows but videos.txt has {n} lines; they must align")
    yes = lambda r, k, default: str(r.get(k, default)).strip().lower() in ("true", "1", "yes")
    return ["val" if not yes(r, "is_training", True) else
            "train" if yes(r, "main_train_foreground_volume", True) else "filtered" for r in rows]


def read_metadata(root):
    """Records of metadata.jsonl; a torn last line (a killed writer) is ignored."""
    p, out = Path(root) / "metadata.jsonl", []
    if p.exists():
        for line in p.read_text().split("\n"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


class LayeredWriter:
    """Writes a layered-clip dataset clip by clip; resumable (`done` holds the finished ids). With records=False,
    add() only writes the clip's files and returns its record (a batch job's engine keeps the records)."""

    def __init__(self, root, records=True):
        self.root, self.records = Path(root), records
        self.root.mkdir(parents=True, exist_ok=True)
        self.done = {r["id"] for r in read_metadata(root)} if records else set()

    def add(self, id, caption, video, fg, bg, mask, fps=8, source="", crf=12, **extra):
        check_aligned(video, fg, f"{id} video", "fg")
        check_aligned(video, bg, f"{id} video", "bg")
        check_aligned(video, mask, f"{id} video", "mask")
        rel = {k: f"{k}/{id}.mp4" for k in ("videos", "fg", "bg", "masks")}
        for k, arr in zip(rel, (video, fg, bg, mask_to_rgb(mask))):
            write_video(self.root / rel[k], arr, fps, crf=crf)
        T, H, W = mask.shape
        rec = dict(id=id, source=source, frames=T, fps=fps, size=[H, W], fg_ratio=float(mask.mean()), status="ok",
                   caption=one_line(caption), **rel, **extra)
        if self.records:
            self.record(**rec)
        return rec

    def record(self, **rec):
        """Append one record; one write of one line, so a kill leaves at most a torn last line."""
        p = self.root / "metadata.jsonl"
        torn = p.exists() and p.stat().st_size > 0 and p.read_bytes()[-1:] != b"\n"
        with open(p, "a") as f:
            f.write(("\n" if torn else "") + json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(rec["id"])

    def finalize(self):
        """Rewrite the five aligned lists from metadata.jsonl (kept clips, the last record of each id)."""
        last = {}
        for r in read_metadata(self.root):
            last.pop(r["id"], None)
            last[r["id"]] = r
        recs = [r for r in last.values() if r.get("status") == "ok"]
        cols = {"prompts.txt": [one_line(r["caption"]) for r in recs],
                "videos.txt": [r["videos"] for r in recs], "fg.txt": [r["fg"] for r in recs],
                "bg.txt": [r["bg"] for r in recs], "masks.txt": [r["masks"] for r in recs]}
        for name, lines in cols.items():
            atomic_write_text(self.root / name, "".join(line + "\n" for line in lines))
        return len(recs)


def one_line(text):
    """A caption as one line of a list file: every line break Python knows (\\r, U+0085, U+2028, ...) and run of
    white space becomes one space, so a caption can never split a line and misalign the lists."""
    return " ".join(str(text).split())


class LayeredClips(torch.utils.data.Dataset):
    """Items {video, fg, bg: (3,T,H,W) in [-1,1], mask: (1,T,H,W) in {0,1}, caption, index}.
    With `frames/size` each clip is resampled (stride) and cover-cropped to that shape."""

    def __init__(self, root, frames=None, size=None, stride=1, layers=True, skip=(), split="train"):
        # split: "train" (the clips training may use), "val" (the release's validation-only clips) or "all"
        items = read_lists(root)
        self.items = [it for it in items if split == "all" or it["split"] == split]
        self.frames, self.size, self.stride = frames, size, stride
        self.skip = set(skip)                                  # e.g. {"video", "bg"} when their latents are cached
        if layers:
            for key in ("fg", "bg", "mask"):
                if self.items and self.items[0][key] is None:
                    raise FileNotFoundError(f"{root}: no {LISTS[key]}; this is a plain video list — run "
                                            "decompose.py on it first to make the layers")
        self.layers = layers

    def __len__(self):
        return len(self.items)

    def _fit(self, x, name, mask=False):
        if self.frames is None:
            return x
        H, W = self.size
        return fit_video(x, self.frames, H, W, stride=self.stride, name=name, mask=mask)

    def __getitem__(self, i):
        it = self.items[i]
        out = {"caption": it["caption"], "index": i}
        if "video" not in self.skip:
            out["video"] = to_tensor(self._fit(read_video(it["video"])[0], it["video"]))
        if self.layers:
            fg, mask = read_video(it["fg"])[0], read_mask(it["mask"])
            check_aligned(fg, mask, it["fg"], it["mask"])
            fg = fg * mask[..., None]                     # lossy codecs bleed colour past the edge
            out["fg"] = to_tensor(self._fit(fg, it["fg"]))
            if "bg" not in self.skip:
                out["bg"] = to_tensor(self._fit(read_video(it["bg"])[0], it["bg"]))
            out["mask"] = torch.from_numpy(self._fit(mask, it["mask"], mask=True)).float()[None]
        return out



def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="dataset folder")
    args = p.parse_args()
    ds = LayeredClips(args.root, layers=False)
    recs = read_metadata(args.root)
    x = ds[0]["video"] if len(ds) else None
    print(f"{args.root}: {len(ds)} clips, {len(recs)} metadata records, "
          f"first clip {tuple(x.shape) if x is not None else '-'}")
    return len(ds)


if __name__ == "__main__":
    main()
