"""A writer killed with SIGKILL: in sync mode every acknowledged row is in storage."""
import json
import os
import random
import signal
import subprocess
import sqlite3
import sys
import time

import pytest

from peewee_s3 import restore

WRITER = os.path.join(os.path.dirname(__file__), "crash_writer.py")


def run_and_kill(tmp_path, storage_kwargs, mode, after_seconds):
    proc = subprocess.Popen([sys.executable, WRITER, str(tmp_path / "w.db"), mode,
                             json.dumps(storage_kwargs)], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + after_seconds
        while time.monotonic() < deadline:
            acknowledged.append(int(proc.stdout.readline()))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return acknowledged


def restored_ids(tmp_path, storage_kwargs):
    target = tmp_path / "restored.db"
    restore(target=str(target), database_name="crash", **storage_kwargs)
    conn = sqlite3.connect(str(target))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in conn.execute("SELECT n FROM row ORDER BY n")]
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [*range(3), *(pytest.param(s, marks=pytest.mark.slow)
                                               for s in range(3, 53))])
def test_sync_mode_loses_no_acknowledged_row(tmp_path, shared_kwargs, seed):
    acknowledged = run_and_kill(tmp_path, shared_kwargs, "sync",
                                random.Random(seed).uniform(0.3, 1.5))
    ids = restored_ids(tmp_path, shared_kwargs)
    assert len(acknowledged) > 5
    assert set(acknowledged) <= set(ids)
    assert ids == list(range(1, len(ids) + 1))      # a committed prefix, nothing torn


def test_async_mode_restores_a_committed_prefix(tmp_path, shared_kwargs):
    acknowledged = run_and_kill(tmp_path, shared_kwargs, "async", 1.0)
    ids = restored_ids(tmp_path, shared_kwargs)
    assert ids == list(range(1, len(ids) + 1))
    assert len(ids) <= len(acknowledged) + 1
