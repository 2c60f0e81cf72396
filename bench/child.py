"""child: peewee-s3 steps run in a process of their own, so that their peak RSS is theirs alone.

    python -m bench.child writer PATH BUCKET ENDPOINT COMMITS
        open an existing (large) file with S3SqliteDatabase in sync mode — a new lineage, so the
        first connect() uploads a snapshot of it — then make COMMITS single-row commits (one
        segment each) and exit WITHOUT shutdown(), so that the segments stay the end of the
        chain (shutdown would start a new generation with a final snapshot).
    python -m bench.child restore TARGET BUCKET ENDPOINT [STREAMS]
        peewee_s3.restore() the latest state into TARGET (with download_streams=STREAMS if
        given; otherwise its default, one stream on loopback).
    python -m bench.child coldstart PATH BUCKET ENDPOINT
        a new machine with an empty disk: S3SqliteDatabase at PATH (which does not exist) with
        the defaults, timed from connect() (which restores) to the end of its first query; then
        exits WITHOUT shutdown(), so that what the bench counts at the proxy is connect()'s.

Each prints one JSON object a line: {"step", "seconds", "rss", ...}; rss is the process's peak
RSS so far in bytes (VmHWM), `rss_idle` the peak before the step began (imports done).
"""
from __future__ import annotations

import json
import os
import sys
import time

from bench.processes import KEY, PRAGMAS, PREFIX, REGION, SECRET, peak_rss


def _say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _storage(bucket: str, endpoint: str) -> dict:
    return dict(storage=f"s3://{bucket}/{PREFIX}", database_name="db", endpoint_url=endpoint,
                force_path_style=True, region=REGION,
                credentials={"access_key_id": KEY, "secret_access_key": SECRET})


def writer(path: str, bucket: str, endpoint: str, commits: int) -> None:
    import peewee_s3
    from bench.rows import Item, insert_one

    db = peewee_s3.S3SqliteDatabase(path, sync_mode="sync", snapshot_interval=10**9,
                                    pragmas=PRAGMAS, **_storage(bucket, endpoint))
    idle = peak_rss()
    started = time.monotonic()
    db.connect()
    _say(step="snapshot", seconds=time.monotonic() - started, rss=peak_rss(), rss_idle=idle,
         bytes=db.status()["bytes_uploaded"])
    started = time.monotonic()
    with db.bind_ctx([Item]):
        for _ in range(commits):
            insert_one()
    _say(step="commits", seconds=time.monotonic() - started, rss=peak_rss(),
         segments=db.status()["position"]["seq"])
    sys.stdout.flush()
    os._exit(0)  # no shutdown(): see the module docstring


def restore(target: str, bucket: str, endpoint: str, streams: str = "") -> None:
    import peewee_s3

    options = {"download_streams": int(streams)} if streams else {}
    options.update(_storage(bucket, endpoint))
    idle = peak_rss()
    started = time.monotonic()
    state = peewee_s3.restore(target=target, **options)
    _say(step="restore", seconds=time.monotonic() - started, rss=peak_rss(), rss_idle=idle,
         segments=state.seq, commits=state.commits)


def coldstart(path: str, bucket: str, endpoint: str) -> None:
    import peewee_s3
    from bench.rows import Item

    db = peewee_s3.S3SqliteDatabase(path, pragmas=PRAGMAS, **_storage(bucket, endpoint))
    idle = peak_rss()
    started = time.monotonic()
    db.connect()
    connected = time.monotonic() - started
    with db.bind_ctx([Item]):
        rows = Item.select().count()
    _say(step="coldstart", seconds=time.monotonic() - started, connect=connected, rows=rows,
         rss=peak_rss(), rss_idle=idle, generation=db.status()["generation"])
    sys.stdout.flush()
    os._exit(0)  # no shutdown(): see the module docstring


if __name__ == "__main__":
    step, *args = sys.argv[1:]
    if step == "writer":
        writer(args[0], args[1], args[2], int(args[3]))
    elif step == "restore":
        restore(*args)
    elif step == "coldstart":
        coldstart(*args)
    else:
        raise SystemExit(f"unknown step {step!r}")
