"""The app of the neighbour tests: a replicated database written row by row, driven over stdin.

Run as `python neighbour_app.py PATH MODE STORAGE_KWARGS_JSON [OPTIONS_JSON]`. It creates the
tables `row` (the app's rows, numbered 1, 2, 3, … without a gap), `tally` (one row: the last
multiple of 3 written; those rows are written in an `atomic()` block that also updates it) and
`visitor` (for neighbours' rows), says `ready`, then obeys commands, one a line:

    run                write rows without end; each says `ok N` once its commit returned (a
                       failed attempt says `fail N TYPE MESSAGE` and is retried; after ATTEMPTS
                       it says `gave-up N TYPE MESSAGE` and stops writing)
    write K            write K rows, then say `wrote N`
    sync               db.sync(); says `synced N` (N: the last row acknowledged before it was
                       called) or `sync-failed TYPE MESSAGE`
    hold               open `db.atomic()`, insert the next row, say `holding N`, call db.sync()
                       from another thread (it says `sync-begun`, later `synced N` or
                       `sync-failed ...`), and keep the transaction open until `release`,
                       which commits it (`ok N`)
    truncate-thread    start a thread with a connection of its own in this process that runs
                       `PRAGMA wal_checkpoint(TRUNCATE)` again and again (`thread-checkpoint
                       BUSY LOG DONE` or `thread-error MESSAGE`)

It never stops by itself: the test kills it with SIGKILL.
"""
import json
import queue
import sqlite3
import sys
import threading
import time

import peewee

from peewee_s3 import S3SqliteDatabase

RETRY_PAUSE = 0.05
ATTEMPTS = 10


_SAYING = threading.Lock()  # two threads print: one whole line at a time


def say(*words) -> None:
    with _SAYING:
        print(*words, flush=True)


def failure(exc: BaseException) -> str:
    return f"{type(exc).__name__} {' '.join(str(exc).split())}"


def main() -> None:
    path, mode, storage_kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    options.setdefault("sync_interval", 0.05)
    db = S3SqliteDatabase(path, database_name="neighbours", sync_mode=mode, **storage_kwargs,
                          **options)

    class Row(peewee.Model):
        n = peewee.IntegerField(primary_key=True)

        class Meta:
            database = db

    class Tally(peewee.Model):
        rows = peewee.IntegerField()

        class Meta:
            database = db

    class Visitor(peewee.Model):
        n = peewee.IntegerField(primary_key=True)

        class Meta:
            database = db

    db.create_tables([Row, Tally, Visitor])
    Tally.insert(id=1, rows=0).on_conflict_ignore().execute()
    db.sync()

    def insert(n: int) -> None:
        """Row n; every third one in an atomic() block that also moves the tally."""
        Row.insert(n=n).on_conflict_ignore().execute()
        if n % 3 == 0:
            Tally.update(rows=n).where(Tally.id == 1).execute()

    def write(n: int) -> bool:
        """Commit row n (retrying until a commit returns), then say so; False if it gave up."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                if n % 3:
                    insert(n)
                else:
                    with db.atomic():
                        insert(n)
            except Exception as exc:  # reported; the test decides what it means
                say("fail" if attempt < ATTEMPTS else "gave-up", n, failure(exc))
                time.sleep(RETRY_PAUSE)
            else:
                say("ok", n)
                return True
        return False

    def sync_and_say(last: int) -> None:
        try:
            db.sync()
        except Exception as exc:
            say("sync-failed", failure(exc))
        else:
            say("synced", last)

    def truncate_loop() -> None:
        conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        while True:
            try:
                busy, log, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                say("thread-error", " ".join(str(exc).split()))
            else:
                say("thread-checkpoint", busy, log, done)
            time.sleep(0.02)

    commands: queue.Queue = queue.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.split())

    threading.Thread(target=read_commands, daemon=True).start()
    say("ready")
    last, running = 0, False
    while True:
        try:
            command = commands.get(block=not running)
        except queue.Empty:
            if write(last + 1):
                last += 1
            else:
                running = False
            continue
        name, args = command[0], command[1:]
        if name == "run":
            running = True
        elif name == "write":
            for _ in range(int(args[0])):
                if not write(last + 1):
                    break
                last += 1
            say("wrote", last)
        elif name == "sync":
            sync_and_say(last)
        elif name == "hold":
            last += 1
            with db.atomic():
                insert(last)
                say("holding", last)
                say("sync-begun")
                threading.Thread(target=sync_and_say, args=(last,), daemon=True).start()
                while commands.get()[0] != "release":
                    pass
            say("ok", last)
        elif name == "truncate-thread":
            threading.Thread(target=truncate_loop, daemon=True).start()


if __name__ == "__main__":
    main()
