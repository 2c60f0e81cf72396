"""The file's neighbours are safe (DESIGN.md, invariant 8): while the app writes, other
connections and processes read the database, write it, checkpoint it, open it in the `sqlite3`
shell or try to change its journal mode; then the app is killed with SIGKILL, and a restore
from storage alone must hold every row the app acknowledged (sync mode: every commit that
returned; async mode: every commit before a `db.sync()` that returned), as a committed state.

The app is tests/neighbour_app.py, each neighbour tests/neighbour.py (or the `sqlite3` shell),
all real processes on a real file, with storage in a local directory or on SeaweedFS.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import pytest

from peewee_s3 import restore
from peewee_s3.host import wait_until_replicated_by_none

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "neighbour_app.py")
NEIGHBOUR = os.path.join(HERE, "neighbour.py")
DATABASE_NAME = "neighbours"
ANSWER_TIMEOUT = 60.0          # seconds to wait for a line a process owes us (a hang fails)
MODES = ["async", "sync"]
CHECKPOINTS = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"]


def modes_and_backends(seaweedfs_mode: Optional[str]) -> list:
    """(mode, backend) for a test: both modes on a local directory, and on SeaweedFS
    `seaweedfs_mode` by default (None: none), the other cases with --runslow."""
    return [pytest.param(mode, backend, id=f"{backend}-{mode}",
                         marks=() if backend == "file" or mode == seaweedfs_mode
                         else pytest.mark.slow)
            for backend in ("file", "seaweedfs") for mode in MODES]


@pytest.fixture
def storage(request, backend, tmp_path, make_bucket, s3_kwargs):
    """Storage other processes reach: a local directory, or a bucket on SeaweedFS."""
    if backend == "file":
        return {"storage": f"file://{tmp_path}/store"}
    endpoint = request.getfixturevalue("seaweed_endpoint")
    return s3_kwargs(endpoint, make_bucket(endpoint))


@pytest.fixture
def sqlite3_shell():
    path = shutil.which("sqlite3")
    if path is None:
        pytest.fail("the sqlite3 shell is not installed: apt-get install sqlite3", pytrace=False)
    return path


# -- the processes -----------------------------------------------------------------------------

class Child:
    """A child process whose output lines are read by a thread: `lines` holds every one,
    `events` those that `seen` passes on, for the test to wait for; stderr goes to a file."""

    def __init__(self, argv: list, stderr_path, stdin: bool = False) -> None:
        self.stderr_path = str(stderr_path)
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        self.lines: list = []
        self.events: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self.seen(line)
        self.events.put(None)

    def seen(self, line: str) -> None:
        self.events.put(line)

    def send(self, *words) -> None:
        try:
            self.process.stdin.write(" ".join(str(w) for w in words) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"{self} ended before it was told {words}: "
                                 f"{self.death()}") from None

    def wait_for_any(self, first_words: tuple, timeout: float = ANSWER_TIMEOUT) -> list:
        """The words of the next event line that starts with one of `first_words` (the lines
        before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self} said none of {first_words} within {timeout} s; "
                                     f"its last lines: {self.lines[-5:]}") from None
            if line is None:
                raise AssertionError(f"{self} ended before saying any of {first_words}: "
                                     f"{self.death()}")
            words = line.split()
            if words and words[0] in first_words:
                return words

    def wait_for(self, first_word: str, timeout: float = ANSWER_TIMEOUT) -> list:
        """What follows `first_word` on the next event line that starts with it."""
        return self.wait_for_any((first_word,), timeout)[1:]

    def death(self) -> str:
        code = self.process.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        with open(self.stderr_path) as f:
            tail = f.read()[-1500:]
        return f"{how}; stderr: {tail.strip() or '(empty)'}"

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"{self} died while its neighbours ran: " \
                                            f"{self.death()}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._reader.join(timeout=10)
        self.process.stdout.close()
        if self.process.stdin:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()


class App(Child):
    """neighbour_app.py: `acked` are the rows whose commit returned, in order."""

    def __init__(self, path, mode: str, storage: dict, options: Optional[dict] = None) -> None:
        self.acked: list = []
        self.failures: list = []
        self.gave_up: Optional[str] = None
        self.thread_checkpoints: list = []
        super().__init__([sys.executable, APP, str(path), mode, json.dumps(storage),
                          json.dumps(options or {})], f"{path}.app.stderr", stdin=True)
        self.wait_for("ready")

    def __str__(self) -> str:
        return f"the app (pid {self.process.pid})"

    def seen(self, line: str) -> None:
        words = line.split()
        if words[:1] == ["ok"]:
            if len(words) == 2 and words[1].isdigit():   # not a line torn by SIGKILL
                self.acked.append(int(words[1]))
        elif words[:1] == ["fail"]:
            self.failures.append(line)
        elif words[:1] == ["gave-up"]:
            self.failures.append(line)
            self.gave_up = line
            super().seen(line)
        elif words[:1] in (["thread-checkpoint"], ["thread-error"]):
            self.thread_checkpoints.append(line)
        else:
            super().seen(line)

    def wait_acked(self, count: int, timeout: float = ANSWER_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            self.assert_alive()
            assert self.gave_up is None, f"{self} could not commit any more: {self.gave_up}"
            assert time.monotonic() < deadline, \
                f"{self} acknowledged {len(self.acked)} rows in {timeout} s, not {count}; " \
                f"failures: {self.failures[-3:]}"
            time.sleep(0.01)

    def sync(self) -> int:
        """db.sync() in the app; returns the last row acknowledged before it was called."""
        self.send("sync")
        words = self.wait_for_any(("synced", "sync-failed"))
        assert words[0] == "synced", f"db.sync() failed in {self}: {' '.join(words[1:])}"
        return int(words[1])


class Neighbour(Child):
    """neighbour.py doing `action`; `acked` are its own rows whose commit returned."""

    def __init__(self, path, *action: str) -> None:
        self.action = " ".join(action)
        self.acked: list = []
        name = "-".join(a.lower() for a in action)
        super().__init__([sys.executable, NEIGHBOUR, str(path), *action],
                         f"{path}.{name}.{time.monotonic_ns()}.stderr")
        self.wait_for("ready")

    def __str__(self) -> str:
        return f"the neighbour {self.action!r} (pid {self.process.pid})"

    def seen(self, line: str) -> None:
        words = line.split()
        if words[:1] == ["ok"]:
            if len(words) == 2 and words[1].isdigit():   # not a line torn by SIGKILL
                self.acked.append(int(words[1]))
        else:
            super().seen(line)

    def results(self, *first_words: str) -> list:
        """The lines it said that start with one of `first_words`, in order."""
        return [line for line in self.lines if line.split()[:1] and line.split()[0] in first_words]


# -- what was acknowledged, and what a restore holds -------------------------------------------

@dataclass
class Acknowledged:
    """What the app and its neighbours were told had committed before the app was killed."""

    mode: str
    rows: list                       # the app's acknowledged rows, in order
    synced: int = 0                  # the last app row acknowledged before a db.sync() returned
    visitors_synced: list = field(default_factory=list)  # neighbours' rows before that sync
    notes: list = field(default_factory=list)            # what the neighbours said, for messages

    @property
    def durable_rows(self) -> int:
        """The last app row a restore must hold."""
        if self.mode == "sync":
            return max(self.rows, default=0)
        return self.synced


@dataclass
class Restored:
    rows: list
    tally: int
    visitors: list


def restore_rows(tmp_path, storage: dict) -> Restored:
    target = tmp_path / "restored.db"
    restore(target=str(target), database_name=DATABASE_NAME, **storage)
    conn = sqlite3.connect(str(target))
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        assert check == "ok", f"the restored database fails integrity_check: {check}"
        return Restored([r[0] for r in conn.execute("SELECT n FROM row ORDER BY n")],
                        conn.execute("SELECT rows FROM tally").fetchone()[0],
                        [r[0] for r in conn.execute("SELECT n FROM visitor ORDER BY n")])
    finally:
        conn.close()


def assert_restore_keeps(acknowledged: Acknowledged, restored: Restored) -> None:
    """A committed state holding everything acknowledged as durable."""
    rows, notes = restored.rows, "; ".join(acknowledged.notes)
    assert rows == list(range(1, len(rows) + 1)), \
        f"the restored rows are not a committed prefix of the app's: {_gaps(rows)}"
    assert restored.tally == 3 * (len(rows) // 3), \
        f"a torn atomic() block: the tally says {restored.tally} with {len(rows)} rows restored"
    assert len(rows) <= max(acknowledged.rows, default=0) + 1     # at most one not yet told
    durable = acknowledged.durable_rows
    assert len(rows) >= durable, (
        f"{durable - len(rows)} acknowledged rows lost: the app was told rows 1-{durable} were "
        f"durable ({acknowledged.mode} mode), the restore holds {len(rows)}. {notes}")
    visitors = restored.visitors
    assert visitors == list(range(1, len(visitors) + 1)), \
        f"the neighbours' restored rows are not a committed prefix: {_gaps(visitors)}"
    lost = sorted(set(acknowledged.visitors_synced) - set(visitors))
    assert not lost, (
        f"{len(lost)} rows a neighbour committed before db.sync() returned are missing from "
        f"the restore (first {lost[:5]}; restored {len(visitors)} of them). {notes}")


def _gaps(ids: list) -> str:
    if not ids:
        return "no rows"
    missing = sorted(set(range(1, max(ids, default=0) + 1)) - set(ids))
    return f"{len(ids)} rows, missing {missing[:10]}{'…' if len(missing) > 10 else ''}"


def summary(neighbour: Neighbour) -> str:
    """What a neighbour said most often (`done 1` for busy checkpoints, each error whole)."""
    said: dict = {}
    for line in neighbour.lines:
        words = line.split() or [""]
        key = line if words[0] == "error" else " ".join(words[:2 if words[0] in ("done", "mode")
                                                               else 1])
        said[key] = said.get(key, 0) + 1
    common = sorted(said.items(), key=lambda item: -item[1])[:4]
    return f"{neighbour.action}: " + ", ".join(f"{k!r}×{v}" for k, v in common)


# -- one run -----------------------------------------------------------------------------------

def run_with_neighbours(tmp_path, storage: dict, mode: str, neighbours: list, *,
                        before_sync: float = 0.6, after_sync: float = 0.2,
                        options: Optional[dict] = None,
                        app_commands: tuple = (), during=None) -> Acknowledged:
    """Start the app writing, start the neighbours, let them run `before_sync` seconds, have
    the app db.sync(), let everything run `after_sync` more, then SIGKILL the app (and the
    neighbours). `during(app, path)`, if given, runs while the neighbours do."""
    path = tmp_path / "app.db"
    app = App(path, mode, storage, options)
    started: list = []
    try:
        app.send("run")
        app.wait_acked(5)
        for command in app_commands:
            app.send(command)
        for action in neighbours:
            started.append(Neighbour(path, *action))
        if during:
            during(app, path)
        time.sleep(before_sync)
        visitors = [row for n in started for row in n.acked]
        synced = app.sync()
        time.sleep(after_sync)
        app.wait_acked(len(app.acked) + 1)       # still alive, and still writing
    finally:
        app.kill()
        for neighbour in started:
            neighbour.kill()
    notes = [summary(n) for n in started]
    if app.thread_checkpoints:
        notes.append(f"the app's own TRUNCATE thread said {app.thread_checkpoints[-1]!r} "
                     f"(of {len(app.thread_checkpoints)})")
    if app.failures:
        notes.append(f"the app's commits failed {len(app.failures)} times, last "
                     f"{app.failures[-1]!r}")
    return Acknowledged(mode, list(app.acked), synced, visitors, notes)


# -- the holder of the write lock --------------------------------------------------------------

@pytest.mark.parametrize("mode,backend", modes_and_backends("sync"))
def test_a_neighbours_begin_immediate_is_refused_while_the_app_holds_a_write_transaction(
        tmp_path, storage, mode):
    path = tmp_path / "app.db"
    app = App(path, mode, storage)
    try:
        app.send("write", 20)
        app.wait_for("wrote")
        app.send("hold")                           # atomic() open, a row inserted, and
        (held,) = app.wait_for("holding")          # db.sync() called from another thread
        app.wait_for("sync-begun")
        time.sleep(0.3)                            # replication and that sync() get going
        neighbour = Neighbour(path, "begin-immediate")
        neighbour.wait_for("end")
        neighbour.kill()
        app.assert_alive()
        attempts = neighbour.results("refused", "acquired")
        assert attempts and all(a == "refused database is locked" for a in attempts), \
            f"while the app held a write transaction, a neighbour's BEGIN IMMEDIATE: {attempts}"
        app.send("release")
        assert app.wait_for_any(("synced", "sync-failed")) == ["synced", held]
        app.assert_alive()
    finally:
        app.kill()
    restored = restore_rows(tmp_path, storage)
    assert_restore_keeps(Acknowledged(mode, list(app.acked), int(held)), restored)
    assert restored.rows[-1:] == [int(held)]


# -- readers, writers, checkpoints -------------------------------------------------------------

@pytest.mark.parametrize("mode,backend", modes_and_backends("async"))
def test_readers_that_connect_read_and_close_in_a_loop_lose_nothing(tmp_path, storage, mode):
    acknowledged = run_with_neighbours(tmp_path, storage, mode, [["readers"]])
    assert_restore_keeps(acknowledged, restore_rows(tmp_path, storage))


@pytest.mark.parametrize("mode,backend", modes_and_backends("sync"))
def test_a_second_processs_commits_reach_storage_too(tmp_path, storage, mode):
    acknowledged = run_with_neighbours(tmp_path, storage, mode, [["writer"]])
    assert acknowledged.visitors_synced, "the neighbour committed nothing before the sync"
    assert_restore_keeps(acknowledged, restore_rows(tmp_path, storage))


def _checkpoint_cases() -> list:
    """Every checkpoint mode in both sync modes on a local directory, TRUNCATE in sync mode
    on SeaweedFS by default; the other SeaweedFS cases with --runslow."""
    return [pytest.param(checkpoint, mode, backend, id=f"{checkpoint}-{backend}-{mode}",
                         marks=() if backend == "file" or (checkpoint, mode) == ("TRUNCATE",
                                                                                 "sync")
                         else pytest.mark.slow)
            for checkpoint in CHECKPOINTS for backend in ("file", "seaweedfs") for mode in MODES]


@pytest.mark.parametrize("checkpoint,mode,backend", _checkpoint_cases())
def test_checkpoints_from_another_process_lose_nothing(tmp_path, storage, mode, checkpoint):
    acknowledged = run_with_neighbours(tmp_path, storage, mode, [["checkpoint", checkpoint]])
    assert_restore_keeps(acknowledged, restore_rows(tmp_path, storage))


@pytest.mark.parametrize("mode,backend", modes_and_backends("async"))
def test_truncate_checkpoints_from_a_thread_of_the_apps_own_process_lose_nothing(
        tmp_path, storage, mode):
    acknowledged = run_with_neighbours(tmp_path, storage, mode, [],
                                       app_commands=("truncate-thread",))
    assert_restore_keeps(acknowledged, restore_rows(tmp_path, storage))


@pytest.mark.parametrize("mode,backend", modes_and_backends("sync"))
def test_the_sqlite3_shell_next_to_the_app_loses_nothing(tmp_path, storage, sqlite3_shell,
                                                         mode):
    said: list = []

    def shell(path, *args) -> str:
        """Run the shell until it is not refused for a lock, as a user would; its output."""
        while True:
            done = subprocess.run([sqlite3_shell, str(path), *args], capture_output=True,
                                  text=True, timeout=ANSWER_TIMEOUT)
            said.append(f"{args[-1]} -> {done.returncode} {done.stdout.strip()!r} "
                        f"{done.stderr.strip()!r}")
            if done.returncode == 0:
                return done.stdout
            assert "locked" in done.stderr, said[-1]

    def use_the_shell(app, path):
        for n in range(1, 4):
            shell(path, "PRAGMA wal_checkpoint(TRUNCATE);")
            tables = shell(path, ".tables")
            assert {"row", "tally", "visitor"} <= set(tables.split()), said[-1]
            shell(path, "-cmd", ".timeout 1000", f"INSERT INTO visitor (n) VALUES ({n});")
            app.assert_alive()

    acknowledged = run_with_neighbours(tmp_path, storage, mode, [], during=use_the_shell,
                                       before_sync=0.1)
    acknowledged.visitors_synced = [1, 2, 3]
    acknowledged.notes.append("the shell: " + " | ".join(said[:3]))
    assert_restore_keeps(acknowledged, restore_rows(tmp_path, storage))


@pytest.mark.parametrize("mode,backend", modes_and_backends(None))
def test_a_neighbours_journal_mode_change_loses_nothing(tmp_path, storage, mode):
    acknowledged = run_with_neighbours(tmp_path, storage, mode, [["journal-mode"]])
    assert_restore_keeps(acknowledged, restore_rows(tmp_path, storage))


@pytest.mark.parametrize("mode,backend", modes_and_backends("sync"))
def test_a_helper_process_replicating_beside_readers_writers_and_checkpoints_loses_nothing(
        tmp_path, storage, mode):
    """replicator="process": the app writes as a member, the helper reads the WAL and
    checkpoints, and the neighbours read, write and TRUNCATE-checkpoint the file meanwhile."""
    acknowledged = run_with_neighbours(
        tmp_path, storage, mode, [["readers"], ["writer"], ["checkpoint", "TRUNCATE"]],
        options={"replicator": "process"})
    path = str(tmp_path / "app.db")
    assert wait_until_replicated_by_none(path, 30), \
        "the helper did not leave after the app was SIGKILLed"
    assert_restore_keeps(acknowledged, restore_rows(tmp_path, storage))


# -- the reviewer's scenario -------------------------------------------------------------------

@pytest.mark.parametrize("mode,backend", modes_and_backends("async"))
def test_fifty_rows_a_foreign_truncate_then_sync_then_sigkill_restores_fifty_rows(
        tmp_path, storage, mode):
    path = tmp_path / "app.db"
    app = App(path, mode, storage, {"sync_interval": 3600})  # async: nothing ships by itself
    try:
        app.send("write", 50)
        assert app.wait_for("wrote") == ["50"]
        neighbour = Neighbour(path, "checkpoint", "TRUNCATE", "once")
        neighbour.wait_for("end")
        neighbour.kill()
        assert app.sync() == 50
    finally:
        app.kill()
    restored = restore_rows(tmp_path, storage)
    assert restored.rows == list(range(1, 51)), \
        f"after 50 rows, a foreign TRUNCATE checkpoint ({neighbour.lines[1:2]}) and a " \
        f"db.sync() that returned, the restore holds {_gaps(restored.rows)}"


def test_a_foreign_truncate_cannot_reset_a_wal_holding_unshipped_commits(tmp_path):
    path = tmp_path / "app.db"
    app = App(path, "async", {"storage": f"file://{tmp_path}/store"}, {"sync_interval": 3600})
    try:
        app.send("write", 50)
        app.wait_for("wrote")
        wal_before = os.path.getsize(f"{path}-wal")
        neighbour = Neighbour(path, "checkpoint", "TRUNCATE", "once")
        neighbour.wait_for("end")
        neighbour.kill()
        (result,) = neighbour.results("done", "error")
        assert result.split()[:2] == ["done", "1"], \
            f"a neighbour's TRUNCATE of a WAL holding unshipped commits said {result!r}, " \
            "not busy"
        assert os.path.getsize(f"{path}-wal") >= wal_before
        app.assert_alive()
    finally:
        app.kill()


# -- everything at once, seeded ----------------------------------------------------------------

NEIGHBOURHOODS = [["readers"], ["writer"], *(["checkpoint", c] for c in CHECKPOINTS),
                  ["journal-mode"]]


def _seeds() -> list:
    """Seeds 0-1 on a local directory and seed 0 on SeaweedFS by default; 40 more with
    --runslow."""
    return [pytest.param(seed, backend, id=f"{backend}-{seed}",
                         marks=() if seed < (2 if backend == "file" else 1) else pytest.mark.slow)
            for backend in ("file", "seaweedfs") for seed in range(42)]


@pytest.mark.parametrize("seed,backend", _seeds())
def test_a_busy_neighbourhood_loses_nothing(tmp_path, storage, seed):
    rng = random.Random(seed)
    mode = rng.choice(MODES)
    neighbours = rng.sample(NEIGHBOURHOODS, rng.randint(2, 3))
    options = {"checkpoint_frames": rng.choice([50, 1000])}
    commands = ("truncate-thread",) if rng.random() < 0.3 else ()
    acknowledged = run_with_neighbours(tmp_path, storage, mode, neighbours, options=options,
                                       app_commands=commands,
                                       before_sync=rng.uniform(0.2, 1.2),
                                       after_sync=rng.uniform(0.0, 0.5))
    acknowledged.notes.insert(0, f"seed {seed}: {mode} mode, {options}, {commands}")
    assert_restore_keeps(acknowledged, restore_rows(tmp_path, storage))
