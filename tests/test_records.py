"""plumbing/records.py, the one record engine of every batch job, on tiny jobs whose items copy a text file: what is
done is what is on disk (inputs fingerprinted, outputs stamped), one writer per folder (and a dead writer's lock taken
over), settings never mixed, failures recorded and not retried, the ranks' journals joined in plan order, shards
joined by a later run. Each guard was removed once to see its test fail (named in each docstring)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plumbing.cli import BadInput
from plumbing.files import Lock, atomic_write_text, fingerprint
from plumbing.records import Job, join_records, read_records


def make_inputs(d, n=4):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (d / f"in{i}.txt").write_text(f"input {i}\n")
    return [{"id": f"i{i}", "src": str(d / f"in{i}.txt")} for i in range(n)]


def run(out, items, settings=None, fail=(), shard=(0, 1), overwrite=None):
    """A batch job that copies each item's input to out/<id>.txt -> (ids it worked on, the joined records)."""
    job = Job(out, "results", items, inputs=lambda it: [it["src"]], settings=settings or {"x": 1}, shard=shard,
              overwrite=overwrite)
    worked = []
    for it in job.todo(bar=False):
        worked.append(it["id"])
        if it["id"] in fail:
            job.skip(it["id"], "cannot be read")
            continue
        dst = Path(out) / f"{it['id']}.txt"
        atomic_write_text(dst, Path(it["src"]).read_text())
        job.done(it["id"], {"result": str(dst)}, outputs=[dst])
    return worked, job.finish()


def test_resume_redoes_exactly_what_changed(tmp_path):
    """Mutations that failed this test: _is_done ignoring the fingerprint (a changed input kept its old result), and
    ignoring the output stamps (a deleted or replaced result was not made again)."""
    items, out = make_inputs(tmp_path / "in"), tmp_path / "out"
    worked, recs = run(out, items)
    assert worked == ["i0", "i1", "i2", "i3"] and [r["id"] for r in recs] == worked
    assert run(out, items)[0] == []                                          # all done
    time.sleep(0.01)
    (tmp_path / "in" / "in1.txt").write_text("input 1, replaced under the same name\n")
    (out / "i2.txt").unlink()                                                # an output deleted
    (out / "i3.txt").write_text("edited by hand\n")                          # an output replaced
    worked, recs = run(out, items)
    assert worked == ["i1", "i2", "i3"]
    assert (out / "i1.txt").read_text() == "input 1, replaced under the same name\n"
    assert (out / "i3.txt").read_text() == "input 3\n" and [r["id"] for r in recs] == ["i0", "i1", "i2", "i3"]


def test_settings_are_never_mixed(tmp_path):
    """Another setting into the same folder is refused naming the flag (mutation: _guard skipped -> the second run
    wrote seed 2 records beside seed 1's); with overwrite it redoes every item."""
    items, out = make_inputs(tmp_path / "in"), tmp_path / "out"
    run(out, items, settings={"seed": 1})
    with pytest.raises(BadInput, match=r"--seed 1, this run's flags say --seed 2.*--overwrite"):
        run(out, items, settings={"seed": 2}, overwrite=False)
    assert {r["settings_id"] for r in read_records(out / "results.jsonl").values()} == \
        {read_records(out / "results.jsonl")["i0"]["settings_id"]}
    worked, recs = run(out, items, settings={"seed": 2}, overwrite=True)
    assert worked == ["i0", "i1", "i2", "i3"] and len({r["settings_id"] for r in recs}) == 1


def test_a_failed_item_is_recorded_and_not_retried_until_its_input_changes(tmp_path):
    """Mutation: failed records not counted as done -> the rerun met the bad item again."""
    items, out = make_inputs(tmp_path / "in"), tmp_path / "out"
    worked, recs = run(out, items, fail={"i1"})
    assert worked == ["i0", "i1", "i2", "i3"]
    assert [(r["id"], r["status"]) for r in recs] == [("i0", "ok"), ("i1", "error"), ("i2", "ok"), ("i3", "ok")]
    assert recs[1]["error"] == "cannot be read"
    assert run(out, items, fail={"i1"})[0] == []
    time.sleep(0.01)
    (tmp_path / "in" / "in1.txt").write_text("fixed\n")
    assert run(out, items)[0] == ["i1"]


def test_one_writer_per_folder_and_a_dead_writers_lock_is_taken_over(tmp_path):
    """A live process's lock refuses a second writer in one line (mutation: acquire() always succeeding); the lock
    of a process that died (kill -9 leaves it) is stale and taken over."""
    items, out = make_inputs(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from plumbing.files import Lock; assert Lock(sys.argv[2], '.results.lock').acquire() "
                               "is None; print('held', flush=True); time.sleep(60)",
                               str(Path(__file__).resolve().parents[1]), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BadInput, match=rf"process {holder.pid} .* is writing this folder"):
            run(out, items)
        assert Lock(out, ".results.lock").holder()["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".results.lock").exists() and Lock(out, ".results.lock").holder() is None      # stale
    assert run(out, items)[0] == ["i0", "i1", "i2", "i3"]
    assert not (out / ".results.lock").exists()                               # released at the end


def test_journals_of_a_killed_run_are_joined_in_plan_order(tmp_path):
    """Records left in rank journals (a killed torchrun job) count as done on the rerun and end up in plan order in
    the main file, the journals gone; the last record of an id wins (mutation: first wins -> the stale one kept)."""
    items, out = make_inputs(tmp_path / "in"), tmp_path / "out"
    run(out, items[:1])
    job = Job(out, "results", items, inputs=lambda it: [it["src"]], settings={"x": 1})
    for it in reversed(job.todo(bar=False)):                                 # as two ranks would, out of order
        dst = out / f"{it['id']}.txt"
        atomic_write_text(dst, "x")
        job.done(it["id"], {"result": str(dst), "try": 1}, outputs=[dst])
    job.lock.release()                                                        # killed before finish()
    with open(out / "results.rank-1.jsonl", "w") as f:                        # a second rank's journal, newer
        f.write(json.dumps({**read_records(out / "results.rank-0.jsonl")["i3"], "try": 2}) + "\n")
    worked, recs = run(out, items)
    assert worked == [] and [r["id"] for r in recs] == ["i0", "i1", "i2", "i3"] and recs[3]["try"] == 2
    assert not list(out.glob("results.rank-*.jsonl"))


def test_shards_write_their_own_files_and_a_later_run_joins_them(tmp_path):
    """--shard I/N: each shard does every N-th item into <stem>.shard-I-of-N.jsonl; a plain run afterwards joins
    them and has nothing left to do; join_records refuses while a shard still holds its lock."""
    items, out = make_inputs(tmp_path / "in", 5), tmp_path / "out"
    assert run(out, items, shard=(0, 2))[0] == ["i0", "i2", "i4"]
    assert run(out, items, shard=(1, 2))[0] == ["i1", "i3"]
    assert not (out / "results.jsonl").exists()
    lock = Lock(out, ".results.shard-1-of-2.lock")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.path.write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid}))
        with pytest.raises(BadInput, match="a shard is still writing here"):
            join_records(out, "results", shards=True)
    finally:
        holder.kill()
        holder.wait()
    worked, recs = run(out, items)
    assert worked == [] and [r["id"] for r in recs] == ["i0", "i1", "i2", "i3", "i4"]


def test_fingerprint_sees_the_tail_of_a_big_file_and_every_file_of_a_folder(tmp_path):
    """A retrained checkpoint has the same size and header: the hash of its last 64 KiB tells it apart (mutation:
    hashing only the head -> equal fingerprints); a folder's fingerprint changes with any file in it."""
    f = tmp_path / "w.safetensors"
    data = bytearray(os.urandom(1 << 20))
    f.write_bytes(bytes(data))
    a, st = fingerprint(f, cache=False), f.stat()
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))                          # even with size and mtime unchanged
    assert fingerprint(f, cache=False) != a
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "x.bin").write_bytes(b"1")
    b = fingerprint(d)
    time.sleep(0.01)
    (d / "sub" / "x.bin").write_bytes(b"2")
    assert fingerprint(d) != b
    assert fingerprint("owner/name") == "name:owner/name"                    # a hub id is its own fingerprint
