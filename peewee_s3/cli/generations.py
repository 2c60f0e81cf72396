"""cli.generations: `peewee-s3 generations`, one row per stored generation.

Also what other commands read about generations: the current one and a segment's commit
times. It only reads the storage.
"""
from __future__ import annotations

import argparse
import json
from typing import Optional

from ..errors import NothingToRestoreError, ObjectNotFoundError, ReplicaCorruptError
from ..fence import lineage_end
from ..restore import current_generation
from ..retention import StoredGeneration, stored_generations
from ..segments import Segment
from .options import StoredDatabase
from .output import byte_size, print_table, when


def cmd_generations(args: argparse.Namespace, db: StoredDatabase) -> int:
    stored = stored_generations(db.storage, db.layout)
    if not stored:
        raise NothingToRestoreError(f"{db.describe()} holds no generation: check --storage, "
                                    "--key-prefix and --database-name")
    current = current_id(db)
    rows = [_generation_row(db, g, current) for g in stored]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print_table(["GENERATION", "CREATED", "SNAPSHOT", "SEGMENTS", "FIRST COMMIT",
                 "LAST COMMIT", "COMPLETE", "CURRENT"],
                [[r["generation"], when(r["created_at"]),
                  byte_size(r["snapshot_size"]) if r["snapshot_size"] is not None else "-",
                  str(r["segments"]) + (" (gap)" if r["gap"] else "")
                  + (" (fenced)" if r["fenced_after"] is not None else ""),
                  when(r["first_commit"]), when(r["last_commit"]),
                  "DAMAGED" if r["problem"] else ("yes" if r["complete"] else "no"),
                  "*" if r["current"] else ""] for r in rows])
    for r in rows:
        if r["problem"]:
            print(f"DAMAGED {r['generation']}: {r['problem']}")
    return 0


def _generation_row(db: StoredDatabase, generation: StoredGeneration, current: Optional[str]
                    ) -> dict:
    listed = generation.segment_sizes
    seqs = [seq for seq, _ in listed]
    first = last = fenced_after = None
    problem = generation.problem
    try:
        # A fence ends the lineage of a generation whose writer was taken over (fence.py).
        end = lineage_end(db.storage, db.layout, generation.id, listed)
        if seqs and end < seqs[-1]:
            fenced_after = end
        segments = [seq for seq in seqs if seq <= end]
        if segments:
            first = read_segment(db, generation.id, segments[0]).first_time
            last = read_segment(db, generation.id, segments[-1]).last_time
    except (ReplicaCorruptError, ObjectNotFoundError) as exc:
        problem, segments = str(exc), seqs
    snapshot_key = db.layout.snapshot(generation.id)
    stored_size = next((o.size for o in generation.objects if o.key == snapshot_key), None)
    snapshot_size = generation.meta.size if generation.meta else stored_size
    problem = problem or _snapshot_problem(generation, snapshot_key, stored_size)
    return {"generation": generation.id, "created_at": generation.created_at,
            "snapshot_size": snapshot_size, "segments": len(segments),
            "fenced_after": fenced_after,
            "gap": seqs != list(range(1, len(seqs) + 1)), "first_commit": first,
            "last_commit": last, "complete": generation.complete,
            "current": generation.id == current, "size": generation.size, "problem": problem}


def _snapshot_problem(generation: StoredGeneration, key: str, stored_size: Optional[int]
                      ) -> Optional[str]:
    """What the listing shows wrong with a complete generation's snapshot (a restore of it
    would fail); segments between the first and the last are read by `verify` only."""
    if generation.meta is None:
        return None
    if stored_size is None:
        return f"its snapshot {key} is missing: this generation cannot be restored"
    if stored_size != generation.meta.stored_size:
        return (f"its snapshot {key} is {stored_size} bytes, its meta says "
                f"{generation.meta.stored_size}: this generation cannot be restored")
    return None


def read_segment(db: StoredDatabase, generation: str, seq: int) -> Segment:
    key = db.layout.segment(generation, seq)
    return Segment.decode(db.storage.read(key), key)


def current_id(db: StoredDatabase) -> Optional[str]:
    """The generation a restore of the latest state reads, or None if nothing is complete."""
    try:
        return current_generation(db.storage, db.layout).generation
    except (NothingToRestoreError, ObjectNotFoundError, ReplicaCorruptError):
        return None  # `generations` shows what is wrong
