"""workloads: P1–P7, each run against every selected system that it applies to.

A workload opens a system on a fresh file and a fresh bucket, drives it, and returns `Result`s:
figures counted at the proxy, timed here or reported by a child process — never read from a
system's own counters. Figures are defined in report.py; goals are judged there too.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import peewee

from bench.processes import REGION, clean_aws_env, python_env, python_module, wait_peak_rss
from bench.proxy import CountingProxy, Traffic
from bench.rows import Item, insert_one
from bench.servers import S3Server, s3_client
from bench.systems import PREFIX, Litestream, System, Target, litestream_binary, make_system
from bench.watcher import Watcher

GiB = 2**30
MiB = 2**20
P1_CHUNKS = 10
RANGED_STREAMS = 4  # P5's second peewee-s3 restore: the snapshot as this many ranged GETs


@dataclass(frozen=True)
class Result:
    figure: str  # a key of report.FIGURES
    system: str
    value: float


@dataclass(frozen=True)
class Settings:
    """How much each workload does: the defaults are the full run, `quick()` the quick one."""

    size: int = 256 * MiB  # the large database of P5–P7
    p1_commits: int = 10000  # P1, systems whose commits do not wait for storage
    p1_sync_commits: int = 300  # P1, systems whose commits wait for an upload
    sync_commits: int = 200  # P2/P3, one writer thread, sync mode
    threads: int = 8  # P2, several writer threads
    per_thread: int = 25
    stream_rate: float = 50.0  # P2/P3 async: commits per second, for stream_seconds
    stream_seconds: float = 10.0
    lag_samples: tuple = ((1.0, 20), (0.1, 50))  # P4: (sync interval, samples)
    restore_commits: int = 2000  # P5: segments on top of the large database
    trickle_rate: float = 2.0  # P7: commits per second, for trickle_seconds
    trickle_seconds: float = 15.0
    shutdown_commits: int = 5  # P8: commits before the shutdown whose uploads are counted

    @classmethod
    def quick(cls, size: Optional[int] = None) -> "Settings":
        return cls(size=size or 32 * MiB, p1_commits=3000, p1_sync_commits=60, sync_commits=60,
                   per_thread=10, stream_seconds=3.0, lag_samples=((1.0, 8), (0.1, 20)),
                   restore_commits=200, trickle_seconds=6.0)


class Bench:
    """What every workload needs: the server, the proxy, the watcher, a work directory."""

    def __init__(self, server: S3Server, proxy: CountingProxy, watcher: Watcher, workdir: str,
                 settings: Settings, log: Callable[[str], None]) -> None:
        self.server, self.proxy, self.watcher = server, proxy, watcher
        self.workdir, self.settings, self.log = workdir, settings, log
        self._files = 0
        self._template: Optional[str] = None

    def warm_up(self) -> None:
        """Before anything is measured: a plain database written for a while (this process's
        caches), and the server used, then idle."""
        with self.opened("plain"):
            for _ in range(3000):
                insert_one()
        self.server.warm_up()

    def wait_quiet(self, quiet: float = 1.5, timeout: float = 600.0) -> None:
        """Wait until the proxy has seen no upload for `quiet` seconds (a large upload in
        flight shows in no listing, but its parts pass the proxy)."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            traffic = self.proxy.read()
            uploads = (traffic.get("PUT"), traffic.get("POST"), traffic.uploaded)
            if uploads != last:
                last, since = uploads, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.1)

    def fresh_path(self, name: str) -> str:
        self._files += 1
        folder = os.path.join(self.workdir, f"{self._files:03d}-{name}")
        os.makedirs(folder)
        return os.path.join(folder, "app.db")

    def target(self, name: str) -> Target:
        return Target(self.server, self.proxy.endpoint, self.server.make_bucket(name))

    def large_copy(self, name: str) -> str:
        """A fresh copy of the large database (built once per run)."""
        if self._template is None:
            self._template = os.path.join(self.workdir, "large-template.db")
            started = time.monotonic()
            build_large_database(self._template, self.settings.size)
            self.log(f"built a {self.settings.size / MiB:.0f} MiB database in "
                     f"{time.monotonic() - started:.1f} s")
        path = self.fresh_path(name)
        shutil.copyfile(self._template, path)
        return path

    @contextlib.contextmanager
    def opened(self, name: str, *, path: Optional[str] = None, **options) -> Iterator[System]:
        """A started system with the Item table, settled; stopped and its bucket emptied after."""
        target = None if name == "plain" else self.target(name)
        system = make_system(name, path or self.fresh_path(name), target, **options)
        self.proxy.reset()  # counters start at zero with every system
        try:
            system.start()
            with system.db.bind_ctx([Item]):
                system.db.create_tables([Item])
                system.settle()
                yield system
        finally:
            system.stop()
            if target is not None:
                self.server.empty_bucket(target.bucket)


def build_large_database(path: str, size: int) -> None:
    """About `size` bytes: rows of 600 random bytes and 400 zero bytes (compressible by about
    40%), four to a 4 KiB page, plus the empty Item table."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE blob (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        rows, batch = size // 1024, 50_000
        for start in range(0, rows, batch):
            conn.execute("BEGIN")
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO blob (data) SELECT randomblob(600) || zeroblob(400) FROM n",
                (min(batch, rows - start),))
            conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    db = peewee.SqliteDatabase(path)
    with db.bind_ctx([Item]):
        db.create_tables([Item])
    db.close()


def paced(rate: float, count: int, action: Callable[[], None]) -> float:
    """Run `action` `count` times at `rate` per second; returns the seconds it took."""
    started = time.monotonic()
    for i in range(count):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        action()
    return time.monotonic() - started


def percentile(values: list, p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# -- P1 ------------------------------------------------------------------------------------

def p1_insert_rate(bench: Bench, systems: list) -> list:
    """Single-row autocommit inserts per second, back to back, on the commit path.

    The figure is all inserts over all the time they took, stalls included; the log also
    shows the fastest and slowest tenth, which tells a stall from a steady slowdown.
    """
    results = []
    for name in systems:
        with bench.opened(name) as system:
            n = (bench.settings.p1_sync_commits if system.durable_on_commit
                 else bench.settings.p1_commits)
            chunk = max(10, n // P1_CHUNKS)
            for _ in range(chunk):  # warm up: caches, first uploads
                insert_one()
            system.settle()
            times = []
            for _ in range(P1_CHUNKS):
                started = time.monotonic()
                for _ in range(chunk):
                    insert_one()
                times.append(time.monotonic() - started)
            rate = chunk * P1_CHUNKS / sum(times)
        bench.log(f"P1 {name}: {rate:,.0f} inserts/s (tenths {chunk / max(times):,.0f} - "
                  f"{chunk / min(times):,.0f})")
        results.append(Result("P1", name, rate))
    return results


# -- P2 and P3 -----------------------------------------------------------------------------

def _sync_run(bench: Bench, name: str, threads: int, per_thread: int) -> tuple:
    """`threads` writers make `per_thread` commits each; returns (traffic, commits, latencies)."""
    latencies: list = []
    with bench.opened(name) as system:
        bench.proxy.reset()

        def writer() -> None:
            for _ in range(per_thread):
                started = time.monotonic()
                insert_one()
                latencies.append(time.monotonic() - started)
            system.db.close()

        workers = [threading.Thread(target=writer) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        system.settle()
        traffic = bench.proxy.reset()
    return traffic, threads * per_thread, latencies


def _wal_bytes_per_commit(bench: Bench, commits: int) -> float:
    """What one Item commit adds to the WAL of plain SQLite (no checkpoint in between)."""
    path = bench.fresh_path("wal-bytes")
    db = peewee.SqliteDatabase(path, pragmas={"journal_mode": "wal", "wal_autocheckpoint": 0})
    with db.bind_ctx([Item]):
        db.create_tables([Item])
        before = os.path.getsize(path + "-wal")
        for _ in range(commits):
            insert_one()
        grown = os.path.getsize(path + "-wal") - before
    db.close()
    return grown / commits


def p2_p3_sync(bench: Bench, systems: list, p2: bool, p3: bool) -> list:
    s = bench.settings
    results = []
    if p3:
        results.append(Result("P3.sync", "plain", _wal_bytes_per_commit(bench, s.sync_commits)))
    for name in systems:
        traffic, commits, latencies = _sync_run(bench, name, 1, s.sync_commits)
        bench.log(f"P2/P3 {name}, 1 thread: {traffic.puts / commits:.2f} PUT/commit, "
                  f"{traffic.uploaded / commits:,.0f} B/commit, {traffic.requests}")
        if p3:
            results.append(Result("P3.sync", name, traffic.uploaded / commits))
        if not p2:
            continue
        results += [Result("P2.sync1", name, traffic.puts / commits),
                    Result("P2.requests1", name, traffic.total / commits),
                    Result("P2.latency", name, statistics.median(latencies) * 1000)]
        traffic, commits, _ = _sync_run(bench, name, s.threads, s.per_thread)
        bench.log(f"P2 {name}, {s.threads} threads: {traffic.puts / commits:.2f} PUT/commit")
        results.append(Result("P2.sync8", name, traffic.puts / commits))
    return results


def p2_p3_async(bench: Bench, systems: list, p2: bool, p3: bool) -> list:
    """A steady stream of commits at 1 s interval: objects per second and bytes per commit."""
    s = bench.settings
    results = []
    commits = int(s.stream_rate * s.stream_seconds)
    if p3:
        results.append(Result("P3.async", "plain", _wal_bytes_per_commit(bench, commits)))
    for name in systems:
        with bench.opened(name, interval=1.0) as system:
            bench.proxy.reset()
            seconds = paced(s.stream_rate, commits, insert_one)
            during = bench.proxy.read()  # objects per second: while the stream runs
            system.settle()
            traffic = bench.proxy.reset()  # bytes per commit: until every commit is stored
        bench.log(f"P2/P3 {name}, async: {during.puts / seconds:.2f} PUT/s, "
                  f"{traffic.uploaded / commits:,.0f} B/commit, {traffic.requests}")
        if p2:
            results.append(Result("P2.async", name, during.puts / seconds))
        if p3:
            results.append(Result("P3.async", name, traffic.uploaded / commits))
    return results


# -- P4 ------------------------------------------------------------------------------------

def p4_lag(bench: Bench, systems: list) -> list:
    """Commit, then time until another client (the watcher) can read it; pause a random part
    of the interval between samples so that commits fall anywhere in the shipping cycle."""
    results = []
    rng = random.Random(4)
    for interval, samples in bench.settings.lag_samples:
        for name in systems:
            lags = []
            with bench.opened(name, interval=interval) as system:
                for _ in range(samples):
                    bench.watcher.arm(system.probe())
                    insert_one()
                    committed = time.monotonic()
                    seen = bench.watcher.seen()
                    lags.append(float("inf") if seen is None else max(0.0, seen - committed))
                    time.sleep(rng.uniform(0, interval))
            p50, p99 = percentile(lags, 50), percentile(lags, 99)
            bench.log(f"P4 {name} at {interval:g} s: p50 {p50:.3f} s, p99 {p99:.3f} s")
            results += [Result(f"P4.p50@{interval:g}", name, p50),
                        Result(f"P4.p99@{interval:g}", name, p99)]
    return results


# -- P5 and P6 -----------------------------------------------------------------------------

def p5_p6_restore(bench: Bench, systems: list, p5: bool, p6: bool) -> list:
    """A large database plus many single-row commits, replicated, then restored elsewhere."""
    results = []
    if any(name.startswith("s3-") for name in systems):
        results += _peewee_s3_restore(bench, p5, p6)
    if "litestream" in systems:
        results += _litestream_restore(bench, p5, p6)
    return results


@contextlib.contextmanager
def children_cpu() -> Iterator[dict]:
    """CPU seconds (user + system) of the child processes that end inside the block: the
    bench's own children only end when it stops them, so around one step it is that step's."""
    def used() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    out: dict = {}
    before = used()
    yield out
    out["seconds"] = used() - before


def _run_child(*args: str) -> dict:
    """Run `python -m bench.child ...`; returns its reports by step."""
    process = python_module("child", *args, stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"bench.child {args[0]} failed ({process.returncode}): {out[-2000:]}")
    return {r["step"]: r for r in map(json.loads, out.splitlines())}


def _peewee_s3_restore(bench: Bench, p5: bool, p6: bool) -> list:
    s = bench.settings
    path = bench.large_copy("s3-writer")
    target = bench.target("s3-restore")
    try:
        wrote = _run_child("writer", path, target.bucket, target.endpoint, str(s.restore_commits))
        out = os.path.join(os.path.dirname(path), "restored.db")
        bench.proxy.reset()
        with children_cpu() as cpu:
            restored = _run_child("restore", out, target.bucket, target.endpoint)["restore"]
        requests = bench.proxy.reset()
        if restored["commits"] != s.restore_commits or _items(out) != s.restore_commits:
            raise RuntimeError(f"peewee-s3 restored {restored['commits']} commits, not "
                               f"{s.restore_commits}")
        ranged = _run_child("restore", out + "-ranged", target.bucket, target.endpoint,
                            str(RANGED_STREAMS))["restore"]
        os.remove(out + "-ranged")
        cli, cli_rss = _cli_restore(target, out + "-cli")
        if _items(out + "-cli") != s.restore_commits:
            raise RuntimeError(f"the CLI restored {_items(out + '-cli')} commits, not "
                               f"{s.restore_commits}")
        os.remove(out + "-cli")
        stored = _stored_snapshot_download(target, os.path.join(os.path.dirname(path), "dl.db"))
        download = _plain_download(bench, target, os.path.join(os.path.dirname(path), "dl.db"),
                                   out)
    finally:
        bench.server.empty_bucket(target.bucket)
    snap, restore = wrote["snapshot"], restored
    bench.log(f"P5 peewee-s3: snapshot {snap['seconds']:.1f} s, {s.restore_commits} commits "
              f"{wrote['commits']['seconds']:.1f} s, restore {restore['seconds']:.2f} s "
              f"({restore['segments']} segments; {requests.get('GET')} GETs, "
              f"{requests.total} requests; {cpu['seconds']:.2f} CPU s), {ranged['seconds']:.2f} s with "
              f"{RANGED_STREAMS} ranged GETs, {cli:.2f} s and {cli_rss / MiB:.0f} MiB as the "
              f"`peewee-s3 restore` command (process start to exit), "
              f"plain download {download:.2f} s (the stored, "
              f"compressed snapshot: {stored:.2f} s); peak RSS "
              f"snapshot {snap['rss'] / MiB:.0f} MiB, restore {restore['rss'] / MiB:.0f} MiB")
    results = []
    if p5:
        results += [Result("P5.restore", "s3", restore["seconds"]),
                    Result("P5.cpu", "s3", cpu["seconds"]),
                    Result("P5.restore", "s3-ranged", ranged["seconds"]),
                    Result("P5.restore", "s3-cli", cli),
                    Result("P5.restore", "download", download),
                    Result("P5.snapshot", "s3", snap["seconds"])]
    if p6:
        results += [Result("P6.snapshot", "s3", snap["rss"] / MiB),
                    Result("P6.restore", "s3", restore["rss"] / MiB),
                    Result("P6.restore", "s3-cli", cli_rss / MiB),
                    Result("P6.idle", "s3", snap["rss_idle"] / MiB)]
    return results


def _cli_restore(target: Target, out: str) -> tuple:
    """`peewee-s3 restore` from process start to exit, as Litestream's restore is timed, and its
    peak RSS; a `--help` first caches the modules' bytecode (see python_env)."""
    env = python_env()
    command = [sys.executable, "-m", "peewee_s3", "restore", "--storage",
               f"s3://{target.bucket}/{PREFIX}", "--database-name", "db", "--endpoint-url",
               target.endpoint, "--force-path-style", "--region", REGION, "-o", out]
    subprocess.run(command[:4] + ["--help"], env=env, stdout=subprocess.DEVNULL, check=True)
    return _timed_process("peewee-s3 restore", command, env)


def _timed_process(name: str, command: list, env: dict) -> tuple:
    """Run `command` to its exit; returns (seconds from start to exit, its peak RSS)."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    rss = wait_peak_rss(process, timeout=3600)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed: {process.stdout.read()[-2000:]!r}")
    return seconds, rss


def _plain_download(bench: Bench, target: Target, into: str, database: str) -> float:
    """One GET of the database's bytes as they are (a copy of `database` stored beside the
    replica, outside the timing), streamed to a file: the limit a restore is compared with,
    and all the seed's way does to restore. Since snapshots are stored compressed (format 2),
    this is no longer the snapshot object: that one is smaller (see _stored_snapshot_download)."""
    client = s3_client(target.endpoint)
    key = f"{PREFIX}/plain-download.db"
    client.upload_file(database, target.bucket, key)
    bench.server.wait_idle()
    return _timed_get(client, target.bucket, key, into)


def _stored_snapshot_download(target: Target, into: str) -> float:
    """One GET of the snapshot object as peewee-s3 stores it (compressed): what a restore
    downloads of the snapshot, for the log."""
    client = s3_client(target.endpoint)
    key = next(o["Key"] for o in client.list_objects_v2(
        Bucket=target.bucket, Prefix=f"{PREFIX}/")["Contents"] if o["Key"].endswith("snapshot.db"))
    return _timed_get(client, target.bucket, key, into)


def _timed_get(client, bucket: str, key: str, into: str) -> float:
    started = time.monotonic()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with open(into, "wb") as f:
        while piece := body.read(MiB):
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())
    return time.monotonic() - started


def _litestream_restore(bench: Bench, p5: bool, p6: bool) -> list:
    s = bench.settings
    path = bench.large_copy("litestream")
    target = bench.target("litestream-restore")
    system = Litestream(path, target)
    bench.proxy.reset()
    try:
        started = time.monotonic()
        system.start()
        first_sync = system.replicated_at - started
        with system.db.bind_ctx([Item]):
            for _ in range(s.restore_commits):
                insert_one()
        system.settle()
        system.stop()
        out = os.path.join(os.path.dirname(path), "restored.db")
        with children_cpu() as cpu:
            seconds, rss = _timed_process(
                "litestream restore", [litestream_binary(), "restore", "-config", system.config,
                                       "-integrity-check", "full", "-o", out, path],
                clean_aws_env())
        if _items(out) != s.restore_commits:
            raise RuntimeError(f"Litestream restored {_items(out)} commits, not "
                               f"{s.restore_commits}")
    finally:
        system.stop()
        bench.server.empty_bucket(target.bucket)
    bench.log(f"P5 Litestream: first sync {first_sync:.1f} s, restore {seconds:.2f} s "
              f"({cpu['seconds']:.2f} CPU s); peak RSS "
              f"replicating {system.peak_rss / MiB:.0f} MiB, restore {rss / MiB:.0f} MiB")
    results = []
    if p5:
        results += [Result("P5.restore", "litestream", seconds),
                    Result("P5.cpu", "litestream", cpu["seconds"]),
                    Result("P5.snapshot", "litestream", first_sync)]
    if p6:
        results += [Result("P6.snapshot", "litestream", system.peak_rss / MiB),
                    Result("P6.restore", "litestream", rss / MiB)]
    return results


def _items(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM item").fetchone()[0]
    finally:
        conn.close()


# -- P8 ------------------------------------------------------------------------------------

def p8_shutdown_cold_start(bench: Bench) -> list:
    """A shutdown after a few commits, counted at the proxy (under the default policy it ships
    them and releases the lease: no snapshot); then a cold start from what it left — a new
    machine with an empty disk, timed from connect() to its first query — against one plain
    GET of the snapshot."""
    s = bench.settings
    path = bench.large_copy("s3-shutdown")
    target = bench.target("s3-cold-start")
    system = make_system("s3-async", path, target)
    try:
        system.start()  # a new lineage: connect() uploads the snapshot
        with system.db.bind_ctx([Item]):
            for _ in range(s.shutdown_commits):
                insert_one()
        bench.wait_quiet()
        bench.proxy.reset()
        started = time.monotonic()
        system.db.shutdown()
        shutdown_seconds = time.monotonic() - started
        shutdown = bench.proxy.reset()
        cold = bench.fresh_path("s3-cold-start")
        started = time.monotonic()
        report = _run_child("coldstart", cold, target.bucket, target.endpoint)["coldstart"]
        connect = bench.proxy.reset()
        if report["rows"] != s.shutdown_commits:
            raise RuntimeError(f"the cold start found {report['rows']} rows, not "
                               f"{s.shutdown_commits}")
        download = _plain_download(bench, target, os.path.join(os.path.dirname(cold), "dl.db"),
                                   cold)
    finally:
        system.stop()
        bench.server.empty_bucket(target.bucket)
    bench.log(f"P8 peewee-s3: shutdown after {s.shutdown_commits} commits uploaded "
              f"{shutdown.uploaded:,} B in {shutdown.puts} PUTs ({shutdown_seconds:.2f} s); cold "
              f"start {report['seconds']:.2f} s (connect {report['connect']:.2f} s, which "
              f"uploaded {connect.uploaded:,} B), plain download {download:.2f} s; peak RSS "
              f"{report['rss'] / MiB:.0f} MiB")
    return [Result("P8.shutdown", "s3-async", shutdown.uploaded),
            Result("P8.coldstart", "s3", report["seconds"]),
            Result("P8.coldstart", "download", download),
            Result("P8.coldstart_uploaded", "s3", connect.uploaded),
            Result("P8.coldstart_rss", "s3", report["rss"] / MiB)]


# -- P7 ------------------------------------------------------------------------------------

def p7_trickle(bench: Bench, systems: list) -> list:
    """A steady trickle of commits into the large database, with each system's defaults.

    Bytes per hour = (bytes uploaded during the trickle) / its duration × 3600 + (full
    snapshots its policy takes per hour) × (bytes of one, measured). A short run sees no
    periodic snapshot, so those come from the policy: peewee-s3 one per `snapshot_interval`
    (its default) while there are writes, or sooner once what a restore reads after the
    snapshot outweighs a share of it; Litestream one per day (its level-9 interval); the
    seed's way uploads the whole file within the run itself.
    """
    s = bench.settings
    results = []
    for name in systems:
        path = bench.large_copy(name)
        with bench.opened(name, path=path) as system:
            if isinstance(system, Litestream):
                system.wait_for_first_compaction()
            bench.wait_quiet()
            startup = bench.proxy.reset()
            seconds = paced(s.trickle_rate, int(s.trickle_rate * s.trickle_seconds), insert_one)
            system.settle()
            trickle = bench.proxy.reset()
            # peewee-s3 also stores merged copies of its segments (merging.py): counted as
            # uploaded, and as what a restore reads after the snapshot.
            merged = _restore_reads(bench, system) / seconds if name == "s3-async" else 0.0
            snapshot_bytes, per_hour = _snapshot_policy(bench, system, startup, merged)
        shipped = (trickle.uploaded / seconds + merged) * 3600
        snapshots = snapshot_bytes * per_hour
        total = shipped + snapshots
        bench.log(f"P7 {name}: {trickle.uploaded:,} B in {seconds:.1f} s -> {shipped / GiB:.3f} "
                  f"GiB/h shipped + {per_hour:g} snapshots/h of {snapshot_bytes / MiB:.0f} MiB")
        results += [Result("P7.total", name, total / GiB),
                    Result("P7.share", name, 100 * snapshots / total if total else 0.0)]
    return results


def _snapshot_policy(bench: Bench, system: System, startup: Traffic,
                     merged_per_second: float) -> tuple:
    """(bytes of one full snapshot, snapshots per hour) under the system's default policy."""
    if system.name == "s3-async":
        return startup.uploaded, 3600 / _peewee_s3_snapshot_every(startup.uploaded,
                                                                   merged_per_second)
    if system.name == "litestream":
        client = s3_client(bench.server.endpoint)
        listing = client.list_objects_v2(Bucket=system.target.bucket, Prefix=system.L9)
        return sum(o["Size"] for o in listing.get("Contents", [])), 1 / 24
    return 0, 0.0


def _restore_reads(bench: Bench, system: System) -> int:
    """Bytes a restore would read after peewee-s3's snapshot: the stored segments of the
    generation, merged as the writer merges them (merging.py), the longest merged segment
    at each step. Read from the server."""
    from peewee_s3.merging import Merger
    from peewee_s3.segments import Segment

    client = s3_client(bench.server.endpoint)
    listing = client.list_objects_v2(Bucket=system.target.bucket, Prefix=f"{PREFIX}/")
    keys = sorted(o["Key"] for o in listing.get("Contents", []) if "/wal/" in o["Key"])
    merger, sizes, longest = Merger(), [], {}
    for key in keys:
        data = client.get_object(Bucket=system.target.bucket, Key=key)["Body"].read()
        segment = Segment.decode(data, key)
        merger.add(segment, len(data))
        sizes.append(len(data))
        while merger.due:
            merged, _ = merger.take()
            stored = len(merged.encode())
            merger.stored(merged, stored)
            longest[merged.first_seq] = max(longest.get(merged.first_seq, (0, 0)),
                                            (merged.seq, stored))
    total, seq = 0, 1
    while seq <= len(sizes):
        last, size = longest.get(seq, (seq, sizes[seq - 1]))
        total, seq = total + size, last + 1
    return total


def _peewee_s3_snapshot_every(snapshot_bytes: int, reads_per_second: float) -> float:
    """Seconds between peewee-s3's snapshots under its defaults: `snapshot_interval`, or
    sooner once what a restore reads after the snapshot outweighs SEGMENTS_SHARE_OF_SNAPSHOT
    of it (and SEGMENTS_MIN_BYTES_FOR_SNAPSHOT)."""
    from peewee_s3 import replicator
    from peewee_s3.config import Options

    every = Options.__dataclass_fields__["snapshot_interval"].default
    if reads_per_second > 0:
        threshold = max(replicator.SEGMENTS_SHARE_OF_SNAPSHOT * snapshot_bytes,
                        replicator.SEGMENTS_MIN_BYTES_FOR_SNAPSHOT)
        every = min(every, threshold / reads_per_second)
    return every


# -- the table of workloads ----------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    systems: tuple  # the systems it applies to


ASYNC = ("s3-async", "seed-async", "litestream")
SYNC = ("s3-sync", "seed-sync")
PEEWEE_S3 = ("s3-async", "s3-sync")

WORKLOADS = {w.id: w for w in (
    Workload("P1", "single-row inserts per second", ("plain",) + PEEWEE_S3 + ASYNC[1:] + SYNC[1:]),
    Workload("P2", "PUT requests per commit (sync), objects per second (async)", SYNC + ASYNC),
    Workload("P3", "bytes uploaded per commit", SYNC + ASYNC),
    Workload("P4", "replication lag", ASYNC),
    Workload("P5", "restore time of a large database", PEEWEE_S3 + ("litestream",)),
    Workload("P6", "peak RSS while snapshotting and restoring it", PEEWEE_S3 + ("litestream",)),
    Workload("P7", "bytes uploaded per hour for a trickle of writes", ASYNC),
    Workload("P8", "bytes uploaded by a shutdown; cold start on an empty disk", ("s3-async",)),
)}


def run_selected(bench: Bench, only: list, systems: list, round_: int = 0) -> list:
    """Run the selected workloads once; P2/P3 and P5/P6 share their runs. P1 starts with
    another system in each round, so that no system is always measured first."""
    def chosen(workload_id: str, among: tuple = ()) -> list:
        applies = among or WORKLOADS[workload_id].systems
        return [s for s in systems if s in applies] if workload_id in only else []

    results = []
    if chosen("P1"):
        first = round_ % len(chosen("P1"))
        results += p1_insert_rate(bench, chosen("P1")[first:] + chosen("P1")[:first])
    p2, p3 = "P2" in only, "P3" in only
    sync = sorted(set(chosen("P2", SYNC)) | set(chosen("P3", SYNC)), key=systems.index)
    if sync:
        results += p2_p3_sync(bench, sync, p2, p3)
    async_ = sorted(set(chosen("P2", ASYNC)) | set(chosen("P3", ASYNC)), key=systems.index)
    if async_:
        results += p2_p3_async(bench, async_, p2, p3)
    if chosen("P4"):
        results += p4_lag(bench, chosen("P4"))
    restore = sorted(set(chosen("P5")) | set(chosen("P6")), key=systems.index)
    if restore:
        results += p5_p6_restore(bench, restore, "P5" in only, "P6" in only)
    if chosen("P7"):
        results += p7_trickle(bench, chosen("P7"))
    if chosen("P8"):
        results += p8_shutdown_cold_start(bench)
    return results
