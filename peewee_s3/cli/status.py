"""cli.status: `peewee-s3 status`, who holds the lease and how far replication has got.

Read from the storage alone (lock.json, the generations and the last segment): it asks
nothing of a running writer and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Optional

from ..fence import lineage_end
from ..lease import LeaseRecord, read_lease
from ..restore import segment_sizes
from ..retention import stored_generations
from .generations import current_id, read_segment
from .options import StoredDatabase
from .output import counted, duration, when


def cmd_status(args: argparse.Namespace, db: StoredDatabase) -> int:
    now = time.time()
    lease = read_lease(db.storage, db.layout.lock)
    stored = stored_generations(db.storage, db.layout)
    complete = [g for g in stored if g.complete]
    current = current_id(db)
    last_segment = None
    if current:
        end = lineage_end(db.storage, db.layout, current,
                          segment_sizes(db.storage, db.layout, current))
        if end:
            segment = read_segment(db, current, end)
            last_segment = {"generation": current, "seq": end,
                            "commits": len(segment.commits), "last_commit": segment.last_time,
                            "seconds_ago": now - segment.last_time}
    current_meta = next((g.meta for g in complete if g.id == current), None)
    status = {
        "database": db.describe(),
        "lease": _lease_status(lease, now),
        "current_generation": current,
        "current_generation_created_at": current_meta.created_at if current_meta else None,
        "complete_generations": len(complete),
        "incomplete_generations": len(stored) - len(complete),
        "oldest_state": complete[0].created_at if complete else None,
        "last_segment": last_segment,
    }
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    _print_status(status, now)
    return 0


def _print_status(status: dict, now: float) -> None:
    print(f"database:     {status['database']}")
    print(f"lease:        {_describe_lease(status['lease'])}")
    current = status["current_generation"]
    if not current:
        print("generation:   none complete: nothing to restore yet")
        return
    extra = (f", {status['incomplete_generations']} incomplete"
             if status["incomplete_generations"] else "")
    print(f"generation:   {current} (created {when(status['current_generation_created_at'])}; "
          f"{status['complete_generations']} complete{extra}, "
          f"oldest state {when(status['oldest_state'])})")
    last_segment = status["last_segment"]
    if last_segment:
        print(f"last shipped: segment {last_segment['seq']} "
              f"({counted(last_segment['commits'], 'commit')}), "
              f"last commit {when(last_segment['last_commit'])} "
              f"({duration(last_segment['seconds_ago'])} ago)")
    else:
        created = status["current_generation_created_at"]
        print(f"last shipped: the snapshot only, no segment yet "
              f"({duration(now - created)} ago)")


def _lease_status(lease: Optional[LeaseRecord], now: float) -> Optional[dict]:
    if lease is None:
        return None
    state = "released" if lease.released else ("live" if lease.is_live(now) else "expired")
    return {"state": state, "holder": lease.describe(), "holder_id": lease.holder_id,
            "host": lease.host, "pid": lease.pid, "epoch": lease.epoch,
            "generation": lease.generation, "acquired_at": lease.acquired_at,
            "expires_at": lease.expires_at, "expires_in": lease.expires_at - now}


def _describe_lease(lease: Optional[dict]) -> str:
    if lease is None:
        return "none (no writer has run here)"
    if lease["state"] == "live":
        return f"held by {lease['holder']}, expires in {duration(lease['expires_in'])}"
    if lease["state"] == "released":
        return (f"released by {lease['holder']} {duration(-lease['expires_in'])} ago "
                "(no writer)")
    return (f"EXPIRED {duration(-lease['expires_in'])} ago, held by {lease['holder']} (the "
            f"writer stopped without releasing it; the next one takes it over)")
