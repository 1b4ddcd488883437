"""A probe of bad input, as a new user would try it: 100+ cases nobody had tried, each run as a subprocess with a
timeout and classified automatically; writes docs/bad-input-probe.md (a table: the command and the outcome).

    python tests/probe_bad_input.py --out /tmp/probe                 # all cases (~10-15 min on 2 CPU cores)
    python tests/probe_bad_input.py --out /tmp/probe --only 5 6      # the classes 5 and 6 only
    python tests/probe_bad_input.py --out /tmp/probe --case 12 40    # cases 12 and 40 only

Run on demand, not by pytest (pytest.ini collects test_*.py only). Everything it writes goes under --out (tiny
fixtures made with toy.py, the shipped assets/toy-composer and assets/toy-base, tiny train runs), except the report
(--doc, default docs/bad-input-probe.md). Outcomes:

  OK         a one-line error naming the input (exit 1 or 2, no traceback), or success where success is right and
             the case's check of the outputs passes
  TRACEBACK  a Python traceback (an uncaught exception) or a crash by signal
  SILENT     exit 0, but the case's check of the outputs fails (or a refusal was expected and none came)
  LOST       an input or an earlier output changed or gone (sha256 of the watched files before / after)
  CODE       a crafted file ran code (its marker file appeared)
  REFUSED    an input that should work was refused (exit 1/2 where success is right)
  HANG       the command ran past its timeout
  SKIP       the case could not be set up on this machine (said why)
"""
import argparse
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from plumbing.files import sha256  # noqa: E402

PY = sys.executable
COMPOSER = ROOT / "assets" / "toy-composer"
BASE = ROOT / "assets" / "toy-base"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1",
       "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
for k in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
    ENV.pop(k, None)
FAST = ["--frames", "9", "--size", "64", "64", "--strides", "1", "2", "--threads", "1", "--dilate", "2",
        "--min-fg", "0", "--max-clips", "1", "--inpainter", "none"]
CLASSES = {1: "record = disk", 2: "never destroy", 3: "bad item in a batch", 4: "text & names in files",
           5: "time", 6: "flag ranges", 7: "full disk", 8: "code from files", 9: "mp4 determinism",
           10: "smaller ones"}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", required=True, help="work folder for fixtures and cases (made if missing; reused "
                                                 "fixtures are kept, cases are redone)")
parser.add_argument("--doc", default=str(ROOT / "docs" / "bad-input-probe.md"),
                    help="where the markdown report goes ('-' = print only)")
parser.add_argument("--jobs", type=int, default=2, help="cases run at the same time")
parser.add_argument("--only", type=int, nargs="*", default=None, help="only these classes (1-10)")
parser.add_argument("--case", type=int, nargs="*", default=None, help="only these case numbers")
parser.add_argument("--machine", default=None, help="what to say the probe ran on (default: from /proc/cpuinfo)")
parser.add_argument("--report-only", action="store_true",
                    help="run nothing: write the report again from --out/probe.json (the last run's results)")


# ---------------------------------------------------------------------------------------------
# Helpers: running, hashing, small files
# ---------------------------------------------------------------------------------------------


class Skip(Exception):
    """The case cannot be set up here (said in the report)."""


class SetupFailed(Exception):
    pass


def cmd(script, *args):
    """A command line: a script of the repository (or -m / -c) and its arguments as strings."""
    head = [PY, "-c"] if script == "-c" else [PY, "-m"] if script == "-m" else [PY, str(ROOT / script)]
    return head + [str(a) for a in args]


def run(argv, cwd, timeout=180, env=None):
    t0 = time.time()
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace", timeout=timeout,
                           env={**ENV, **(env or {})})
        r.seconds, r.timed_out = time.time() - t0, False
    except subprocess.TimeoutExpired as e:
        r = subprocess.CompletedProcess(argv, -9, _text(e.stdout), _text(e.stderr))
        r.seconds, r.timed_out = time.time() - t0, True
    return r


def _text(b):
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")


def lines_of(text):
    """Lines of a process's output, progress bars' carriage returns taken as line ends."""
    return [x.strip() for x in text.replace("\r", "\n").split("\n") if x.strip()]


def last_line(text):
    ls = lines_of(text)
    return ls[-1] if ls else ""


EXC = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(:|$)")


def exc_lines(text):
    """The exception lines ('ValueError: ...') of the tracebacks in `text`, in order."""
    return [x.strip() for x in text.replace("\r", "\n").split("\n") if EXC.match(x)]


def exc_line(text):
    """The exception line of the last traceback in `text` (or its last line)."""
    found = exc_lines(text)
    return found[-1] if found else last_line(text)


def error_line(text):
    """The last `<script>: error: ...` line of `text` (after progress bars), or its last line."""
    found = [x for x in lines_of(text) if ": error: " in x or x.startswith("--")]
    if not found:
        return last_line(text)
    m = re.search(r"[\w.-]+(\.py)?( \w+)?: error: .*$", found[-1])    # progress bars left on the same line
    return m.group(0) if m else found[-1]


def said(r):
    """What a finished command said last: its exception line, or its last line of stderr."""
    return exc_line(r.stderr) if "Traceback" in r.stderr else error_line(r.stderr)


def snapshot(paths):
    """{file path: sha256} of every file under `paths` (files or folders; hidden lock files left out)."""
    out = {}
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        for f in files:
            if f.name.startswith(".") and f.name.endswith(".lock"):
                continue
            try:
                out[str(f)] = sha256(f)
            except OSError:
                out[str(f)] = "unreadable"
    return out


def entries(paths):
    """The top-level entries of folders (to see what a command added to an input folder)."""
    return {str(p / x.name) for p in map(Path, paths) if p.is_dir() for x in p.iterdir()}


def copytree(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)


def records(path):
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8", errors="replace").split("\n"):
        try:
            x = json.loads(line)
        except ValueError:
            continue
        if isinstance(x, dict):
            out.append(x)
    return out


def by_id(path):
    return {str(r.get("id")): r for r in records(path)}


def vid(path, frames, fps=8):
    from plumbing.video import write_video
    write_video(path, frames, fps)
    return Path(path)


def raw_mp4(path, frames, rate=None, times=None):
    """An mp4 through PyAV directly: any frame rate (stm's writer caps it), or frames at the given times (s)."""
    import av
    import numpy as np
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(rate).limit_denominator(1001) if rate else 30)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if times is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if times is not None:
                vf.pts, vf.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
            c.mux(s.encode(vf))
        c.mux(s.encode())
    return Path(path)


def image(path, frame):
    from PIL import Image
    Image.fromarray(frame).save(path)
    return Path(path)


def info(path):
    """(frames, fps, H, W) of a video file."""
    from plumbing.video import read_video
    v, fps = read_video(path)
    return len(v), fps, v.shape[1], v.shape[2]


def toyclip(seed, T=9, H=64, W=64):
    import toy
    return toy.clip(seed, T, H, W)


def crafted_pickle(path, marker):
    """A pickle that runs `touch marker` when unpickled (what a hostile file would do)."""
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    Path(path).write_bytes(pickle.dumps(Evil(), protocol=2))
    return Path(path)


def json_lines(path, objs, encoding="utf-8", newline="\n", bom=False):
    text = "".join((o if isinstance(o, str) else json.dumps(o)) + newline for o in objs)
    Path(path).write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return Path(path)


def strict_json(path):
    """Parse a JSON file refusing bare NaN / Infinity -> None, or why it is not valid JSON."""
    try:
        json.loads(Path(path).read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"bare {c}")))
    except (OSError, ValueError) as e:
        return f"{Path(path).name}: {e}"
    return None


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    n: int
    cls: int
    title: str           # what is tried, in a few words (the setup)
    expect: str          # "error": a one-line refusal; "ok": success + its check; "either": one of the two
    fn: object
    timeout: int = 180
    note: str = ""       # why it may be ambiguous
    result: dict = field(default_factory=dict)


CASES = []


def case(cls, title, expect, timeout=180, note=""):
    def deco(fn):
        CASES.append(Case(len(CASES) + 1, cls, title, expect, fn, timeout, note))
        return fn
    return deco


class Ctx:
    """What a case function gets: its own folder `d`, the fixtures `fx`, and `sh` for setup commands."""

    def __init__(self, d, fx):
        self.d, self.fx, self.cleanup = Path(d), Path(fx), []

    def sh(self, argv, timeout=240, env=None, ok=True):
        r = run(argv, self.d, timeout, env)
        if ok and (r.returncode != 0 or r.timed_out):
            raise SetupFailed(f"setup command failed ({r.returncode}): {short(argv, self)}: "
                              f"{exc_line(r.stderr) if 'Traceback' in r.stderr else last_line(r.stderr)}")
        return r

    def bg(self, argv, wait_for, timeout=60):
        """Start `argv` in the background (waited for, or killed, when the case ends) and return once the path
        `wait_for` exists (the other run is under way)."""
        log = open(self.d / "background.log", "w")
        p = subprocess.Popen(argv, cwd=self.d, stdout=log, stderr=subprocess.STDOUT, env=ENV)

        def finish():
            try:
                p.wait(timeout=180)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()
        self.cleanup.append(finish)
        t0 = time.time()
        while not Path(wait_for).exists():
            if p.poll() is not None or time.time() - t0 > timeout:
                raise SetupFailed(f"the background run ended or stalled before {Path(wait_for).name} appeared")
            time.sleep(0.05)
        self.background = p
        return p

    def tmpfs(self, name="full", free=0, size="200k"):
        """A tmpfs at d/name, filled up to `free` bytes: a full disk a root user cannot write past (big enough for
        the command once the filler is gone)."""
        m = self.d / name
        m.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(m)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise Skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:80]})")
        self.cleanup.append(lambda: subprocess.run(["umount", "-l", str(m)], capture_output=True))
        st = os.statvfs(m)
        avail = st.f_bavail * st.f_frsize
        with open(m / "filler", "wb") as f:
            f.write(b"\0" * max(0, avail - free))
        return m


def sample(*args):
    return cmd("sample.py", "--ckpt", COMPOSER, "--steps", "1", *args)


def train_args(data, out, *extra, model=BASE, preset=True):
    return (["--model", model] + (["--preset", "toy"] if preset else []) +
            ["--data", data, "--out", out, "--batch", "2", "--steps", "2", "--warmup", "1", "--val-every", "0",
             "--workers", "1", "--threads", "1", "--frames", "9", "--size", "64", "64", "--log-every", "1",
             "--ckpt-every", "1"] + [str(x) for x in extra])


def train(data, out, *extra, **kw):
    return cmd("train.py", *train_args(data, out, *extra, **kw))


def decompose(videos, out, *extra):
    return cmd("decompose.py", "--videos", videos, "--out", out, *FAST, *extra)


def stale(folder, rec):
    from plumbing.records import stale_outputs
    return stale_outputs(rec, folder)


def list_lines(d, name):
    p = Path(d) / name
    return p.read_text(encoding="utf-8").split("\n")[:-1] if p.exists() else []


def aligned(d, n=None):
    """None if the five lists of dataset d have the same number of lines (== n if given), else why not."""
    counts = {k: len(list_lines(d, k)) for k in ("prompts.txt", "videos.txt", "fg.txt", "bg.txt", "masks.txt")}
    if len(set(counts.values())) != 1:
        return f"lists misaligned: {counts}"
    if n is not None and counts["videos.txt"] != n:
        return f"{counts['videos.txt']} clips in the lists, {n} expected"
    return None


def batch_check(c, argv, bad_id, ok_id="ok", words=()):
    """Class 3: the good item is composed, the bad one is one error record naming why, and a rerun neither dies
    nor stumbles on it again."""
    def check(r):
        recs = by_id(c.d / "o" / "results.jsonl")
        if recs.get(ok_id, {}).get("status") != "ok" or not (c.d / "o" / f"{ok_id}.mp4").exists():
            return f"the good triplet '{ok_id}' was not composed (records: {sorted(recs)})"
        bad = [x for k, x in recs.items() if k != ok_id]
        if bad_id and not bad:
            return "the bad line left no record (no reason given)"
        if bad and any(w not in str(bad[0].get("error", "")) for w in words):
            return f"the skip reason does not say {words}: {str(bad[0].get('error'))[:80]}"
        again = run(argv, c.d)
        if again.returncode != 0 or "Traceback" in again.stderr:
            return f"the rerun failed ({again.returncode}): {said(again)}"
        if "skipping" in again.stderr:
            return "the rerun stumbled on the bad line again: " + last_line(again.stderr)
        return None
    return check


def triplet_dir(c, lines, raw=None, name="t.jsonl"):
    """Triplets in c.d: fg.mp4 / bg.mp4 / mask.mp4 beside the file, `lines` + a good line (id ok)."""
    for f in ("fg.mp4", "bg.mp4", "mask.mp4"):
        if not (c.d / f).exists():
            shutil.copy(c.fx / f, c.d / f)
    t = c.d / name
    if raw is not None:
        t.write_bytes(raw)
    else:
        json_lines(t, list(lines) + [{"id": "ok", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": "a red boat"}])
    return t


def bad_triplet(c, line):
    t = triplet_dir(c, [line])
    argv = sample("--triplets", t, "--out", c.d / "o")
    return {"argv": argv, "check": batch_check(c, argv, "p")}


# ---- class 1: a record must describe what is on disk ------------------------------------------------


@case(1, "one --fg/--bg composition into a folder, then another --fg into the same folder", "either")
def c_folder_twice(c):
    c.sh(sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--prompt", "a", "--out", c.d / "o"))
    fg2 = c.fx / "trip" / "t0001" / "fg.mp4"

    def check(r):
        rec = by_id(c.d / "o" / "results.jsonl").get("result", {})
        if Path(rec.get("fg", "")).resolve() != fg2.resolve():
            return f"results.jsonl says fg {rec.get('fg')}, the video is of {fg2.name}"
        return f"result.mp4 does not match its record: {stale(c.d / 'o', rec)}" if stale(c.d / "o", rec) else None
    return {"argv": sample("--fg", fg2, "--bg", c.fx / "bg.mp4", "--prompt", "a", "--out", c.d / "o"),
            "check": check}


@case(1, "--triplets run, then the prompt of t0000 edited in the triplets file (same videos), rerun", "ok")
def c_prompt_edit(c):
    t = copytree(c.fx / "trip", c.d / "trip") / "triplets.jsonl"
    argv = sample("--triplets", t, "--out", c.d / "o")
    c.sh(argv)
    lines = [json.loads(x) for x in t.read_text().splitlines()]
    lines[0]["prompt"] = "a green bird flying in the sky at noon"
    json_lines(t, lines)

    def check(r):
        got = by_id(c.d / "o" / "results.jsonl")["t0000"].get("prompt")
        return None if got == lines[0]["prompt"] else \
            f"t0000 not recomposed: its record and video keep the old prompt {got!r} ({last_line(r.stdout)})"
    return {"argv": argv, "check": check}


@case(1, "--triplets --batch 2, t0001.mp4 deleted, rerun with --batch 1", "either",
      note="ambiguous: the noise of an item depends on its batch, so a refusal is right too")
def c_batch_change(c):
    import numpy as np
    from plumbing.video import read_video
    t = c.fx / "trip" / "triplets.jsonl"
    c.sh(sample("--triplets", t, "--batch", "2", "--out", c.d / "o"))
    first = read_video(c.d / "o" / "t0001.mp4")[0].astype(np.float64)
    (c.d / "o" / "t0001.mp4").unlink()

    def check(r):
        now = read_video(c.d / "o" / "t0001.mp4")[0].astype(np.float64)
        diff = float(np.abs(now - first).mean())
        return None if diff < 2 else (f"t0001 redone with other noise (mean |diff| {diff:.0f} levels) than its "
                                      "straight run, and no record says which --batch made which")
    return {"argv": sample("--triplets", t, "--batch", "1", "--out", c.d / "o"), "check": check}


@case(1, "--triplets with --model a copy of toy-base, then its VAE weights changed in place (same size), rerun",
      "ok")
def c_vae_in_place(c):
    import torch
    from safetensors.torch import load_file, save_file
    base = copytree(BASE, c.d / "base")
    argv = sample("--triplets", c.fx / "trip" / "triplets.jsonl", "--model", base, "--out", c.d / "o")
    c.sh(argv)
    w = base / "vae" / "diffusion_pytorch_model.safetensors"
    sd = load_file(w)
    torch.manual_seed(1)
    save_file({k: (v + 0.05 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in sd.items()}, w,
              metadata={"format": "pt"})

    def check(r):
        return None if "2 composition(s)" in r.stdout else f"not redone after the VAE changed: {last_line(r.stdout)}"
    return {"argv": argv, "check": check}


@case(1, "decompose --captioner file, then the captions file edited (same name), rerun", "ok")
def c_captions_edit(c):
    caps = c.d / "caps.tsv"
    caps.write_text("toy0\ta red toy\ntoy1\ta blue toy\n")
    argv = decompose(c.fx / "vids", c.d / "d", "--captioner", "file", "--captions", caps)
    c.sh(argv)
    caps.write_text("toy0\ta green toy\ntoy1\ta yellow toy\n")

    def check(r):
        got = sorted(list_lines(c.d / "d", "prompts.txt"))
        return None if got == ["a green toy", "a yellow toy"] else f"prompts.txt still says {got}"
    return {"argv": argv, "check": check}


@case(1, "decompose, then one source video replaced under the same name, rerun", "ok")
def c_source_replaced(c):
    v = copytree(c.fx / "vids", c.d / "v")
    argv = decompose(v, c.d / "d")
    c.sh(argv)
    before = {p.name: sha256(p) for p in (c.d / "d" / "videos").glob("*.mp4")}
    vid(v / "toy0.mp4", toyclip(77, 25)["video"])

    def check(r):
        now = {p.name: sha256(p) for p in (c.d / "d" / "videos").glob("*.mp4")}
        changed = [k for k in now if before.get(k) != now[k]]
        return None if len(changed) == 1 else f"{len(changed)} clips changed after one source was replaced"
    return {"argv": argv, "check": check}


@case(1, "toy.py data --clips 2, then the same --out with --frames 13", "either")
def c_toy_frames(c):
    c.sh(cmd("toy.py", "data", "--out", c.d / "d", "--clips", "2"))

    def check(r):
        got = {info(c.d / "d" / x)[0] for x in list_lines(c.d / "d", "videos.txt")}
        return None if got == {13} else f"'{last_line(r.stdout)}' but the clips have {sorted(got)} frames, not 13"
    return {"argv": cmd("toy.py", "data", "--out", c.d / "d", "--clips", "2", "--frames", "13"), "check": check}


@case(1, "toy.py data --clips 2, then the same --out with --size 32 48", "either")
def c_toy_size(c):
    c.sh(cmd("toy.py", "data", "--out", c.d / "d", "--clips", "2"))

    def check(r):
        got = {info(c.d / "d" / x)[2:] for x in list_lines(c.d / "d", "videos.txt")}
        return None if got == {(32, 48)} else f"'{last_line(r.stdout)}' but the clips are {sorted(got)} (HxW)"
    return {"argv": cmd("toy.py", "data", "--out", c.d / "d", "--clips", "2", "--size", "32", "48"),
            "check": check}


@case(1, "sample + evaluate results, then the fg of t0000 replaced under the same name, evaluate again", "either",
      note="ambiguous: the result was made from the old fg; scoring it against the new one mixes two inputs")
def c_eval_fg_replaced(c):
    t = copytree(c.fx / "trip", c.d / "trip") / "triplets.jsonl"
    c.sh(sample("--triplets", t, "--out", c.d / "res"))
    c.sh(cmd("evaluate.py", "results", c.d / "res"))
    shutil.copy(c.fx / "trip" / "t0001" / "fg.mp4", c.d / "trip" / "t0000" / "fg.mp4")

    def check(r):
        row = by_id(c.d / "res" / "eval" / "metrics.jsonl").get("t0000", {})
        if "already scored" not in r.stdout.replace("1 records already", "") and "t0000" not in r.stderr \
                and row.get("status") == "ok":
            return "t0000's result (made from the old fg) was rescored against the new fg, no word of it"
        return None
    return {"argv": cmd("evaluate.py", "results", c.d / "res"), "check": check}


@case(1, "--triplets into a folder, then another triplets file whose id t0000 names other videos, same --out",
      "either", note="ambiguous: the engine treats a changed input under the same id as the same item redone")
def c_two_triplet_sets(c):
    c.sh(sample("--triplets", c.fx / "trip" / "triplets.jsonl", "--out", c.d / "o"))
    t2 = json_lines(c.d / "t2.jsonl", [{"id": "t0000", "fg": str(c.fx / "trip" / "t0001" / "fg.mp4"),
                                        "bg": str(c.fx / "bg3.mp4"), "prompt": "x"}])
    return {"argv": sample("--triplets", t2, "--out", c.d / "o"), "watch": [c.d / "o" / "t0000.mp4"]}


@case(1, "decompose --segmenter gt, then the mask video of toy0 replaced under the same name, rerun", "ok")
def c_mask_replaced(c):
    m = c.d / "m"
    m.mkdir()
    from plumbing.video import mask_to_rgb
    for s in (0, 1):
        vid(m / f"toy{s}.mp4", mask_to_rgb(toyclip(s, 25)["mask"]))
    argv = decompose(c.fx / "vids", c.d / "d", "--segmenter", "gt", "--masks", m)
    c.sh(argv)
    before = {p.name: sha256(p) for p in (c.d / "d" / "masks").glob("*.mp4")}
    vid(m / "toy0.mp4", mask_to_rgb(toyclip(5, 25)["mask"]))

    def check(r):
        now = {p.name: sha256(p) for p in (c.d / "d" / "masks").glob("*.mp4")}
        changed = [k for k in now if before.get(k) != now[k]]
        return None if len(changed) == 1 else f"{len(changed)} masks changed after one mask video was replaced"
    return {"argv": argv, "check": check}


@case(1, "two sample --triplets runs into one --out at the same time (--seed 0 and --seed 1)", "error")
def c_two_samples_at_once(c):
    o = c.d / "o"
    c.bg(sample("--triplets", c.fx / "trip" / "triplets.jsonl", "--out", o, "--steps", "4", "--batch", "1"),
         o / ".results.lock")

    def check_err(r):
        c.background.wait(timeout=180)
        recs = by_id(o / "results.jsonl")
        bad = [i for i, x in recs.items() if x.get("status") == "ok" and stale(o, x)]
        return f"records that do not match their files: {bad}" if bad else None
    return {"argv": sample("--triplets", c.fx / "trip" / "triplets.jsonl", "--out", o, "--seed", "1"),
            "check_err": check_err}


@case(1, "two train.py runs into one --out at the same time (the second with another --lr)", "error")
def c_two_trains_at_once(c):
    o = c.d / "run"
    c.bg(train(c.fx / "data", o, "--steps", "25", "--ckpt-every", "100"), o / "args.json")
    return {"argv": train(c.fx / "data", o, "--lr", "5e-4"),
            "silent": "the second run trained into the folder the first was still writing (no lock): one ckpt/, "
                      "log and args.json for two runs"}


# ---- class 2: never destroy a run or an input ---------------------------------------------------------------


@case(2, "train.py --out = its own --data folder", "either")
def c_train_out_data(c):
    d = copytree(c.fx / "data", c.d / "data")
    return {"argv": train(d, d), "watch": [d]}


@case(2, "train.py --out = its --model folder (a copy of toy-base)", "either",
      note="ambiguous: nothing is overwritten, but the base folder gains a transformer/ and becomes another model")
def c_train_out_model(c):
    b = copytree(BASE, c.d / "base")
    return {"argv": train(c.fx / "data", b, model=b), "watch": [b], "watch_new": [b]}


@case(2, "single --out x.mp4 --grid, with the --fg named x_grid.mp4 beside it", "either")
def c_fg_is_grid(c):
    fg = shutil.copy(c.fx / "fg.mp4", c.d / "x_grid.mp4")
    return {"argv": sample("--fg", fg, "--bg", c.fx / "bg.mp4", "--out", c.d / "x.mp4", "--grid"), "watch": [fg]}


@case(2, "--out a.mp4 --grid, then --out a.gif --grid --seed 1 (a new file)", "either")
def c_grid_of_other(c):
    c.sh(sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--out", c.d / "a.mp4", "--grid"))
    return {"argv": sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--out", c.d / "a.gif", "--grid",
                           "--seed", "1"),
            "watch": [c.d / "a_grid.mp4", c.d / "a_grid.gif", c.d / "a.mp4"]}


@case(2, "--fg/--bg into a folder that already holds the user's own result.mp4", "either")
def c_unrelated_result(c):
    (c.d / "o").mkdir()
    mine = shutil.copy(c.fx / "bg3.mp4", c.d / "o" / "result.mp4")
    return {"argv": sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--out", c.d / "o"), "watch": [mine]}


@case(2, "--triplets into a folder holding an unrelated t0000.mp4 (not an input)", "either")
def c_unrelated_id_file(c):
    (c.d / "o").mkdir()
    mine = shutil.copy(c.fx / "bg3.mp4", c.d / "o" / "t0000.mp4")
    return {"argv": sample("--triplets", c.fx / "trip" / "triplets.jsonl", "--out", c.d / "o"), "watch": [mine]}


@case(2, "--out o.mp4 --overwrite where o.mp4 is a folder holding a file", "error")
def c_out_is_dir(c):
    (c.d / "o.mp4").mkdir()
    (c.d / "o.mp4" / "keep.txt").write_text("mine")
    return {"argv": sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--out", c.d / "o.mp4", "--overwrite"),
            "watch": [c.d / "o.mp4"]}


@case(2, "--out a symlink to the --mask file, with --overwrite", "error")
def c_out_symlink_mask(c):
    m = shutil.copy(c.fx / "mask.mp4", c.d / "mask.mp4")
    (c.d / "link.mp4").symlink_to(m)
    return {"argv": sample("--fg", c.fx / "fg.mp4", "--mask", m, "--bg", c.fx / "bg.mp4", "--out", c.d / "link.mp4",
                           "--overwrite"), "watch": [m]}


@case(2, "evaluate compare RUN --out RUN/eval (compare's report into a results report folder)", "either")
def c_compare_into_eval(c):
    ev = copytree(c.fx / "res" / "eval", c.d / "ev")
    return {"argv": cmd("evaluate.py", "compare", ev, "--out", ev), "watch": [ev]}


@case(2, "evaluate results RUN2 --out RUN1/eval (another run's scores, same flags)", "either")
def c_eval_into_other(c):
    ev = copytree(c.fx / "res" / "eval", c.d / "ev1")
    return {"argv": cmd("evaluate.py", "results", c.fx / "res2", "--out", ev), "watch": [ev / "metrics.jsonl"]}


@case(2, "toy.py base --out = an existing dataset folder", "either", timeout=240)
def c_toy_base_over_data(c):
    d = copytree(c.fx / "data", c.d / "data")
    return {"argv": cmd("toy.py", "base", "--out", d, "--vae-steps", "1", "--minutes", "1", "--batch", "1",
                        "--scale-clips", "16", "--eval-clips", "8"), "watch": [d]}


@case(2, "train --resume --resume-with-new-flags --preset toy-l on a toy run (its checkpoints cannot load)", "error")
def c_resume_other_arch(c):
    r = copytree(c.fx / "run", c.d / "run")
    return {"argv": train(c.fx / "data", r, "--resume", "--resume-with-new-flags", "--preset", "toy-l",
                          "--steps", "3"),
            "watch": [r / "args.json", r / "ckpt", r / "transformer"]}


@case(2, "decompose --videos V --out V (the output into the sources' folder), twice", "either")
def c_decompose_into_videos(c):
    v = copytree(c.fx / "vids", c.d / "v")
    argv = decompose(v, v)
    c.sh(argv)

    def check(r):
        return aligned(v, 2)
    return {"argv": argv, "watch": [v / "toy0.mp4", v / "toy1.mp4"], "check": check}


@case(2, "decompose --merge --out a toy.py dataset (no shards there)", "either")
def c_merge_toy(c):
    d = copytree(c.fx / "data", c.d / "d")
    return {"argv": cmd("decompose.py", "--merge", "--out", d), "watch": [d]}


@case(2, "lora.py on a full (non-LoRA) train.py run folder", "error")
def c_lora_full_run(c):
    r = copytree(c.fx / "run", c.d / "run")
    return {"argv": cmd("lora.py", r), "watch": [r]}


@case(2, "train --out another run folder, without --resume, but with --stop-at 1", "error")
def c_train_other_run(c):
    r = copytree(c.fx / "run", c.d / "run")
    return {"argv": train(c.fx / "data", r, "--stop-at", "1", "--lr", "5e-4"), "watch": [r]}


# ---- class 3: one bad item must not stop a batch job, nor the rerun ---------------------------------------


@case(3, "triplet prompt is a list [\"a\", \"b\"]", "ok")
def c_prompt_list(c):
    return bad_triplet(c, {"id": "p", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": ["a", "b"]})


@case(3, "triplet \"fg\": 7 (a number)", "ok")
def c_fg_number(c):
    return bad_triplet(c, {"id": "p", "fg": 7, "bg": "bg.mp4", "prompt": "x"})


@case(3, "triplet \"bg\": \"\" (empty)", "ok")
def c_bg_empty(c):
    return bad_triplet(c, {"id": "p", "fg": "fg.mp4", "bg": "", "prompt": "x"})


@case(3, "triplet fg path with a NUL character (\"a\\u0000b.mp4\")", "ok")
def c_fg_nul(c):
    return bad_triplet(c, {"id": "p", "fg": "a\u0000b.mp4", "bg": "bg.mp4", "prompt": "x"})


@case(3, "triplet mask is an empty folder", "ok")
def c_mask_empty_dir(c):
    (c.d / "emptydir").mkdir()
    return bad_triplet(c, {"id": "p", "fg": "fg.mp4", "bg": "bg.mp4", "mask": "emptydir", "prompt": "x"})


@case(3, "triplet id \"ü\" (not a plain file name)", "ok")
def c_id_unicode(c):
    return bad_triplet(c, {"id": "ü", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": "x"})


@case(3, "triplet id 1.5 (a float)", "ok")
def c_id_float(c):
    return bad_triplet(c, {"id": 1.5, "fg": "fg.mp4", "bg": "bg.mp4", "prompt": "x"})


@case(3, "triplet mask m.png that is really a text file", "ok")
def c_mask_text_png(c):
    (c.d / "m.png").write_text("not an image\n")
    return bad_triplet(c, {"id": "p", "fg": "fg.mp4", "bg": "bg.mp4", "mask": "m.png", "prompt": "x"})


@case(3, "triplet \"prompt\": {\"en\": \"a boat\"} (an object)", "ok")
def c_prompt_object(c):
    return bad_triplet(c, {"id": "p", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": {"en": "a boat"}})


@case(3, "triplets file saved as UTF-16 (Windows 'Unicode')", "either")
def c_utf16(c):
    lines = [{"id": "a", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": "x"}]
    t = triplet_dir(c, [], raw=b"")
    json_lines(t, lines, encoding="utf-16")

    def check(r):
        recs = by_id(c.d / "o" / "results.jsonl")
        if any(x.get("status") == "ok" for x in recs.values()):
            return None
        return None if any("UTF" in str(x.get("error", "")) for x in recs.values()) else \
            f"nothing composed and no record says why: {last_line(r.stdout)}"
    return {"argv": sample("--triplets", t, "--out", c.d / "o"), "check": check}


@case(3, "triplet whose optional \"reference\" is missing (no --grid)", "ok",
      note="ambiguous: the reference is only read with --grid")
def c_missing_reference(c):
    t = triplet_dir(c, [{"id": "p", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": "x", "reference": "nope.mp4"}])

    def check(r):
        rec = by_id(c.d / "o" / "results.jsonl").get("p", {})
        return None if rec.get("status") == "ok" else ("REFUSED", f"p skipped: {str(rec.get('error'))[:90]}")
    return {"argv": sample("--triplets", t, "--out", c.d / "o"), "check": check}


def fx_records(c):
    """FX/res's records, their stamps left out (the videos stay in FX/res; stamps are relative to a folder)."""
    return [{k: v for k, v in r.items() if k != "stamps"} for r in records(c.fx / "res" / "results.jsonl")]


def eval_ok(c, d, n_min=1):
    def check(r):
        s = c.d / d / "eval" / "summary.json"
        if not s.exists():
            return "no summary.json"
        why = strict_json(s)
        if why:
            return why
        n = json.loads(s.read_text()).get("n", 0)
        return None if n >= n_min else f"summary n={n}, expected at least {n_min} scored"
    return check


@case(3, "evaluate: results.jsonl with one record line in Latin-1 (prompt 'café') among UTF-8 ones", "ok")
def c_eval_latin1(c):
    recs = fx_records(c)
    d = c.d / "r"
    d.mkdir()
    recs[1]["prompt"] = "un caf\u00e9"
    (d / "results.jsonl").write_bytes((json.dumps(recs[0]) + "\n").encode() +
                                      (json.dumps(recs[1], ensure_ascii=False) + "\n").encode("latin-1"))
    return {"argv": cmd("evaluate.py", "results", d), "check": eval_ok(c, "r")}


def eval_with_result(c, frames, fps=8, maker=None):
    recs = fx_records(c)
    d = c.d / "r"
    d.mkdir()
    res = maker(d) if maker else vid(d / "odd.mp4", frames, fps)
    recs[1]["result"] = str(res)
    json_lines(d / "results.jsonl", recs)
    return {"argv": cmd("evaluate.py", "results", d), "check": eval_ok(c, "r")}


@case(3, "evaluate: one result is a 9-frame 16x4096 video (tall and thin)", "ok")
def c_eval_thin(c):
    import numpy as np
    return eval_with_result(c, np.random.default_rng(0).integers(0, 255, (9, 4096, 16, 3), dtype=np.uint8))


@case(3, "evaluate: one result is a 9-frame 2x2 video", "ok")
def c_eval_tiny(c):
    import numpy as np
    return eval_with_result(c, np.full((9, 2, 2, 3), 128, np.uint8))


@case(3, "evaluate: one result is a PNG still (1 frame)", "ok")
def c_eval_png(c):
    return eval_with_result(c, None, maker=lambda d: image(d / "still.png", toyclip(3)["video"][0]))


@case(3, "evaluate: one result is a PNG-frame folder with a corrupt frame", "ok")
def c_eval_png_dir(c):
    def maker(d):
        f = d / "frames"
        f.mkdir()
        for i, fr in enumerate(toyclip(3)["video"]):
            image(f / f"{i:03d}.png", fr)
        (f / "004.png").write_bytes(b"\x89PNG junk")
        return f
    return eval_with_result(c, None, maker=maker)


def data_copy(c):
    d = c.d / "data"
    d.mkdir()
    for f in (c.fx / "data").iterdir():
        (copytree(f, d / f.name) if f.is_dir() else shutil.copy(f, d / f.name))
    return d


@case(3, "train: one clip's fg is a PNG-frame folder with one corrupt PNG (passes the header probe)", "ok",
      note="ambiguous: a clean stop naming the clip and how to resume; class 3 asks the run to skip it and go on")
def c_train_png_corrupt(c):
    d = data_copy(c)
    fgs = list_lines(d, "fg.txt")
    frames = d / "fg" / "clip0"
    frames.mkdir()
    from plumbing.video import read_video
    for i, fr in enumerate(read_video(d / fgs[0])[0]):
        image(frames / f"{i:03d}.png", fr)
    (frames / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    fgs[0] = "fg/clip0"
    (d / "fg.txt").write_text("\n".join(fgs) + "\n")

    def check(r):
        return None if (c.d / "run" / "transformer").exists() else "no transformer/ written"
    return {"argv": train(d, c.d / "run", "--steps", "4"), "check": check}


@case(3, "train: one clip's bg has 13 frames, its video 9", "ok")
def c_train_bg_frames(c):
    d = data_copy(c)
    bgs = list_lines(d, "bg.txt")
    vid(d / bgs[1], toyclip(9, 13)["bg"])

    def check(r):
        sk = json.loads((c.d / "run" / "skipped.json").read_text())
        return None if len(sk) == 1 else f"skipped.json lists {len(sk)} clips, 1 expected"
    return {"argv": train(d, c.d / "run"), "check": check}


@case(3, "decompose: one source is a PNG-frame folder whose frames change size", "ok")
def c_decompose_png_sizes(c):
    v = copytree(c.fx / "vids", c.d / "v")
    f = v / "frames"
    f.mkdir()
    for i, fr in enumerate(toyclip(4, 25)["video"]):
        image(f / f"{i:03d}.png", fr if i != 2 else fr[:32])

    def check(r):
        recs = records(c.d / "d" / "metadata.jsonl")
        errs = [x for x in recs if x.get("status") not in ("ok",)]
        return aligned(c.d / "d", 2) or (None if errs else "the bad source left no record")
    argv = decompose(v, c.d / "d")
    return {"argv": argv, "check": check}


@case(3, "decompose rerun into an --out whose metadata.jsonl holds a stray '[]' line", "ok")
def c_decompose_meta_junk(c):
    d = copytree(c.fx / "dec", c.d / "d")
    with open(d / "metadata.jsonl", "a") as f:
        f.write("[]\n")
    return {"argv": decompose(c.fx / "vids", d), "check": lambda r: aligned(d, 2)}


@case(3, "decompose: a dangling symlink gone.mp4 among the sources, run twice", "ok")
def c_decompose_dangling(c):
    v = copytree(c.fx / "vids", c.d / "v")
    (v / "gone.mp4").symlink_to(c.d / "nowhere.mp4")
    argv = decompose(v, c.d / "d")

    def check(r):
        again = run(argv, c.d)
        if again.returncode != 0 or "Traceback" in again.stderr:
            return f"rerun failed: {last_line(again.stderr)}"
        return aligned(c.d / "d", 2)
    return {"argv": argv, "check": check}


@case(3, "decompose --segmenter gt: one source's mask video has fewer frames than the source", "ok")
def c_decompose_short_mask(c):
    from plumbing.video import mask_to_rgb
    m = c.d / "m"
    m.mkdir()
    vid(m / "toy0.mp4", mask_to_rgb(toyclip(0, 25)["mask"]))
    vid(m / "toy1.mp4", mask_to_rgb(toyclip(1, 13)["mask"]))

    def check(r):
        return aligned(c.d / "d", 1) or (None if any(x.get("status") == "error" for x in
                                                     records(c.d / "d" / "metadata.jsonl")) else "no error record")
    return {"argv": decompose(c.fx / "vids", c.d / "d", "--segmenter", "gt", "--masks", m), "check": check}


# ---- class 4: text and names in line-based files -------------------------------------------------------------


def caps_case(c, content, want, name="caps.tsv"):
    caps = c.d / name
    caps.write_bytes(content)

    def check(r):
        got = sorted(list_lines(c.d / "d", "prompts.txt"))
        return aligned(c.d / "d", 2) or (None if got == sorted(want) else f"prompts.txt holds {got}")
    return {"argv": decompose(c.fx / "vids", c.d / "d", "--captioner", "file", "--captions", caps), "check": check}


@case(4, "decompose --captions TSV whose caption holds U+2028", "ok")
def c_caps_u2028(c):
    return caps_case(c, "toy0\ta red\u2028toy\ntoy1\ta blue toy\n".encode(), ["a red toy", "a blue toy"])


@case(4, "decompose --captions JSONL whose caption holds a raw U+0085 (valid JSON)", "ok")
def c_caps_u0085(c):
    text = '{"video": "toy0", "caption": "a red\u0085toy"}\n{"video": "toy1", "caption": "a blue toy"}\n'
    return caps_case(c, text.encode(), ["a red toy", "a blue toy"], "caps.jsonl")


@case(4, "decompose --captions TSV saved with a UTF-8 BOM", "ok")
def c_caps_bom(c):
    return caps_case(c, b"\xef\xbb\xbf" + "toy0\ta red toy\ntoy1\ta blue toy\n".encode(), ["a red toy", "a blue toy"])


@case(4, "decompose --captions TSV with old-Mac CR-only line ends", "ok")
def c_caps_cr(c):
    return caps_case(c, b"toy0\ta red toy\rtoy1\ta blue toy\r", ["a red toy", "a blue toy"])


@case(4, "decompose --captions JSONL with Windows CRLF and a caption holding \\r\\n (escaped)", "ok")
def c_caps_crlf(c):
    text = '{"video": "toy0", "caption": "a red\\r\\ntoy"}\r\n{"video": "toy1", "caption": "a blue toy"}\r\n'
    return caps_case(c, text.encode(), ["a red toy", "a blue toy"], "caps.jsonl")


def template_case(c, template):
    def check(r):
        return aligned(c.d / "d", 2)
    return {"argv": decompose(c.fx / "vids", c.d / "d", "--template", template), "check": check}


@case(4, "decompose --template 'a clip\\u2028of {stem}'", "ok")
def c_template_u2028(c):
    return template_case(c, "a clip\u2028of {stem}")


@case(4, "decompose --template '{stem}\\r\\x85 walks'", "ok")
def c_template_cr_nel(c):
    return template_case(c, "{stem}\r\x85 walks")


def names_case(c, names, n):
    v = c.d / "v"
    v.mkdir()
    for i, name in enumerate(names):
        p = v / name
        if name.endswith("/"):
            p.mkdir()
            for k, fr in enumerate(toyclip(20 + i, 25)["video"]):
                image(p / f"{k:03d}.png", fr)
        else:
            vid(p, toyclip(20 + i, 25)["video"])
    return {"argv": decompose(v, c.d / "d"), "check": lambda r: aligned(c.d / "d", n)}


@case(4, "decompose: a source named 'toy\\n0.mp4' (newline in the name) beside toy1.mp4", "ok")
def c_newline_name(c):
    return names_case(c, ["toy\n0.mp4", "toy1.mp4"], 2)


@case(4, "decompose: 'x.MP4' beside 'x.mp4'", "ok")
def c_case_names(c):
    return names_case(c, ["x.MP4", "x.mp4"], 2)


@case(4, "decompose: '日本.mp4' beside '中国.mp4' (names with no ASCII letter)", "ok")
def c_cjk_names(c):
    return names_case(c, ["日本.mp4", "中国.mp4"], 2)


@case(4, "decompose: 'a.mp4' beside a PNG-frame folder 'a/'", "ok")
def c_file_and_folder(c):
    return names_case(c, ["a.mp4", "a/"], 2)


@case(4, "train: every list with a BOM and CRLF line ends, captions holding U+2028 and U+0085", "ok")
def c_train_lists(c):
    d = data_copy(c)
    for name in ("prompts.txt", "videos.txt", "fg.txt", "bg.txt", "masks.txt"):
        lines = list_lines(d, name)
        if name == "prompts.txt":
            lines[0] = lines[0].replace(" ", "\u2028", 1)
            lines[1] = lines[1].replace(" ", "\x85", 1)
        (d / name).write_bytes(b"\xef\xbb\xbf" + "".join(x + "\r\n" for x in lines).encode())
    return {"argv": train(d, c.d / "run"),
            "check": lambda r: None if "data: 4 clips" in r.stdout else f"not 4 clips: {r.stdout[:200]}"}


@case(4, "train: videos.txt / fg.txt lines with trailing blanks and tabs", "ok")
def c_train_list_blanks(c):
    d = data_copy(c)
    for name in ("videos.txt", "fg.txt"):
        (d / name).write_text("".join(x + " \t \n" for x in list_lines(d, name)))
    return {"argv": train(d, c.d / "run"),
            "check": lambda r: None if "data: 4 clips" in r.stdout else "not 4 clips"}


@case(4, "sample --prompt 'a red\\r\\nboat\\u2028at sea' into a folder", "ok")
def c_prompt_crlf(c):
    p = "a red\r\nboat\u2028at sea"

    def check(r):
        got = by_id(c.d / "o" / "results.jsonl").get("result", {}).get("prompt")
        return None if got == p else f"record prompt {got!r}"
    return {"argv": sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--prompt", p, "--out", c.d / "o"),
            "check": check}


@case(4, "triplets file with CRLF line ends and a raw U+2028 inside a prompt", "ok")
def c_triplets_crlf(c):
    t = triplet_dir(c, [], raw=b"")
    json_lines(t, ['{"id": "a", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": "a red\u2028boat"}',
                   {"id": "ok", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": "x"}], newline="\r\n")

    def check(r):
        recs = by_id(c.d / "o" / "results.jsonl")
        if [recs.get(i, {}).get("status") for i in ("a", "ok")] != ["ok", "ok"]:
            return f"not both composed: {[(k, v.get('status')) for k, v in recs.items()]}"
        return None if recs["a"].get("prompt") == "a red\u2028boat" else f"prompt {recs['a'].get('prompt')!r}"
    return {"argv": sample("--triplets", t, "--out", c.d / "o"), "check": check}


@case(4, "triplets file = two BOM'd UTF-8 files concatenated (a BOM mid-file)", "ok",
      note="ambiguous: a BOM inside a file is not valid JSON, but `cat a.jsonl b.jsonl` makes one")
def c_triplets_concat_bom(c):
    t = triplet_dir(c, [], raw=b"")
    a = b"\xef\xbb\xbf" + json.dumps({"id": "a", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": "x"}).encode() + b"\n"
    b = b"\xef\xbb\xbf" + json.dumps({"id": "ok", "fg": "fg.mp4", "bg": "bg.mp4", "prompt": "y"}).encode() + b"\n"
    t.write_bytes(a + b)

    def check(r):
        recs = by_id(c.d / "o" / "results.jsonl")
        st = {k: v.get("status") for k, v in recs.items()}
        return None if st == {"a": "ok", "ok": "ok"} else ("REFUSED", f"records: {st}")
    return {"argv": sample("--triplets", t, "--out", c.d / "o"), "check": check}


@case(4, "evaluate: results.jsonl with CRLF line ends", "ok")
def c_eval_crlf(c):
    d = c.d / "r"
    d.mkdir()
    json_lines(d / "results.jsonl", fx_records(c), newline="\r\n")
    return {"argv": cmd("evaluate.py", "results", d), "check": eval_ok(c, "r", 2)}


@case(4, "tally: an answers file saved with a UTF-8 BOM", "ok", note="ambiguous: browsers write no BOM; editors may")
def c_tally_bom(c):
    st = copytree(c.fx / "study", c.d / "study")
    key = json.loads((st / "key.json").read_text())
    ans = {"study": key["study"], "subject": "s1",
           "answers": {ex: {"fg_identity": "A"} for ex in key["examples"]}}
    (c.d / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(ans).encode())
    return {"argv": cmd("evaluate.py", "tally", st, c.d / "a.json"),
            "check": lambda r: None if (st / "tally.json").exists() else "no tally.json"}


@case(4, "train: prompts.txt in Latin-1 (one caption 'café')", "error")
def c_train_latin1(c):
    d = data_copy(c)
    lines = list_lines(d, "prompts.txt")
    lines[0] += " caf\u00e9"
    (d / "prompts.txt").write_bytes("".join(x + "\n" for x in lines).encode("latin-1"))
    return {"argv": train(d, c.d / "run"), "needles": ["prompts.txt"]}


# ---- class 5: time ----------------------------------------------------------------------------------------------


def fps_case(c, bg, want_fps, *extra, out="o.mp4", frames=9, grid=False):
    o = c.d / out

    def check(r):
        n, fps, _, _ = info(o)
        if n != frames or abs(fps - want_fps) > 0.02 * want_fps:
            return f"{n} frames at {fps:.3g} fps, expected {frames} at {want_fps:.3g}"
        if grid:
            g = o.with_name(f"{o.stem}_grid.gif")
            gn, gfps, _, _ = info(g)
            if gn != frames or abs(gfps - want_fps) > 0.05 * want_fps:
                return f"grid gif: {gn} frames at {gfps:.3g} fps, expected {frames} at {want_fps:.3g}"
        return None
    return {"argv": sample("--fg", c.fx / "fg.mp4", "--bg", bg, "--out", o, *extra, *(["--grid"] if grid else [])),
            "check": check}


@case(5, "a JPEG photo as --bg", "ok")
def c_jpeg_bg(c):
    return fps_case(c, image(c.d / "bg.jpg", toyclip(4)["bg"][0]), 8.0)


@case(5, "a 1-frame GIF as --bg", "ok")
def c_gif1_bg(c):
    from plumbing.video import write_video
    write_video(c.d / "bg.gif", toyclip(4)["bg"][:1], 8)
    return fps_case(c, c.d / "bg.gif", 8.0)


@case(5, "a 2-frame bg at 1 fps (2 s)", "ok")
def c_2frame_bg(c):
    return fps_case(c, vid(c.d / "bg.mp4", toyclip(4)["bg"][:2], 1), 4.5)


@case(5, "a variable-frame-rate bg: 9 frames at t = 0 .. 4.0 s, irregular", "ok")
def c_vfr_bg(c):
    bg = raw_mp4(c.d / "bg.mp4", toyclip(4)["bg"], times=[0, 0.1, 0.2, 0.3, 1.0, 1.5, 2.0, 3.5, 4.0])
    return fps_case(c, bg, 2.0)          # 9 frames over 4.0 * 9 / 8 = 4.5 s


@case(5, "--fps 2.7 --grid", "ok")
def c_fps27(c):
    return fps_case(c, c.fx / "bg.mp4", 2.7, "--fps", "2.7", grid=True)


@case(5, "--fps 0.4 --grid", "ok")
def c_fps04(c):
    return fps_case(c, c.fx / "bg.mp4", 0.4, "--fps", "0.4", grid=True)


@case(5, "--fps 0.1 (the lowest allowed)", "ok")
def c_fps01(c):
    return fps_case(c, c.fx / "bg.mp4", 0.1, "--fps", "0.1")


@case(5, "--fps 240 --grid (a GIF holds at most 100 fps)", "either")
def c_fps240_grid(c):
    def check(r):
        n, fps, _, _ = info(c.d / "o.mp4")
        if n != 9 or abs(fps - 240) > 1:
            return f"{n} frames at {fps:.3g} fps, expected 9 at 240"
        if not (c.d / "o_grid.gif").exists() and "gif" not in (r.stdout + r.stderr).lower():
            return "--grid wrote o_grid.mp4 but no o_grid.gif, and said nothing of it (--help promises .mp4 and .gif)"
        return None
    return {"argv": sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--out", c.d / "o.mp4", "--fps", "240",
                           "--grid"), "check": check}


@case(5, "a 17-frame slow-motion bg filmed at 960 fps, --grid", "either")
def c_slowmo_grid(c):
    bg = raw_mp4(c.d / "bg.mp4", toyclip(4, 17)["bg"], rate=960)
    return fps_case(c, bg, 9 / (17 / 960), grid=True)


@case(5, "a 9-frame bg filmed at 1200 fps (high-speed camera), no --fps", "either")
def c_highspeed(c):
    bg = raw_mp4(c.d / "bg.mp4", toyclip(4)["bg"], rate=1200)
    return fps_case(c, bg, 1200)


@case(5, "--triplets mixing a PNG-still bg and a 9-frame 3-fps bg in one batch", "ok")
def c_mixed_fps(c):
    image(c.d / "still.png", toyclip(4)["bg"][0])
    shutil.copy(c.fx / "bg3.mp4", c.d / "bg3.mp4")
    t = triplet_dir(c, [{"id": "s", "fg": "fg.mp4", "bg": "still.png", "prompt": "x"}])
    lines = [json.loads(x) for x in t.read_text().splitlines()]
    lines[1]["bg"] = "bg3.mp4"
    json_lines(t, lines)

    def check(r):
        got = {i: round(info(c.d / "o" / f"{i}.mp4")[1], 2) for i in ("s", "ok")}
        return None if got == {"s": 8.0, "ok": 3.0} else f"fps {got}, expected s: 8, ok: 3"
    return {"argv": sample("--triplets", t, "--out", c.d / "o"), "check": check}


@case(5, "toy.py data --fps 0", "error")
def c_toy_fps0(c):
    return {"argv": cmd("toy.py", "data", "--out", c.d / "d", "--clips", "1", "--fps", "0")}


@case(5, "decompose --fps 5000 (clips written at 5000 fps)", "error")
def c_decompose_fps(c):
    return {"argv": decompose(c.fx / "vids", c.d / "d", "--fps", "5000")}


@case(5, "toy.py triplets --fps 1001", "error")
def c_toy_fps_high(c):
    return {"argv": cmd("toy.py", "triplets", "--out", c.d / "t", "--n", "1", "--fps", "1001")}


@case(5, "a bg whose frames all carry the same timestamp (broken pts)", "either")
def c_same_pts(c):
    bg = raw_mp4(c.d / "bg.mp4", toyclip(4)["bg"][:2], times=[0, 0])
    r = subprocess.run(cmd("-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from plumbing.video import probe; "
                                 f"print(probe({str(bg)!r}))"), capture_output=True, text=True, env=ENV)
    if r.returncode:
        raise Skip("PyAV would not write two frames at one timestamp")
    return {"argv": sample("--fg", c.fx / "fg.mp4", "--bg", bg, "--out", c.d / "o.mp4"),
            "check": lambda r: None if info(c.d / "o.mp4")[0] == 9 else "not 9 frames"}


# ---- class 6: every flag range-checked before any model loads ---------------------------------------------


def refuse(*argv, needles=()):
    """A command that must be refused in one line, leaving none of the paths it names under CASE behind."""
    def f(c):
        fill = lambda a: str(a).replace("{d}", str(c.d)).replace("{fx}", str(c.fx))
        return {"argv": [fill(a) for a in argv], "needles": list(needles),
                "watch_absent": [Path(fill(a)) for a in argv if str(a).startswith("{d}/")]}
    return f


SFG = ["--fg", "{fx}/fg.mp4", "--bg", "{fx}/bg.mp4", "--out", "{d}/o"]
for title, extra, needles in [
        ("sample --device mps", ["--device", "mps"], ["--device"]),
        ("sample --device cuda:3", ["--device", "cuda:3"], ["--device"]),
        ("sample --fps nan", ["--fps", "nan"], ["--fps"]),
        ("sample --guidance=-inf", ["--guidance=-inf"], ["--guidance"]),
        ("sample --frames -1", ["--frames", "-1"], ["--frames"]),
        ("sample --size 48 48 (the toy composer's learned positions are 64x64)", ["--size", "48", "48"], ["--size"]),
        ("sample --size 64 -64", ["--size", "64", "-64"], ["--size"]),
        ("sample --batch -2", ["--batch", "-2"], ["--batch"])]:
    case(6, title, "error")(refuse(*sample(*SFG, *extra), needles=needles))

case(6, "sample --triplets T --mask M", "error")(refuse(
    *sample("--triplets", "{fx}/trip/triplets.jsonl", "--mask", "{fx}/mask.mp4", "--out", "{d}/o"),
    needles=["--triplets"]))
case(6, "sample --prompt '' alone (no --fg)", "error")(refuse(*sample("--prompt", "", "--out", "{d}/o"),
                                                               needles=["--prompt"]))
case(6, "sample --out x.GIF (a file) without --fg", "error")(refuse(*sample("--out", "{d}/x.GIF"), needles=["--out"]))


@case(6, "sample --frames 13 (the toy composer was trained at 9)", "either")
def c_frames13(c):
    return {"argv": sample(*[a.format(d=c.d, fx=c.fx) for a in SFG[:-1]], str(c.d / "o.mp4"), "--frames", "13"),
            "check": lambda r: None if info(c.d / "o.mp4")[0] == 13 else "not 13 frames"}


@case(6, "sample --frames 1", "either")
def c_frames1(c):
    return {"argv": sample(*[a.format(d=c.d, fx=c.fx) for a in SFG[:-1]], str(c.d / "o.mp4"), "--frames", "1"),
            "check": lambda r: None if info(c.d / "o.mp4")[0] == 1 else "not 1 frame"}


@case(6, "sample --seed 9223372036854775807 (2^63 - 1, the largest allowed)", "ok")
def c_seed_max(c):
    return {"argv": sample(*[a.format(d=c.d, fx=c.fx) for a in SFG[:-1]], str(c.d / "o.mp4"),
                           "--seed", str(2**63 - 1)),
            "check": lambda r: None if (c.d / "o.mp4").exists() else "no output"}


@case(6, "sample --device cpu:1", "either")
def c_device_cpu1(c):
    return {"argv": sample(*[a.format(d=c.d, fx=c.fx) for a in SFG[:-1]], str(c.d / "o.mp4"), "--device", "cpu:1"),
            "check": lambda r: None if (c.d / "o.mp4").exists() else "no output"}


def train_refuse(*extra, needles=()):
    def f(c):
        return {"argv": train(c.fx / "data", c.d / "run", *extra), "needles": list(needles),
                "watch_absent": [c.d / "run"]}
    return f


for title, extra, needles in [
        ("train --min-lr nan", ["--min-lr", "nan"], ["--min-lr"]),
        ("train --betas nan 0.999", ["--betas", "nan", "0.999"], ["--betas"]),
        ("train --betas 0.9 1.0", ["--betas", "0.9", "1.0"], ["--betas"]),
        ("train --eps inf", ["--eps", "inf"], ["--eps"]),
        ("train --wd nan", ["--wd", "nan"], ["--wd"]),
        ("train --clip nan", ["--clip", "nan"], ["--clip"]),
        ("train --fg-noise 1e308", ["--fg-noise", "1e308"], ["--fg-noise"]),
        ("train --bg-noise=-nan", ["--bg-noise=-nan"], ["--bg-noise"]),
        ("train --val-every 1 --val-guidance nan", ["--val-every", "1", "--val-guidance", "nan"], ["--val-guidance"]),
        ("train --crop-scale 0.5 inf", ["--crop-scale", "0.5", "inf"], ["--crop-scale"]),
        ("train --warmup -1", ["--warmup", "-1"], ["--warmup"]),
        ("train --alpha nan", ["--alpha", "nan"], ["--alpha"]),
        ("train --seed 9223372036854775808 (2^63)", ["--seed", str(2**63)], ["--seed"]),
        ("train --resume-with-new-flags without --resume", ["--resume-with-new-flags"], ["--resume"]),
        ("train --stride 0", ["--stride", "0"], ["--stride"])]:
    case(6, title, "error")(train_refuse(*extra, needles=needles))


@case(6, "train --lora 2 --lora-alpha inf (no --preset)", "error")
def c_lora_alpha(c):
    return {"argv": train(c.fx / "data", c.d / "run", "--lora", "2", "--lora-alpha", "inf", preset=False),
            "needles": ["--lora-alpha"], "watch_absent": [c.d / "run"]}


@case(6, "train --cache-dir a file", "error")
def c_cache_file(c):
    (c.d / "f").write_text("x")
    return {"argv": train(c.fx / "data", c.d / "run", "--cache-dir", c.d / "f"), "needles": ["--cache-dir"]}


@case(6, "train --threads 1099511627776 (2^40)", "either")
def c_threads_huge(c):
    return {"argv": train(c.fx / "data", c.d / "run", "--threads", str(2**40)),
            "check": lambda r: None if (c.d / "run" / "transformer").exists() else "no transformer/"}


@case(6, "train --seed 9223372036854775807 (2^63 - 1)", "ok")
def c_train_seed_max(c):
    return {"argv": train(c.fx / "data", c.d / "run", "--seed", str(2**63 - 1)),
            "check": lambda r: None if (c.d / "run" / "transformer").exists() else "no transformer/"}


@case(6, "train --preset toy --size 48 48 (the toy preset's learned positions are 64x64)", "either")
def c_train_size48(c):
    return {"argv": train(c.fx / "data", c.d / "run", "--size", "48", "48"),
            "check": lambda r: None if (c.d / "run" / "transformer").exists() else "no transformer/"}


@case(6, "train --preset toy --frames 5", "either")
def c_train_frames5(c):
    return {"argv": train(c.fx / "data", c.d / "run", "--frames", "5"),
            "check": lambda r: None if (c.d / "run" / "transformer").exists() else "no transformer/"}


@case(6, "train --resume --steps 1 on a run at step 2", "error")
def c_resume_steps_low(c):
    r = copytree(c.fx / "run", c.d / "run")
    return {"argv": train(c.fx / "data", r, "--resume", "--steps", "1"), "needles": ["--steps"], "watch": [r]}


@case(6, "train --resume --steps 4 --stop-at 2 on a run at step 2", "error")
def c_resume_stop_equal(c):
    r = copytree(c.fx / "run", c.d / "run")
    return {"argv": train(c.fx / "data", r, "--resume", "--steps", "4", "--stop-at", "2"), "needles": ["--stop-at"],
            "watch": [r]}


def split_refuse(*extra, needles=()):
    def f(c):
        return {"argv": decompose(c.fx / "vids", c.d / "d", *extra), "needles": list(needles),
                "watch_absent": [c.d / "d"]}
    return f


for title, extra, needles in [("decompose --static nan", ["--static", "nan"], ["--static"]),
                              ("decompose --min-fg nan", ["--min-fg", "nan"], ["--min-fg"]),
                              ("decompose --max-fg inf", ["--max-fg", "inf"], ["--max-fg"]),
                              ("decompose --strides 1000000", ["--strides", "1000000"], ["--strides"]),
                              ("decompose --remover-steps 0 --inpainter minimax", ["--remover-steps", "0",
                                                                                    "--inpainter", "minimax"],
                               ["--remover-steps"])]:
    case(6, title, "error")(split_refuse(*extra, needles=needles))


@case(6, "decompose --threads 1099511627776 (2^40)", "either")
def c_split_threads(c):
    return {"argv": decompose(c.fx / "vids", c.d / "d", "--threads", str(2**40)),
            "check": lambda r: aligned(c.d / "d", 2)}


def eval_flag(*extra, expect_words=()):
    def f(c):
        return {"argv": cmd("evaluate.py", "results", c.fx / "res", "--out", c.d / "e", *extra),
                "needles": list(expect_words), "check": lambda r: strict_json(c.d / "e" / "summary.json")}
    return f


case(6, "evaluate results --toy-threshold nan", "error")(eval_flag("--toy-threshold", "nan",
                                                                   expect_words=["--toy-threshold"]))
case(6, "evaluate results --cp-radius=-inf", "error")(eval_flag("--cp-radius=-inf", expect_words=["--cp-radius"]))
case(6, "evaluate results --cp-radius inf", "either")(eval_flag("--cp-radius", "inf"))
case(6, "evaluate results --max-side 1", "either")(eval_flag("--max-side", "1"))
case(6, "evaluate results --device cuda:3", "error")(eval_flag("--device", "cuda:3", expect_words=["--device"]))


@case(6, "evaluate judge --backend gemini with no API key in the environment", "error")
def c_judge_gemini(c):
    return {"argv": cmd("evaluate.py", "judge", c.fx / "res", c.fx / "res2", "--backend", "gemini", "--out",
                        c.d / "j")}


@case(6, "evaluate judge --judge-model a folder that does not exist", "error")
def c_judge_model(c):
    return {"argv": cmd("evaluate.py", "judge", c.fx / "res", c.fx / "res2", "--judge-model", c.d / "nope",
                        "--out", c.d / "j"), "needles": ["--judge-model"]}


@case(6, "evaluate study --study-n 3 (the runs share 2 triplets)", "error")
def c_study_n(c):
    return {"argv": cmd("evaluate.py", "study", c.fx / "res", c.fx / "res2", "--study-n", "3", "--out", c.d / "s"),
            "needles": ["--study-n"]}


case(6, "toy.py data --clips -1", "error")(refuse(*cmd("toy.py", "data", "--out", "{d}/d", "--clips", "-1"),
                                                   needles=["--clips"]))
case(6, "toy.py data --frames 8 (not 4k+1)", "error")(refuse(*cmd("toy.py", "data", "--out", "{d}/d", "--clips", "1",
                                                                  "--frames", "8"), needles=["--frames"]))
case(6, "toy.py data --size 0 0", "error")(refuse(*cmd("toy.py", "data", "--out", "{d}/d", "--clips", "1",
                                                       "--size", "0", "0"), needles=["--size"]))
case(6, "toy.py triplets --n 0", "error")(refuse(*cmd("toy.py", "triplets", "--out", "{d}/t", "--n", "0"),
                                                 needles=["--n"]))
case(6, "toy.py base --batch 0", "error")(refuse(*cmd("toy.py", "base", "--out", "{d}/b", "--batch", "0",
                                                      "--vae-steps", "1"), needles=["--batch"]))


# ---- class 7: a full disk (a 200 KiB tmpfs, filled) -------------------------------------------------------


def full_disk(c, argv_fn, free=0, needles=("could not write", "full/"), size="200k"):
    """The command on a full disk: one line naming the file, no temporary file left behind, and, once room is
    made, the same command runs to the end (what the message promises)."""
    m = c.tmpfs(free=free, size=size)
    argv = argv_fn(m)

    def check_err(r):
        left = [p.name for p in m.rglob("*") if p.is_file() and p.name != "filler" and not p.name.endswith(".lock")
                and (p.name.startswith((".", "tmp")) or p.suffix == ".tmp")]
        if left:
            return f"temporary files left behind: {left[:3]}"
        (m / "filler").unlink()
        again = run(argv, c.d, 240)
        if again.returncode != 0:
            kind = "TRACEBACK" if "Traceback" in again.stderr else "REFUSED"
            return kind, "room made, the same command then fails: " + (
                exc_line(again.stderr) if "Traceback" in again.stderr else last_line(again.stderr))
        return None
    return {"argv": argv, "needles": list(needles), "check_err": check_err}


@case(7, "sample one composition --out FULL/x.mp4", "error")
def c_full_sample_one(c):
    return full_disk(c, lambda m: sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--out", m / "x.mp4"))


@case(7, "sample --triplets --out FULL/r (12 KiB left)", "error")
def c_full_sample_batch(c):
    return full_disk(c, lambda m: sample("--triplets", c.fx / "trip" / "triplets.jsonl", "--out", m / "r"),
                     free=12288)


@case(7, "decompose --out FULL/d (16 KiB left)", "error")
def c_full_decompose(c):
    return full_disk(c, lambda m: decompose(c.fx / "vids", m / "d"), free=16384)


@case(7, "train --out FULL/run (a 96 MiB disk, 8 KiB left)", "error")
def c_full_train(c):
    return full_disk(c, lambda m: train(c.fx / "data", m / "run"), free=8192, size="96m")


@case(7, "train --cache-latents --cache-dir FULL/cache (a 16 MiB disk)", "error")
def c_full_cache(c):
    return full_disk(c, lambda m: train(c.fx / "data", c.d / "run", "--cache-latents", "--cache-dir", m / "cache"),
                     size="16m")


@case(7, "evaluate results --out FULL/e", "error")
def c_full_eval(c):
    return full_disk(c, lambda m: cmd("evaluate.py", "results", c.fx / "res", "--out", m / "e"))


@case(7, "evaluate study --out FULL/s", "error")
def c_full_study(c):
    return full_disk(c, lambda m: cmd("evaluate.py", "study", c.fx / "res", c.fx / "res2", "--out", m / "s"))


@case(7, "evaluate compare --out FULL/c", "error")
def c_full_compare(c):
    return full_disk(c, lambda m: cmd("evaluate.py", "compare", c.fx / "res", "--out", m / "c"))


@case(7, "toy.py data --out FULL/d", "error")
def c_full_toy_data(c):
    return full_disk(c, lambda m: cmd("toy.py", "data", "--out", m / "d", "--clips", "2"))


@case(7, "toy.py triplets --out FULL/t (4 KiB left)", "error")
def c_full_toy_triplets(c):
    return full_disk(c, lambda m: cmd("toy.py", "triplets", "--out", m / "t", "--n", "2"), free=4096)


# ---- class 8: code from files ---------------------------------------------------------------------------------


def toy_base_resume(c, make):
    out = c.d / "b"
    make(c.d / "b.ckpt.pt")
    return {"argv": cmd("toy.py", "base", "--out", out, "--resume", "--vae-steps", "2", "--minutes", "1", "--batch",
                        "1", "--scale-clips", "16", "--eval-clips", "8"), "marker": c.d / "PWNED"}


@case(8, "toy.py base --resume with <out>.ckpt.pt a crafted pickle (runs `touch`)", "error")
def c_toy_ckpt_pickle(c):
    return toy_base_resume(c, lambda p: crafted_pickle(p, c.d / "PWNED"))


@case(8, "toy.py base --resume with <out>.ckpt.pt = torch.save({'step': 1})", "error")
def c_toy_ckpt_dict(c):
    import torch
    return toy_base_resume(c, lambda p: torch.save({"step": 1}, p))


@case(8, "toy.py base --resume with <out>.ckpt.pt = torch.save([1, 2])", "error")
def c_toy_ckpt_list(c):
    import torch
    return toy_base_resume(c, lambda p: torch.save([1, 2], p))


@case(8, "train --resume: newest checkpoint's .metadata a crafted pickle, step.json's sha256 updated to match",
      "either", note="docs/--help say step.json is trusted: whoever can rewrite it can run code")
def c_dcp_pickle_sha(c):
    r = copytree(c.fx / "run", c.d / "run")
    ck = r / "ckpt" / "step_0000002"
    crafted_pickle(ck / ".metadata", c.d / "PWNED")
    rec = json.loads((ck / "step.json").read_text())
    rec["metadata_sha256"] = sha256(ck / ".metadata")
    (ck / "step.json").write_text(json.dumps(rec))
    return {"argv": train(c.fx / "data", r, "--resume", "--steps", "3"), "marker": c.d / "PWNED",
            "check": lambda res: None if "step_0000001" in res.stdout else "not resumed from the older checkpoint"}


@case(8, "train --resume: a checkpoint's step.json says {\"step\": \"two\"}", "either")
def c_stepjson_str(c):
    r = copytree(c.fx / "run", c.d / "run")
    ck = r / "ckpt" / "step_0000002"
    rec = json.loads((ck / "step.json").read_text())
    (ck / "step.json").write_text(json.dumps({**rec, "step": "two"}))
    return {"argv": train(c.fx / "data", r, "--resume", "--steps", "3")}


@case(8, "train --resume: a checkpoint's step.json is a JSON list", "either")
def c_stepjson_list(c):
    r = copytree(c.fx / "run", c.d / "run")
    (r / "ckpt" / "step_0000002" / "step.json").write_text("[]")
    return {"argv": train(c.fx / "data", r, "--resume", "--steps", "3")}


@case(8, "train --resume: a folder ckpt/step_old (a user's backup copy) beside the checkpoints", "either")
def c_step_old(c):
    r = copytree(c.fx / "run", c.d / "run")
    (r / "ckpt" / "step_old").mkdir()
    return {"argv": train(c.fx / "data", r, "--resume", "--steps", "3")}


@case(8, "evaluate results --swin a crafted pickle .pth", "error")
def c_swin_pickle(c):
    p = crafted_pickle(c.d / "swin.pth", c.d / "PWNED")
    return {"argv": cmd("evaluate.py", "results", c.fx / "res", "--out", c.d / "e", "--swin", p),
            "marker": c.d / "PWNED"}


@case(8, "evaluate results --raft a crafted pickle .pth", "error")
def c_raft_pickle(c):
    p = crafted_pickle(c.d / "raft.pth", c.d / "PWNED")
    return {"argv": cmd("evaluate.py", "results", c.fx / "res", "--out", c.d / "e", "--raft", p),
            "marker": c.d / "PWNED"}


@case(8, "evaluate results --viclip a crafted pickle .pth", "error")
def c_viclip_pickle(c):
    p = crafted_pickle(c.d / "viclip.pth", c.d / "PWNED")
    return {"argv": cmd("evaluate.py", "results", c.fx / "res", "--out", c.d / "e", "--viclip", p),
            "marker": c.d / "PWNED"}


@case(8, "sample --ckpt a folder with config.json + a crafted diffusion_pytorch_model.bin", "error")
def c_ckpt_bin(c):
    ck = c.d / "ck"
    ck.mkdir()
    shutil.copy(COMPOSER / "transformer" / "config.json", ck / "config.json")
    crafted_pickle(ck / "diffusion_pytorch_model.bin", c.d / "PWNED")
    return {"argv": sample("--ckpt", ck, "--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--out", c.d / "o.mp4"),
            "marker": c.d / "PWNED", "needles": [str(ck)]}


@case(8, "train --model a base whose text_encoder holds only a crafted pytorch_model.bin", "error")
def c_model_bin(c):
    b = copytree(BASE, c.d / "base")
    (b / "text_encoder" / "model.safetensors").unlink()
    crafted_pickle(b / "text_encoder" / "pytorch_model.bin", c.d / "PWNED")
    return {"argv": train(c.fx / "data", c.d / "run", model=b), "marker": c.d / "PWNED", "needles": ["--model"]}


@case(8, "toy.py base --init a folder whose vae/ holds only a crafted .bin", "error")
def c_init_bin(c):
    i = c.d / "init"
    (i / "vae").mkdir(parents=True)
    shutil.copy(BASE / "vae" / "config.json", i / "vae" / "config.json")
    crafted_pickle(i / "vae" / "diffusion_pytorch_model.bin", c.d / "PWNED")
    return {"argv": cmd("toy.py", "base", "--out", c.d / "b", "--init", i, "--vae-steps", "1", "--minutes", "1",
                        "--batch", "1", "--scale-clips", "16", "--eval-clips", "8"), "marker": c.d / "PWNED"}


@case(8, "lora.py OUT whose lora/ holds lora_config.json and only a crafted adapter_model.bin", "error")
def c_lora_bin(c):
    lo = c.d / "run" / "lora"
    lo.mkdir(parents=True)
    (lo / "lora_config.json").write_text(json.dumps({"rank": 2, "alpha": 2, "targets": ["attn1.to_q"],
                                                     "base_model": str(BASE)}))
    crafted_pickle(lo / "adapter_model.bin", c.d / "PWNED")
    return {"argv": cmd("lora.py", c.d / "run"), "marker": c.d / "PWNED"}


# ---- class 9: the mp4 writer is deterministic ---------------------------------------------------------------

WRITE = ("import sys; sys.path.insert(0, {root!r}); import numpy as np; from fractions import Fraction; "
         "from plumbing.video import write_video; rng = np.random.default_rng(7); "
         "x = rng.integers(0, 255, {shape}, dtype=np.uint8); x[:, ::7] //= 3; "
         "write_video({path!r}, x, {fps})")


def same_bytes(a, b):
    def check(r):
        if not Path(a).exists() or not Path(b).exists():
            return "a file is missing"
        return None if sha256(a) == sha256(b) else f"{Path(a).name} and {Path(b).name} differ for the same frames"
    return check


def twice(c, shape, ext="mp4", fps="8", fps2=None, env2=None):
    a, b = c.d / f"a.{ext}", c.d / f"b.{ext}"
    c.sh(cmd("-c", WRITE.format(root=str(ROOT), shape=shape, path=str(a), fps=fps)))
    return {"argv": cmd("-c", WRITE.format(root=str(ROOT), shape=shape, path=str(b), fps=fps2 or fps)),
            "env": env2, "check": same_bytes(a, b)}


@case(9, "write_video: 17 frames of 480x720 noise, in two processes", "ok", timeout=240)
def c_det_big(c):
    return twice(c, "(17, 480, 720, 3)")


@case(9, "write_video: odd size 63x65, in two processes", "ok")
def c_det_odd(c):
    return twice(c, "(9, 63, 65, 3)")


@case(9, "write_video GIF: 9 frames 64x96, in two processes", "ok")
def c_det_gif(c):
    return twice(c, "(9, 64, 96, 3)", ext="gif")


@case(9, "write_video: OMP_NUM_THREADS=1 then 4", "ok")
def c_det_threads(c):
    return twice(c, "(9, 240, 320, 3)", env2={"OMP_NUM_THREADS": "4"})


@case(9, "write_video: fps 2.7 then Fraction(27, 10)", "ok")
def c_det_fraction(c):
    return twice(c, "(9, 64, 64, 3)", fps="2.7", fps2="Fraction(27, 10)")


@case(9, "write_video: the same frames twice in one process", "ok")
def c_det_same_process(c):
    a, b = c.d / "a.mp4", c.d / "b.mp4"
    code = WRITE.format(root=str(ROOT), shape="(33, 128, 128, 3)", path=str(a), fps=8) + \
        f"; write_video({str(b)!r}, x, 8)"
    return {"argv": cmd("-c", code), "check": same_bytes(a, b)}


@case(9, "sample: the same composition twice (same seed), two processes", "ok")
def c_det_sample(c):
    c.sh(sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--out", c.d / "a.mp4"))
    return {"argv": sample("--fg", c.fx / "fg.mp4", "--bg", c.fx / "bg.mp4", "--out", c.d / "b.mp4"),
            "check": same_bytes(c.d / "a.mp4", c.d / "b.mp4")}


@case(9, "decompose: the same sources into two folders", "ok")
def c_det_decompose(c):
    c.sh(decompose(c.fx / "vids", c.d / "a"))

    def check(r):
        fa = sorted(p.relative_to(c.d / "a") for p in (c.d / "a").rglob("*.mp4"))
        diff = [str(p) for p in fa if sha256(c.d / "a" / p) != sha256(c.d / "b" / p)]
        return f"differ: {diff}" if diff else None
    return {"argv": decompose(c.fx / "vids", c.d / "b"), "check": check}


@case(9, "toy.py triplets twice into two folders", "ok")
def c_det_triplets(c):
    c.sh(cmd("toy.py", "triplets", "--out", c.d / "a", "--n", "1"))

    def check(r):
        fa = sorted(p.relative_to(c.d / "a") for p in (c.d / "a").rglob("*.mp4"))
        diff = [str(p) for p in fa if sha256(c.d / "a" / p) != sha256(c.d / "b" / p)]
        return f"differ: {diff}" if diff else None
    return {"argv": cmd("toy.py", "triplets", "--out", c.d / "b", "--n", "1"), "check": check}


# ---- class 10: smaller ones -------------------------------------------------------------------------------------


case(10, "lora.py on a dataset folder (no lora/)", "error")(refuse(*cmd("lora.py", "{fx}/data")))
case(10, "lora.py on a path that does not exist", "error")(refuse(*cmd("lora.py", "{d}/nope"), needles=["nope"]))


@case(10, "lora.py on a file", "error")
def c_lora_file(c):
    (c.d / "f.txt").write_text("x")
    return {"argv": cmd("lora.py", c.d / "f.txt"), "needles": ["f.txt"]}


@case(10, "lora.py: lora/lora_config.json is a JSON list", "error")
def c_lora_cfg_list(c):
    (c.d / "run" / "lora").mkdir(parents=True)
    (c.d / "run" / "lora" / "lora_config.json").write_text("[1, 2]")
    return {"argv": cmd("lora.py", c.d / "run"), "needles": ["lora_config.json"]}


@case(10, "lora.py: lora_config.json fine, pytorch_lora_weights.safetensors missing", "error")
def c_lora_no_weights(c):
    (c.d / "run" / "lora").mkdir(parents=True)
    (c.d / "run" / "lora" / "lora_config.json").write_text(json.dumps(
        {"rank": 2, "alpha": 2, "targets": ["attn1.to_q"], "base_model": str(c.fx / "base-t")}))
    return {"argv": cmd("lora.py", c.d / "run"), "needles": ["pytorch_lora_weights"]}


@case(10, "lora.py on a LoRA run whose pytorch_lora_weights.safetensors is cut short", "error")
def c_lora_truncated(c):
    r = copytree(c.fx / "lora", c.d / "run")
    w = r / "lora" / "pytorch_lora_weights.safetensors"
    w.write_bytes(w.read_bytes()[:200])
    return {"argv": cmd("lora.py", r), "needles": ["pytorch_lora_weights"], "watch_absent": [r / "transformer"]}


@case(10, "lora.py LORA_RUN --model assets/toy-base (a base without a transformer)", "error")
def c_lora_wrong_base(c):
    r = copytree(c.fx / "lora", c.d / "run")
    return {"argv": cmd("lora.py", r, "--model", BASE), "needles": ["toy-base"], "watch_absent": [r / "transformer"]}


@case(10, "lora.py: lora_config.json says \"rank\": \"two\"", "error")
def c_lora_rank_str(c):
    r = copytree(c.fx / "lora", c.d / "run")
    cfg = json.loads((r / "lora" / "lora_config.json").read_text())
    (r / "lora" / "lora_config.json").write_text(json.dumps({**cfg, "rank": "two"}))
    return {"argv": cmd("lora.py", r), "needles": ["lora_config.json"], "watch_absent": [r / "transformer"]}


@case(10, "sample --ckpt LORA_RUN --model assets/toy-base (the adapter's base has a transformer, this one none)",
      "error")
def c_sample_lora_wrong_base(c):
    return {"argv": sample("--ckpt", c.fx / "lora", "--model", BASE, "--fg", c.fx / "fg.mp4", "--bg",
                           c.fx / "bg.mp4", "--out", c.d / "o.mp4"), "needles": ["--model"]}


@case(10, "lora.py on a LoRA run, twice (the second merge replaces the first's transformer/)", "ok")
def c_lora_twice(c):
    r = copytree(c.fx / "lora", c.d / "run")
    c.sh(cmd("lora.py", r))
    before = snapshot([r / "transformer"])

    def check(res):
        return None if snapshot([r / "transformer"]) == before else "the same merge gave other bytes"
    return {"argv": cmd("lora.py", r), "check": check}


@case(10, "decompose --preview: one clip's mask deleted and its fg replaced by a folder", "ok")
def c_preview_missing(c):
    d = copytree(c.fx / "dec", c.d / "d")
    r0 = [r for r in records(d / "metadata.jsonl") if r.get("status") == "ok"][0]
    (d / r0["masks"]).unlink()
    (d / r0["fg"]).unlink()
    (d / r0["fg"]).mkdir()
    return {"argv": cmd("decompose.py", "--preview", d),
            "check": lambda r: None if "cannot be shown" in (d / "preview.html").read_text() else "no word of it"}


@case(10, "decompose --preview: metadata.jsonl holds a stray '[1]' line", "ok")
def c_preview_junk(c):
    d = copytree(c.fx / "dec", c.d / "d")
    with open(d / "metadata.jsonl", "a") as f:
        f.write("[1]\n")
    return {"argv": cmd("decompose.py", "--preview", d),
            "check": lambda r: None if (d / "preview.html").exists() else "no preview.html"}


@case(10, "decompose --preview: a kept record whose fg_ratio is null", "ok")
def c_preview_null_ratio(c):
    d = copytree(c.fx / "dec", c.d / "d")
    recs = records(d / "metadata.jsonl")
    recs[0]["fg_ratio"] = None
    json_lines(d / "metadata.jsonl", recs)
    return {"argv": cmd("decompose.py", "--preview", d),
            "check": lambda r: None if (d / "preview.html").exists() else "no preview.html"}


case(10, "decompose --preview on a folder that does not exist", "error")(refuse(
    *cmd("decompose.py", "--preview", "{d}/nope"), needles=["nope"]))


def eval_masks(c, mask_maker, fg_maker=None, result_maker=None):
    """FX/res's records with other masks / fgs / results, as a hand-made results.jsonl (no sample.py input stamps:
    these inputs are the ones the results go with)."""
    recs = [{k: v for k, v in r.items() if k != "input_stamps"} for r in fx_records(c)]
    d = c.d / "r"
    d.mkdir()
    for r in recs:
        if mask_maker:
            r["mask"] = str(mask_maker(d, r))
        if fg_maker:
            r["fg"] = str(fg_maker(d, r))
        if result_maker:
            r["result"] = str(result_maker(d, r))
    json_lines(d / "results.jsonl", recs)

    return {"argv": cmd("evaluate.py", "results", d), "check": eval_ok(c, "r")}


@case(10, "evaluate: every mask a mid-grey (127) video (below the threshold: empty)", "ok")
def c_eval_grey_mask(c):
    import numpy as np
    return eval_masks(c, lambda d, r: vid(d / f"m{r['id']}.mp4", np.full((9, 64, 64, 3), 127, np.uint8)))


@case(10, "evaluate: every mask a folder of all-white PNGs", "ok")
def c_eval_white_png_mask(c):
    import numpy as np

    def mk(d, r):
        f = d / f"m{r['id']}"
        f.mkdir()
        for i in range(9):
            image(f / f"{i:03d}.png", np.full((64, 64, 3), 255, np.uint8))
        return f
    return eval_masks(c, mk)


@case(10, "evaluate: every result an all-black video", "ok")
def c_eval_black_result(c):
    import numpy as np
    return eval_masks(c, None, result_maker=lambda d, r: vid(d / f"g{r['id']}.mp4", np.zeros((9, 64, 64, 3), np.uint8)))


@case(10, "evaluate: all-white mask with an all-black fg", "ok")
def c_eval_white_mask_black_fg(c):
    import numpy as np
    return eval_masks(c, lambda d, r: vid(d / f"m{r['id']}.mp4", np.full((9, 64, 64, 3), 255, np.uint8)),
                      fg_maker=lambda d, r: vid(d / f"f{r['id']}.mp4", np.zeros((9, 64, 64, 3), np.uint8)))


case(10, "python -m plumbing.dataset on an empty folder", "error")(refuse(*cmd("-m", "plumbing.dataset", "{d}"),
                                                                           needles=["videos.txt"]))


@case(10, "python -m plumbing.dataset on a dataset whose fg.txt is one line short", "error")
def c_dataset_short(c):
    d = data_copy(c)
    (d / "fg.txt").write_text("".join(x + "\n" for x in list_lines(d, "fg.txt")[:-1]))
    return {"argv": cmd("-m", "plumbing.dataset", d), "needles": ["fg.txt"]}


@case(10, "train: the release's metadata.csv saved with a BOM, clip 0 is_training=False", "ok")
def c_train_csv_bom(c):
    d = data_copy(c)
    (d / "metadata.csv").write_bytes(b"\xef\xbb\xbfis_training,main_train_foreground_volume\r\n"
                                     b"False,True\r\nTrue,True\r\nTrue,True\r\nTrue,True\r\n")
    return {"argv": train(d, c.d / "run"),
            "check": lambda r: None if "data: 3 clips" in r.stdout else
            "the validation-only clip was trained on: " + next((x for x in lines_of(r.stdout) if x.startswith("data:")),
                                                               "?")}


@case(10, "tally: an answers file that is a JSON list", "error")
def c_tally_list(c):
    (c.d / "a.json").write_text("[]")
    st = copytree(c.fx / "study", c.d / "study")
    return {"argv": cmd("evaluate.py", "tally", st, c.d / "a.json"), "needles": ["a.json"]}


@case(10, "tally: an empty answers file", "error")
def c_tally_empty(c):
    (c.d / "a.json").write_text("")
    st = copytree(c.fx / "study", c.d / "study")
    return {"argv": cmd("evaluate.py", "tally", st, c.d / "a.json"), "needles": ["a.json"]}


@case(10, "tally: a study folder whose key.json is a JSON list", "error")
def c_tally_key_list(c):
    st = copytree(c.fx / "study", c.d / "study")
    (st / "key.json").write_text("[]")
    (c.d / "a.json").write_text(json.dumps({"study": "x", "answers": {}}))
    return {"argv": cmd("evaluate.py", "tally", st, c.d / "a.json"), "needles": ["key.json"]}


@case(10, "evaluate compare a folder whose metrics.jsonl is empty", "either")
def c_compare_empty(c):
    (c.d / "ev").mkdir()
    (c.d / "ev" / "metrics.jsonl").write_text("")
    return {"argv": cmd("evaluate.py", "compare", c.d / "ev")}


@case(10, "evaluate results on a folder whose results.jsonl is a directory", "error")
def c_eval_results_dir(c):
    (c.d / "r" / "results.jsonl").mkdir(parents=True)
    return {"argv": cmd("evaluate.py", "results", c.d / "r"), "needles": ["results.jsonl"]}


# ---------------------------------------------------------------------------------------------
# Fixtures, running, classifying, the report
# ---------------------------------------------------------------------------------------------


def fixtures(fx):
    """Tiny inputs every case reads (made once; a rerun of the probe reuses them)."""
    fx.mkdir(parents=True, exist_ok=True)
    done = fx / ".complete"
    if done.exists():
        return
    c = Ctx(fx, fx)

    def need(path, argv):
        if not Path(path).exists():
            c.sh(argv, timeout=600)
    need(fx / "trip" / "triplets.jsonl", cmd("toy.py", "triplets", "--out", fx / "trip", "--n", "2"))
    for k in ("fg", "mask", "bg"):
        shutil.copy(fx / "trip" / "t0000" / f"{k}.mp4", fx / f"{k}.mp4")
    vid(fx / "bg3.mp4", toyclip(6)["bg"], 3)
    need(fx / "data" / "videos.txt", cmd("toy.py", "data", "--out", fx / "data", "--clips", "4"))
    need(fx / "run" / "transformer", train(fx / "data", fx / "run"))
    need(fx / "res" / "results.jsonl", sample("--triplets", fx / "trip" / "triplets.jsonl", "--out", fx / "res"))
    need(fx / "res2" / "results.jsonl", sample("--triplets", fx / "trip" / "triplets.jsonl", "--seed", "1",
                                              "--out", fx / "res2"))
    need(fx / "res" / "eval" / "summary.json", cmd("evaluate.py", "results", fx / "res"))
    need(fx / "study" / "key.json", cmd("evaluate.py", "study", fx / "res", fx / "res2", "--out", fx / "study"))
    (fx / "vids").mkdir(exist_ok=True)
    for s in (0, 1):
        vid(fx / "vids" / f"toy{s}.mp4", toyclip(s, 25)["video"])
    need(fx / "dec" / "videos.txt", decompose(fx / "vids", fx / "dec"))
    if not (fx / "base-t" / "transformer").exists():          # a base with a transformer, for LoRA
        shutil.rmtree(fx / "base-t", ignore_errors=True)
        copytree(BASE, fx / "base-t")
        copytree(fx / "run" / "transformer", fx / "base-t" / "transformer")
    need(fx / "lora" / "lora" / "lora_config.json", train(fx / "data", fx / "lora", "--lora", "2", "--steps", "1",
                                                         model=fx / "base-t", preset=False))
    done.write_text("ok\n")


def short(argv, ctx=None, out=None):
    """A command line for the table: python, the repository, the case and fixture folders as placeholders."""
    s = " ".join(json.dumps(a) if (not a or any(ch in a for ch in " \n\r\t'\"") or not a.isprintable()) else a
                 for a in map(str, argv))
    s = s.replace(PY, "python").replace(str(ROOT) + "/", "")
    if ctx is not None:
        s = s.replace(str(ctx.d), "CASE").replace(str(ctx.fx), "FX")
    if out is not None:
        s = s.replace(str(out), "OUT")
    s = s.replace(TINY, " [tiny]").replace(FASTS, " [fast]").replace(
        "sample.py --ckpt assets/toy-composer --steps 1", "sample.py [toy]")
    if "-c" in argv[:2]:
        s = "python -c " + "'" + argv[2][:60].replace(str(ROOT), "ROOT") + "...'"
    return s


TINY = " " + " ".join(train_args("D", "O")[train_args("D", "O").index("--batch"):])
FASTS = " " + " ".join(FAST)


def places(text, ctx):
    """Paths in a message as the table's placeholders."""
    return str(text).replace(str(ctx.d), "CASE").replace(str(ctx.fx), "FX").replace(str(ROOT) + "/", "")


def classify(case, spec, r, before, before_entries, marker):
    """-> (outcome, message)."""
    err = r.stderr
    if marker is not None and Path(marker).exists():
        return "CODE", f"the crafted file ran code: {Path(marker).name} was created"
    if before is not None:
        after = snapshot(spec.get("watch", []))
        gone = [k for k in before if k not in after]
        changed = [k for k in before if k in after and after[k] != before[k]]
        added = sorted(entries(spec.get("watch_new", [])) - before_entries)
        if gone or changed or added:
            what = [f"changed {Path(k).name}" for k in changed[:3]] + [f"gone {Path(k).name}" for k in gone[:3]] + \
                [f"added {Path(k).name}{'/' if Path(k).is_dir() else ''} to the input folder" for k in added[:3]]
            tail = f" (exit {r.returncode})" + (f": {exc_line(err)}" if "Traceback" in err else "")
            return "LOST", "; ".join(what) + tail
    if r.timed_out:
        return "HANG", f"no end after {case.timeout} s"
    if "Traceback (most recent call last)" in err and r.returncode == 0:
        first = exc_lines(err)
        return "TRACEBACK", f"exit 0, but a traceback is printed: {first[0] if first else last_line(err)}"
    if "Traceback (most recent call last)" in err or r.returncode not in (0, 1, 2):
        return "TRACEBACK", exc_line(err) if "Traceback" in err else f"exit {r.returncode}: {last_line(err)}"
    check = spec.get("check")
    if r.returncode == 0:
        if case.expect == "error":
            said = [x for x in (last_line(r.stdout), last_line(err)) if x]
            why = "exit 0, no refusal: " + (spec.get("silent") or " / ".join(said))
            for p in spec.get("watch_absent", []):
                if Path(p).exists():
                    why += f" (wrote {Path(p).name}/)"
            return "SILENT", why
        try:
            problem = check(r) if check else None
        except Exception as e:                                   # the outputs are not what they should be
            problem = f"the outputs cannot be checked: {type(e).__name__}: {e}"
        if problem:
            kind, msg = problem if isinstance(problem, tuple) else ("SILENT", problem)
            return kind, msg
        return "OK", "success: " + (last_line(r.stdout) or "exit 0")
    last = error_line(err) or last_line(r.stdout)
    if case.expect == "ok":
        return "REFUSED", last
    if spec.get("check_err"):
        problem = spec["check_err"](r)
        if problem:
            kind, msg = problem if isinstance(problem, tuple) else ("SILENT", problem)
            return kind, f"{msg} (after: {last})"
    left = [Path(p).name for p in spec.get("watch_absent", []) if Path(p).exists()]
    if left:
        return "SILENT", f"refused, but left {', '.join(left)}/ behind: {last}"
    missing = [n for n in spec.get("needles", []) if n not in last]
    return "OK", (f"(does not name {', '.join(missing)}) " if missing else "") + last


def run_case(case, out):
    d = out / "cases" / f"{case.n:03d}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    c = Ctx(d, out / "fx")
    t0 = time.time()
    res = {"n": case.n, "cls": case.cls, "title": case.title, "expect": case.expect, "note": case.note}
    try:
        spec = case.fn(c)
        before = snapshot(spec["watch"]) if spec.get("watch") else None
        before_entries = entries(spec.get("watch_new", []))
        r = run(spec["argv"], d, case.timeout, spec.get("env"))
        outcome, msg = classify(case, spec, r, before, before_entries, spec.get("marker"))
        res.update(cmd=short(spec["argv"], c, out), rc=r.returncode, outcome=outcome, message=places(msg, c),
                   stderr=r.stderr[-4000:], stdout=r.stdout[-2000:])
    except Skip as e:
        res.update(cmd="", rc=None, outcome="SKIP", message=str(e))
    except SetupFailed as e:
        res.update(cmd="", rc=None, outcome="SKIP", message=f"setup failed: {e}")
    except Exception as e:
        res.update(cmd="", rc=None, outcome="SKIP", message=f"probe error: {type(e).__name__}: {e}",
                   stderr=traceback.format_exc()[-3000:])
    finally:
        for f in c.cleanup:
            f()
    res["seconds"] = round(time.time() - t0, 1)
    print(f"{case.n:3d} [{case.cls}] {res['outcome']:9s} {res['seconds']:5.1f}s  {case.title[:70]}  | "
          f"{res['message'][:110]}", flush=True)
    return res


def machine():
    try:
        model = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    load = f", load average {os.getloadavg()[0]:.1f} when it started" if hasattr(os, "getloadavg") else ""
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({model}), no GPU, Python {platform.python_version()}{load}"


def cell(s, n=None):
    s = " ".join(str(s).split())
    s = s[:n] + ("…" if len(s) > n else "") if n else s
    return s.replace("|", "\\|")


def report(results, args, seconds, assets_ok):
    order = ["OK", "TRACEBACK", "SILENT", "LOST", "CODE", "REFUSED", "HANG", "SKIP"]
    counts = {k: sum(r["outcome"] == k for r in results) for k in order}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    lines = [
        "# Bad input: a probe of new cases",
        "",
        f"{len(results)} cases nobody had tried, as a new user would try them, in the ten classes of the bad-input "
        "issue (what each stage does with bad input: [bad-input.md](bad-input.md)). Each case is a command run as a "
        "subprocess with a timeout, after a setup of its own, and is classified by `tests/probe_bad_input.py` itself:",
        "",
        "- **OK**: a one-line error naming the input (exit 1 or 2, no traceback), or success where success is right "
        "and the case's check of the outputs passes (frame count and rate, records against files, aligned lists, "
        "valid JSON, identical bytes, ...)",
        "- **TRACEBACK**: an uncaught exception; **SILENT**: exit 0 but the check of the outputs fails, or a "
        "refusal was due and none came; **LOST**: an input or an earlier output changed or gone (sha256 of the "
        "watched files before and after); **CODE**: a crafted file ran code (its marker file appeared); "
        "**REFUSED**: an input that should work was refused; **HANG**: past the timeout; **SKIP**: could not be set "
        "up here",
        "",
        "Rerun it (about 10-15 minutes on 2 cores; it writes only under `--out` and this page):",
        "",
        "```bash",
        "python tests/probe_bad_input.py --out /tmp/probe    # --only 5 6: some classes; --case 12 40: some cases",
        "```",
        "",
        f"Run on {args.machine or machine()}, {seconds / 60:.1f} min with {args.jobs} cases at a time. "
        "Fixtures: `toy.py triplets --n 2`, `toy.py data --clips 4`, a 2-step `train.py --preset toy` run, "
        "`sample.py --triplets` (1 step) with the shipped assets/toy-composer, its `evaluate.py results` and a "
        "`study`, a `decompose.py` split of two toy videos. Class 7 (full disk) mounts a tmpfs per case (200 KiB, "
        "16 or 96 MiB for train.py) and fills it up (a read-only folder is no test as root); once the command has "
        "failed, the filler is removed and the same command must then run to the end. "
        + ("assets/ was the same before and after." if assets_ok else "**assets/ changed during the probe.**")
        + " The outcomes are those of the working tree as it was during the run (other changes were being made to "
        "the product code at the same time): rerun the probe after a change.",
        "",
        f"**Summary: {summary}.**",
        "",
        "Per class: " + "; ".join(
            f"{k} {CLASSES[k]}: " + ", ".join(f"{sum(r['outcome'] == o and r['cls'] == k for r in results)} {o}"
                                              for o in order if any(r['outcome'] == o and r['cls'] == k
                                                                    for r in results))
            for k in sorted({r['cls'] for r in results})) + ".",
        "",
        "Placeholders: `FX` the fixtures, `CASE` the case's own folder, `OUT` the --out of the probe, "
        f"`[toy]` = `--ckpt assets/toy-composer --steps 1`, `[tiny]` = `{TINY.strip()}`, `[fast]` = "
        f"`{FASTS.strip()}`; "
        "`expected` is what is right (`error`: a one-line refusal, `ok`: success with correct outputs, `either`: "
        "one of the two).",
        "",
        "| # | class | setup and command | expected | outcome | message (first 100 chars) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        what = f"{r['title']}: `{cell(r.get('cmd', ''), 260).replace('`', '')}`" if r.get("cmd") else r["title"]
        note = f" — {r['note']}" if r.get("note") else ""
        lines.append(f"| {r['n']} | {r['cls']} {CLASSES[r['cls']]} | {cell(what)} | {r['expect']} | "
                     f"**{r['outcome']}** | {cell(r['message'], 100)}{cell(note)} |")
        # (the note says why a case may be ambiguous)
    return "\n".join(lines) + "\n", counts


def write_report(args, results, meta):
    text, counts = report(results, argparse.Namespace(**{**vars(args), "machine": meta["machine"],
                                                         "jobs": meta["jobs"]}), meta["seconds"],
                          meta["assets_ok"])
    if args.doc != "-":
        Path(args.doc).write_text(text)
    return counts


def main(args):
    out = Path(args.out).resolve()
    if args.report_only:
        saved = json.loads((out / "probe.json").read_text())
        counts = write_report(args, saved["results"], saved["meta"])
        print(", ".join(f"{v} {k}" for k, v in counts.items() if v) + f"; report {args.doc}")
        return
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    args.machine = args.machine or machine()
    assets_before = snapshot([ROOT / "assets"])
    print(f"fixtures in {out / 'fx'} ...", flush=True)
    fixtures(out / "fx")
    todo = [c for c in CASES if (args.only is None or c.cls in args.only) and (args.case is None or c.n in args.case)]
    print(f"{len(todo)} cases, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda c: run_case(c, out), todo))
    seconds = time.time() - t0
    assets_ok = snapshot([ROOT / "assets"]) == assets_before
    meta = {"machine": args.machine, "jobs": args.jobs, "seconds": seconds, "assets_ok": assets_ok,
            "when": time.strftime("%Y-%m-%d %H:%M")}
    (out / "probe.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    counts = write_report(args, results, meta)
    print("\n" + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f" in {seconds / 60:.1f} min; details in "
          f"{out / 'probe.json'}" + (f"; report {args.doc}" if args.doc != "-" else ""))


if __name__ == "__main__":
    main(parser.parse_args())
