"""
Files written whole or not at all: a reader (or a killed writer) never sees half a file.
"""
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path


def atomic_write_text(path, text):
    """Write then rename, so a crash never leaves a half-written file under the real name; a failed write (a full
    disk) leaves no temporary file behind and raises OSError naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None


def sha256(path):
    """The sha256 of a whole file, read in 1 MiB chunks (a checkpoint's pickle, a file a probe watches)."""
    h = hashlib.sha256()
    with open(path, "rb") as fd:
        for chunk in iter(lambda: fd.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stamp(path):
    """What a file is now, cheaply: size and modification time ("size:mtime_ns"), or None if it is missing. A record
    keeps the stamps of the files it wrote, so a file replaced or deleted since no longer matches its record."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


_FINGERPRINTS = {}


def fingerprint(path, cache=True):
    """A short digest of what a file or folder holds now: size, modification time and a hash of its first and last
    64 KiB (for a safetensors file that covers its header and the tail of its weights), for each file of a folder
    (sorted, hidden ones left out). A path that does not exist (a hub id, say) is its own fingerprint. Cached by
    (path, stamp) unless cache=False: a source read for four clips is opened once."""
    p = Path(path)
    if not p.exists():
        return "name:" + str(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()
                                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
    h = hashlib.sha256()
    for f in files:
        key = (str(f), stamp(f))
        if key not in _FINGERPRINTS or not cache:
            fh = hashlib.sha256(key[1].encode())
            with open(f, "rb") as fd:
                fh.update(fd.read(65536))
                size = os.fstat(fd.fileno()).st_size
                if size > 131072:
                    fd.seek(size - 65536)
                    fh.update(fd.read(65536))
            _FINGERPRINTS[key] = fh.hexdigest()
        h.update(f"{f.relative_to(p) if f != p else ''}\0{_FINGERPRINTS[key]}\0".encode())
    return h.hexdigest()[:16]


class Lock:
    """One writer per output folder: `<folder>/<name>` holds the writer's host and pid, made with O_EXCL. A second
    writer is refused in one line naming the first; a lock whose process is gone (same host) is stale and taken
    over. Released by `release()` or at exit."""

    def __init__(self, folder, name=".lock"):
        self.path = Path(folder) / name
        self.held = False

    def acquire(self):
        """-> None once this process holds the lock, else the holder ({host, pid}; {} if unknown)."""
        import atexit
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if self._stale(other):
                    self.path.unlink(missing_ok=True)
                    continue
                return other or {}
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(_me(), f)
            except OSError as e:                       # a full disk: leave no empty lock behind
                self.path.unlink(missing_ok=True)
                raise OSError(e.errno, e.strerror, str(self.path)) from None
            self.held = True
            atexit.register(self.release)
            return None
        return {}

    def holder(self):
        """The live process holding this lock ({host, pid}; {} if unknown), or None (free, or stale)."""
        if not self.path.exists():
            return None
        other = self._read()
        return None if self._stale(other) else (other or {})

    def _read(self):
        try:
            other = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return other if isinstance(other, dict) else None

    def _stale(self, other):
        """Its process is gone, or it is this process's own (an earlier job here that raised), or it was never
        written (a full disk) and is older than a writer needs to fill it."""
        me = _me()
        if other is None:
            return time.time() - _mtime(self.path) > 10
        return other.get("host") == me["host"] and (not _alive(other.get("pid")) or other.get("pid") == me["pid"])

    def release(self):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _me():
    import socket
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return time.time()


def _alive(pid):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
