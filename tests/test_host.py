"""Many processes, one file: one replicates, the others write as members; when the replicating
one is SIGKILLed another takes over within seconds, and no acknowledged row is lost."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from peewee_s3 import restore
from peewee_s3.host import read_state

WORKER = os.path.join(os.path.dirname(__file__), "host_worker.py")


class Worker:
    def __init__(self, tmp_path, mode, storage_kwargs):
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, str(tmp_path / "app.db"), mode, json.dumps(storage_kwargs),
             str(tmp_path / "stop")], stdout=subprocess.PIPE, text=True)
        self.acknowledged, self.errors, self.role = [], [], None
        self.finished = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            word = line.split()[0]
            if word == "ready":
                self.role = line.split()[1]
            elif word == "error":
                self.errors.append(line.strip())
            elif word == "done":
                self.finished = True
            else:
                self.acknowledged.append(line.strip())

    def wait_for(self, condition, timeout=60):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"worker {self.proc.pid} stalled: {self.errors}"
            time.sleep(0.05)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def join(self):
        assert self.proc.wait(timeout=120) == 0
        self._reader.join()


def restored_tags(tmp_path, storage_kwargs):
    target = tmp_path / "restored.db"
    restore(target=str(target), database_name="hosts", **storage_kwargs)
    conn = sqlite3.connect(str(target))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {row[0] for row in conn.execute("SELECT tag FROM row")}
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_four_processes_share_one_file_and_survive_the_replicating_one(tmp_path, shared_kwargs,
                                                                       mode):
    workers = []
    try:
        run_four_and_kill_the_replicating_one(tmp_path, shared_kwargs, mode, workers)
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.kill()


def run_four_and_kill_the_replicating_one(tmp_path, shared_kwargs, mode, workers):
    first = Worker(tmp_path, mode, shared_kwargs)
    workers.append(first)
    first.wait_for(lambda: first.role is not None)
    workers += [Worker(tmp_path, mode, shared_kwargs) for _ in range(3)]
    for worker in workers:
        worker.wait_for(lambda: len(worker.acknowledged) >= 20)
    assert first.role == "replicator" and {w.role for w in workers[1:]} == {"member"}
    assert read_state(str(tmp_path / "app.db")).pid == first.proc.pid

    first.kill()                                     # the replicating process dies
    others = workers[1:]
    counts = [len(w.acknowledged) for w in others]
    for worker, count in zip(others, counts):        # ... and the others keep writing
        worker.wait_for(lambda: len(worker.acknowledged) >= count + 20, timeout=30)
    state = tmp_path / "app.db"
    first.wait_for(lambda: read_state(str(state)).pid != first.proc.pid, timeout=30)
    assert read_state(str(state)).pid in {w.proc.pid for w in others}

    (tmp_path / "stop").touch()
    for worker in others:
        worker.join()
    stored = restored_tags(tmp_path, shared_kwargs)
    acknowledged = {tag for w in workers for tag in w.acknowledged}
    assert acknowledged <= stored
    assert all(w.finished for w in others)


def stop_between_writes(first, member):
    """SIGSTOP `first` at a moment it holds none of SQLite's locks: `member` still writes."""
    for _ in range(10):
        first.proc.send_signal(signal.SIGSTOP)
        count = len(member.acknowledged)
        deadline = time.monotonic() + 8
        while len(member.acknowledged) < count + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(member.acknowledged) >= count + 20:
            return
        first.proc.send_signal(signal.SIGCONT)       # stopped inside a transaction: again
        time.sleep(0.3)
    raise AssertionError(f"the member could not write while {first.proc.pid} was stopped")


def test_a_member_leaving_ships_what_the_replicating_process_did_not(tmp_path):
    """The replicating process stops shipping (SIGSTOP) and then dies; a member that leaves
    meanwhile waits until its commits are durable, taking over to ship them itself — a
    member used to just go, leaving its last commits only in the local file."""
    kwargs = {"storage": f"file://{tmp_path}/store"}
    first = Worker(tmp_path, "async", kwargs)
    workers = [first]
    try:
        first.wait_for(lambda: len(first.acknowledged) >= 20)
        member = Worker(tmp_path, "async", kwargs)
        workers.append(member)
        member.wait_for(lambda: len(member.acknowledged) >= 20)
        assert member.role == "member"
        stop_between_writes(first, member)           # stuck: it holds the host lock, ships nothing
        (tmp_path / "stop").touch()
        time.sleep(1.0)
        assert not member.finished                   # it waits for its commits to be shipped
        first.kill()
        member.join()
        assert member.finished
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.kill()
    stored = restored_tags(tmp_path, kwargs)
    assert set(first.acknowledged) | set(member.acknowledged) <= stored


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="a dead pid is told by /proc (Linux)")
def test_a_process_opening_the_file_before_the_dead_replicator_is_reaped_replicates_it(tmp_path):
    # uvicorn's supervisor reaps a dead worker only every 0.5 s. A worker starting meanwhile
    # found the lease held by a pid that still existed, raised LeaseHeldError at startup, and
    # uvicorn stops the whole server when a worker fails to start.
    storage = {"storage": f"file://{tmp_path}/store"}
    workers = [Worker(tmp_path, "sync", storage)]
    try:
        first = workers[0]
        first.wait_for(lambda: len(first.acknowledged) >= 20)
        os.kill(first.proc.pid, signal.SIGKILL)
        os.waitid(os.P_PID, first.proc.pid, os.WEXITED | os.WNOWAIT)  # dead, left unreaped
        second = Worker(tmp_path, "sync", storage)
        workers.append(second)
        second.wait_for(lambda: len(second.acknowledged) >= 20 or second.proc.poll() is not None)
        assert second.role == "replicator" and len(second.acknowledged) >= 20
        (tmp_path / "stop").touch()
        second.join()
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.kill()
    assert set(first.acknowledged + second.acknowledged) <= restored_tags(tmp_path, storage)
