"""One writer process and two read replicas following it through the storage, printing the lag.

    python examples/read_replica.py

The writer inserts a row every 0.1 s (sync mode: durable in the storage when it returns); each
replica polls the storage every 0.25 s and reports, once a second, the newest row it can read
and how long ago that row was written. Runs as-is on a local directory as the storage; for S3
or an S3-compatible server set PEEWEE_S3_STORAGE (e.g. s3://my-bucket/demo),
PEEWEE_S3_ENDPOINT_URL and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. PEEWEE_S3_DEMO_SECONDS
sets how long it runs (default 10).
"""
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time

import peewee

from peewee_s3 import S3SqliteDatabase
from peewee_s3.replica import S3SqliteReplica

SECONDS = float(os.environ.get("PEEWEE_S3_DEMO_SECONDS", "10"))
WRITE_EVERY = 0.1
POLL_INTERVAL = 0.25


class Event(peewee.Model):
    n = peewee.IntegerField(unique=True)
    written_at = peewee.FloatField()  # the writer's clock: time.time() at the commit


def storage_options(workdir):
    options = dict(storage=os.environ.get("PEEWEE_S3_STORAGE") or f"file://{workdir}/storage",
                   database_name="read-replica-demo")
    if os.environ.get("PEEWEE_S3_ENDPOINT_URL"):
        options.update(endpoint_url=os.environ["PEEWEE_S3_ENDPOINT_URL"], force_path_style=True)
    return options


def write(workdir, ready, done):
    db = S3SqliteDatabase(os.path.join(workdir, "writer.db"), sync_mode="sync",
                          **storage_options(workdir))
    Event.bind(db)
    db.create_tables([Event])
    n = Event.select(peewee.fn.MAX(Event.n)).scalar() or 0
    ready.set()
    written = 0
    while not done.is_set():
        n += 1
        Event.create(n=n, written_at=time.time())
        written += 1
        time.sleep(WRITE_EVERY)
    db.shutdown()
    print(f"writer:    wrote {written} rows, the last one #{n}", flush=True)


def follow(name, workdir, ready, done):
    db = S3SqliteReplica(os.path.join(workdir, f"{name}.db"), poll_interval=POLL_INTERVAL,
                         **storage_options(workdir))
    Event.bind(db)
    db.connect()
    ready.release()  # restored and following: the demo's time starts once both are
    staleness, next_report = [], time.monotonic() + 1
    while not done.is_set():
        newest = Event.select().order_by(Event.n.desc()).first()
        if newest is not None:
            staleness.append(time.time() - newest.written_at)
            if time.monotonic() >= next_report:
                next_report += 1
                print(f"{name}: newest row #{newest.n}, written {staleness[-1]:.2f} s ago; "
                      f"lag() {db.lag():.2f} s", flush=True)
        time.sleep(0.02)
    status = db.status()
    db.shutdown()
    if staleness:
        cuts = statistics.quantiles(staleness, n=100)
        print(f"{name}: newest row seen was written p50 {cuts[49]:.3f} s / p99 {cuts[98]:.3f} s "
              f"earlier ({status['commits_applied']} commits applied, "
              f"{status['generations_installed']} generation(s) restored)", flush=True)


def main():
    workdir = tempfile.mkdtemp(prefix="peewee-s3-read-replica-")
    spawn = multiprocessing.get_context("spawn")
    ready, done = spawn.Event(), spawn.Event()
    following = spawn.Semaphore(0)  # released by each replica once it follows
    print(f"storage: {storage_options(workdir)['storage']}; writing every {WRITE_EVERY} s, "
          f"replicas poll every {POLL_INTERVAL} s, for {SECONDS:.0f} s")
    writer = spawn.Process(target=write, args=(workdir, ready, done), name="writer")
    replicas = [spawn.Process(target=follow, args=(f"replica-{i}", workdir, following, done),
                              name=f"replica-{i}") for i in (1, 2)]
    writer.start()
    try:
        if not ready.wait(60):
            raise SystemExit("the writer did not start within 60 s")
        for process in replicas:
            process.start()
        for process in replicas:  # a replica's start (an interpreter, a restore) is not its time
            if not following.acquire(timeout=60):
                raise SystemExit("a replica did not start following within 60 s")
        time.sleep(SECONDS)
    finally:
        done.set()
        for process in [writer, *replicas]:
            if process.pid is not None:
                process.join(60)
        shutil.rmtree(workdir, ignore_errors=True)
    failed = [p.name for p in [writer, *replicas] if p.exitcode != 0]
    if failed:
        sys.exit(f"{', '.join(failed)} failed")


if __name__ == "__main__":
    main()
