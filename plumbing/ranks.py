"""
Batch jobs on many processes: `torchrun --nproc_per_node=8 X.py ...` for decompose, sample --triplets, evaluate.
Ranks says which share of the work this process has; Progress shows one bar for all of them.
"""
import atexit
import os
import time
from pathlib import Path

import torch


class Ranks:
    """This process's share of a batch job. torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (one process per GPU, any
    number of nodes); a plain `python X.py` is rank 0 of 1 and starts no process group. Every rank plans the same
    item list and takes `mine(items)`; it writes only per-item files and its own record file (`record_file`), and
    rank 0 joins the record files once all have finished (`wait`). The processes only wait for each other: gloo
    does that on any machine, and unlike NCCL's watchdog its barrier may wait for hours while others work."""

    def __init__(self):
        import datetime
        import torch.distributed as dist
        self.dist, env = dist, os.environ
        self.rank, self.world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
        gpus = torch.cuda.device_count()
        # more processes than GPUs on a node (small models: --nproc_per_node=4x the GPUs) share them in turn
        self.device = torch.device("cuda", int(env.get("LOCAL_RANK", 0)) % gpus) if gpus else torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
            atexit.register(self.close)

    @classmethod
    def single(cls):
        """Rank 0 of 1, whatever the environment says (a job run inside another job's process)."""
        r = cls.__new__(cls)
        import torch.distributed as dist
        r.dist, r.rank, r.world, r.device = dist, 0, 1, torch.device("cpu")
        return r

    def close(self):
        """Leave the process group; run at exit. A rank that ends while rank 0 still writes the summary must stop its
        gloo threads itself: left to the interpreter's teardown they can abort the process ("terminate called without
        an active exception", exit -6), and torchrun then fails the whole job (seen once in CI; pytorch#179291)."""
        if self.dist.is_initialized():
            self.dist.destroy_process_group()

    def mine(self, items):
        """Items i with i % world == rank: the same list on every rank gives each item to exactly one."""
        return items[self.rank::self.world]

    def record_file(self, folder, stem):
        """Where this rank appends its records: <stem>.jsonl alone, <stem>.rank-R.jsonl among several."""
        return Path(folder) / (f"{stem}.jsonl" if self.world == 1 else f"{stem}.rank-{self.rank}.jsonl")

    def gather(self, obj):
        """-> [obj of rank 0, obj of rank 1, ...] (small, picklable) on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def wait(self, progress=None, every=2.0):
        """Barrier; while rank 0 waits for the others it calls progress() every `every` seconds."""
        if self.world > 1:
            work, shown = self.dist.barrier(async_op=True), time.time()
            while progress is not None and self.rank == 0 and not work.is_completed():
                if time.time() - shown > every:
                    progress()
                    shown = time.time()
                time.sleep(0.05)
            work.wait()



class Progress:
    """A batch job's progress: one tqdm bar on rank 0 for the items of every rank (rank 0 reads `count()`, the
    items done so far on all ranks, from the record files every few seconds), a log line per rank every `every` of
    its own items, and `close()` -> seconds, after every rank has finished."""

    def __init__(self, ranks, desc, total, mine, count, every=10, bar=True):
        from tqdm import tqdm
        self.ranks, self.desc, self.count, self.every, self.mine, self.n = ranks, desc, count, every, mine, 0
        self.bar = tqdm(total=total, desc=desc) if bar and ranks.rank == 0 else None
        self.t0 = self.shown = time.time()

    def step(self):
        """One of this rank's items is done (its record written)."""
        self.n += 1
        if self.ranks.world == 1:
            self.bar and self.bar.update(1)
            return
        if self.bar is not None and time.time() - self.shown > 2:
            self.refresh()
        if self.n % self.every == 0 or self.n == self.mine:
            rate = self.n / max(time.time() - self.t0, 1e-9)
            print(f"[rank {self.ranks.rank}/{self.ranks.world}] {self.desc}: {self.n}/{self.mine} items, "
                  f"{rate:.3g} items/s", flush=True)

    def refresh(self):
        if self.bar is not None:
            self.bar.n, self.shown = min(self.bar.total, self.count()), time.time()
            self.bar.refresh()

    def close(self):
        self.ranks.wait(self.refresh)
        if self.bar is not None:
            self.refresh() if self.ranks.world > 1 else None
            self.bar.close()
        return time.time() - self.t0

