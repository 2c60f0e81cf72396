"""cli.verify: `peewee-s3 verify`, a restore into a temporary file that must pass every check.

The checks are restore's own (sizes, sha256s, the segment chain, integrity_check); this
prints what was checked. It writes nothing to the storage.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sqlite3
import tempfile

from ..errors import ObjectNotFoundError, ReplicaCorruptError
from ..fence import lineage_end
from ..restore import parse_time, restore_to, segment_sizes
from ..snapshots import RAW_FORMAT, SnapshotMeta, read_meta
from .options import StoredDatabase
from .output import byte_size, counted, when
from .progress import ShowingDownloads
from .restore import check_generation


def cmd_verify(args: argparse.Namespace, db: StoredDatabase) -> int:
    at = parse_time(args.timestamp) if args.timestamp else None
    check_generation(db, args.generation)
    with tempfile.TemporaryDirectory(prefix="peewee-s3-verify-") as directory:
        target = os.path.join(directory, "verify.db")
        try:
            state = restore_to(ShowingDownloads(db.storage, db.layout),
                               db.layout, target, at=at, generation=args.generation,
                               merged=False)  # every single segment, not merged copies
        except (ReplicaCorruptError, ObjectNotFoundError) as exc:
            raise ReplicaCorruptError(f"verify FAILED for {db.describe()}: {exc}") from None
        meta = read_meta(db.storage, db.layout, state.generation)
        listed = segment_sizes(db.storage, db.layout, state.generation)
        stored = lineage_end(db.storage, db.layout, state.generation, listed)  # then a fence?
        fenced = stored < len(listed)
        conn = sqlite3.connect(f"{pathlib.Path(target).as_uri()}?mode=ro", uri=True)
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'"
                                  ).fetchone()[0]
        finally:
            conn.close()
    what = f"the state at {when(at)}" if at is not None else (
        f"generation {args.generation}" if args.generation else "the latest state")
    print(f"verified {what} of {db.describe()}:")
    print(f"  generation  {state.generation}")
    print(f"  snapshot    {_snapshot_checks(meta)}")
    if state.seq:
        print(f"  segments    1-{state.seq} of {stored} stored: each one's sha256, "
              f"generation and sequence number checked; {counted(state.commits, 'commit')} "
              f"applied, "
              f"the last at {when(state.last_commit_time)}")
    else:
        print(f"  segments    none applied ({stored} stored)")
    if fenced:
        print("  fence       the generation ends in a fence: its writer was taken over, and "
              "what follows it is not part of the lineage")
    print(f"  database    PRAGMA integrity_check: ok ({pages} pages of {meta.page_size} bytes, "
          f"{counted(tables, 'table')})")
    print("OK")
    return 0


def _snapshot_checks(meta: SnapshotMeta) -> str:
    """What was checked of the snapshot, in the words of its format (docs/FORMAT.md)."""
    checked = f"stored size and sha256 match its meta ({meta.sha256[:16]}…)"
    if meta.format == RAW_FORMAT:
        return f"{byte_size(meta.size)}, {checked}"
    return (f"{byte_size(meta.size)} in {counted(len(meta.chunks), 'chunk')} of "
            f"{meta.compression} ({byte_size(meta.stored_size)} stored), {checked}, every "
            "chunk decompressed to its length")
