"""localfile: the replicated SQLite file as the replicator sees it — two connections and a pin.

The writer connection takes SQLite's write lock to read new commits out of the WAL; the reader
connection holds a read transaction at all times (the pin) at the last position read, as
Litestream does: while it is held, no checkpoint by anyone can copy frames past it into the
database file, and RESTART/TRUNCATE checkpoints by others give up (busy), so no frame that was
not read yet can leave the WAL. The pin moves only under the write lock. Local I/O only: this
module never talks to storage.
"""
from __future__ import annotations

import os
import sqlite3
import time
from typing import Callable, NamedTuple, Optional

from . import files
from .clock import CommitClock
from .errors import LocalStateError
from .snapshots import copy_database
from .wal import WalPosition, WalRead, read_ahead, read_commits, wal_path

BUSY_TIMEOUT = 30.0  # seconds the replicator waits for SQLite's locks
# Async mode: a writing thread checks that the file is still the one replicated (and a member
# that the lease holds) at most this often, not at every write (a stat() each); sync mode at
# every write. The replicator checks the file at every read.
ASYNC_CHECK_EVERY = 0.05


class Truncation(NamedTuple):
    """What a TRUNCATE checkpoint did: `emptied` the WAL; `folded` commits nobody had read
    into the database file (someone committed after the last read)."""

    emptied: bool
    folded: bool


def file_identity(path: str) -> Optional[tuple]:
    """(device, inode) of the file at `path`, or None if there is none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


class LocalFile:
    def __init__(self, path: str, clock: CommitClock) -> None:
        self.path, self.clock = path, clock
        self._writer = self._open_connection()
        self._reader = self._open_connection()
        self.identity = file_identity(path)
        self.pin: Optional[WalPosition] = None   # where the reader's read transaction stands
        self.last_pin: Optional[WalPosition] = None  # where it stood while the last read looked
        self._version: Optional[int] = None      # data_version when the pin was taken
        # Pinned from the start (at the WAL's end, before anything is read): from here on no
        # frame leaves the WAL unseen, and `truncate` can tell commits it folds.
        self._pin(WalPosition())

    def _open_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        # A connection keeps the WAL alive only once it has read: see ENVIRONMENT.md.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn

    def close(self) -> None:
        for conn in (self._writer, self._reader):
            conn.close()
        self.pin = None
        self.clock.close()
        files.release(self.path)

    def check(self) -> None:
        """Raise LocalStateError if the file at our path is no longer the one we replicate."""
        if file_identity(self.path) != self.identity:
            raise LocalStateError(
                f"{self.path} was deleted or replaced while its replica session was open: "
                "what was committed to it after the last shipment is not in storage. Call "
                "shutdown(), then connect() again (which restores the file if it is missing)")

    # -- reading under the write lock ------------------------------------------------------

    def read(self, position: WalPosition,
             action: Optional[Callable[[WalRead], None]] = None) -> WalRead:
        """The commits after `position`, read while holding SQLite's write lock (no network);
        then the pin moves to the end of that read. `action` runs under the same lock, with
        the pin let go (a checkpoint cannot run on a connection in a transaction). Most frames
        are read before taking the lock, so that commits wait only for the last few."""
        self.check()
        self.clock.refresh()
        ahead = read_ahead(self.path, position)
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            read_at = time.time()
            read = read_commits(wal_path(self.path), position, verify=False, ahead=ahead)
            self.last_pin = self.pin
            self._unpin()
            if action:
                action(read)
            self._pin(read.position)
        finally:
            self._writer.execute("ROLLBACK")
        if read.ends:  # after the lock: notes taken since read_at change no answer
            read.times = self.clock.times(read.ends, read.header.salts, read_at)
        return read

    def _pin(self, position: WalPosition) -> None:
        self._reader.execute("BEGIN")
        self._reader.execute("SELECT count(*) FROM sqlite_master").fetchone()
        self.pin = position
        self._version = self._data_version()

    def _unpin(self) -> None:
        if self._reader.in_transaction:
            self._reader.execute("COMMIT")
        self.pin = None

    def _data_version(self) -> int:
        """Changes whenever another connection commits (ours included; not our checkpoints)."""
        return self._writer.execute("PRAGMA data_version").fetchone()[0]

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint_passive(self) -> None:
        """Only inside a `read` action (under the write lock, every frame read): copy the
        WAL's frames into the database file, so that the next write starts the WAL over."""
        self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def checkpoint_to_pin(self) -> None:
        """Without the write lock: copy the WAL's frames up to the pin into the database file
        (a PASSIVE checkpoint stops there, and never waits), so that the checkpoint under the
        lock (`checkpoint_passive`) is left only the frames committed since."""
        self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def truncate(self, position: WalPosition) -> Truncation:
        """Empty the WAL (everything read so far must be shipped or in the current snapshot),
        letting the pin go for it (TRUNCATE waits for every reader) and taking it again after
        `position` (the caller's, kept if the WAL could not be emptied). Commits made since
        the last `read` are then in the database file but were never read: `folded` says so,
        and the caller must snapshot the file to keep them."""
        version = self._version
        self._unpin()
        busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self.read(position if busy else WalPosition())
        folded = not busy and self._version != version
        return Truncation(not busy and not folded, folded)

    # -- snapshots -------------------------------------------------------------------------

    def copy_pinned(self, target: str) -> int:
        """Copy the database as the pin sees it into a new file; returns the page size."""
        return copy_database(self._reader, target)

    def page_size(self) -> int:
        return self._writer.execute("PRAGMA page_size").fetchone()[0]
