"""
JSON-lines records, and the one record engine every batch job runs on (Split, sample.py --triplets, Evaluate).

A batch job is a plan: items in a fixed order, each with an id and the input files it reads. `Job` gives this
process its share of what is not done yet, takes one record per item as the item finishes, and at the end joins
every process's records into one file in plan order:

    job = Job(out, "results", items, inputs=lambda j: [j["fg"], j["bg"]], settings={...}, ranks=Ranks())
    for item in job.todo():                       # this rank's share of the items still to do (or job.batches(n))
        ...                                       # the work, written to files in out
        job.done(item["id"], {...}, outputs=[path])    # or job.skip(item["id"], "why")
    recs = job.finish()                           # rank 0: every record, joined, in plan order

What makes a record true to the disk and a rerun safe:
- one writer per folder (a lock; a stale one of a dead process is taken over);
- settings: the flags every item depends on; a folder made with other settings is refused (or, with overwrite,
  redone item by item), so one folder never mixes two kinds of results;
- a fingerprint of each item's input files (size, mtime and a hash of their ends: plumbing.files.fingerprint)
  and the stamps of the files it wrote: an item whose input changed, or whose output was replaced or deleted,
  is done again; an item that failed is recorded with its reason and not retried until its inputs change;
- records appended (one fsync'd line each) to this rank's journal <stem>.rank-R.jsonl, joined by rank 0 into
  <stem>.jsonl at the end and at the start of a rerun after a kill: a kill loses only the items in progress.
- `--shard I/N` (machines that share no network) is the same engine with rank and world from the flag: shard I
  writes <stem>.shard-I-of-N.jsonl beside its files; copy the shards' folders into one and any later run (or the
  script's --merge) joins them.
"""
import json
import math
import os
import sys
from pathlib import Path

from .cli import BadInput
import hashlib

from .files import Lock, atomic_write_text, fingerprint, stamp


def append_jsonl(path, rec):
    """Append one record as one write of one line (fsync'd), so a kill leaves at most a torn last line; a torn
    line left by an earlier kill is ended first, so it never swallows this record."""
    p = Path(path)
    torn = p.exists() and p.stat().st_size > 0 and p.read_bytes()[-1:] != b"\n"
    with open(p, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path):
    """A JSON-lines file -> (objects as (line number, dict), problems as (line number, one-line message)). A torn
    last line (its writer stopped mid-line) and lines that are not JSON objects are reported and left out."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as e:
        raise BadInput(f"{path}: cannot be read ({type(e).__name__}); give a JSON-lines file") from None
    rows, problems = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:                                                  # line by line: one line in Latin-1 costs that line
            obj = json.loads(line.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict):
            rows.append((i, obj))
        elif i == len(lines):                                 # no newline after it: the writer was stopped
            problems.append((i, f"{path}:{i}: torn last line (its writer was stopped mid-line), left out"))
        else:
            problems.append((i, f"{path}:{i}: not a JSON object (or not UTF-8), left out"))
    return rows, problems



def json_safe(v):
    """NaN / inf -> None (JSON's null), through dicts and lists: json.dumps would write a bare NaN, not JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    return [json_safe(x) for x in v] if isinstance(v, (list, tuple)) else v


def drop_problem_lines(path, rows, problems):
    """Before a resumed job appends to `path`: warn about each line read_jsonl left out (a torn last line, a line
    that is not a JSON object) and rewrite the file as `rows` (its good objects), so the next record starts on a
    line of its own and every later read is clean."""
    for _, msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    if problems:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_records(path):
    """The last record of each id in a JSON-lines file, in file order (torn or non-object lines left out)."""
    if not Path(path).exists():
        return {}
    rows, _ = read_jsonl(path)
    out = {}
    for _, r in rows:
        if "id" in r:
            out.pop(str(r["id"]), None)
            out[str(r["id"])] = r
    return out


def stale_outputs(rec, base="."):
    """The files a record says it wrote that are missing or changed since (their stamps differ) -> list of paths."""
    return [k for k, v in (rec.get("stamps") or {}).items() if stamp(Path(base) / k) != v]


def digest(obj):
    """A short, stable digest of a JSON-able object (the settings of a job)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Job:
    """One batch job's records in folder `out` (see the module docstring).
    items: dicts with an "id" (str), in plan order. inputs(item) -> the paths (or names) the item reads.
    settings: the JSON-able flags every item depends on. ranks: plumbing.ranks.Ranks (None: one process).
    shard: (I, N) from --shard. overwrite: redo items made with other settings instead of refusing (None: the script
    has no --overwrite)."""

    def __init__(self, out, stem, items, inputs=lambda item: (), settings=None, ranks=None, shard=(0, 1),
                 overwrite=None, what="item"):
        from .ranks import Ranks
        self.out, self.stem, self.what = Path(out), stem, what
        self.ranks = ranks or Ranks.single()
        self.shard = shard
        self.settings, self.settings_id = settings or {}, digest(settings or {})
        self.items = list(items)
        ids = [str(it["id"]) for it in self.items]
        if len(set(ids)) != len(ids):
            raise BadInput(f"{stem}: two items share an id ({next(i for i in ids if ids.count(i) > 1)})")
        self.order = {i: k for k, i in enumerate(ids)}
        self.mine_of_shard = self.items[shard[0]::shard[1]]
        self.inputs = inputs
        self.main = self.out / (f"{stem}.jsonl" if shard[1] == 1 else f"{stem}.shard-{shard[0]}-of-{shard[1]}.jsonl")
        self.journal = self.main.with_name(f"{self.main.stem}.rank-{self.ranks.rank}.jsonl")
        self.lock = Lock(self.out, f".{self.main.stem}.lock")
        self.skipped, self.n_new = {}, 0
        self._open(overwrite)

    # -- start: lock, join what a killed run left, settings guard, what is done ---------------------------------
    def _open(self, overwrite):
        try:
            self._start(overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _start(self, overwrite):
        r = self.ranks
        if r.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            other = self.lock.acquire()
            if other is not None:
                who = f"process {other.get('pid', '?')} on {other.get('host', '?')}" if other else "another process"
                raise BadInput(f"{self.out}: {who} is writing this folder ({self.lock.path}); wait for it to end, "
                               "or use another output folder (delete the lock file only if that process is gone)")
            self._join()
            self._guard(overwrite)
        r.wait()
        self.records = read_records(self.main)
        self.fingerprints = {}
        self.left = [it for it in self.mine_of_shard if not self._is_done(it)]

    def _guard(self, overwrite):
        """Records made with other settings are refused in one line (or, with overwrite, redone)."""
        f = self.main.with_name(f"{self.stem}.settings.json")
        recs = read_records(self.main)
        other = {r.get("settings_id") for r in recs.values()} - {self.settings_id, None}
        old = None
        if f.exists():
            try:
                old = json.loads(f.read_text())
            except (ValueError, OSError):
                old = None
        if other and not overwrite:
            was = old if isinstance(old, dict) and digest(old) in other else {}
            diff = [k for k in self.settings if was.get(k) != self.settings[k]] if was else []
            show = lambda s: " ".join(f"--{k.replace('_', '-')} {s.get(k)}" for k in diff)
            made = f"made with {show(was)}, this run's flags say {show(self.settings)}" if diff else \
                "made with other settings"
            raise BadInput(f"{self.out}: holds {self.what}s {made}; mixing them would make a folder of two kinds: use "
                           "those flags (to resume) or another output folder"
                           + (", or --overwrite to redo them with these" if overwrite is not None else ""))
        atomic_write_text(f, json.dumps(self.settings, indent=1, default=str) + "\n")

    def fingerprint(self, item):
        key = str(item["id"])
        if key not in self.fingerprints:
            parts = [self.settings_id] + [fingerprint(p) if isinstance(p, (str, os.PathLike)) and p else repr(p)
                                          for p in self.inputs(item)]
            self.fingerprints[key] = digest(parts)
        return self.fingerprints[key]

    def _is_done(self, item):
        """Recorded with these settings and inputs, and every file it wrote is still as it was written."""
        rec = self.records.get(str(item["id"]))
        return (rec is not None and rec.get("settings_id") == self.settings_id
                and rec.get("fingerprint") == self.fingerprint(item) and not stale_outputs(rec, self.out))

    def is_done(self, item_id):
        return str(item_id) not in {str(it["id"]) for it in self.left}

    # -- the work ---------------------------------------------------------------------------------------------
    def todo(self, bar=True):
        """This rank's items still to do."""
        mine = self.ranks.mine(self.left)
        self.progress = self._progress(len(self.left), len(mine), bar=bar)
        return mine

    def batches(self, size, bar=True):
        """This rank's batches: fixed-position groups of `size` plan items with work left, whole (done items
        included), so each item is computed in the same company, with the same noise, as in a straight run."""
        left = {str(it["id"]) for it in self.left}
        plan = self.mine_of_shard
        groups = [plan[i:i + size] for i in range(0, len(plan), size)]
        groups = [g for g in groups if any(str(it["id"]) in left for it in g)]
        mine = self.ranks.mine(groups)
        self.progress = self._progress(len(left), sum(str(it["id"]) in left for g in mine for it in g), every=size,
                                       bar=bar)
        return mine

    def _progress(self, total, mine, every=10, bar=True):
        from .ranks import Progress
        count = lambda: sum(len(read_records(f)) for f in self.main.parent.glob(f"{self.main.stem}.rank-*.jsonl"))
        desc = Path(sys.argv[0]).stem or self.stem                  # decompose, sample, evaluate
        return Progress(self.ranks, desc, total, mine, count, every=every, bar=bar and total > 0)

    def done(self, item_id, rec, outputs=(), status="ok"):
        """Item `item_id` finished: its record (with id, status, settings, fingerprint and the stamps of the files
        it wrote, paths relative to out) is appended to this rank's journal."""
        item = self.items[self.order[str(item_id)]]
        stamps = {}
        for o in outputs:
            rel = os.path.relpath(Path(o).absolute(), self.out.absolute())
            stamps[rel] = stamp(o)
        rec = {**rec, "id": str(item_id), "status": rec.get("status", status), "settings_id": self.settings_id,
               "fingerprint": self.fingerprint(item), "stamps": stamps}
        append_jsonl(self.journal, rec)
        self.records[str(item_id)] = rec
        if rec["status"] == "ok":
            self.n_new += 1
        else:
            self.skipped[str(item_id)] = rec.get("error", rec["status"])
        getattr(self, "progress", None) and self.progress.step()
        return rec

    def skip(self, item_id, why, status="error", **extra):
        """Item `item_id` cannot be done: recorded with the reason (not retried until its inputs change) and said."""
        print(f"skipping {item_id}: {why}", file=sys.stderr)
        return self.done(item_id, {**extra, "error": str(why)}, status=status)

    # -- the end: wait for every rank, rank 0 joins ------------------------------------------------------------
    def finish(self):
        """-> (on rank 0) every record of the folder, joined, in plan order; None on the other ranks."""
        progress = getattr(self, "progress", None)
        self.seconds = progress.close() if progress else 0.0
        if self.ranks.world > 1:
            both = self.ranks.gather((self.n_new, self.skipped))
            self.n_new, self.skipped = sum(n for n, _ in both), {k: v for _, s in both for k, v in s.items()}
        if self.ranks.rank != 0:
            return None
        self._join()
        self.lock.release()
        return list(read_records(self.main).values())

    def _join(self):
        join_records(self.out, self.stem, self.main, order=self.order, shards=self.shard[1] == 1)


def join_records(out, stem, main=None, order=None, shards=False):
    """Rank 0, alone: the journals <main stem>.rank-*.jsonl (of this run, or of a killed one) and, with shards, the
    shards' record files <stem>.shard-I-of-N[.rank-R].jsonl go into the main record file (the last record of an id
    wins), in plan `order` (ids not in it after, as they came); then they go. Refused while a shard still writes."""
    out = Path(out)
    main = Path(main or out / f"{stem}.jsonl")
    files = sorted(out.glob(f"{main.stem}.rank-*.jsonl"))
    if shards:
        busy = [f for f in out.glob(f".{stem}.shard-*.lock") if Lock(out, f.name).holder()]
        if busy:
            raise BadInput(f"{out}: a shard is still writing here ({busy[0].name}); join its records once it ends")
        files = sorted(out.glob(f"{stem}.shard-*-of-*.jsonl")) + files
    if not files:
        return
    recs = read_records(main)
    for f in files:
        for k, r in read_records(f).items():
            recs.pop(k, None)
            recs[k] = r
    order = order or {}
    ordered = sorted(recs.values(), key=lambda r: order.get(str(r["id"]), len(order)))
    atomic_write_text(main, "".join(json.dumps(r) + "\n" for r in ordered))
    for f in files:
        f.unlink()
