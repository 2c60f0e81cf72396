"""clock: the commit time of each transaction, for point-in-time restore.

Python's sqlite3 has no commit hook, so the database notes, right after each commit it sees,
the time and how far the WAL then reached (from the wal-index in `-shm`, read through the
descriptor `files` keeps: never one opened and closed here). A commit's time is the earliest
note that already saw its commit frame, or the moment the replicator read it if that is
earlier: both are at or after the real commit, and at or before the moment the committing
thread got control back — so "committed at or before T" is exact for every commit a caller saw
return. Notes are cheap (one 96-byte pread, parsed later); reading the WAL is not.
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Optional

from . import files
from .wal import WAL_INDEX_NOTE_SIZE, parse_wal_index


class CommitClock:
    def __init__(self, database_path: str) -> None:
        self._shm_path = database_path + "-shm"
        self._notes: list = []          # (time, wal-index header); guarded by _lock
        self._lock = threading.Lock()
        self._shm: Optional[int] = None  # the kept descriptor of -shm (files.py)

    def note(self) -> None:
        """Called by a committing thread right after its commit returned: as little as can
        be (one pread; the wal-index header is parsed when the replicator asks for times)."""
        fd = self._shm if self._shm is not None else self.refresh()
        if fd is None:
            return
        try:
            header = os.pread(fd, WAL_INDEX_NOTE_SIZE, 0)
        except OSError:
            return
        now = time.time()  # after the read: every commit it saw was made before this time
        with self._lock:
            self._notes.append((now, header))

    def refresh(self) -> Optional[int]:
        """Look up the descriptor of the `-shm` now at its path again (the replicator does at
        every read: a file replaced meanwhile is noticed there)."""
        self._shm = files.descriptor(self._shm_path)
        return self._shm

    def close(self) -> None:
        """Before the descriptors are released: no note reads them from here on."""
        self._shm = None

    def oldest(self) -> Optional[float]:
        """The time of the oldest commit noted and not read by the replicator yet."""
        with self._lock:
            return self._notes[0][0] if self._notes else None

    def times(self, ends: list, salts: tuple, read_at: float) -> list:
        """The commit time of each commit whose commit frame is one of `ends` (WAL cycle
        `salts`), read at `read_at` under the write lock. Notes taken before `read_at` are
        then forgotten: they saw no later commit."""
        with self._lock:
            notes, self._notes = self._notes, [n for n in self._notes if n[0] >= read_at]
        seen = sorted((index[1], t) for t, index in ((t, parse_wal_index(h)) for t, h in notes)
                      if index is not None and index[0] == salts)
        # earliest[i]: the earliest note among those that saw frame seen[i][0] or later.
        earliest = [read_at] * (len(seen) + 1)
        for i in range(len(seen) - 1, -1, -1):
            earliest[i] = min(seen[i][1], earliest[i + 1])
        frames = [frame for frame, _ in seen]
        return [earliest[bisect.bisect_left(frames, end)] for end in ends]
