"""cli.snapshot: `peewee-s3 snapshot --local FILE`, a local database file as a new generation.

It takes the lease (so never while a writer holds it; one that expired is taken over, and its
generation fenced), uploads a checked copy of FILE, makes it current and releases the lease.
FILE is only read.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sqlite3
import sys
import tempfile
import time
from typing import Callable

from ..errors import LocalStateError, PeeweeS3Error
from ..fence import fence_generation
from ..layout import new_generation_id
from ..lease import Lease
from ..restore import segment_sizes
from ..snapshots import copy_database, upload_snapshot
from .options import StoredDatabase
from .output import PROG, byte_size
from .progress import progress_bar

LOCK_TTL = 60.0


def explain_snapshot() -> int:
    """`snapshot` without --local: say what takes snapshots instead, and fail."""
    print(f"{PROG}: nothing done: a running writer takes a snapshot by itself once its "
          "segments outweigh the last one or snapshot_interval has passed, and db.snapshot() "
          "in the writer takes one now. To upload a "
          f"database file as a new generation, stop the writer and run '{PROG} snapshot "
          "--local FILE'", file=sys.stderr)
    return 1


def cmd_snapshot(args: argparse.Namespace, db: StoredDatabase) -> int:
    path = args.local
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise LocalStateError(f"{path} is not a database file (missing or empty): nothing to "
                              "upload")
    with tempfile.TemporaryDirectory(prefix="peewee-s3-snapshot-") as directory:
        copy = os.path.join(directory, "snapshot.db")
        page_size = _copy_database_file(path, copy)
        lease = Lease(db.storage, db.layout.lock, args.lock_ttl)
        lease.acquire()
        try:
            previous = lease.previous
            if previous and not previous.released and previous.generation:
                # Its writer may only be paused: its next segment must fail (fence.py).
                fence_generation(db.storage, db.layout, previous.generation,
                                 segment_sizes(db.storage, db.layout, previous.generation),
                                 epoch=lease.epoch, holder_id=lease.holder_id)
            generation = new_generation_id()
            with progress_bar(os.path.getsize(copy), "snapshot.db") as bar:
                keeper = _LeaseKeeper(lease, bar.update)
                meta = upload_snapshot(db.storage, db.layout, generation, copy,
                                       epoch=lease.epoch, page_size=page_size, parent=None,
                                       progress=keeper)
            lease.renew(generation=generation)
        except BaseException:
            # After a takeover, the previous holder may be alive and uploading into the current
            # generation: a clean release would tell the next writer to carry on in it, so
            # ours ends as an expired one (the next writer fences the generation). (A lost
            # lease cannot be released: say why it failed.)
            with contextlib.suppress(PeeweeS3Error):
                lease.release(clean=not lease.took_over)
            raise
        lease.release()
    print(f"uploaded {path} to {db.describe()} as generation {generation} "
          f"({byte_size(meta.size)}, {byte_size(meta.stored_size)} stored), now the current one; "
          "the next writer restores it")
    return 0


def _copy_database_file(path: str, copy: str) -> int:
    """Copy a database file (read-only) with SQLite's backup API, in WAL mode like a writer's
    snapshots, and check it; returns the page size."""
    source = sqlite3.connect(f"{pathlib.Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        page_size = copy_database(source, copy)
    except sqlite3.DatabaseError as exc:
        raise LocalStateError(f"{path} cannot be read as an SQLite database ({exc})") from None
    finally:
        source.close()
    conn = sqlite3.connect(copy)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    if result != ["ok"]:
        raise LocalStateError(f"{path} fails PRAGMA integrity_check ({'; '.join(result[:3])}): "
                              "not uploaded")
    return page_size


class _LeaseKeeper:
    """An upload's progress callback that also renews the lease every ttl / 3 seconds."""

    def __init__(self, lease: Lease, progress: Callable[[int], object]) -> None:
        self._lease, self._progress = lease, progress
        self._renewed = time.monotonic()

    def __call__(self, nbytes: int) -> None:
        self._progress(nbytes)
        if time.monotonic() - self._renewed >= self._lease.ttl / 3:
            self._lease.renew()
            self._renewed = time.monotonic()
