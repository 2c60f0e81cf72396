"""tenants: a database per tenant (issue 14) — N databases in one process, each taking a commit a
second, as plain SQLite and as peewee-s3 async (`peewee_s3.Tenants`) on SeaweedFS behind the
counting proxy: the writer process's CPU, RSS and threads, requests/s at the proxy, and the
replication lag (commit to durable in storage) at p50/p99.

    python -m bench.tenants [--databases 1000] [--seconds 60] [--warm-up 10]

Each system runs in a child process of its own (`--child`), which prints one JSON line. The
commits go round the databases evenly (one every 1/N s); every 10th commit's ticket is watched
until the replicator has stored it (checked every 10 ms, from the committing loop: no thread).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.processes import KEY, SECRET
from bench.proxy import CountingProxy
from bench.servers import start_server

SAMPLE_EVERY = 10   # commits: one in ten is followed to durable


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _databases(spec: dict) -> list:
    """The databases of the system the child measures (peewee-s3's from one Tenants)."""
    os.makedirs(spec["directory"], exist_ok=True)
    names = [f"tenant-{n:04}" for n in range(spec["databases"])]
    if spec["system"] == "sqlite":
        from peewee import SqliteDatabase
        dbs = [SqliteDatabase(os.path.join(spec["directory"], f"{name}.db"),
                              pragmas={"journal_mode": "wal"}) for name in names]
        return dbs
    from peewee_s3 import Tenants
    tenants = Tenants(spec["directory"], storage=f"s3://{spec['bucket']}",
                      endpoint_url=spec["endpoint"], force_path_style=True,
                      credentials={"access_key_id": KEY, "secret_access_key": SECRET},
                      sync_interval=1.0)
    return [tenants.database(name) for name in names]


def _get(url: str) -> dict:
    import urllib.request
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def child(spec: dict) -> None:
    opened_at = time.monotonic()
    dbs = _databases(spec)

    def open_one(db) -> None:
        db.connect()
        db.execute_sql("CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, body TEXT)")
        db.close()

    # Opening (lease, probe, first snapshot: ~10 requests each) is not what is measured: 16 at
    # a time, in threads that are gone before the window.
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(open_one, dbs))
    for db in dbs:
        db.connect()
    opened = time.monotonic() - opened_at
    s3 = spec["system"] != "sqlite"
    windows = []
    for rate in spec["rates"]:
        _commit_for(dbs, spec["warm_up"], s3, rate)
        if s3:
            _get(spec["proxy"] + "/__bench__/reset")
        cpu, wall = os.times(), time.monotonic()
        run = _commit_for(dbs, spec["seconds"], s3, rate)
        wall, now = time.monotonic() - wall, os.times()
        traffic = _get(spec["proxy"] + "/__bench__/reset") if s3 else None
        windows.append({
            "system": spec["system"], "databases": len(dbs), "rate": rate, "open_s": opened,
            "seconds": wall, "commits": run["commits"],
            "cpu_cores": ((now.user - cpu.user) + (now.system - cpu.system)) / wall,
            "rss_mib": max(run["rss"]) / 1024, "peak_rss_mib": _proc_status("VmHWM") / 1024,
            "threads": max(run["threads"]),
            "requests_per_s": sum(traffic["requests"].values()) / wall if traffic else None,
            "requests": traffic["requests"] if traffic else None,
            "lag_p50": _quantile(run["lags"], 0.5), "lag_p99": _quantile(run["lags"], 0.99),
            "lag_max": max(run["lags"]) if run["lags"] else None,
            "lag_samples": len(run["lags"]), "unshipped_at_end": run["unshipped"],
            "fds": len(os.listdir("/proc/self/fd"))})
    shut_at = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:  # not measured either
        list(pool.map(lambda db: db.shutdown() if hasattr(db, "shutdown") else db.close(), dbs))
    for window in windows:
        window["shutdown_s"] = time.monotonic() - shut_at
        print(json.dumps(window), flush=True)


def _commit_for(dbs: list, seconds: float, s3: bool, rate: float) -> dict:
    """`rate` commits a second to each database for `seconds`, evenly spread; as many as it
    can when it cannot keep up (it never catches up with a backlog)."""
    gap = 1.0 / (len(dbs) * rate)
    start = time.monotonic()
    end, due, n = start + seconds, start, 0
    watched, lags, rss, threads = [], [], [], []
    next_check = next_sample = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_check:
            still = []
            for tickets, ticket, at in watched:
                if tickets.covered(ticket):
                    lags.append(now - at)
                else:
                    still.append((tickets, ticket, at))
            watched, next_check = still, now + 0.01
        if now >= next_sample:
            rss.append(_proc_status("VmRSS"))
            threads.append(threading.active_count())
            next_sample = now + 1.0
        if now >= due:
            db = dbs[n % len(dbs)]
            db.execute_sql("INSERT INTO item (body) VALUES (?)", (f"commit {n}",))
            if s3 and n % SAMPLE_EVERY == 0:
                replicator = db._session.role.replicator
                watched.append((replicator.tickets, replicator.tickets.issued, now))
            n += 1
            due = max(due + gap, now - 1.0)  # behind by more than a second: drop the backlog
            continue
        time.sleep(max(0.0, min(due, next_check) - time.monotonic()))
    return {"commits": n, "lags": lags, "rss": rss, "threads": threads,
            "unshipped": len(watched)}


def _quantile(values: list, q: float):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _run_child(spec: dict) -> list:
    result = subprocess.run([sys.executable, "-m", "bench.tenants", "--child", json.dumps(spec)],
                            capture_output=True, text=True, timeout=3600,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if result.returncode != 0:
        raise RuntimeError(f"the {spec['system']} child failed:\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in result.stdout.strip().splitlines()
            if line.startswith("{")]


def table(results: list) -> str:
    def f(value, fmt):
        return "-" if value is None else format(value, fmt)
    rows = [("system", "dbs", "rate", "commits/s", "CPU cores", "RSS MiB", "peak MiB", "threads",
             "req/s", "lag p50 s", "lag p99 s", "fds", "open s")]
    for r in results:
        rows.append((r["system"], str(r["databases"]), f(r["rate"], "g"),
                     f(r["commits"] / r["seconds"], ".0f"),
                     f(r["cpu_cores"], ".2f"), f(r["rss_mib"], ".0f"),
                     f(r["peak_rss_mib"], ".0f"), str(r["threads"]),
                     f(r["requests_per_s"], ".0f"), f(r["lag_p50"], ".2f"),
                     f(r["lag_p99"], ".2f"), str(r["fds"]), f(r["open_s"], ".1f")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__.split("\n")[0])
    p.add_argument("--databases", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    p.add_argument("--warm-up", type=float, default=10.0)
    p.add_argument("--rates", default="1,0.1",
                   help="commits a second to each database, one window per rate (default 1,0.1)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # ~12 descriptors a database
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    began = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="peewee-s3-tenants-") as workdir:
        base = {"databases": args.databases, "seconds": args.seconds, "warm_up": args.warm_up,
                "rates": [float(rate) for rate in args.rates.split(",")]}
        results.extend(_run_child({**base, "system": "sqlite",
                                   "directory": os.path.join(workdir, "sqlite")}))
        with start_server("seaweedfs", workdir) as server:
            proxy = CountingProxy(server.endpoint)
            try:
                server.warm_up()
                results.extend(_run_child({
                    **base, "system": "peewee-s3 async", "directory": os.path.join(workdir, "s3"),
                    "bucket": server.make_bucket("tenants"), "endpoint": proxy.endpoint,
                    "proxy": proxy.endpoint}))
            finally:
                proxy.stop()
    print(f"{args.databases} databases in one process, `rate` commits a second each, "
          f"{args.seconds:g} s measured after {args.warm_up:g} s; SeaweedFS behind the counting "
          f"proxy; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"{time.monotonic() - began:.0f} s in all\n")
    print(table(results))
    print("\n" + json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
