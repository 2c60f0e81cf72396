"""files: this process's descriptors of a database's files (the database, `-wal`, `-shm`).

On POSIX, closing any descriptor of a file drops every fcntl lock the process holds on it,
SQLite's own included ("How To Corrupt An SQLite Database File", 2.2). So the package reads
these files only through descriptors kept here, one per file per process, opened on first use
and closed only once no other descriptor of this process refers to the file (Linux shows them
in /proc/self/fd; elsewhere they are kept until the process exits). Nothing else may call
`open()`/`close()` on them; renames and unlinks are harmless.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import BinaryIO, Iterator, Optional

_PROC_FDS = "/proc/self/fd"

# (path, writable) -> (descriptor, (st_dev, st_ino)) of the file last seen there; descriptors
# of files since replaced or removed wait in _retired. Both guarded by _lock.
_held: dict = {}
_retired: list = []
_lock = threading.Lock()


def descriptor(path: str, writable: bool = False) -> Optional[int]:
    """The kept descriptor of the file now at `path` (read-only, or with `writable` read-write:
    a replica's local copy), or None if there is none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    identity = (st.st_dev, st.st_ino)
    key = (path, writable)
    with _lock:
        held = _held.get(key)
        if held and held[1] == identity:
            return held[0]
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY)
                         | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if held:
            _retired.append(held)
        _held[key] = (fd, _identity(fd))
        return fd


def pread(path: str, size: int, offset: int = 0) -> bytes:
    """Up to `size` bytes of the file at `path` from `offset`; b"" if there is no such file."""
    fd = descriptor(path)
    return b"" if fd is None else os.pread(fd, size, offset)


@contextlib.contextmanager
def reader(path: str) -> Iterator[Optional[BinaryIO]]:
    """A binary file object over the kept descriptor of `path` (None if there is no such
    file). Closing it leaves the descriptor open."""
    fd = descriptor(path)
    if fd is None:
        yield None
        return
    with os.fdopen(fd, "rb", closefd=False) as f:
        yield f


def release(database_path: str) -> None:
    """Close the kept descriptors of a database's files that no other descriptor of this
    process shares a file with (so no SQLite connection of ours can hold a lock there).
    The others stay, to be tried again at the next release."""
    keys = {(database_path + suffix, writable) for suffix in ("", "-wal", "-shm")
            for writable in (False, True)}
    with _lock:
        candidates = [_held.pop(k) for k in keys if k in _held]
        candidates += _retired
        _retired.clear()
        open_elsewhere = _identities_in_use({fd for fd, _ in candidates})
        for fd, identity in candidates:
            if open_elsewhere is None or identity in open_elsewhere:
                _retired.append((fd, identity))
            else:
                os.close(fd)


def _identity(fd: int) -> tuple:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _identities_in_use(ours: set) -> Optional[set]:
    """The files that descriptors of this process other than `ours` refer to, or None where
    the system does not tell."""
    try:
        names = os.listdir(_PROC_FDS)
    except OSError:
        return None
    found = set()
    for name in names:
        if not name.isdigit() or int(name) in ours:
            continue
        try:
            st = os.stat(os.path.join(_PROC_FDS, name))
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found
