"""
Static HTML pages for people: the pairwise user study (the paper's human form, Figures 7-8) and the results report.
evaluate.py is the command line (its study and tally subcommands; results and compare write report.html).

    write_study(pairs, out, "stm", "copy-paste", seed=0, n=25)   # out/site/ (put it on any static host), out/key.json
    tally_study(out, ["answers/ann.json", "answers/bob.json"])   # out/tally.json, tally.md, tally.svg
    write_report(out, runs, evaluate.COLUMNS)                    # out/report.html (opens from disk)

The study page hides which run made which video: A / B are shuffled per example from the seed, example ids are
ex01.., videos are copied as exNN-fg / -bg / -left / -right, and the key (run names, triplet ids, sides) lives in
out/key.json, outside the site. Answers stay in the browser (localStorage, keyed by the study id) until the subject
presses "Export answers", which downloads answers-<study>.json; one such file per subject goes to tally_study.
Both pages load a video only while it is near the screen: browsers cap the live media players of one page (Chromium
at a few dozen), and a 25-example study (100 videos) or a 100-row report would otherwise stop decoding part way down.
"""
import base64
import hashlib
import html
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import av
import torch
from tqdm import tqdm

from plumbing.cli import BadInput
from plumbing.files import atomic_write_text
from plumbing.records import json_safe
from plumbing.dataset import absolute_videos, read_metadata, read_results, resolve_path
from plumbing.video import read_video, resize_video, write_video
from . import judge

PLAYABLE = {".mp4"}  # copied as it is; anything else (gif, webm, frame folder) is re-encoded to mp4, so that a
# file's suffix never tells run A's videos from run B's
E = html.escape

# Load a <video data-src> when it comes near the screen, play it, and unload it when far away (see the docstring).
LAZY_JS = """
function lazyVideos() {
  const load = v => { if (!v.src) { v.src = v.dataset.src; v.play().catch(() => {}); } };
  const unload = v => { if (v.src) { v.pause(); v.removeAttribute("src"); v.load(); } };
  const vids = [...document.querySelectorAll("video[data-src]")];
  if (!("IntersectionObserver" in window)) { vids.forEach(load); return; }
  const io = new IntersectionObserver(es => es.forEach(e => e.isIntersecting ? load(e.target) : unload(e.target)),
                                      {rootMargin: "800px 0px"});
  vids.forEach(v => io.observe(v));
}
function decoded() {  // for tests and the curious: how many loaded videos can show a frame
  const vids = [...document.querySelectorAll("video[data-src]")].filter(v => v.src);
  return vids.filter(v => v.readyState >= 2).length + "/" + vids.length;
}
"""

CSS = """body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}
section{background:#fff;padding:8px 14px;margin:14px 0;border:1px solid #ddd}
video{display:block;background:#000;image-rendering:pixelated} figure{margin:0}
figcaption{text-align:center;font-size:13px;color:#555} .row{display:flex;gap:10px;flex-wrap:wrap;align-items:start}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:4px 8px;font-size:14px} .def{color:#555}
.note{background:#fff8e1;border:1px solid #e0c060;padding:8px 12px} .metrics{font-size:12px;color:#444}"""

STUDY_JS = """
const STUDY = document.body.dataset.study, STORE = "stm-study/" + STUDY;
const radios = () => [...document.querySelectorAll("input[type=radio]")];
const total = () => new Set(radios().map(r => r.name)).size;
function answers() {
  const out = {};
  for (const r of radios()) if (r.checked) {
    const [ex, crit] = r.name.split("/");
    (out[ex] = out[ex] || {})[crit] = r.value;
  }
  return out;
}
function count(a) { return Object.values(a).reduce((k, x) => k + Object.keys(x).length, 0); }
function show(a) {
  document.getElementById("progress").textContent = count(a) + " of " + total() + " answered";
  document.body.dataset.answered = count(a);
}
function restore() {
  const a = JSON.parse(localStorage.getItem(STORE) || "{}");
  for (const r of radios()) r.checked = (a[r.name.split("/")[0]] || {})[r.name.split("/")[1]] === r.value;
  show(answers());
}
function subject() {      // one random id per browser and study: a second export replaces the first in the tally
  let s = localStorage.getItem(STORE + "/subject");
  if (!s) localStorage.setItem(STORE + "/subject", s = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()));
  return s;
}
function exportAnswers() {
  const a = answers();
  const doc = {study: STUDY, subject: subject(), answers: a, answered: count(a), total: total(),
               exported: new Date().toISOString()};
  const url = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 1)], {type: "application/json"}));
  const link = Object.assign(document.createElement("a"), {href: url, download: "answers-" + STUDY + ".json"});
  document.body.appendChild(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
restore(); lazyVideos();   // loading only reads: a page that found nothing must not erase what another tab saved
document.addEventListener("change", () => { localStorage.setItem(STORE, JSON.stringify(answers())); show(answers()); });
window.addEventListener("storage", e => { if (e.key === STORE) restore(); });   // the same study in another tab
document.getElementById("export").addEventListener("click", exportAnswers);
"""


def _height(path, width):
    """The height of a video shown at this width: set in the page, so that nothing moves when a video loads."""
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            return round(width * s.height / s.width)
    except (av.error.FFmpegError, IndexError, ZeroDivisionError, OSError):
        return round(width * 3 / 4)


def _video(src, label, width, path):
    """A lazily loaded looping muted video (src: as the page links it, path: the file, for its size)."""
    return (f'<figure><video data-src="{E(src)}" width="{width}" height="{_height(path, width)}" loop muted '
            f'playsinline autoplay preload="auto"></video><figcaption>{E(label)}</figcaption></figure>')


# ---------------------------------------------------------------------------------------------
# user study
# ---------------------------------------------------------------------------------------------


def _check_pairs(pairs):
    ids = set()
    for i, p in enumerate(pairs):
        missing = [k for k in ("id", "fg", "bg", "prompt", "a", "b") if k not in p]
        if missing:
            raise BadInput(f"study pair {i}: missing {', '.join(missing)} (needs id, fg, bg, prompt, a, b)")
        if p["id"] in ids:
            raise BadInput(f"study pair {i}: triplet id {p['id']!r} appears twice")
        ids.add(p["id"])
        for k in ("fg", "bg", "a", "b"):
            if not Path(p[k]).exists():
                raise BadInput(f"study pair {p['id']}: {k} video {p[k]} does not exist")


def _copy_video(src, dst):
    """-> the file name written under dst's folder: an mp4 is copied, anything else re-encoded to one."""
    src, dst = Path(src), dst.with_suffix(".mp4")
    if src.is_file() and src.suffix.lower() in PLAYABLE:
        shutil.copyfile(src, dst)
    else:
        frames, fps = read_video(src)
        write_video(dst, frames, fps=fps)
    return dst.name


def _study_page(study, examples, n_questions, site):
    head = "".join(f"<th>{h}</th>" for h in ("criterion", "Video A", "Video B", "No preference"))
    secs = []
    for i, ex in enumerate(examples):
        rows = "".join(
            f'<tr><td><b>{E(name)}</b><br><span class="def">{E(definition)}</span></td>'
            + "".join(f'<td><label><input type="radio" name="{ex["ex"]}/{key}" value="{v}"> {v}</label></td>'
                      for v in ("A", "B", "N")) + "</tr>"
            for key, name, _, _, definition in judge.CRITERIA)
        v = ex["videos"]
        vid = lambda k, label, width: _video("videos/" + v[k], label, width, site / "videos" / v[k])
        secs.append(
            f'<section id="{ex["ex"]}"><h2>Example {i + 1} of {len(examples)}</h2>'
            f'<h3>Inputs</h3><div class="row">{vid("fg", "Foreground Video", 240)}{vid("bg", "Background Video", 240)}'
            f'<p><b>Prompt:</b> {E(ex["prompt"])}</p></div>'
            f'<h3>Generated</h3><div class="row">{vid("left", "Video A", 400)}{vid("right", "Video B", 400)}</div>'
            f'<h3>Which is better?</h3><table><tr>{head}</tr>{rows}</table></section>')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Video composition study</title>
<meta name="viewport" content="width=device-width"><style>{CSS}
#bar{{position:sticky;top:0;background:#fafafa;padding:6px 0;border-bottom:1px solid #ccc}}</style></head>
<body data-study="{study}" data-answered="0"><h1>Which composite video is better?</h1>
<p class="note">Each example shows a <b>Foreground Video</b> (a subject), a <b>Background Video</b> (a scene) and a
prompt, then two videos that put the subject into the scene: <b>Video A</b> (left) and <b>Video B</b> (right).
For each criterion pick the better video, or <i>No preference</i>. For the first five criteria judge
<b>only</b> that criterion: do not let overall visual quality (blurriness, flickering) influence your choice.
The sixth, <i>Overall Quality</i>, is about exactly that. Your answers are kept in this browser, so you can stop and
come back; when done, press <b>Export answers</b> and send the downloaded file.</p>
<div id="bar"><span id="progress">0 of {n_questions} answered</span>
<button id="export">Export answers</button></div>
{"".join(secs)}
<script>{LAZY_JS}{STUDY_JS}</script></body></html>
"""


def write_study(pairs, out, name_a, name_b, seed=0, n=None):
    """pairs: [{id, fg, bg, prompt, a, b}] (a / b: run A's / run B's result) -> out/site/index.html (+ videos/) and
    out/key.json. n: a seeded random subset of n pairs (the paper shows 25). The same inputs regenerate the same
    study; a folder holding another study is refused."""
    out = Path(out)
    pairs = list(pairs)
    if not pairs:
        raise BadInput("study: no pairs to show (the two runs share no triplet)")
    _check_pairs(pairs)
    if n is not None and not 0 < n <= len(pairs):
        raise BadInput(f"--study-n {n}: asked for {n} examples, the runs share {len(pairs)} triplets "
                       f"(use 1..{len(pairs)})")
    spec = json.dumps([name_a, name_b, seed, n, [[str(p[k]) for k in ("id", "fg", "bg", "prompt", "a", "b")]
                                                 for p in pairs]], sort_keys=True)
    study = "study-" + hashlib.sha1(spec.encode()).hexdigest()[:10]
    key_path = out / "key.json"
    if key_path.exists():
        try:
            old = json.loads(key_path.read_text()).get("study")
        except (json.JSONDecodeError, AttributeError):
            old = "an unreadable key"
        if old != study:
            raise BadInput(f"--out {out}: {key_path} belongs to {old}, not this study ({name_a} vs {name_b}, "
                           f"seed {seed}); pick another --out")
    elif (out / "site").exists():
        raise BadInput(f"--out {out}: has a site/ but no key.json (not a study folder); pick an empty --out")
    rng = random.Random(f"study/{seed}")
    chosen = rng.sample(pairs, n or len(pairs))          # a random order even when all are shown
    examples, key = [], {}
    for i, p in enumerate(chosen):
        ex, a_left = f"ex{i + 1:02d}", rng.random() < 0.5
        examples.append({"ex": ex, "prompt": p["prompt"], "src": {"fg": p["fg"], "bg": p["bg"],
                         "left": p["a"] if a_left else p["b"], "right": p["b"] if a_left else p["a"]}})
        key[ex] = {"id": p["id"], "a_left": a_left, "a": str(p["a"]), "b": str(p["b"])}
    # the key first: a crash part way leaves a key (so a rerun of the same study regenerates, another is refused)
    atomic_write_text(key_path, json.dumps({"study": study, "names": [name_a, name_b], "seed": seed,
                                            "examples": key}, indent=1) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".site-"))
    try:
        (tmp / "videos").mkdir()
        for ex in examples:
            ex["videos"] = {k: _copy_video(src, tmp / "videos" / f"{ex['ex']}-{k}") for k, src in ex["src"].items()}
        atomic_write_text(tmp / "index.html", _study_page(study, examples, len(examples) * len(judge.KEYS), tmp))
        os.chmod(tmp, 0o755)
        if (out / "site").exists():
            shutil.rmtree(out / "site")
        os.replace(tmp, out / "site")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "site" / "index.html"


def _read_answers(f, key):
    """One subject's export -> (the document, [(example id, criterion, choice)]); anything off is one BadInput
    naming the file."""
    try:
        doc = json.loads(Path(f).read_text(encoding="utf-8-sig"))     # an editor may have added a BOM
    except OSError as e:
        raise BadInput(f"{f}: cannot read it ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{f}: not a JSON answers file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("answers"), dict):
        raise BadInput(f"{f}: no \"answers\" object (expected the file the study page's Export button downloads)")
    if doc.get("study") != key["study"]:
        raise BadInput(f"{f}: answers of study {doc.get('study')!r}, but this folder holds {key['study']}")
    out = []
    for ex, per in doc["answers"].items():
        if ex not in key["examples"]:
            first, last = min(key["examples"]), max(key["examples"])
            raise BadInput(f"{f}: unknown example {ex!r} (this study has {first}..{last})")
        for crit, choice in (per.items() if isinstance(per, dict) else [(None, per)]):
            if crit not in judge.KEYS:
                raise BadInput(f"{f}: {ex}: unknown criterion {crit!r} (expected one of {', '.join(judge.KEYS)})")
            if choice not in ("A", "B", "N"):
                raise BadInput(f"{f}: {ex}/{crit}: unknown choice {choice!r} (expected A, B or N)")
            out.append((ex, crit, choice))
    return doc, out


def tally_study(out, files):
    """Exported answer files (one per subject) -> judge.tally of run A against run B, with out/tally.json, .md, .svg.
    "A" on the page is the left video, run A's iff the key says a_left."""
    out = Path(out)
    try:
        key = json.loads((out / "key.json").read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"tally {out}: no readable key.json there ({e}); pass the --out of evaluate.py study")
    if not isinstance(key, dict) or not {"study", "names", "examples"} <= set(key):
        raise BadInput(f"tally {out}: key.json is not the one evaluate.py study writes (study, names, examples)")
    if not files:
        raise BadInput(f"tally {out}: no answer files given")
    latest = {}                                           # every file checked before anything is written
    for i, f in enumerate(files):
        doc, per = _read_answers(f, key)
        who = doc.get("subject") or f"file {i}"           # a file without a subject id (made by hand): its own
        if who in latest:
            was = latest[who]
            keep = (doc, per, f) if str(doc.get("exported", "")) >= str(was[0].get("exported", "")) else was
            print(f"warning: {was[2]} and {f} are exports of the same subject: {keep[2]} (the later) counts",
                  file=sys.stderr)
            latest[who] = keep
        else:
            latest[who] = (doc, per, f)
    answers = [per for _, per, _ in latest.values()]
    rows = [{"id": key["examples"][ex]["id"], "criterion": crit,
             "winner": judge.winner(choice, key["examples"][ex]["a_left"])}
            for per in answers for ex, crit, choice in per]
    t = judge.tally(rows)
    a, b = key["names"]
    atomic_write_text(out / "tally.json", json.dumps(json_safe({
        "study": key["study"], "names": [a, b], "subjects": len(answers), "answers": len(rows),
        "files": [str(f) for f in files], "tally": t}), indent=1))
    atomic_write_text(out / "tally.md", f"# User study: {a} vs {b}\n\n{len(answers)} subjects, {len(rows)} answers "
                                        f"over {len(key['examples'])} examples ({key['study']}).\n\n"
                      + judge.tally_table(t, a, b))
    svg = judge.stacked_bars_svg({f"{a} vs {b}": t}, title=f"User study ({len(answers)} subjects)")
    atomic_write_text(out / "tally.svg", svg)
    return t


# ---------------------------------------------------------------------------------------------
# results report
# ---------------------------------------------------------------------------------------------


def number(v):
    """A plottable number (not a bool, None or NaN)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)



def _fmt(v):
    return f"{v:.4g}" if number(v) else "–"


def bars_svg(label, values):
    """{run: value} -> a small SVG bar chart (one horizontal bar per run, zero line, values printed)."""
    name_w, bar_w, row_h = 160, 260, 20
    nums = [v for v in values.values() if number(v)]
    lo, hi = min([0.0, *nums]), max([0.0, *nums])
    scale = bar_w / (hi - lo) if hi > lo else 0.0
    zero = name_w + (0 - lo) * scale
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{name_w + bar_w + 70}" '
           f'height="{28 + row_h * len(values)}" font-family="sans-serif" font-size="12">',
           f'<text x="4" y="14" font-weight="bold">{E(label)}</text>']
    for i, (run, v) in enumerate(values.items()):
        y = 22 + i * row_h
        out.append(f'<text x="4" y="{y + 13}">{E(run[:24])}</text>')
        if number(v):
            x0, x1 = sorted((zero, name_w + (v - lo) * scale))
            out.append(f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(x1 - x0, 1):.1f}" height="{row_h - 5}" '
                       f'fill="#3f6fb5"><title>{E(run)}: {v:.6g}</title></rect>')
        out.append(f'<text x="{name_w + bar_w + 6}" y="{y + 13}">{_fmt(v)}</text>')
    out.append(f'<line x1="{zero:.1f}" y1="20" x2="{zero:.1f}" y2="{24 + row_h * len(values)}" stroke="#333"/>')
    return "\n".join(out) + "</svg>"


def write_report(out, runs, columns, title="", max_rows=100, extra=""):
    """runs: [{name, summary, rows}] (see evaluate.py) -> out/report.html: summary table, a bar chart per metric, and
    per triplet (the first max_rows) fg | bg | correct composite | each run's result with its metrics; `extra` (HTML,
    e.g. the metrics against guidance of a sweep) after the table. Videos are linked by paths relative to out, so the
    page opens from disk next to them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cols = [(k, lab, arr) for k, lab, arr in columns if any(number(r["summary"].get(k)) for r in runs)]
    rel = lambda p: quote(os.path.relpath(Path(p).resolve(), out.resolve()).replace(os.sep, "/"))
    vid = lambda p, label: _video(rel(p), label, 200, p)

    best = {}                                            # the best run per metric, in bold
    for k, _, arr in cols:
        vals = [r["summary"].get(k) for r in runs if number(r["summary"].get(k))]
        best[k] = (min if arr == "↓" else max)(vals) if vals else None
    head = "<tr><th>run</th><th>n</th>" + "".join(f"<th>{E(lab)} {arr}</th>" for _, lab, arr in cols) + "</tr>"
    body = "".join(f"<tr><td>{E(r['name'])}</td><td>{r['summary'].get('n', len(r['rows']))}</td>" + "".join(
        (f"<td><b>{_fmt(r['summary'].get(k))}</b></td>" if r["summary"].get(k) == best[k]
         else f"<td>{_fmt(r['summary'].get(k))}</td>") for k, _, _ in cols) + "</tr>" for r in runs)
    charts = "".join(bars_svg(f"{lab} {arr}", {r["name"]: r["summary"].get(k) for r in runs})
                     for k, lab, arr in cols)

    by_run = [{row["id"]: row for row in r["rows"]} for r in runs]
    ids = list(dict.fromkeys(row["id"] for r in runs for row in r["rows"]))
    sections = []
    for tid in ids[:max_rows]:
        first = next(m[tid] for m in by_run if tid in m)
        cells = [vid(first["fg"], "foreground")]
        if first.get("mask"):
            cells.append(vid(first["mask"], "fg mask"))
        cells.append(vid(first["bg"], "background"))
        if first.get("reference"):
            cells.append(vid(first["reference"], "correct composite"))
        for r, m in zip(runs, by_run):
            row = m.get(tid)
            if row is None:
                cells.append(f"<figure><p>{E(r['name'])}: no result</p></figure>")
                continue
            mets = "<br>".join(f"{E(lab)}: {_fmt(row.get(k))}" for k, lab, _ in columns if k in row)
            cells.append(f'<div>{vid(row["result"], r["name"])}<p class="metrics">{mets}</p></div>')
        sections.append(f'<section><h3>{E(str(tid))}</h3><p>{E(first.get("prompt", ""))}</p>'
                        f'<div class="row">{"".join(cells)}</div></section>')
    shown = f"all {len(ids)}" if len(ids) <= max_rows else f"the first {max_rows} of {len(ids)}"
    title = title or "Results: " + ", ".join(r["name"] for r in runs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{E(title)}</title><style>{CSS}
.bars{{margin:4px 12px 4px 0}}</style></head><body><h1>{E(title)}</h1>
<h2>Summary</h2><table class="summary">{head}{body}</table>{extra}
<h2>Per metric</h2><div class="row">{charts}</div>
<h2>Triplets</h2><p>Showing {shown} triplets (matched across runs by id); best run per metric in bold above.</p>
{"".join(sections)}
<script>{LAZY_JS}lazyVideos();</script></body></html>
"""
    atomic_write_text(out / "report.html", page)
    return out / "report.html"


def write_runs_report(out, summaries, rows, columns, title, extra=""):
    """OUT/report.html of evaluate.py results / compare: the summary table, a bar chart per metric, and per triplet
    its input videos, the toy's correct composite where there is one, and each run's result with its metrics.
    summaries / rows: by run name, a summary (with its "source") and the metrics.jsonl rows."""
    runs = []
    for name, summary in summaries.items():
        src, by_result, triplets = summary.get("source"), {r.get("result"): r for r in rows[name]}, []
        if src:                              # the records again, for their input videos (paths made absolute)
            base = Path(src["folder"])
            for _, rec in read_results(base, 0, src["layout"], src["method"])[0]:
                row = by_result.get(str(resolve_path(rec["result"], base).resolve()))
                if row is not None:
                    files = absolute_videos(rec, base, ("fg", "bg", "mask", "reference"))
                    triplets.append({**row, **files, "id": rec.get("id") or row.get("id"),
                                     "prompt": rec.get("prompt", "")})
        runs.append({"name": name, "summary": summary, "rows": triplets})
    return write_report(out, runs, columns, title, extra=extra)


# ---------------------------------------------------------------------------------------------
# The Split preview: a look at a decompose.py output folder

PREVIEW_LAYERS = (("videos", "input"), ("masks", "mask"), ("fg", "fg"), ("bg", "bg"))


def gif_data_uri(path, width):
    """A video file -> a looping GIF `width` pixels wide, as a data: URI (the page needs no other file)."""
    frames = read_video(path)[0]
    T, H, W, _ = frames.shape
    small = resize_video(torch.from_numpy(frames).permute(0, 3, 1, 2), max(2, round(H * width / W)), width,
                         mode="stretch").permute(0, 2, 3, 1).numpy()
    with tempfile.TemporaryDirectory() as d:
        write_video(Path(d) / "v.gif", small, fps=8)
        return "data:image/gif;base64," + base64.b64encode((Path(d) / "v.gif").read_bytes()).decode()


def write_preview(out, max_clips=24, width=192):
    """<out>/preview.html: one self-contained page with, per kept clip (the first `max_clips`), looping
    input | mask | fg | bg, its caption and fg ratio, and the dataset's counts (kept, skipped by reason).
    Each image reports when it has loaded (body data-loaded="n/N"), so a browser test can check them all."""
    out = Path(out)
    recs = read_metadata(out)
    if not recs:
        raise BadInput(f"--preview {out}: no metadata.jsonl here (not a decompose.py output folder)")
    kept = [r for r in recs if r.get("status") == "ok"]
    counts = Counter(r.get("status", "?") for r in recs)
    esc = html.escape
    rows = []
    missing = []
    ratio = lambda r: f"{r['fg_ratio']:.1%}" if isinstance(r.get("fg_ratio"), (int, float)) else "?"

    def cell(r, key, name):                  # a layer file gone or unreadable is shown as such, not a traceback
        try:
            return f'<figure><img alt="{name}" src="{gif_data_uri(out / r[key], width)}">' \
                   f"<figcaption>{name}</figcaption></figure>"
        except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
            missing.append(f"{r.get('id')} {name}")
            return f'<figure class="missing"><p>{esc(name)}: cannot be shown<br>{esc(str(e)[:120])}</p></figure>'
    for r in tqdm(kept[:max_clips], desc="preview"):
        cells = "".join(cell(r, key, name) for key, name in PREVIEW_LAYERS)
        rows.append(f'<section><h2>{esc(str(r["id"]))}</h2><p>{esc(r.get("caption", ""))}</p>'
                    f'<p class="meta">fg ratio {ratio(r)} &middot; {r.get("frames")} frames '
                    f'&middot; source {esc(str(r.get("source", "")))}</p><div class="row">{cells}</div></section>')
    stats = ", ".join(f"{k}: {v}" for k, v in counts.most_common())
    warn = f'<p class="warn">{len(missing)} layer file(s) missing or unreadable: {esc(", ".join(missing[:8]))}</p>' \
        if missing else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Split preview: {esc(out.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;background:#fafafa}} .row{{display:flex;gap:8px}}
figure{{margin:0}} figcaption{{text-align:center;font-size:12px;color:#555}}
img{{display:block;image-rendering:pixelated}} .meta{{color:#666;font-size:13px}}
section{{background:#fff;padding:8px 12px;margin:12px 0;border:1px solid #ddd}}
.missing{{width:192px;color:#a00;font-size:12px}} .warn{{color:#a00}}</style>
</head><body data-loaded="0/0"><h1>Split preview: {esc(str(out))}</h1>
<p><b>{len(kept)}</b> clips kept of {len(recs)} records ({esc(stats)}); showing the first {len(rows)}.</p>
{warn}
{"".join(rows)}
<script>
function count() {{
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.loaded = ok + "/" + imgs.length;
}}
window.addEventListener("load", count);
</script></body></html>
"""
    atomic_write_text(out / "preview.html", page)
    return out / "preview.html"


# ---------------------------------------------------------------------------------------------
# The training report: train.py's OUT/report.html, rewritten at every log and validation step

TRAIN_CURVES = (("loss", "loss (total, fg, bg)", ("loss", "loss_fg", "loss_bg")), ("lr", "learning rate", ("lr",)),
                ("grad_norm", "gradient norm (before clipping)", ("grad_norm",)),
                ("s_per_step", "seconds per step", ("s_per_step",)), ("tokens_per_s", "tokens / s", ("tokens_per_s",)),
                ("mfu", "MFU (matmul FLOPs of H100 bf16 peak)", ("mfu",)),
                ("val_loss", "validation loss (total, fg, bg)", ("val_loss", "val_loss_fg", "val_loss_bg")))
CURVE_COLOURS = ("#3f6fb5", "#d9822b", "#3a9a5b")


def curve_svg(key, label, records, series, width=420, height=190, x="step"):
    """records [{step, ...}] -> an inline SVG line chart of `series` over step (or another key `x`, e.g. guidance):
    one <polyline data-series="name"> per series, one point per record that has it; min / max on the y axis and the
    first / last x on the x axis."""
    pts = {s: [(r[x], r[s]) for r in records if number(r.get(s)) and number(r.get(x))] for s in series}
    allp = [p for ps in pts.values() for p in ps]
    left, right, top, bottom = 58, 10, 22, 26
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" data-key="{E(key)}" width="{width}" '
           f'height="{height}" font-family="sans-serif" font-size="11">',
           f'<text x="4" y="14" font-weight="bold">{E(label)}</text>']
    if not allp:
        out.append(f'<text x="{left}" y="{height / 2:.0f}" fill="#888">not recorded on this run</text>')
        return "\n".join(out) + "</svg>"
    x0, x1 = min(p[0] for p in allp), max(p[0] for p in allp)
    y0, y1 = min(p[1] for p in allp), max(p[1] for p in allp)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-12)
    X = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)
    Y = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
    out.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
               'fill="none" stroke="#ccc"/>')
    for y in (y0, y1):
        out.append(f'<text x="{left - 4}" y="{Y(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>')
    ticks = sorted({p[0] for p in allp}) if x != "step" and len({p[0] for p in allp}) <= 8 else [x0, x1]
    for v in ticks:                                     # a sweep's few values each labelled; steps: first, last
        anchor = "start" if v == x0 else "end" if v == x1 else "middle"
        out.append(f'<text x="{X(v):.1f}" y="{height - 8}" text-anchor="{anchor}">{E(x)} {v:g}</text>')
    for i, (s, ps) in enumerate(pts.items()):
        if not ps:
            continue
        c = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        xy = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in ps)
        out.append(f'<polyline data-series="{E(s)}" data-points="{len(ps)}" points="{xy}" fill="none" '
                   f'stroke="{c}" stroke-width="1.5"><title>{E(s)}: last {ps[-1][1]:.6g} at {E(x)} {ps[-1][0]:g}'
                   '</title></polyline>')
        for px, py in ps if x != "step" or len(ps) == 1 else []:     # a sweep's few points: each one marked
            out.append(f'<circle cx="{X(px):.1f}" cy="{Y(py):.1f}" r="2.5" fill="{c}"/>')
        if len(series) > 1:
            out.append(f'<text x="{width - right - 82 * (len(series) - i)}" y="14" fill="{c}">{E(s)}</text>')
    return "\n".join(out) + "</svg>"


def write_train_report(out, log, val, recipe, summary, title=""):
    """out/report.html of a training run: `summary` (one line), the curves of log (log.jsonl records: loss and its
    fg / bg parts, lr, gradient norm, step time, tokens/s, MFU) and val (val.jsonl records: validation loss, and
    their "videos", paths relative to out), the resolved recipe (args.json's dict) and the validation videos by
    step side by side, the newest first. Self-contained (inline SVG, no script library); opens from disk."""
    out = Path(out)
    recs = {"val_loss": val}
    curves = "".join(curve_svg(k, lab, recs.get(k, log), series) for k, lab, series in TRAIN_CURVES)
    keys = ("recipe", "model", "data", "frames", "size", "batch", "grad_accum", "global_batch", "lr", "min_lr",
            "warmup", "steps", "bf16", "ac", "lora", "alpha", "plain_loss", "no_augment", "cache_latents", "seed")
    shown = [k for k in keys if k in recipe] + [k for k in recipe if k not in keys]
    rows = "".join(f"<tr><td>--{E(k.replace('_', '-'))}</td><td>{E(json.dumps(recipe[k]))}</td></tr>" for k in shown)
    sections = []
    for r in sorted(val, key=lambda r: -r["step"]):
        prompts = r.get("prompts") or []
        cells = "".join(_video(v, f"{prompts[j] if j < len(prompts) else ''}", 360, out / v)
                        for j, v in enumerate(r.get("videos", [])) if (out / v).is_file())
        sections.append(f'<section class="val" data-step="{r["step"]}"><h3>step {r["step"]}: validation loss '
                        f'{_fmt(r.get("val_loss"))} (fg {_fmt(r.get("val_loss_fg"))}, bg {_fmt(r.get("val_loss_bg"))})'
                        f'</h3><p class="def">fg | bg | composite</p><div class="row">{cells}</div></section>')
    last = log[-1] if log else {}
    now = ", ".join(f"{k} {_fmt(last[k])}" for k in ("step", "loss", "lr", "grad_norm") if k in last)
    title = title or f"Training: {out.name}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{E(title)}</title><style>{CSS}
.curve{{margin:4px 12px 4px 0;background:#fff}}</style></head><body><h1>{E(title)}</h1>
<p class="note" id="summary">{E(summary)}</p><p>Last log record: {E(now) or "none yet"}. This page is rewritten at
every log and validation step: reload it to follow the run.</p>
<h2>Curves</h2><div class="row">{curves}</div>
<h2>Validation</h2><p>{len(val)} validation step(s), the newest first.</p>
{"".join(sections)}
<h2>Recipe</h2><p>As resolved (args.json).</p><table class="recipe">{rows}</table>
<script>{LAZY_JS}lazyVideos();</script></body></html>
"""
    atomic_write_text(out / "report.html", page)
    return out / "report.html"
