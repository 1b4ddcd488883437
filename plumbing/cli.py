"""
One-line errors for every command line: a BadInput names the file or flag, says what is wrong and what would work,
and `run_cli` turns it into `<script>: error: <message>` with exit code 2 (argparse's code for usage errors).
Also the checks every script makes before any model loads (an output folder it can write, a number in range).
"""
import errno
import os
from pathlib import Path

# errors of the disk, not of the program: reported in one line
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG, errno.EPERM}


class BadInput(Exception):
    """An input the user named (a file, a flag's value, a line of a list) that cannot be used. Every CLI reports
    it the same way, as one line `<script>: error: <message>` and exit code 2 (argparse's code for usage errors),
    through `run_cli`. The message names the input, says what is wrong and what would work."""


def run_cli(main, parser):
    """`main(parser.parse_args())`, with a BadInput turned into its one line and exit code 2 (no traceback), and a
    file that could not be written (a full disk, no permission, a read-only file system) into one line naming it
    and exit code 1: the finished items of a batch job are kept, and the same command resumes."""
    args = parser.parse_args()
    try:
        return main(args)
    except BadInput as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        where = e.filename or "a file"
        parser.exit(1, f"{parser.prog}: error: could not write {where}: {e.strerror or e} (what was finished is "
                       "kept; make room and rerun the same command to resume)\n")


def check_out_dir(path, flag="--out"):
    """Before any compute: `path` must be (or can become) a writable folder. Creates nothing, so a run refused
    later leaves no trace; raises BadInput naming `flag` otherwise."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise BadInput(f"{flag} {path}: is a file, not a folder; name a folder (it is created if missing)")
    q = p
    while not q.exists():                          # the nearest existing ancestor is where mkdir will write
        q = q.parent
    if not q.is_dir() or not os.access(q, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {path}: {q} is not a writable folder; name a folder you can write to")


def check_device(name, flag="--device"):
    """--device must name a torch device this machine has -> torch.device; else one line naming the flag."""
    import torch
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInput(f"{flag} {name}: not a torch device; use cpu or cuda (cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"{flag} {name}: CUDA is not available on this machine; use {flag} cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BadInput(f"{flag} {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BadInput(f"{flag} {name}: Apple's MPS is not available on this machine; use {flag} cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BadInput(f"{flag} {name}: use cpu or cuda")
    return dev


def check_ranges(*rules):
    """(flag, value, ok, rule) ...: the first value out of range ends the run, in one line."""
    for flag, val, ok, rule in rules:
        if not ok:
            raise BadInput(f"{flag} {val}: must be {rule}")
