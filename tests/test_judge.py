"""judge.py's VLM judge: a tiny random Qwen2.5-VL drives the whole path (videos -> frames -> prompt -> reply ->
answers.jsonl -> judge.json / .md / .svg); a fake Gemini client checks request assembly and uploads; fake judges
check that the A/B shuffle is undone, resume after a kill, and the one-line messages for missing extras."""
import enum
import json
import sys
import types
import zlib

import pytest
import torch

from others import judge
from conftest import tiny_vlm
from plumbing.cli import BadInput
from plumbing.video import write_video
from others.judge import ANSWER_FORMAT, CRITERIA, KEYS, a_first, judge_pairs, parse_answer, winner
from toy import clip as toy_clip

REFS = {c[0]: [judge.REF_LABELS[r] for r in c[2]] for c in CRITERIA}
TEXT = {c[0]: c[3] for c in CRITERIA}


def fake_pairs(n):
    """Pairs whose videos are never read (fake judges)."""
    return [{"id": f"t{i:03d}", "fg": f"/v/t{i}_fg.mp4", "bg": f"/v/t{i}_bg.mp4", "prompt": "p",
             "a": f"/runA/t{i}.mp4", "b": f"/runB/t{i}.mp4"} for i in range(n)]


def read_rows(out):
    return [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]


def test_tiny_qwen25_end_to_end(tmp_path):
    vlm, vision_start = tiny_vlm(tmp_path / "vlm", "qwen2_5_vl")
    pairs = []
    for i in range(2):
        p = {"id": f"toy{i}", "prompt": "a toy"}
        for k, seed in zip(("fg", "bg", "a", "b"), range(4 * i, 4 * i + 4)):
            p[k] = str(tmp_path / "videos" / f"{i}_{k}.mp4")
            write_video(p[k], toy_clip(seed, 9, 48, 64)["video"], 8)
        pairs.append(p)
    n = torch.get_num_threads()
    torch.set_num_threads(1)                              # many tiny ops: one thread is faster on a busy box
    try:
        qj = judge.QwenJudge(vlm, frames=2, max_new_tokens=6)
        seen, generate = [], qj.model.generate

        def spy(**inputs):                                # what the model received, decoded back to text
            seen.append((int((inputs["input_ids"] == vision_start).sum()), len(inputs["image_grid_thw"]),
                         qj.proc.batch_decode(inputs["input_ids"])[0]))
            return generate(**inputs)
        qj.model.generate = spy
        t = judge_pairs(qj, pairs, tmp_path / "out", seed=3, name_a="stm", name_b="cp")
    finally:
        torch.set_num_threads(n)
        vars(qj.model).pop("generate", None)             # the model is cached (hf.cached_model): leave it
    rows = read_rows(tmp_path / "out")
    assert [(r["id"], r["criterion"]) for r in rows] == [(p["id"], c) for p in pairs for c in KEYS]
    for (frames, grids, text), r in zip(seen, rows):
        nvid = len(REFS[r["criterion"]]) + 2              # fg-only / bg-only criteria: 3 videos, both refs: 4
        assert frames == grids == 2 * nvid, (r["criterion"], frames, grids)
        labels = REFS[r["criterion"]] + ["Video A", "Video B"]
        pos = [text.index(f"{lab} (2 frames):") for lab in labels]
        assert pos == sorted(pos) and text.count(" frames):") == nvid, text
        assert TEXT[r["criterion"]] + ANSWER_FORMAT in text
        assert r["answer"] == parse_answer(r["reply"]) and r["winner"] == winner(r["answer"], r["a_first"])
        assert len(r["reply"]) <= 6                       # only the new tokens (one character each), not the prompt
        assert r["settings"] == {"backend": "qwen", "model": str(vlm), "frames": 2, "seed": 3, "a": "stm", "b": "cp"}
    assert sum(r["winner"] == "invalid" for r in rows) >= 10      # a random model's replies: garbage, not guessed
    assert all(r["answer"] is None for r in rows if r["winner"] == "invalid")
    for c in KEYS:
        s = t[c]
        assert s["n"] + s["invalid"] == 2
        assert s["n"] == 0 or abs(s["win"] + s["tie"] + s["lose"] - 1) < 1e-9
    saved = json.loads((tmp_path / "out" / "judge.json").read_text())
    assert saved["questions"] == 12 and len(saved["invalid"]) == sum(s["invalid"] for s in t.values())
    assert "Invalid replies" in (tmp_path / "out" / "judge.md").read_text()
    assert (tmp_path / "out" / "judge.svg").read_text().startswith("<svg")



class FakeGemini:
    """Records uploads, polls and requests; uploads start PROCESSING (the SDK's enum) and are ACTIVE when polled."""
    State = enum.Enum("FileState", "PROCESSING ACTIVE FAILED")

    def __init__(self, replies, fail=0):
        self.uploads, self.gets, self.requests, self.replies, self.fail = [], 0, [], replies, fail
        self.files = types.SimpleNamespace(upload=self.upload, get=self.get)
        self.models = types.SimpleNamespace(generate_content=self.generate_content)

    def upload(self, file):
        self.uploads.append(file)
        return types.SimpleNamespace(name=f"files/{len(self.uploads)}", path=file, state=self.State.PROCESSING)

    def get(self, name):
        self.gets += 1
        return types.SimpleNamespace(name=name, path=self.uploads[int(name.split("/")[1]) - 1], state="ACTIVE")

    def generate_content(self, model, contents):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("network down")
        self.requests.append((model, contents))
        return types.SimpleNamespace(text=self.replies[(len(self.requests) - 1) % len(self.replies)])


def test_gemini_requests(tmp_path):
    replies = ["A", " b.", "**N**", "Both videos look fine to me."]
    fake = FakeGemini(replies)
    pairs = fake_pairs(3)
    t = judge_pairs(judge.GeminiJudge("gemini-x", client=fake, poll=0), pairs, tmp_path, seed=1)
    assert len(fake.requests) == 18 and all(m == "gemini-x" for m, _ in fake.requests)
    assert sorted(fake.uploads) == sorted({p[k] for p in pairs for k in ("fg", "bg", "a", "b")})   # each once
    assert fake.gets == len(fake.uploads)                                                      # waited for ACTIVE
    for (_, contents), (p, c) in zip(fake.requests, [(p, c) for p in pairs for c in KEYS]):
        crit = next(x for x in CRITERIA if x[0] == c)
        first = a_first(1, p["id"], c)
        assert contents[-1] == crit[3] + ANSWER_FORMAT                                         # verbatim
        assert contents[0:-1:2] == REFS[c] + ["Video A", "Video B"]
        paths = [p[r] for r in crit[2]] + ([p["a"], p["b"]] if first else [p["b"], p["a"]])
        assert [f.path for f in contents[1:-1:2]] == paths                                     # only its references
    rows = read_rows(tmp_path)
    assert [r["answer"] for r in rows] == (["A", "B", "N", None] * 5)[:18]
    assert [r["reply"] for r in rows] == (replies * 5)[:18]
    assert sum(s["invalid"] for s in t.values()) == 4 and sum(s["n"] for s in t.values()) == 14
    md = (tmp_path / "judge.md").read_text()
    assert md.count("Both videos look fine") == 4
    # a failed request is retried; past the retries, the error stops the run with the answers kept
    fake = FakeGemini(["A"], fail=1)
    assert judge.GeminiJudge(client=fake, wait=0, poll=0).ask("q", [("Video A", "/x.mp4")]) == "A"
    fake = FakeGemini(["A"], fail=5)
    with pytest.raises(RuntimeError, match="answers so far are kept"):
        judge_pairs(judge.GeminiJudge(client=fake, retries=1, wait=0, poll=0), pairs, tmp_path / "net")
    stuck = FakeGemini(["A"])
    stuck.get = lambda name: types.SimpleNamespace(name=name, state="FAILED")
    stuck.files.get = stuck.get
    with pytest.raises(RuntimeError, match="could not process"):
        judge.GeminiJudge(client=stuck, retries=0, poll=0).upload("/x.mp4")


class Always:
    def __init__(self, reply="A"):
        self.reply, self.asks = reply, 0

    def ask(self, instruction, videos):
        self.asks += 1
        return self.reply


class Oracle:
    """Prefers run A's result wherever it is shown (its path is under /runA/)."""
    settings = {"backend": "oracle"}

    def ask(self, instruction, videos):
        return "A" if dict(videos)["Video A"].startswith("/runA/") else "B"


def test_shuffle_is_undone(tmp_path):
    pairs = fake_pairs(200)
    t = judge_pairs(Always("A"), pairs, tmp_path / "always", seed=7)
    rows = read_rows(tmp_path / "always")
    assert len(rows) == 1200
    assert sum(r["winner"] == "a" for r in rows) == sum(a_first(7, p["id"], c) for p in pairs for c in KEYS)
    assert all(abs(t[c]["win"] - 0.5) < 0.15 and t[c]["tie"] == 0 for c in KEYS), t
    assert abs(sum(r["winner"] == "a" for r in rows) / 1200 - 0.5) < 0.05       # 200 per criterion: sd 0.035
    firsts = [r["a_first"] for r in rows]
    assert 0.4 < sum(firsts) / len(firsts) < 0.6
    t = judge_pairs(Oracle(), pairs[:50], tmp_path / "oracle", seed=7)
    assert all(t[c]["win"] == 1.0 and t[c]["n"] == 50 for c in KEYS), t
    assert json.loads((tmp_path / "oracle" / "judge.json").read_text())["tally"]["overall"]["win"] == 1.0


class Mixed(Always):
    """A deterministic judge whose answer depends on what it is shown (so a mix-up after resume would show)."""

    def ask(self, instruction, videos):
        self.asks += 1
        return "ABN?"[zlib.crc32(json.dumps([instruction, videos]).encode()) % 4]


class Flaky(Mixed):
    def ask(self, instruction, videos):
        if self.asks == 7:
            raise TimeoutError("the judge went away")
        return super().ask(instruction, videos)


def test_resume_after_kill(tmp_path, capsys):
    pairs = fake_pairs(5)
    full = judge_pairs(Mixed(), pairs, tmp_path / "full", name_a="x", name_b="y")
    lines = (tmp_path / "full" / "answers.jsonl").read_text().splitlines(keepends=True)
    part = tmp_path / "part"
    part.mkdir()
    (part / "answers.jsonl").write_text("".join(lines[:11]) + lines[11][:40])       # a torn 12th line
    again = Mixed()
    t = judge_pairs(again, pairs, part, name_a="x", name_b="y")
    assert again.asks == 30 - 11
    assert "answers.jsonl:12: torn last line" in capsys.readouterr().err
    assert json.dumps(t) == json.dumps(full)
    assert read_rows(part) == read_rows(tmp_path / "full")                          # torn line gone, same rows
    done = Mixed()
    judge_pairs(done, pairs, part, name_a="x", name_b="y")                          # nothing left to ask
    assert done.asks == 0
    before = (part / "answers.jsonl").read_text()
    for kw in ({"seed": 1}, {"name_a": "y", "name_b": "x"}, {"settings": {"frames": 4}}):
        with pytest.raises(BadInput, match=r"answers.jsonl: holds 30 answers asked with other settings"):
            judge_pairs(Mixed(), pairs, part, **{"name_a": "x", "name_b": "y", **kw})
    assert (part / "answers.jsonl").read_text() == before                           # never overwritten
    with pytest.raises(BadInput, match="triplet t002: no 'bg'"):
        judge_pairs(Mixed(), [*pairs[:2], {**pairs[2], "bg": None}], tmp_path / "bad")
    with pytest.raises(BadInput, match=r"triplet ids repeat \(\['t001'\]\)"):
        judge_pairs(Mixed(), [*pairs, pairs[1]], tmp_path / "bad")
    with pytest.raises(RuntimeError, match=r"t001, fg_motion \(TimeoutError: the judge went away\); the answers so "
                       r"far are kept in .*answers.jsonl: run the same command again"):
        judge_pairs(Flaky(), pairs, tmp_path / "flaky", name_a="x", name_b="y")
    assert len(read_rows(tmp_path / "flaky")) == 7                                  # asked before the error: kept
    assert json.dumps(judge_pairs(Mixed(), pairs, tmp_path / "flaky", name_a="x", name_b="y")) == json.dumps(full)


def test_missing_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "google", None)
    monkeypatch.setitem(sys.modules, "google.genai", None)
    with pytest.raises(BadInput, match=r"^--backend gemini needs google-genai \(pip install google-genai\)"):
        judge.GeminiJudge()
    made = []
    fake = types.ModuleType("google")
    fake.genai = types.SimpleNamespace(Client=lambda: made.append(1) or "client")
    monkeypatch.setitem(sys.modules, "google", fake)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(BadInput, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        judge.GeminiJudge()
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    assert judge.GeminiJudge().client == "client" and made == [1]
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(BadInput, match=r"pip install transformers"):
        judge.QwenJudge("/nowhere")


def test_evaluate_judge_command_line(tmp_path, capsys):
    """`python evaluate.py judge RUN_A RUN_B` over two results folders (in process), on the tiny model; a rerun
    asks nothing and gives the same table."""
    import evaluate
    vlm, _ = tiny_vlm(tmp_path / "vlm", "qwen2_5_vl")
    runs = {k: tmp_path / k for k in ("stm", "copy")}
    for r, d in enumerate(runs.values()):
        recs = []
        for i in range(2):
            c = toy_clip(100 + i, 9, 48, 64)
            for k, v in (("fg", c["fg"]), ("bg", c["bg"]), ("result", toy_clip(200 + 10 * r + i, 9, 48, 64)["video"])):
                write_video(d / f"{i}_{k}.mp4", v, 8)
            recs.append({"id": f"t{i}", "fg": f"{i}_fg.mp4", "bg": f"{i}_bg.mp4", "result": f"{i}_result.mp4",
                         "prompt": c["caption"]})
        (d / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    argv = ["judge", str(runs["stm"]), str(runs["copy"]), "--judge-model", str(vlm), "--judge-frames", "2",
            "--device", "cpu"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = evaluate.main(evaluate.parser.parse_args(argv))
        first = capsys.readouterr().out
        out = runs["stm"] / "judge-copy"                            # the default --out: RUN_A/judge-<RUN_B>
        rows = read_rows(out)
        assert len(rows) == 12 and {r["id"] for r in rows} == {"t0", "t1"}
        assert all(r["settings"]["frames"] == 2 and r["settings"]["backend"] == "qwen" for r in rows)
        assert "| criterion | stm wins % |" in first and "copy wins %" in (out / "judge.md").read_text()
        assert sum(s["n"] + s["invalid"] for s in t.values()) == 12 and (out / "judge.svg").is_file()
        again = evaluate.main(evaluate.parser.parse_args(argv))                     # resumed: nothing asked
        assert json.dumps(again) == json.dumps(t) and len(read_rows(out)) == 12
    finally:
        torch.set_num_threads(n)
    with pytest.raises(BadInput, match="--judge-model .*no config.json"):
        evaluate.main(evaluate.parser.parse_args(argv[:3] + ["--judge-model", str(tmp_path), "--out",
                                                             str(tmp_path / "x")]))


def test_instructions_are_the_papers_verbatim():
    """judge.CRITERIA's instructions and references against the appendix table in ../shared/reference (skipped where
    that folder is absent): the same six, in the same order, the same words."""
    import re
    from pathlib import Path
    ref = Path(__file__).resolve().parents[2] / "shared" / "reference" / "judge-prompts.md"
    if not ref.is_file():
        pytest.skip("../shared/reference not present")
    rows = [line for line in ref.read_text().splitlines() if re.match(r"\| [a-f] \|", line)]
    assert len(rows) == len(CRITERIA) == 6
    for row, (key, name, refs, instruction, _) in zip(rows, CRITERIA):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[1] == name, key
        assert cells[2] == " + ".join(f"Reference {'Foreground' if r == 'fg' else 'Background'}" for r in refs), key
        assert cells[3].strip('"').replace("\\*", "*") == instruction, key
