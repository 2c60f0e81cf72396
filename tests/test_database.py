"""S3SqliteDatabase round trips: every kind of commit is captured and comes back from storage."""
import os
import sqlite3
import threading
import time

import peewee
import pytest

from peewee_s3 import restore
from peewee_s3.errors import PeeweeS3Error

from peewee_s3.storage import open_storage

from .helpers import NAME, Note, bodies, make_db, rows_in_file, stored_keys


def write_every_kind_of_commit(db):
    db.create_tables([Note])                      # DDL
    Note.create(body="autocommit")                # autocommit statement
    with db.atomic():                             # transaction
        Note.create(body="atomic")
        with db.atomic():                         # nested savepoint
            Note.create(body="savepoint")
    with db.savepoint():                          # top-level savepoint
        Note.create(body="top-savepoint")
    with db.transaction():
        Note.create(body="transaction")
    Note.update(body="updated").where(Note.body == "autocommit").execute()


EXPECTED = sorted(["updated", "atomic", "savepoint", "top-savepoint", "transaction"])


def test_every_commit_survives_losing_the_local_file(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs)
    write_every_kind_of_commit(db)
    db.shutdown()
    os.remove(tmp_path / "a.db")

    again = make_db(tmp_path / "a.db", storage_kwargs)
    assert bodies(again) == EXPECTED
    assert again.execute_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
    again.shutdown()


def test_a_crash_without_shutdown_keeps_what_was_shipped(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    write_every_kind_of_commit(db)
    # No shutdown: the segments alone must restore every row.
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == EXPECTED
    db.shutdown()


def test_the_next_writer_carries_on_from_where_the_last_one_stopped(tmp_path, storage_kwargs):
    first = make_db(tmp_path / "a.db", storage_kwargs)
    first.create_tables([Note])
    Note.create(body="one")
    first.shutdown()
    second = make_db(tmp_path / "b.db", storage_kwargs)
    Note.create(body="two")
    second.shutdown()
    third = make_db(tmp_path / "a.db", storage_kwargs)   # a.db is now an older state
    assert bodies(third) == ["one", "two"]
    third.shutdown()
    assert any(name.startswith("a.db.before-restore-") for name in os.listdir(tmp_path))


def test_connect_and_close_per_request_takes_the_lease_once(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs)
    db.create_tables([Note])
    db.close()
    storage = open_storage(**storage_kwargs)
    before = storage.read_tagged(f"{NAME}/lock.json")
    for i in range(100):
        db.connect()
        Note.create(body=str(i))
        assert Note.select().count() == i + 1
        db.close()
    assert storage.read_tagged(f"{NAME}/lock.json") == before
    db.shutdown()
    storage.close()


def test_shutdown_twice_is_harmless_and_reconnecting_opens_a_new_session(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs)
    db.create_tables([Note])
    db.shutdown()
    db.shutdown()
    db.connect()
    Note.create(body="after")
    assert db.status()["lease"]["epoch"] == 2
    db.shutdown()


def test_writes_on_the_raw_connection_are_shipped_in_async_mode(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=0.1)
    db.create_tables([Note])
    db.connection().execute("INSERT INTO note (body) VALUES ('raw')")
    db.sync()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["raw"]
    db.shutdown()


def test_checkpoints_keep_the_wal_small_and_lose_nothing(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, checkpoint_frames=20, sync_mode="sync")
    db.create_tables([Note])
    for i in range(200):
        Note.create(body=f"{i:03d}")
    wal_size = os.path.getsize(tmp_path / "a.db-wal")
    page = db.execute_sql("PRAGMA page_size").fetchone()[0]
    assert wal_size < 60 * (page + 24)
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == [f"{i:03d}" for i in range(200)]
    db.shutdown()


def test_status_says_where_replication_stands(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs)
    db.create_tables([Note])
    Note.create(body="x")
    db.sync()
    status = db.status()
    assert status["pending_commits"] == 0 and status["fenced"] is False
    assert status["position"]["seq"] >= 1
    assert status["lease"]["epoch"] == 1
    keys = stored_keys(storage_kwargs)
    assert f"{NAME}/generations/{status['generation']}/snapshot.meta.json" in keys
    db.shutdown()


def test_snapshot_starts_a_new_generation_that_restores_alone(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs)
    db.create_tables([Note])
    Note.create(body="before")
    first = db.status()["generation"]
    second = db.snapshot()
    Note.create(body="after")
    db.sync()
    assert second != first and db.status()["generation"] == second
    state = restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert state.generation == second
    assert rows_in_file(tmp_path / "r.db") == ["after", "before"]
    db.shutdown()


def test_a_plain_sqlite_file_is_adopted_by_empty_storage(tmp_path, storage_kwargs):
    conn = sqlite3.connect(str(tmp_path / "a.db"))
    conn.execute("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO note (body) VALUES ('existing')")
    conn.commit()
    conn.close()
    db = make_db(tmp_path / "a.db", storage_kwargs)
    assert bodies(db) == ["existing"]
    db.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["existing"]


def test_repr_and_status_hold_no_secret(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs)
    db.create_tables([Note])
    secret = (storage_kwargs.get("credentials") or {}).get("secret_access_key", "testing")
    text = repr(db) + repr(db.status()) + repr(db.options)
    assert "secret_access_key" not in text
    if "credentials" in storage_kwargs:
        assert secret not in text
    db.shutdown()


def test_peewee_errors_still_propagate(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    with pytest.raises(peewee.IntegrityError):
        Note.create(body=None)
    with pytest.raises(ZeroDivisionError):
        with db.atomic():
            Note.create(body="rolled back")
            1 / 0
    assert bodies(db) == []
    db.shutdown()


def test_another_spelling_of_the_same_storage_is_the_same_database(tmp_path):
    db = make_db(tmp_path / "a.db", {"storage": f"file://{tmp_path}/store"})
    db.create_tables([Note])
    Note.create(body="kept")
    db.shutdown()
    again = make_db(tmp_path / "a.db", {"storage": f"file://{tmp_path}/store/"})
    assert bodies(again) == ["kept"]
    again.shutdown()


def test_a_sync_commit_racing_shutdown_is_shipped_or_raises(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    acknowledged, stop = [], threading.Event()

    def commit_until_refused(worker):
        for i in range(10_000):
            try:
                Note.create(body=f"{worker}-{i:05}")
            except (PeeweeS3Error, peewee.InterfaceError):
                break
            acknowledged.append(f"{worker}-{i:05}")
        db.close()

    workers = [threading.Thread(target=commit_until_refused, args=(w,)) for w in range(3)]
    for worker in workers:
        worker.start()
    while len(acknowledged) < 20:
        time.sleep(0.01)
    db.shutdown()
    for worker in workers:
        worker.join()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert set(acknowledged) <= set(rows_in_file(tmp_path / "r.db"))


def test_sync_mode_returns_from_statements_that_yield_rows_once_durable(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync",
                 pragmas={"auto_vacuum": "incremental"})
    db.create_tables([Note])
    ids = [Note.insert(body=f"r{i}").returning(Note.id).execute() for i in range(3)]
    assert [row.id for batch in ids for row in batch] == [1, 2, 3]
    Note.insert_many([{"body": "x" * 3000}] * 20).execute()
    Note.delete().where(Note.body == "x" * 3000).execute()
    db.execute_sql("PRAGMA incremental_vacuum(5)")
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["r0", "r1", "r2"]
    db.shutdown()


def test_a_schema_using_the_apps_own_function_restores_at_connect(tmp_path, storage_kwargs,
                                                                  caplog):
    db = make_db(tmp_path / "a.db", storage_kwargs)

    @db.func("pylower", deterministic=True)
    def pylower(value):
        return value.lower()

    db.create_tables([Note])
    db.execute_sql("CREATE UNIQUE INDEX note_lower ON note (pylower(body))")
    Note.create(body="Hello")
    db.shutdown()
    os.remove(tmp_path / "a.db")
    with caplog.at_level("WARNING", logger="peewee_s3"):
        assert bodies(db) == ["Hello"]           # connect() restores, checks every index
    assert "not verified" not in caplog.text
    with pytest.raises(peewee.IntegrityError):
        Note.create(body="HELLO")
    db.shutdown()


@pytest.mark.parametrize("snapshot_on_shutdown", [False, True])
def test_shutdown_uploads_a_snapshot_only_when_asked(tmp_path, storage_kwargs,
                                                     snapshot_on_shutdown):
    db = make_db(tmp_path / "a.db", storage_kwargs, snapshot_on_shutdown=snapshot_on_shutdown)
    db.create_tables([Note])
    Note.insert_many([{"body": "x" * 1000}] * 500).execute()
    db.sync()
    generation = db.status()["generation"]
    db.shutdown()
    snapshots = [k for k in stored_keys(storage_kwargs) if k.endswith("/snapshot.db")]
    assert len(snapshots) == (2 if snapshot_on_shutdown else 1)

    again = make_db(tmp_path / "a.db", storage_kwargs)
    Note.create(body="after the restart")
    assert (again.status()["generation"] == generation) is not snapshot_on_shutdown
    again.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert len(rows_in_file(tmp_path / "r.db")) == 501


def test_commits_after_a_snapshot_start_no_generation_of_their_own(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=0.05)
    db.create_tables([Note])
    Note.insert_many([{"body": "x" * 4000}] * 4000).execute()    # about 16 MiB
    generation = db.snapshot()
    for i in range(20):
        Note.create(body=f"small {i}")
        time.sleep(0.02)
    db.sync()
    assert db.status()["generation"] == generation
    db.shutdown()
