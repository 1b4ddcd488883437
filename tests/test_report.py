"""report.py: the user-study site and its tally, and the results report, checked in a real headless Chromium
(skipped where none is installed: `apt-get install chromium`). The browser is driven over the DevTools protocol on
a pipe (--remote-debugging-pipe: JSON messages ending in NUL, read by Chromium on fd 3, written on fd 4), stdlib
only: real mouse clicks on the radio buttons and the export button, a real download."""
import base64
import html
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from plumbing.cli import BadInput
from plumbing.video import write_video
from others import judge
from others import pages as report
import toy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium)")
NAMES = ("zebra-run", "quokka-run")                     # run names that must not reach the study page
CHOICES = "ABN"


class Chromium:
    """A headless Chromium with one page, driven by DevTools messages over a pipe."""

    def __init__(self, profile, width=1200, height=900):
        cmd_r, self.cmd_w = os.pipe()                   # we write commands; Chromium reads them on fd 3
        self.ev_r, ev_w = os.pipe()                     # Chromium writes replies and events on fd 4
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{ev_w}', CHROMIUM, *flags],
                                     pass_fds=(cmd_r, ev_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(ev_w)
        self.buf, self.n, self.events = b"", 0, []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Page.enable")
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _message(self, timeout=30):
        deadline = time.time() + timeout
        while b"\0" not in self.buf:
            if not select.select([self.ev_r], [], [], max(0, deadline - time.time()))[0]:
                raise TimeoutError("no message from chromium")
            chunk = os.read(self.ev_r, 1 << 20)
            assert chunk, "chromium closed the pipe"
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method, session=None, **params):
        self.n += 1
        os.write(self.cmd_w, json.dumps({"id": self.n, "method": method, "params": params,
                                         **({"sessionId": session} if session else {})}).encode() + b"\0")
        while True:
            m = self._message()
            if m.get("id") == self.n:
                assert "error" not in m, f"{method}: {m['error']}"
                return m["result"]
            self.events.append(m)

    def page(self, method, **params):
        return self.send(method, self.session, **params)

    def wait_event(self, method, timeout=30):
        deadline = time.time() + timeout
        while True:
            for i, m in enumerate(self.events):
                if m.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._message(deadline - time.time()))

    def open(self, url, reload=False):
        self.events.clear()
        self.page("Page.reload") if reload else self.page("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expr):
        r = self.page("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def click(self, selector):
        """A real mouse click (pressed + released) at the middle of the element, scrolled into view first."""
        x, y = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                       "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                       "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def poll(self, expr, want, timeout=15):
        deadline, got = time.time() + timeout, None
        while time.time() < deadline:
            got = self.js(expr)
            if want(got):
                return got
            time.sleep(0.1)
        return got

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.ev_r)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """4 toy triplets: run A's result is the true composite, run B's the bare background."""
    d = tmp_path_factory.mktemp("runs")
    out = []
    for i in range(4):
        c = toy.clip(300 + i, T=9, H=48, W=64)
        tid = f"trip-kiwi-{i}"
        p = {"id": tid, "prompt": c["caption"], "fg": d / f"fg-{i}.mp4", "bg": d / f"bg-{i}.mp4",
             "a": d / NAMES[0] / f"res-{tid}.mp4", "b": d / NAMES[1] / f"res-{tid}.mp4"}
        for k, frames in (("fg", c["fg"]), ("bg", c["bg"]), ("a", c["video"]), ("b", c["bg"])):
            write_video(p[k], frames, fps=8)
        out.append({k: str(v) for k, v in p.items()})
    return out


@pytest.fixture(scope="module")
def study(pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    page = report.write_study(pairs, out, *NAMES, seed=2, n=3)
    return out, page, json.loads((out / "key.json").read_text())


def expected_tally(answers, key):
    """What the answers mean, worked out here without judge.winner: "A" is the left video, run A's iff a_left."""
    rows = []
    for ex, per in answers.items():
        for crit, choice in per.items():
            a_left = key["examples"][ex]["a_left"]
            w = "tie" if choice == "N" else "a" if (choice == "A") == a_left else "b"
            rows.append({"criterion": crit, "winner": w})
    return {c: {k: sum(r["winner"] == w for r in rows if r["criterion"] == c) / 3
                for k, w in (("win", "a"), ("tie", "tie"), ("lose", "b"))} for c in judge.KEYS}


def test_study_layout_and_no_leak(study, pairs):
    out, page, key = study
    assert page == out / "site" / "index.html"
    exs = sorted(key["examples"])
    assert exs == ["ex01", "ex02", "ex03"] and key["names"] == list(NAMES)
    assert {e["a_left"] for e in key["examples"].values()} == {True, False}     # the seed shuffles both ways
    assert sorted(p.name for p in (out / "site" / "videos").iterdir()) == \
        sorted(f"{e}-{k}.mp4" for e in exs for k in ("fg", "bg", "left", "right"))
    for e, k in key["examples"].items():                                         # each side holds the right video
        left = (out / "site" / "videos" / f"{e}-left.mp4").read_bytes()
        assert left == Path(k["a"] if k["a_left"] else k["b"]).read_bytes()
    secret = [*NAMES, "zebra", "quokka", "res-", "key.json"]
    secret += [p["id"] for p in pairs] + [Path(p[k]).name for p in pairs for k in ("a", "b", "fg", "bg")]
    for f in (out / "site").rglob("*"):
        if f.is_file():
            blob = f.read_bytes().lower() + f.name.encode()
            assert not [s for s in secret if s.lower().encode() in blob], f
    text = page.read_text()
    assert text.count('type="radio"') == 3 * 6 * 3 and "0 of 18 answered" in text
    for _, name, _, _, definition in judge.CRITERIA:
        assert name in text and html.escape(definition) in text
    # the same inputs regenerate the same study; another study in the same folder is refused
    assert report.write_study(pairs, out, *NAMES, seed=2, n=3).read_text() == text
    assert json.loads((out / "key.json").read_text()) == key
    with pytest.raises(BadInput, match=r"key\.json belongs to study-"):
        report.write_study(pairs, out, *NAMES, seed=4, n=3)
    with pytest.raises(BadInput, match="asked for 9 examples"):
        report.write_study(pairs, out / "other", *NAMES, n=9)


@needs_chromium
def test_study_round_trip_in_chromium(study, tmp_path):
    out, page, key = study
    answers = {ex: {c: CHOICES[(i * 2 + j + j // 3) % 3] for j, c in enumerate(judge.KEYS)}
               for i, ex in enumerate(sorted(key["examples"]))}
    expect = expected_tally(answers, key)
    assert any(abs(s["win"] - s["lose"]) > 0.1 for s in expect.values())       # a flipped key would show
    downloads = tmp_path / "downloads"
    b = Chromium(tmp_path / "profile")
    try:
        b.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads), eventsEnabled=True)
        b.open(page.as_uri())
        assert b.js("document.getElementById('progress').textContent") == "0 of 18 answered"
        # the first example's four videos decode (this Chromium plays the project's libx264 mp4s)
        ready = b.poll("decoded()", lambda s: int(s.split("/")[0]) >= 4)
        assert int(ready.split("/")[0]) >= 4, ready
        for ex, per in answers.items():
            for c, choice in per.items():
                b.click(f'input[name="{ex}/{c}"][value="{choice}"]')
        assert b.js("document.getElementById('progress').textContent") == "18 of 18 answered"
        # Chromium hands the page's last localStorage write to the browser process asynchronously; a reload
        # within milliseconds (no person is that quick) can start from before it
        time.sleep(0.5)
        b.open(None, reload=True)                                                # progress survives a reload
        assert b.js("document.getElementById('progress').textContent") == "18 of 18 answered"
        checked = b.js("[...document.querySelectorAll('input:checked')].map(r => r.name + '=' + r.value)")
        assert sorted(checked) == sorted(f"{ex}/{c}={v}" for ex, per in answers.items() for c, v in per.items())
        b.click("#export")
        b.wait_event("Browser.downloadWillBegin")
        while b.wait_event("Browser.downloadProgress")["params"]["state"] != "completed":
            pass
    finally:
        b.close()
    files = list(downloads.iterdir())
    assert [f.name for f in files] == [f"answers-{key['study']}.json"]
    doc = json.loads(files[0].read_text())
    assert doc["study"] == key["study"] and doc["answers"] == answers and doc["answered"] == doc["total"] == 18
    assert len(doc["subject"]) >= 8                                           # one id per browser, for the tally
    t = report.tally_study(out, files)
    for c in judge.KEYS:
        assert t[c]["n"] == 3 and t[c]["invalid"] == 0
        for k in ("win", "tie", "lose"):
            assert t[c][k] == pytest.approx(expect[c][k]), (c, k)
    saved = json.loads((out / "tally.json").read_text())
    assert saved["subjects"] == 1 and saved["answers"] == 18 and saved["tally"]["overall"]["n"] == 3
    assert "1 subjects, 18 answers" in (out / "tally.md").read_text()
    assert (out / "tally.svg").read_text().count('class="win"') == 6


def test_tally_partial_and_errors(study, tmp_path):
    out, _, key = study
    sid = key["study"]
    f = tmp_path / "partial.json"                       # a partial export counts what is there
    a_left = key["examples"]["ex02"]["a_left"]
    f.write_text(json.dumps({"study": sid, "answers": {"ex02": {"overall": "A", "fg_motion": "N"}}}))
    t = report.tally_study(out, [f, f])
    assert t["overall"]["n"] == 2 and t["overall"]["win"] == (1.0 if a_left else 0.0)
    assert t["fg_motion"]["tie"] == 1.0 and t["bg_identity"]["n"] == 0
    # the same person exporting twice (a partial, then all) counts once, by the later export; two people twice
    docs = {"p1.json": ("ann", "2026-01-01T10:00:00Z", "B"), "p2.json": ("ann", "2026-01-01T11:00:00Z", "A"),
            "p3.json": ("bob", "2026-01-01T09:00:00Z", "A")}
    for name, (who, when, choice) in docs.items():
        (tmp_path / name).write_text(json.dumps({"study": sid, "subject": who, "exported": when,
                                                 "answers": {"ex02": {"overall": choice}}}))
    t = report.tally_study(out, [tmp_path / n for n in docs])
    assert t["overall"]["n"] == 2 and t["overall"]["win"] == (1.0 if a_left else 0.0)       # ann's "B" is gone
    assert json.loads((out / "tally.json").read_text())["subjects"] == 2
    t = report.tally_study(out, [tmp_path / "p2.json", tmp_path / "p1.json"])               # order does not matter
    assert t["overall"]["n"] == 1 and t["overall"]["win"] == (1.0 if a_left else 0.0)
    bad = {"other.json": {"study": "study-0000000000", "answers": {}},
           "choice.json": {"study": sid, "answers": {"ex01": {"overall": "C"}}},
           "example.json": {"study": sid, "answers": {"ex77": {"overall": "A"}}},
           "crit.json": {"study": sid, "answers": {"ex01": {"beauty": "A"}}}}
    for name, doc in bad.items():
        (tmp_path / name).write_text(json.dumps(doc))
    (tmp_path / "broken.json").write_text('{"study": ')
    for name, what in (("other.json", "study 'study-0000000000'"), ("choice.json", "unknown choice 'C'"),
                       ("example.json", "unknown example 'ex77'"), ("crit.json", "unknown criterion 'beauty'"),
                       ("broken.json", "not a JSON answers file")):
        with pytest.raises(BadInput) as e:
            report.tally_study(out, [f, tmp_path / name])
        msg = str(e.value)
        assert msg.startswith(str(tmp_path / name)) and what in msg and "\n" not in msg, msg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """2 runs x 3 toy triplets with the correct composite, in a folder with a space in its name."""
    d = tmp_path_factory.mktemp("report") / "toy runs"
    rows = {n: [] for n in NAMES}
    for i in range(3):
        c = toy.clip(500 + i, T=9, H=48, W=64)
        for name, frames in (("fg", c["fg"]), ("bg", c["bg"]), ("ref", c["video"])):
            write_video(d / "in" / f"{name}{i}.mp4", frames, fps=8)
        for j, n in enumerate(NAMES):
            write_video(d / n / f"r{i}.mp4", c["video"] if j == 0 else c["bg"], fps=8)
            rows[n].append({"id": f"t{i}", "fg": str(d / "in" / f"fg{i}.mp4"), "bg": str(d / "in" / f"bg{i}.mp4"),
                            "mask": None, "prompt": c["caption"], "result": str(d / n / f"r{i}.mp4"),
                            "reference": str(d / "in" / f"ref{i}.mp4"),
                            "toy_shape_iou": 0.7 - 0.5 * j + 0.01 * i, "toy_bg_psnr": 40.0 - 10 * j})
    summ = lambda rs: {"n": len(rs), **{k: float(np.mean([r[k] for r in rs])) for k in ("toy_shape_iou",
                                                                                          "toy_bg_psnr")}}
    return d, [{"name": n, "summary": summ(rows[n]), "rows": rows[n]} for n in NAMES]


COLUMNS = [("m1_fg", "M1 fg identity", "↑"), ("toy_shape_iou", "toy shape IoU", "↑"),
           ("toy_bg_psnr", "toy bg PSNR", "↑")]


def test_report_page(runs, tmp_path):
    d, rs = runs
    out = d.parent / "eval"
    page = report.write_report(out, rs, COLUMNS, title="toy runs")
    text = page.read_text()
    assert page == out / "report.html"
    assert text.count("<tr>") == 1 + 2 and "M1 fg identity" not in text      # only metrics that exist
    assert "<td><b>0.71</b></td>" in text                                       # the best run per metric in bold
    assert text.count('class="bars"') == 2
    srcs = re.findall(r'<video data-src="([^"]+)" width="200" height="150"', text)
    assert len(srcs) == 3 * (3 + 2) and all(not s.startswith(("/", "file:", "http")) for s in srcs)
    assert all((out / unquote(s)).is_file() for s in srcs) and any("%20" in s for s in srcs)
    assert "correct composite" in text and "Showing all 3 triplets" in text
    assert "toy shape IoU: 0.2" in text                                         # run B's triplet t0 metrics
    capped = report.write_report(tmp_path, rs, COLUMNS, max_rows=2).read_text()
    assert "the first 2 of 3" in capped and capped.count("<section>") == 2


@needs_chromium
def test_report_renders_in_chromium(runs, tmp_path):
    d, rs = runs
    page = report.write_report(d.parent / "eval", rs, COLUMNS)
    b = Chromium(tmp_path / "profile", width=1300, height=2000)
    try:
        b.open(page.as_uri())
        ready = b.poll("decoded()", lambda s: s == "15/15")
        assert ready == "15/15", ready                                           # every video shows a frame
        shot = base64.b64decode(b.page("Page.captureScreenshot", format="png")["data"])
    finally:
        b.close()
    from PIL import Image
    img = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(float)
    assert img.shape[:2] == (2000, 1300) and img.std() > 20                       # not a blank page
