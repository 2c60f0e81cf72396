"""A neighbour of a replicated database: another process doing what other programs do to a file.

Run as `python neighbour.py PATH ACTION [ARG]`; it prints `ready` once connected, then one line
per thing done, and goes on until it is killed (except `begin-immediate`). It uses Python's
plain `sqlite3` with its defaults (automatic checkpoints on), as another program would:

    readers          connect, read the app's rows, close; again and again (`read COUNT`
                     every READS_PER_LINE rounds)
    writer           insert numbered rows into `visitor`, printing `ok N` after each commit
    checkpoint MODE [once]
                     `PRAGMA wal_checkpoint(MODE)` on one connection, printing `done BUSY LOG
                     CHECKPOINTED` or `error MESSAGE`, then a short pause (`once`: then `end`)
    journal-mode     try `PRAGMA journal_mode=DELETE`, printing `mode NAME` or `error MESSAGE`,
                     then a short pause
    begin-immediate  try `BEGIN IMMEDIATE` a few times with a short timeout, printing `refused
                     MESSAGE` or `acquired` for each (then ROLLBACK), then `end`
"""
import sqlite3
import sys
import time

SHORT_TIMEOUT = 0.2  # seconds a neighbour waits for a lock: SQLite's busy handler
PAUSE = 0.02
READS_PER_LINE = 20


def say(*words) -> None:
    print(*words, flush=True)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=SHORT_TIMEOUT, isolation_level=None)


def readers(path: str) -> None:
    say("ready")
    rounds = 0
    while True:
        conn = connect(path)
        try:
            (count,) = conn.execute("SELECT count(*) FROM row").fetchone()
        except sqlite3.Error as exc:
            say("error", one_line(exc))
        else:
            rounds += 1
            if rounds % READS_PER_LINE == 0:
                say("read", count)
        finally:
            conn.close()


def writer(path: str) -> None:
    conn = connect(path)
    say("ready")
    n = 1
    while True:
        try:
            conn.execute("INSERT INTO visitor (n) VALUES (?)", (n,))
        except sqlite3.Error as exc:     # locked by the app for longer than the timeout: retry
            say("error", one_line(exc))
            time.sleep(PAUSE)
            continue
        say("ok", n)
        n += 1


def checkpoint(path: str, mode: str, once: bool) -> None:
    conn = connect(path)
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    say("ready")
    while True:
        try:
            busy, log, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            say("error", one_line(exc))
        else:
            say("done", busy, log, done)
        if once:
            conn.close()
            say("end")
            return
        time.sleep(PAUSE)


def journal_mode(path: str) -> None:
    conn = connect(path)
    say("ready")
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode=DELETE").fetchone()
        except sqlite3.Error as exc:
            say("error", one_line(exc))
        else:
            say("mode", mode)
        time.sleep(PAUSE)


def begin_immediate(path: str, attempts: int = 5) -> None:
    conn = connect(path)
    say("ready")
    for _ in range(attempts):
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            say("refused", one_line(exc))
        else:
            say("acquired")
            conn.execute("ROLLBACK")
        time.sleep(0.1)
    conn.close()
    say("end")


def main() -> None:
    path, action, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if action == "readers":
        readers(path)
    elif action == "writer":
        writer(path)
    elif action == "checkpoint":
        checkpoint(path, args[0], args[1:] == ["once"])
    elif action == "journal-mode":
        journal_mode(path)
    elif action == "begin-immediate":
        begin_immediate(path)
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main()
