"""A writer process driven line by line over stdin, for the race and hand-over tests.

Run as `python race_writer.py PATH STORAGE_KWARGS_JSON OPTIONS_JSON`; it says `ready` once
it has imported everything. Commands (one a line):

    connect AT     at unix time AT, open a session (a new S3SqliteDatabase); answers
                   `won EPOCH`, `held` (LeaseHeldError) or `error TYPE MESSAGE`
    write N        insert the row N; answers `ok N` once acknowledged, or `fail N TYPE MESSAGE`
    run N [PAUSE]  insert N, N+1, ... without end (PAUSE seconds apart), answering each as
                   `write` does, until the next command arrives
    shutdown       db.shutdown(); answers `down` or `error TYPE MESSAGE`
    exit           leave

`Writer` is the test side: it starts the process and reads its answers with timeouts.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Optional

TABLE = "row"


def main() -> None:
    from peewee_s3 import S3SqliteDatabase
    from peewee_s3.errors import LeaseHeldError

    path, storage_kwargs, options = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    commands: queue.Queue = queue.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.split())
        commands.put(["exit"])

    def say(*words) -> None:
        print(*words, flush=True)

    threading.Thread(target=read_commands, daemon=True).start()
    db: Optional[S3SqliteDatabase] = None
    running: Optional[int] = None
    pause = 0.0
    say("ready")

    def failure(exc: BaseException) -> str:
        return f"{type(exc).__name__} {' '.join(str(exc).split())}"

    def write(n: int) -> None:
        try:
            db.execute_sql(f"INSERT INTO {TABLE} (n, pid) VALUES (?, ?)", (n, os.getpid()))
        except Exception as exc:  # reported to the test, which decides
            say("fail", n, failure(exc))
        else:
            say("ok", n)

    while True:
        try:
            command = commands.get(block=running is None)
        except queue.Empty:
            write(running)
            running += 1
            time.sleep(pause)
            continue
        running = None
        name, args = command[0], command[1:]
        if name == "connect":
            time.sleep(max(0.0, float(args[0]) - time.time()))
            db = S3SqliteDatabase(path, **storage_kwargs, **options)
            try:
                db.connect()
                db.execute_sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (n INTEGER, pid INTEGER)")
            except LeaseHeldError:
                say("held")
            except Exception as exc:
                say("error", failure(exc))
            else:
                say("won", db.status()["lease"]["epoch"])
        elif name == "write":
            write(int(args[0]))
        elif name == "run":
            running, pause = int(args[0]), float(args[1]) if len(args) > 1 else 0.0
        elif name == "shutdown":
            try:
                db.shutdown()
            except Exception as exc:
                say("error", failure(exc))
            else:
                say("down")
        elif name == "exit":
            return


class Writer:
    """One race_writer process, seen from the test."""

    def __init__(self, path, storage_kwargs: dict, **options) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(path), json.dumps(storage_kwargs),
             json.dumps(options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def wait_ready(self, timeout: float = 60.0) -> "Writer":
        line = self.answer(timeout)
        assert line == "ready", f"writer {self.pid} said {line!r} instead of ready"
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, *words) -> None:
        self.process.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout: float = 60.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"writer {self.pid} said nothing for {timeout} s") from None
        if line is None:
            raise AssertionError(f"writer {self.pid} exited with {self.process.wait()}")
        return line

    def answers_so_far(self, quiet_for: float = 0.2) -> list:
        """Every line said until the writer is quiet for `quiet_for` seconds."""
        lines = []
        while True:
            try:
                line = self.lines.get(timeout=quiet_for)
            except queue.Empty:
                return lines
            if line is None:
                return lines
            lines.append(line)

    def connect(self, at: float = 0.0, timeout: float = 60.0) -> str:
        self.send("connect", at)
        return self.answer(timeout)

    def shutdown(self, timeout: float = 60.0) -> None:
        self.send("shutdown")
        while True:
            line = self.answer(timeout)
            if line == "down":
                return
            if line.startswith("error"):
                raise AssertionError(f"writer {self.pid} failed to shut down: {line}")

    def close(self) -> None:
        """Leave (or kill, if it does not leave in time)."""
        if self.process.poll() is None:
            try:
                self.send("exit")
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


if __name__ == "__main__":
    main()
