"""
Pairwise preference, the other half of the paper's evaluation (Table 3, Figures 7-8): for each test triplet, two
generated videos (A, B) compared on six criteria, by a VLM judge or by people. The protocol (criteria, which
references each one shows, the judge's instructions, the human form) is the paper's appendix, summarised in
../shared/reference/judge-prompts.md.

This file holds what the judge and the user study share: the pairing of two runs' records (match_runs), the
criteria, the A/B shuffle, parsing an answer, and the win / tie / lose tally with its table and stacked-bar plot.
evaluate.py is the command line (its judge, study and tally subcommands).

The VLM judge (judge_pairs, with the QwenJudge or GeminiJudge of load_judge; evaluate.py judge RUN_A RUN_B runs it):
per triplet and criterion one question, showing only that criterion's references (labelled "Reference Foreground" /
"Reference Background"), then the two results as "Video A" and "Video B" in an order drawn by a_first(seed,
triplet, criterion), then the paper's instruction + ANSWER_FORMAT. The reply is parsed to A / B / N and mapped back
to run A / run B; any other reply is counted as invalid and listed, never guessed. Each answer is appended to
<out>/answers.jsonl as soon as it comes, so a stopped run (killed, or a judge error, which is raised with a line
saying so) resumes by asking only what is missing; answers asked with other settings (judge, model, frames, seed, run
names) are refused, never overwritten. At the end: judge.json, judge.md (table) and judge.svg (Figure 8's bars).
  QwenJudge    a local VLM through transformers (optional extra; Qwen2.5-VL, or any image-text-to-text model):
               each video goes in as `frames` evenly spaced frames (images; stm needs no torchvision), greedy.
  GeminiJudge  Gemini through google-genai (optional extra; the key from GEMINI_API_KEY or GOOGLE_API_KEY): each
               video uploaded once, whole; a failed request is retried a few times with a growing wait.
"""
import functools
import html
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from plumbing import weights
from plumbing.cli import BadInput
from plumbing.dataset import absolute_videos, read_results
from plumbing.files import atomic_write_text
from plumbing.records import append_jsonl, drop_problem_lines, json_safe, read_jsonl
from plumbing.video import probe, read_frames

# (key, name, references shown, instruction quoted from the paper, the row definition shown to people)
_PRE = "You are a video analysis tool. You will be given "
_ONLY = " IMPORTANT: Judge *only* this specific metric. Do not let overall visual quality influence your choice."
_FG, _BG = "a Reference Foreground video", "a Reference Background video"
_BOTH = "a Reference Foreground, a Reference Background,"
_Q = " Question: Which generated video (Video A or Video B) "
CRITERIA = [
    ("fg_identity", "Foreground Identity Consistency", ("fg",),
     f"{_PRE}{_FG} and two generated videos (Video A, Video B).{_ONLY} Metric: Foreground Identity Consistency."
     f"{_Q}better preserves the appearance of the subject (person, animal, object) from the Reference Foreground "
     "video?",
     "Does the main subject in the generated videos look similar to the subject in the Foreground Video?"),
    ("fg_motion", "Foreground Motion Consistency", ("fg",),
     f"{_PRE}{_FG} and two generated videos (Video A, Video B).{_ONLY} Metric: Foreground Motion Consistency."
     f"{_Q}better preserves the subject's motion from the Reference Foreground video and looks more physically "
     "believable?",
     "Is the main subject's motion (e.g. walking) preserved from the input and physically believable?"),
    ("bg_identity", "Background Identity Consistency", ("bg",),
     f"{_PRE}{_BG} and two generated videos (Video A, Video B).{_ONLY} Metric: Background Identity Consistency."
     f"{_Q}better preserves the appearance of the background scene from the Reference Background video?",
     "Does the background / scene of the generated videos look similar to the scene from the Background Video?"),
    ("bg_motion", "Background Motion Consistency", ("bg",),
     f"{_PRE}{_BG} and two generated videos (Video A, Video B).{_ONLY} Metric: Background Motion Consistency."
     f"{_Q}better preserves the background's motion (or camera movement) from the Reference Background video, and "
     "which looks smoother?",
     "Is the background's motion (or camera movement) preserved from the input, smooth and consistent?"),
    ("affordance", "Affordance-aware Generation", ("fg", "bg"),
     f"{_PRE}{_BOTH} and two generated videos (Video A, Video B).{_ONLY} Metric: Affordance-aware Generation."
     f"{_Q}shows a more believable interaction between the subject and the background? (e.g., sitting *on* a "
     "chair, not *through* it; not walking through walls).",
     "Does the subject interact with the background believably (sitting on a chair, not through it; not walking "
     "through walls)?"),
    ("overall", "Overall Quality", ("fg", "bg"),
     f"{_PRE}{_BOTH} and two generated videos (Video A, Video B). Metric: Overall Quality."
     f"{_Q}has the best overall visual quality, clarity, and fewest visual artifacts (like flickering, blurring, "
     "or blockiness)?",
     "Overall visual quality, clarity, lack of artifacts (flickering, blurring, blockiness)."),
]
KEYS = [c[0] for c in CRITERIA]
NAMES = {c[0]: c[1] for c in CRITERIA}
REF_LABELS = {"fg": "Reference Foreground", "bg": "Reference Background"}
# the paper: "the instruction asks for the single character A, B or N"
ANSWER_FORMAT = " Answer with a single character: A, B, or N (no preference)."


def match_runs(recs_a, recs_b, run_a, run_b):
    """Two runs' records over the same triplets (video paths absolute; run_a / run_b name them in errors) ->
    (pairs, (only in A, only in B)) for the judge and the user study: one dict per triplet in both, matched by id
    (else by fg, bg and prompt): id, fg, bg, mask, prompt, a and b (the two results), and the toy's reference /
    expect where the record has them."""
    key = lambda r: r.get("id") or "|".join([r["fg"], r["bg"], r.get("prompt", "")])
    a, b = {key(r): r for r in recs_a}, {key(r): r for r in recs_b}
    pairs = [{**{k: v for k, v in r.items() if k != "result"}, "id": str(r.get("id") or f"{i:04d}"),
              "prompt": r.get("prompt", ""), "a": r["result"], "b": b[k]["result"]}
             for i, (k, r) in enumerate(a.items()) if k in b]
    if not pairs:
        raise BadInput(f"{run_a} and {run_b}: no triplet in both (matched by id, else by fg, bg and prompt); "
                       "compare two runs over the same triplets")
    if any(p["a"] == p["b"] for p in pairs):
        raise BadInput(f"{run_a} and {run_b}: the two runs are the same videos; give two different runs (with "
                       "--layout released, two methods: --method NAME_A NAME_B)")
    return pairs, (len(a) - len(pairs), len(b) - len(pairs))


def a_first(seed, triplet, criterion):
    """Whether run A is shown as "Video A" for this question: a fair coin, fixed by (seed, triplet, criterion), so a
    rerun asks the same questions and a resumed run matches the one it resumes."""
    return random.Random(f"{seed}/{triplet}/{criterion}").random() < 0.5


_REPLY = re.compile(r"^(?:(?:final\s+)?answer\s*[:\-]?\s*)?(?:video\s+)?([abn])[.!]?$", re.I)


def parse_answer(text):
    """A judge's reply -> "A", "B", "N", or None when it is not one of them (counted as invalid, never guessed).
    Accepted: the letter alone, in any case, wrapped in quotes, brackets or markdown emphasis, optionally after
    "Answer:" or as "Video A", with a final full stop."""
    t = re.sub(r"[\s*_`\"'()\[\]]+", " ", str(text)).strip()
    m = _REPLY.match(t)
    return m.group(1).upper() if m else None


def winner(answer, a_shown_first):
    """A parsed answer and the order shown -> "a" (run A preferred), "b", "tie", or "invalid"."""
    if answer == "N":
        return "tie"
    if answer not in ("A", "B"):
        return "invalid"
    return "a" if (answer == "A") == a_shown_first else "b"


def tally(rows, criteria=KEYS):
    """rows: dicts with "criterion" and "winner" ("a", "b", "tie", "invalid") -> {criterion: {win, tie, lose,
    invalid, n}}: win / tie / lose are shares of run A over the n valid answers (nan when none), invalid a count."""
    out = {}
    for c in criteria:
        w = [r["winner"] for r in rows if r["criterion"] == c]
        n = sum(x != "invalid" for x in w)
        share = lambda k: w.count(k) / n if n else float("nan")
        out[c] = {"win": share("a"), "tie": share("tie"), "lose": share("b"), "invalid": w.count("invalid"), "n": n}
    return out


def tally_table(t, name_a, name_b):
    """A tally -> markdown, one row per criterion: win / tie / lose of name_a against name_b (in %)."""
    pct = lambda v: "–" if v != v else f"{100 * v:.1f}"
    lines = [f"| criterion | {name_a} wins % | tie % | {name_b} wins % | answers | invalid |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c, s in t.items():
        lines.append(f"| {NAMES.get(c, c)} | {pct(s['win'])} | {pct(s['tie'])} | {pct(s['lose'])} | {s['n']} | "
                     f"{s['invalid']} |")
    return "\n".join(lines) + "\n"


def stacked_bars_svg(groups, title=""):
    """groups: {label: tally} (e.g. {"StM vs copy-paste": t}) -> an SVG of horizontal stacked bars, one per
    criterion and group, win | tie | lose with their percentages, as in the paper's Figures 7-8. Plain SVG text:
    no plotting library; it opens in any browser and embeds in HTML as it is."""
    colours = {"win": "#2e7d32", "tie": "#9e9e9e", "lose": "#c62828"}
    crits = list(dict.fromkeys(c for t in groups.values() for c in t))
    label_w, bar_w, row_h, gap = 260, 480, 22, 14
    height = 40 + len(groups) * (len(crits) * row_h + gap + 20) + 30
    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 20}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{e(title)}</text>']
    y = 40
    for g, t in groups.items():
        out.append(f'<text x="10" y="{y + 12}" font-weight="bold">{e(g)}</text>')
        y += 20
        for c in crits:
            s = t.get(c)
            out.append(f'<text x="10" y="{y + 15}">{e(NAMES.get(c, c))}</text>')
            x = label_w
            for part in ("win", "tie", "lose"):
                v = s[part] if s and s[part] == s[part] else 0.0
                w = v * bar_w
                out.append(f'<rect class="{part}" x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" '
                           f'fill="{colours[part]}"><title>{part} {100 * v:.1f}%</title></rect>')
                if w >= 30:
                    out.append(f'<text x="{x + w / 2:.1f}" y="{y + 15}" fill="white" text-anchor="middle">'
                               f'{100 * v:.0f}%</text>')
                x += w
            y += row_h
        y += gap
    lx = label_w
    for part in ("win", "tie", "lose"):
        out.append(f'<rect x="{lx}" y="{y}" width="12" height="12" fill="{colours[part]}"/>'
                   f'<text x="{lx + 16}" y="{y + 11}">{part}</text>')
        lx += 70
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---- The VLM judge -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _frames(path, k):
    """`k` frames at the centres of k equal segments of the video (fewer when it is shorter). Cached: the same
    reference and results come back in the next criteria's questions."""
    n, _ = probe(path)
    return read_frames(path, np.unique(((np.arange(k) + 0.5) * n / k).astype(int)))


class QwenJudge:
    """A local VLM (Qwen2.5-VL, or another model transformers loads for image-text-to-text) from a folder or hub id.
    Each video goes in as its frames, as images introduced by "<label> (<n> frames):": without torchvision,
    transformers cannot build a video processor (see hf.load_vlm, which this shares)."""

    def __init__(self, path, device="cpu", frames=8, max_new_tokens=8):
        try:
            import transformers  # noqa: F401  (only to fail early, with one line)
        except ImportError:
            raise BadInput("--backend qwen needs transformers (pip install transformers), "
                           "or use --backend gemini") from None
        from .hf import load_vlm
        self.model, self.proc = load_vlm(str(path))
        self.model.to(device)
        self.device, self.frames, self.max_new_tokens = device, frames, max_new_tokens
        self.settings = {"backend": "qwen", "model": str(path), "frames": frames}

    def ask(self, instruction, videos):
        content, images = [], []
        for label, path in videos:
            f = _frames(str(path), self.frames)
            content += [{"type": "text", "text": f"{label} ({len(f)} frames):"}] + [{"type": "image"}] * len(f)
            images += list(f)
        content.append({"type": "text", "text": "\n" + instruction})
        text = self.proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = self.proc(text=[text], images=[images], return_tensors="pt").to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.proc.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()


def _state(f):
    s = getattr(f, "state", None)
    return str(getattr(s, "name", s))                  # the SDK's FileState enum, or a plain string


class GeminiJudge:
    """Gemini through its official SDK, google-genai. Each video is uploaded once (Files API) and used whole, as the
    paper did; a request that fails (network, quota) is retried `retries` times, waiting `wait`, 2 `wait`, ...
    seconds. `client`: a genai.Client, or None for one made from GEMINI_API_KEY / GOOGLE_API_KEY."""

    def __init__(self, model="gemini-2.5-pro", client=None, retries=3, wait=10.0, timeout=600.0, poll=2.0):
        if client is None:
            try:
                from google import genai
            except ImportError:
                raise BadInput("--backend gemini needs google-genai (pip install google-genai), "
                               "or use --backend qwen") from None
            if not (os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")):
                raise BadInput("--backend gemini: set GEMINI_API_KEY or GOOGLE_API_KEY to a Gemini API key")
            client = genai.Client()                    # the SDK reads the key from the environment itself
        self.client, self.model, self.files = client, model, {}
        self.retries, self.wait, self.timeout, self.poll = retries, wait, timeout, poll
        self.settings = {"backend": "gemini", "model": model}

    def upload(self, path):
        """-> the uploaded file, once it is ACTIVE (videos are processed server-side before they can be used)."""
        if path not in self.files:
            f, t0 = self.client.files.upload(file=path), time.monotonic()
            while _state(f) != "ACTIVE":
                if _state(f) == "FAILED" or time.monotonic() - t0 > self.timeout:
                    raise RuntimeError(f"{path}: Gemini could not process the upload (state {_state(f)} after "
                                       f"{time.monotonic() - t0:.0f} s)")
                time.sleep(self.poll)
                f = self.client.files.get(name=f.name)
            self.files[path] = f
        return self.files[path]

    def ask(self, instruction, videos):
        for k in range(self.retries + 1):
            try:
                contents = [x for label, path in videos for x in (label, self.upload(str(path)))] + [instruction]
                return self.client.models.generate_content(model=self.model, contents=contents).text or ""
            except Exception as e:
                if k == self.retries:
                    raise
                print(f"warning: Gemini request failed ({type(e).__name__}: {e}); retry {k + 1} of {self.retries} "
                      f"in {self.wait * 2 ** k:.0f} s", file=sys.stderr)
                time.sleep(self.wait * 2 ** k)


def load_judge(backend="qwen", model=None, device="cpu", frames=8):
    """The judge of evaluate.py judge's --backend / --judge-model / --device / --judge-frames: Gemini (default
    gemini-2.5-pro), or a local VLM (default Qwen/Qwen2.5-VL-7B-Instruct) whose weights are checked first."""
    if backend == "gemini":
        return GeminiJudge(model or "gemini-2.5-pro")
    path = model or "Qwen/Qwen2.5-VL-7B-Instruct"
    weights.check_weights(path, "--judge-model", "--backend gemini (GEMINI_API_KEY)")
    return QwenJudge(path, device, frames=frames)


def _read_answers(f, settings):
    """The answers an earlier run left in `f` (resume). A torn last line is dropped, with a warning; answers asked
    with other settings are never mixed in nor removed: one line, another --out."""
    old, problems = read_jsonl(f) if f.is_file() else ([], [])
    rows = [r for _, r in old]
    other = [r for r in rows if r.get("settings") != settings]
    if other:
        was = other[0].get("settings") or {}
        diff = [f"{k}: {was.get(k)!r} then, {settings.get(k)!r} now" for k in dict.fromkeys([*was, *settings])
                if was.get(k) != settings.get(k)]
        raise BadInput(f"{f}: holds {len(other)} answers asked with other settings ({'; '.join(diff)}); they are "
                       "kept: pass another --out, or the same settings to resume")
    drop_problem_lines(f, rows, problems)
    return rows


def questions(pair, seed, criteria=KEYS):
    """-> [(criterion, run A shown first, instruction, videos)]: what the judge is shown for one triplet."""
    out, crit = [], {c[0]: c for c in CRITERIA}
    for c in criteria:
        first = a_first(seed, pair["id"], c)
        shown = (pair["a"], pair["b"]) if first else (pair["b"], pair["a"])
        videos = [(REF_LABELS[r], pair[r]) for r in crit[c][2]] + [("Video A", shown[0]), ("Video B", shown[1])]
        out.append((c, first, crit[c][3] + ANSWER_FORMAT, videos))
    return out


def judge_pairs(judge, pairs, out, seed=0, criteria=KEYS, name_a="A", name_b="B", settings=None):
    """Ask `judge` (anything with ask(instruction, videos) -> reply) every question of `pairs` (dicts with id, fg,
    bg, prompt, a, b) not yet in <out>/answers.jsonl; write judge.json / .md / .svg -> the tally of run A vs B."""
    bad = [c for c in criteria if c not in NAMES]
    ids = [str(p.get("id")) for p in pairs]
    lack = [(i, k) for i, p in zip(ids, pairs) for k in ("id", "fg", "bg", "a", "b") if not p.get(k)]
    if bad:
        raise BadInput(f"criteria {bad}: unknown; choose from {', '.join(KEYS)}")
    if lack:
        raise BadInput(f"triplet {lack[0][0]}: no {lack[0][1]!r}; each pair needs id, fg, bg, a and b")
    if len(set(ids)) != len(ids):
        raise BadInput(f"triplet ids repeat ({sorted(i for i in set(ids) if ids.count(i) > 1)[:3]}): each triplet "
                       "must have its own id, or answers would be mixed up")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps({**getattr(judge, "settings", {}), **(settings or {}), "seed": seed,
                                      "a": name_a, "b": name_b}))      # as it reads back from the file
    f = out / "answers.jsonl"
    rows = _read_answers(f, settings)
    done = {(r.get("id"), r.get("criterion")) for r in rows}
    todo = [(p, q) for p in pairs for q in questions(p, seed, criteria) if (str(p["id"]), q[0]) not in done]
    from tqdm import tqdm
    for p, (c, first, instruction, videos) in tqdm(todo, desc="judge", unit="question", disable=not todo):
        try:
            reply = judge.ask(instruction, videos)
        except BadInput:
            raise
        except Exception as e:
            raise RuntimeError(f"judge failed on triplet {p['id']}, {c} ({type(e).__name__}: {e}); the answers so "
                               f"far are kept in {f}: run the same command again to ask the rest") from e
        ans = parse_answer(reply)
        row = {"id": str(p["id"]), "criterion": c, "a_first": first, "reply": reply, "answer": ans,
               "winner": winner(ans, first), "settings": settings}
        append_jsonl(f, row)
        rows.append(row)
    first_of = {}
    for r in rows:                                     # a question answered twice (two writers): the first counts
        first_of.setdefault((r.get("id"), r.get("criterion")), r)
    final = [first_of[i, c] for i in ids for c in criteria if (i, c) in first_of]
    t = tally(final, criteria)
    invalid = [{k: r[k] for k in ("id", "criterion", "reply")} for r in final if r["winner"] == "invalid"]
    atomic_write_text(out / "judge.json", json.dumps(json_safe({
        "a": name_a, "b": name_b, "questions": len(final), "tally": t, "invalid": invalid, "settings": settings}),
        indent=2) + "\n")
    md = [f"# VLM judge: {name_a} vs {name_b}\n", f"{len(pairs)} triplets x {len(criteria)} criteria = {len(final)} "
          f"questions, A/B order shuffled per question (seed {seed}); settings: `{json.dumps(settings)}`\n",
          tally_table(t, name_a, name_b)]
    if invalid:
        md.append(f"\n## Invalid replies ({len(invalid)}: counted, not guessed)\n")
        md += [f"- {r['id']} / {NAMES[r['criterion']]}: `{json.dumps(r['reply'])[:200]}`" for r in invalid]
        print(f"judge: {len(invalid)} of {len(final)} replies were not A, B or N: counted as invalid, not guessed "
              f"(listed in {out / 'judge.md'})", file=sys.stderr)
    atomic_write_text(out / "judge.md", "\n".join(md) + "\n")
    atomic_write_text(out / "judge.svg", stacked_bars_svg({f"{name_a} vs {name_b}": t},
                                                          title=f"VLM judge: {name_a} vs {name_b}"))
    return t


def pair_runs(run_a, run_b, layout="results", methods=(None, None)):
    """Two runs over the same triplets -> judge.match_runs of their records (paths made absolute): (pairs, (only in
    A, only in B)) for the judge and the user study."""
    recs = [[{**r, **absolute_videos(r, Path(run))} for _, r in read_results(run, 0, layout, m)[0]]
            for run, m in ((run_a, methods[0]), (run_b, methods[1]))]
    return match_runs(*recs, run_a, run_b)
