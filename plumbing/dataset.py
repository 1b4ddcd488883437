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
import math
import os
import re
import sys
from pathlib import Path

import torch

from .cli import BadInput, run_cli
from .records import append_jsonl, join_records, read_jsonl, read_records, stale_outputs
from .files import atomic_write_text, stamp
from .video import (IMAGE_EXTS, VIDEO_EXTS, check_aligned, fit_video, mask_to_rgb, probe, read_mask, read_video,
                    to_tensor, write_video)

LISTS = {"caption": "prompts.txt", "video": "videos.txt", "fg": "fg.txt", "bg": "bg.txt", "mask": "masks.txt"}


def read_list(path):
    """A list file -> its lines. Only "\\n" ends a line (a stray U+2028 or U+0085 in a caption does not); a byte
    order mark and Windows line ends are dropped."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at {e.start}); save it as UTF-8") \
            from None
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
    with open(p, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != n:
        raise ValueError(f"{p}: {len(rows)} rows but videos.txt has {n} lines; they must align")
    yes = lambda r, k, default: str(r.get(k, default)).strip().lower() in ("true", "1", "yes")
    return ["val" if not yes(r, "is_training", True) else
            "train" if yes(r, "main_train_foreground_volume", True) else "filtered" for r in rows]


def read_metadata(root):
    """Records of metadata.jsonl, in order; a torn last line (a killed writer) and stray lines that are no record
    are passed over."""
    p = Path(root) / "metadata.jsonl"
    return [r for _, r in read_jsonl(p)[0] if "id" in r] if p.exists() else []


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
        append_jsonl(self.root / "metadata.jsonl", rec)
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



# ---------------------------------------------------------------------------------------------
# Triplets files: what sample.py --triplets composes and evaluate.py scores (one JSON object a line)

RESERVED_IDS = {"grid"}       # sample.py writes <out>/grid.mp4, the stacked grid: no triplet may be named so
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,120}")     # an id names output files: a plain file name
RELEASED_RE = re.compile(r"^sample-(\d+)_gs-([\d.]+)_")     # the StM release's test folders: sample-<i>_gs-<g>_...


def text_problem(s, what):
    """Why a prompt (or path) from a file cannot be used, or None: it must be text, and text a codec can write."""
    if not isinstance(s, str):
        return f"{what} must be a string, got {type(s).__name__} {json.dumps(s)}"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"{what} is not valid Unicode text ({e.reason} at {e.start}: U+{ord(s[e.start]):04X})"
    if what != "prompt" and "\0" in s:
        return f"{what} {s!r} holds a NUL character, which no file name can"
    return None


def read_triplets(path):
    """jsonl -> (items, {id: why} for lines that cannot be used). Paths are resolved against the file. A bad line
    is one skipped item (named by its id, or @line<N>), never the end of the job."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"--triplets {path}: no such file")
    items, bad, seen = [], {}, {}
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for n, line_b in enumerate(raw.split(b"\n"), 1):
        line_b = line_b.removeprefix(b"\xef\xbb\xbf")          # two files joined by `cat` keep the second's BOM
        if not line_b.strip():
            continue
        where = f"{path}:{n}"
        try:
            j = json.loads(line_b.decode("utf-8"))
        except UnicodeDecodeError as e:
            bad[f"@line{n}"] = f"{where}: not UTF-8 text (byte 0x{line_b[e.start]:02x} at {e.start}); save the " \
                               "file as UTF-8"
            items.append({"id": f"@line{n}"})
            continue
        except json.JSONDecodeError as e:
            bad[f"@line{n}"] = f"{where}: not valid JSON ({e.msg}); one object per line is expected"
            items.append({"id": f"@line{n}"})
            continue
        if not isinstance(j, dict):
            bad[f"@line{n}"] = f"{where}: a JSON object {{fg, bg, prompt[, mask, id, reference]}} is expected"
            items.append({"id": f"@line{n}"})
            continue
        i = j.get("id", f"{sum(1 for it in items if not it['id'].startswith('@')):04d}")
        if not isinstance(i, (str, int)) or not ID_RE.fullmatch(str(i)):
            bad[f"@line{n}"] = f"{where}: id {i!r} must be a plain file name (letters, digits, . _ -)"
            items.append({"id": f"@line{n}"})
            continue
        i = str(i)
        if i.lower() in seen:                              # case-insensitive file systems would mix them up
            raise BadInput(f"{where}: id {i!r} is also on line {seen[i.lower()]}; ids name the output files")
        seen[i.lower()] = n
        j["id"] = i
        why = [f"{where}: id {i!r} is reserved (<out>/{i}.mp4 is the stacked grid); rename the triplet"] \
            if i.lower() in RESERVED_IDS else []
        j.setdefault("prompt", "")
        why += [p for p in [text_problem(j["prompt"], "prompt")] if p]
        for k in ("fg", "bg", "mask", "reference"):
            v = j.get(k)
            if k in ("fg", "bg") and not v:
                why.append(f"missing {k} (a video path relative to the file)")
            elif v is not None and (msg := text_problem(v, k) or (None if v else f"{k} is empty")):
                why.append(msg)
            elif v:
                j[k] = str((path.parent / v).resolve())
        if why:
            bad[i] = f"{where}: " + "; ".join(w.removeprefix(f"{where}: ") for w in why)
        items.append(j)
    if not items:
        raise BadInput(f"--triplets {path}: no triplets in the file")
    return items, bad


def sample_id(folder):
    """The id of one triplet folder: its name where that is a plain file name, else (a released folder whose name
    holds its prompt) sample-<i>. Results and the released folders share it, so compare matches them by id."""
    name = Path(folder).name
    m = RELEASED_RE.match(name)
    return name if ID_RE.fullmatch(name) or not m else f"sample-{m.group(1)}"


def _layer(d, name, exts, frames_ok=False):
    """<d>/<name>.<ext> (first by extension order), or a <d>/<name>/ folder of PNG/JPG frames where allowed."""
    hits = [d / f"{name}{e}" for e in exts if (d / f"{name}{e}").is_file()]
    if hits:
        return hits[0]
    folder = d / name
    if frames_ok and folder.is_dir() and any(f.suffix.lower() in IMAGE_EXTS for f in folder.iterdir()):
        return folder
    return None


def folder_triplets(folder):
    """A folder of triplet folders -> the triplets in it, for a triplets file (sample.py --triplets FOLDER).
    Each <folder>/<name>/ holds fg.<video> (the subject on black, or any video with a mask), bg.<video or image>,
    optionally mask.<video> or mask/ (PNG frames), and prompt.txt. The StM release's test set is such a folder:
    sample-<i>_gs-<g>_<prompt>/ holding fg.mp4 (subject on black: its mask is where it is not black), bg.mp4 and
    prompt.txt beside the outputs of each method; the guidance the release showed is kept as `released_guidance`.
    -> (items with absolute paths, sorted by sample number then name; [(folder name, why)] of those left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"--triplets {folder}: no such folder or file")
    items, left, ids = [], [], {}
    num = lambda d: int(RELEASED_RE.match(d.name).group(1)) if RELEASED_RE.match(d.name) else -1
    for d in sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: (num(d), d.name)):
        fg, bg = _layer(d, "fg", VIDEO_EXTS), _layer(d, "bg", VIDEO_EXTS + IMAGE_EXTS)
        if fg is None or bg is None:
            if any(f.suffix.lower() in VIDEO_EXTS for f in d.iterdir()):     # a folder of videos that is no triplet
                left.append((d.name, f"no {'fg' if fg is None else 'bg'}.<video> in it"))
            continue
        i = sample_id(d)
        if not ID_RE.fullmatch(i) or i.lower() in RESERVED_IDS or i.lower() in ids:
            left.append((d.name, f"its id {i!r} is not a plain file name, or is taken (by {ids.get(i.lower())})"))
            continue
        ids[i.lower()] = d.name
        prompt = one_line((d / "prompt.txt").read_text(encoding="utf-8")) if (d / "prompt.txt").is_file() else ""
        item = {"id": i, "fg": str(fg.resolve()), "bg": str(bg.resolve()), "prompt": prompt}
        mask = _layer(d, "mask", VIDEO_EXTS, frames_ok=True)
        item.update({"mask": str(mask.resolve())} if mask else {})
        m = RELEASED_RE.match(d.name)
        item.update({"released_guidance": float(m.group(2))} if m else {})
        items.append(item)
    if not items:
        raise BadInput(f"--triplets {folder}: no triplet folders in it (each <name>/ holding fg.<video>, "
                       "bg.<video or image>, optionally mask and prompt.txt; the StM release's sample-*/ folders)")
    return items, left


def triplets_text(items, path):
    """Triplets -> the text of a triplets file at `path`: one JSON object a line, paths relative to the file."""
    def rel(p):                                        # relative where the file sits near the videos
        r = os.path.relpath(p, Path(path).parent.resolve()).replace(os.sep, "/")
        return str(Path(p).resolve()) if r.startswith("../../../") else r
    return "".join(json.dumps({k: rel(v) if k in ("fg", "bg", "mask", "reference") else v for k, v in it.items()},
                              ensure_ascii=False) + "\n" for it in items)


def guidance_set(out, guidance):
    """Where sample.py --guidance G1 G2 ... writes the results set of one value: <out>/gs-<value>."""
    return Path(out) / f"gs-{guidance:g}"


def sweep_sets(folder, marker):
    """A guidance sweep's sets (guidance_set folders under `folder`) holding `marker` (a path relative to a set), by
    guidance value; [] where `folder` is no sweep."""
    sets = [d for d in Path(folder).glob("gs-*") if d.is_dir() and (d / marker).is_file()]
    value = lambda d: float(d.name[3:]) if d.name[3:].replace(".", "", 1).isdigit() else math.inf
    return sorted(sets, key=lambda d: (value(d), d.name))


def check_files(item):
    """-> None, or why the item's files cannot be used (cheap: the containers are probed, not decoded). The optional
    `reference` (a correct composite, shown beside the grid) that cannot be read is dropped with a note instead."""
    for k in ("fg", "bg", "mask", "reference"):
        if item.get(k):
            try:
                n, _ = probe(item[k])
            except (FileNotFoundError, ValueError) as e:
                if k == "reference":
                    print(f"note: {item['id']}: reference {e}; composed without it", file=sys.stderr)
                    item.pop(k)
                    continue
                return f"{k} {e}"
            if n < 1:
                return f"{k} {item[k]}: no frames"
    return None


# ---------------------------------------------------------------------------------------------
# Writing a dataset in parts: lists nobody else wrote, shards joined, captions given in a file


def check_lists(out):
    """The lists of `out` are rewritten from metadata.jsonl at the end: lines it does not account for (another
    tool's dataset, hand-added clips) would be lost, so such a folder is refused before anything is written."""
    out = Path(out)
    listed = read_list(out / "videos.txt") if (out / "videos.txt").exists() else []
    known = {r.get("videos") for f in out.glob("metadata*.jsonl") for r in read_records(f).values()}
    unknown = set(filter(None, map(str.strip, listed))) - known
    if unknown:
        raise BadInput(f"--out {out}: videos.txt lists {len(unknown)} clips that its metadata.jsonl does not hold "
                       f"(e.g. {sorted(unknown)[0]}); rewriting the lists would drop them: use a folder of its own, "
                       "or add those clips' records first")


def merge_shards(out):
    """Join the shards' record files (metadata.shard-I-of-N.jsonl, copied into `out` with their clips) into
    out/metadata.jsonl, keeping what it already holds, then rewrite the lists -> records added. Refused when the
    records were made with different flags, or while a shard still writes here."""
    out = Path(out)
    if not list(out.glob("metadata.shard-*-of-*.jsonl")) and not (out / "metadata.jsonl").exists():
        raise BadInput(f"--out {out}: no metadata.shard-*-of-*.jsonl to merge; write them with decompose.py "
                       f"--shard I/N --out {out} (and copy the shards' folders into this one)")
    check_lists(out)
    before = len(read_records(out / "metadata.jsonl"))
    kinds = {r.get("settings_id") for f in out.glob("metadata*.jsonl") for r in read_records(f).values()}
    if len(kinds - {None}) > 1:
        raise BadInput(f"--out {out}: the shards' clips were made with {len(kinds - {None})} different sets of flags "
                       "(see each run's metadata.settings.json); merge only shards of one command")
    join_records(out, "metadata", shards=True)
    LayeredWriter(out).finalize()
    return len(read_records(out / "metadata.jsonl")) - before


def read_captions(path):
    """jsonl ({"video"|"id": stem, "caption"|"text": ...}) or tsv (stem<TAB>caption) -> dict."""
    out = {}
    try:
        lines = read_list(path)                     # "\n" ends a line: a caption may hold U+2028 or U+0085
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"--captions {path}: cannot be read ({type(e).__name__}); give a UTF-8 jsonl or tsv "
                       "file") from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInput(f"--captions {path}:{i + 1}: not a JSON object ({e.msg}); "
                               'expected {"video": stem, "caption": text}') from None
            if not isinstance(r, dict):
                raise BadInput(f"--captions {path}:{i + 1}: expected a JSON object with video and caption")
            key, cap = r.get("video", r.get("id")), r.get("caption", r.get("text"))
        else:
            key, _, cap = line.partition("\t")
        if key is None or not isinstance(cap, str) or not cap.strip():
            raise BadInput(f"--captions {path}:{i + 1}: expected a video stem and a caption")
        out[Path(str(key)).stem if str(key).endswith(VIDEO_EXTS) else str(key)] = one_line(cap)
    return out


# ---------------------------------------------------------------------------------------------
# A composer's results: results.jsonl (sample.py --triplets), or the paper's released folders


def resolve_path(p, base):
    p = Path(p)
    return p if p.is_absolute() else base / p


def input_stamps(item):
    """The stamps of a composition's input files, as its results record keeps them (check_result compares them)."""
    return {k: stamp(item[k]) for k in ("fg", "bg", "mask") if item.get(k)}


def check_result(rec, base):
    """Why a results record cannot be scored (one line), or None. Reads only the videos' headers."""
    if rec.get("status", "ok") != "ok":
        return f"not composed ({rec.get('error') or rec['status']})"
    changed = stale_outputs(rec, base)
    if changed:
        return f"{changed[0]} changed since sample.py wrote it; rerun sample.py to make its record true again"
    stamps = rec.get("input_stamps") if isinstance(rec.get("input_stamps"), dict) else {}
    changed = [k for k, v in stamps.items() if isinstance(rec.get(k), str) and stamp(resolve_path(rec[k], base)) != v]
    if changed:
        return f"its {changed[0]} changed since sample.py composed the result from it; rerun sample.py"
    for k in ("result", "fg", "bg", "mask"):
        if k == "mask" and not rec.get("mask"):
            continue
        if not isinstance(rec.get(k), str) or not rec[k]:
            return f"no '{k}' path (a record needs result, fg, bg and optionally mask)"
        p = resolve_path(rec[k], base)
        if not p.exists():
            return f"{k} {p}: not found"
        try:
            n = probe(p)[0]
        except ValueError as e:
            return f"{k} {e}"
        if n == 0:
            return f"{k} {p}: no frames"
    return None


def released_records(folder, method):
    """The paper's released result folders, read as they are (as the StM release's evaluation reads them): the
    triplet folders of folder_triplets (sample-*/ holding fg.mp4 (the subject on black), bg.mp4, prompt.txt,
    optionally mask.mp4), each with one <method>.mp4 per method -> (results.jsonl-style records with absolute paths,
    folder_triplets' ids and order; [(folder name, why)] of the folders that are no triplet)."""
    folder = Path(folder)
    samples = sorted(d for d in folder.glob("sample-*") if d.is_dir()) if folder.is_dir() else []
    if not samples:
        raise BadInput(f"{folder}: no sample-*/ folders there (--layout released reads sample-*/ holding fg.mp4, "
                       "bg.mp4, prompt.txt and one <method>.mp4 per method)")
    methods = sorted({f.stem for d in samples for f in d.glob("*.mp4")} - {"fg", "bg", "mask", "fg_cb"})
    if method not in methods:
        raise BadInput(f"--method {method}: {'not in' if method else 'name one of the methods in'} {folder} "
                       f"(its sample folders hold: {', '.join(methods) or 'no method videos'})")
    try:
        items, left = folder_triplets(folder)
    except BadInput:
        raise BadInput(f"{folder}: none of its sample-*/ folders holds fg.<video> and bg.<video or image> (--layout "
                       "released)") from None
    # only sample-*/ (evaluate writes eval-<method>/ there); by id, as fg may be a link to a file elsewhere
    by_id, names = {sample_id(d): d for d in samples}, {d.name for d in samples}
    return ([{**it, "result": str(by_id[it["id"]] / f"{method}.mp4")} for it in items if it["id"] in by_id],
            [x for x in left if x[0] in names])


def read_results(folder, limit=0, layout="results", method=None):
    """A run -> (records to score as (line, record), skipped as {line, id, why}): results.jsonl in `folder`
    (sample.py --triplets), or with layout "released" the paper's sample-*/ folders and one method's videos (line =
    the sample's position). The first `limit` records (0 = all); one whose video is missing or unreadable, or that
    repeats a result or an id, is skipped and reported. None usable: BadInput."""
    src = Path(folder) / "results.jsonl"
    if layout == "released":
        recs, left = released_records(folder, method)                # a folder that is no triplet: line 0
        rows, src, skipped = list(enumerate(recs, 1)), Path(folder), [{"line": 0, "id": d, "why": w} for d, w in left]
    else:
        rows, problems = read_jsonl(src)
        skipped = [{"line": i, "id": None, "why": m.split(": ", 1)[1]} for i, m in problems]
    good, seen, ids = [], {}, {}
    for i, rec in rows[:limit or None]:
        why = check_result(rec, Path(folder))
        key = None if why else resolve_path(rec["result"], Path(folder)).resolve()
        if key in seen:
            why = f"the same result as line {seen[key]}, scored once"
        elif key is not None and str(rec.get("id")) in ids:
            why = f"the same id as line {ids[str(rec['id'])]}: each record needs its own id"
        elif key is not None:
            seen[key] = i
            ids.update({str(rec["id"]): i} if rec.get("id") is not None else {})
        if why:
            skipped.append({"line": i, "id": rec.get("id"), "why": why})
        else:
            good.append((i, rec))
    skipped.sort(key=lambda s: s["line"])
    if not good:
        first = f" (line {skipped[0]['line']}: {skipped[0]['why']})" if skipped else ""
        raise BadInput(f"{src}: none of its {len(rows)} records can be scored{first}; "
                       "each needs readable result, fg and bg videos")
    return good, skipped


def absolute_videos(rec, base, keys=("fg", "bg", "mask", "result", "reference")):
    """A record's video paths (relative to `base` or absolute), resolved: {key: absolute path or None}."""
    return {k: str(resolve_path(rec[k], base).resolve()) if rec.get(k) else None for k in keys}


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("root", help="dataset folder")


def main(args):
    try:
        ds = LayeredClips(args.root, layers=False)
    except (FileNotFoundError, ValueError) as e:
        raise BadInput(str(e)) from None
    recs = read_metadata(args.root)
    x = ds[0]["video"] if len(ds) else None
    print(f"{args.root}: {len(ds)} clips, {len(recs)} metadata records, "
          f"first clip {tuple(x.shape) if x is not None else '-'}")
    return len(ds)


if __name__ == "__main__":
    run_cli(main, parser)
