"""Hand-over: one writer stops, another (on another local path) carries on — nothing lost,
one lineage. And the rolling deploy: the new writer waits (lock_wait) while the old one runs.
"""
import sqlite3
import threading
import time

import pytest

from peewee_s3 import restore
from peewee_s3.errors import LeaseHeldError
from peewee_s3.layout import Layout
from peewee_s3.lease import read_lease
from peewee_s3.restore import complete_generations
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, bodies, make_db, rows_in_file
from .race_writer import TABLE, Writer


def assert_one_lineage(storage_kwargs, name=NAME):
    """Every complete generation stored lies on the parent chain of the current one."""
    layout = Layout(name)
    with open_storage(**storage_kwargs) as storage:
        metas = {m.generation: m for m in complete_generations(storage, layout)}
        current = read_lease(storage, layout.lock).generation
    chain, generation = [], current
    while generation in metas:
        chain.append(generation)
        parent = metas[generation].parent
        generation = parent["generation"] if parent else None
    assert set(chain) == set(metas), f"generations off the lineage: {set(metas) - set(chain)}"
    roots = [g for g in chain if metas[g].parent is None]
    assert len(roots) <= 1


def write_rows(db, first, count):
    Note.bind(db)
    for n in range(first, first + count):
        if n % 4 == 0:
            with db.atomic():
                Note.create(body=f"{n:04d}")
        else:
            Note.create(body=f"{n:04d}")
    return [f"{n:04d}" for n in range(first, first + count)]


def test_a_writer_hands_over_to_another_on_another_path(tmp_path, storage_kwargs):
    a = make_db(tmp_path / "a.db", storage_kwargs)
    a.create_tables([Note])
    written = write_rows(a, 1, 20)
    a.shutdown()

    b = make_db(tmp_path / "b.db", storage_kwargs)
    assert bodies(b) == written                 # connects: restores everything A committed
    written += write_rows(b, 21, 20)
    b.shutdown()

    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == written
    assert_one_lineage(storage_kwargs)


@pytest.mark.parametrize("storage_kwargs", ["file", "moto"], indirect=True)
def test_writers_take_turns_and_lose_nothing(tmp_path, storage_kwargs):
    paths = [tmp_path / "a.db", tmp_path / "b.db", tmp_path / "c.db"]
    written = []
    for turn in range(6):
        db = make_db(paths[turn % 3], storage_kwargs, sync_mode="sync" if turn % 2 else "async")
        db.create_tables([Note], safe=True)
        assert bodies(db) == written, f"turn {turn}: the new writer lacks commits"
        written += write_rows(db, 10 * turn + 1, 10)
        db.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == written
    assert_one_lineage(storage_kwargs)


# -- the rolling deploy: B starts while A still runs -----------------------------------------------

def rows_of(path):
    conn = sqlite3.connect(str(path))
    try:
        return sorted(r[0] for r in conn.execute(f"SELECT n FROM {TABLE}"))
    finally:
        conn.close()


def test_a_rolling_deploy_waits_for_the_lease_and_loses_nothing(tmp_path, shared_kwargs):
    a = Writer(tmp_path / "a.db", shared_kwargs, database_name=NAME, sync_mode="sync")
    try:
        a.wait_ready()
        assert a.connect().startswith("won")
        a.send("run", 1, 0.005)
        while a.answer().split()[0] != "ok":
            pass                                  # A is writing

        b = make_db(tmp_path / "b.db", shared_kwargs, sync_mode="sync", lock_wait=30)
        connected = {}

        def connect_b():
            started = time.monotonic()
            try:
                b.connect()
            except Exception as exc:  # noqa: BLE001 - reported to the test below
                connected["error"] = exc
            connected["at"] = time.monotonic()
            connected["waited"] = connected["at"] - started

        thread = threading.Thread(target=connect_b)
        thread.start()
        time.sleep(1.5)
        assert "at" not in connected, f"B did not wait for A: {connected}"
        said = a.answers_so_far(quiet_for=0.0)
        a.send("shutdown")
        while (line := a.answer()) != "down":
            said.append(line)
        released_at = time.monotonic()
        thread.join(timeout=60)
        assert "error" not in connected, connected
        acknowledged = [int(x.split()[1]) for x in said if x.startswith("ok ")]
        refused = [int(x.split()[1]) for x in said if x.startswith("fail ")]
    finally:
        a.close()

    assert connected["at"] - released_at < 3, "B took the lease late after A released it"
    b.connect()                                   # this thread's connection, same session
    assert not refused, refused
    got = [row[0] for row in b.execute_sql(f"SELECT n FROM {TABLE} ORDER BY n")]
    assert set(acknowledged) <= set(got)
    assert got == list(range(1, len(got) + 1))
    b.execute_sql(f"INSERT INTO {TABLE} (n, pid) VALUES (?, 0)", (len(got) + 1,))
    b.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **shared_kwargs)
    assert rows_of(tmp_path / "r.db") == list(range(1, len(got) + 2))
    assert_one_lineage(shared_kwargs)


@pytest.mark.parametrize("shared_kwargs", ["file"], indirect=True)
def test_a_rolling_deploy_gives_up_after_lock_wait(tmp_path, shared_kwargs):
    a = make_db(tmp_path / "a.db", shared_kwargs)
    a.connect()
    b = make_db(tmp_path / "b.db", shared_kwargs, lock_wait=1.5)
    started = time.monotonic()
    with pytest.raises(LeaseHeldError, match="lock_wait"):
        b.connect()
    assert time.monotonic() - started >= 1.5      # it did wait for the lease before giving up
    assert not (tmp_path / "b.db").exists()
    a.shutdown()
    b.connect()                                   # the lease is free now: no wait
    b.shutdown()
