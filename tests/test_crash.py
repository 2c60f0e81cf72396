"""A writer killed with SIGKILL — at any moment, during a snapshot, or around a checkpoint —
leaves a storage that restores to a committed prefix; in sync mode every acknowledged row is
in it. A few kills of each kind by default; many more with --runslow."""
import json
import os
import queue
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import pytest

from peewee_s3 import restore

WRITER = os.path.join(os.path.dirname(__file__), "crash_writer.py")
WAIT = 60.0  # the bounded wait for a line of the writer's: generous, never the measurement


def seeds(default, slow, *modes):
    """Parameters (mode, seed): `default` seeds per mode run always, `slow` ones with --runslow."""
    return [pytest.param(mode, seed, marks=[pytest.mark.slow] if seed >= default else [])
            for mode in modes for seed in range(slow)]


class Writer:
    """crash_writer.py in a process of its own; a thread reads what it prints, as it prints it:
    the ids it acknowledged, and its other lines with the moment each arrived."""

    def __init__(self, tmp_path, storage_kwargs, mode, variant="plain"):
        self.path = tmp_path / "w.db"
        self.process = subprocess.Popen(
            [sys.executable, WRITER, str(self.path), mode, json.dumps(storage_kwargs), variant],
            stdout=subprocess.PIPE, text=True)
        self.acknowledged, self.lines = [], queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.acknowledged.append(int(line))
            else:
                self.lines.put((time.monotonic(), line.strip()))
        self.lines.put((time.monotonic(), None))

    def wait_for(self, expected):
        """Wait for the next line `expected` (skipping others); returns when it came."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                when, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the writer did not print {expected!r} within {WAIT} s")
            if line is None:
                pytest.fail(f"the writer exited ({self.process.poll()}) before {expected!r}")
            if line == expected:
                return when

    def kill(self):
        """SIGKILL; then every id the writer acknowledged before it died."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._reader.join()
        return list(self.acknowledged)


def restored_ids(tmp_path, storage_kwargs):
    """The ids a fresh restore holds; none if it is a state from before the table was created
    (an async writer may not have shipped that far)."""
    target = tmp_path / "restored.db"
    restore(target=str(target), database_name="crash", **storage_kwargs)
    conn = sqlite3.connect(str(target))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'row'").fetchone():
            return []
        return [row[0] for row in conn.execute("SELECT n FROM row ORDER BY n")]
    finally:
        conn.close()


def assert_restore_keeps(tmp_path, storage_kwargs, mode, acknowledged):
    ids = restored_ids(tmp_path, storage_kwargs)
    assert ids == list(range(1, len(ids) + 1))      # a committed prefix, nothing torn
    if mode == "sync":
        assert set(acknowledged) <= set(ids)        # nothing acknowledged is lost
    else:
        assert len(ids) <= len(acknowledged) + 1    # at most the commit under way besides


@pytest.fixture
def start_writer(tmp_path, shared_kwargs):
    """start_writer(mode, variant="plain") -> a running Writer; each is killed at teardown."""
    writers = []

    def start(mode, variant="plain"):
        writers.append(Writer(tmp_path, shared_kwargs, mode, variant))
        return writers[-1]

    yield start
    for writer in writers:
        writer.kill()


@pytest.mark.parametrize("seed", [*range(3), *(pytest.param(s, marks=pytest.mark.slow)
                                               for s in range(3, 53))])
def test_sync_mode_loses_no_acknowledged_row(tmp_path, shared_kwargs, start_writer, seed):
    writer = start_writer("sync")
    writer.wait_for("ready")
    time.sleep(random.Random(seed).uniform(0.3, 1.5))
    acknowledged = writer.kill()
    assert len(acknowledged) > 5
    assert_restore_keeps(tmp_path, shared_kwargs, "sync", acknowledged)


def test_async_mode_restores_a_committed_prefix(tmp_path, shared_kwargs, start_writer):
    writer = start_writer("async")
    writer.wait_for("ready")
    time.sleep(1.0)
    assert_restore_keeps(tmp_path, shared_kwargs, "async", writer.kill())


@pytest.mark.parametrize("mode, seed", seeds(2, 25, "sync") + seeds(0, 25, "async"))
def test_a_kill_during_a_snapshot_loses_nothing(tmp_path, shared_kwargs, start_writer, mode,
                                                 seed):
    """The writer snapshots one generation after another; the kill lands at a random point
    of one snapshot (shipping what is pending, copying, uploading, storing the meta)."""
    rng = random.Random(seed)
    writer = start_writer(mode, "snapshots")
    writer.wait_for("ready")
    started = writer.wait_for("snapshot started")
    took = writer.wait_for("snapshot stored") - started
    for _ in range(1 + rng.randrange(3)):  # one of the next three snapshots
        writer.wait_for("snapshot started")
    time.sleep(rng.uniform(0, 1.2 * took))
    acknowledged = writer.kill()
    assert acknowledged
    assert_restore_keeps(tmp_path, shared_kwargs, mode, acknowledged)


@pytest.mark.parametrize("mode, seed", seeds(1, 25, "sync", "async"))
def test_a_kill_around_a_checkpoint_loses_nothing(tmp_path, shared_kwargs, start_writer, mode,
                                                  seed):
    """checkpoint_frames=4: the writer checkpoints and its WAL starts over every few commits.
    The kill lands just after one such restart (the -wal header changed), or in the next."""
    rng = random.Random(seed)
    writer = start_writer(mode, "checkpoints")
    writer.wait_for("ready")
    time.sleep(rng.uniform(0.2, 0.8))
    wait_for_a_wal_restart(writer)
    time.sleep(rng.uniform(0, 0.02))
    acknowledged = writer.kill()
    assert acknowledged
    assert_restore_keeps(tmp_path, shared_kwargs, mode, acknowledged)


def wait_for_a_wal_restart(writer):
    """Watch the writer's -wal header (from this process: the writer's locks are its own)
    until its checkpoint sequence number and salts change: SQLite started the WAL over."""
    with open(f"{writer.path}-wal", "rb") as wal:
        first = os.pread(wal.fileno(), 24, 0)[12:24]
        deadline = time.monotonic() + WAIT
        while os.pread(wal.fileno(), 24, 0)[12:24] == first:
            if time.monotonic() > deadline or writer.process.poll() is not None:
                pytest.fail(f"the WAL did not start over within {WAIT} s (its header still "
                            f"says checkpoint {struct.unpack_from('>I', first)[0]})")
            time.sleep(0.0005)
