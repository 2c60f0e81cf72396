"""cli.restore: `peewee-s3 restore`, the database from the storage into a local file.

It stages the file next to OUT and puts it in place only once `restore_to` has checked it;
an existing OUT is kept unless --force moves it aside. It writes nothing to the storage.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

from ..errors import LocalStateError, NothingToRestoreError
from ..restore import (RestoredState, parse_time, put_in_place, remove_database_files,
                       restore_to)
from .options import StoredDatabase
from .output import PROG, counted, when
from .progress import ShowingDownloads


def cmd_restore(args: argparse.Namespace, db: StoredDatabase) -> int:
    out = args.output
    exists = os.path.exists(out) and os.path.getsize(out) > 0
    if exists and args.if_not_exists:
        print(f"{out} exists: nothing restored (--if-not-exists)")
        return 0
    if exists and not args.force:
        raise LocalStateError(f"{out} exists: restore refuses to overwrite it. Pass --force to "
                              "move it aside and restore, or choose another -o")
    at = parse_time(args.timestamp) if args.timestamp else None
    check_generation(db, args.generation)
    staging = out + ".restoring"
    remove_database_files(staging)
    state = restore_to(ShowingDownloads(db.storage, db.layout), db.layout,
                       staging, at=at, generation=args.generation)
    try:
        aside = put_in_place(staging, out)
    except BaseException:
        remove_database_files(staging)
        raise
    print(f"restored {db.describe()} to {out}: {_describe_state(state)}")
    if aside:
        print(f"kept the previous {out} as {aside}")
    return 0


def check_generation(db: StoredDatabase, generation: Optional[str]) -> None:
    """Refuse a --generation that is not stored complete, before downloading anything."""
    if generation and not db.storage.exists(db.layout.snapshot_meta(generation)):
        raise NothingToRestoreError(
            f"{db.describe()} holds no complete generation {generation!r}: list the "
            f"generations with '{PROG} generations'")


def _describe_state(state: RestoredState) -> str:
    last = f", last commit {when(state.last_commit_time)}" if state.last_commit_time else ""
    through = f"segments 1-{state.seq}" if state.seq else "no segment"
    return (f"generation {state.generation}, snapshot and {through} "
            f"({counted(state.commits, 'commit')}{last})")

