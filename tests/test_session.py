"""A session's ends: what the local file was between sessions, a file taken away mid-session,
and a shutdown that fails and is tried again."""
import json
import os
import shutil
import sqlite3
import threading
import time

import pytest

from peewee_s3 import S3SqliteDatabase, restore
from peewee_s3.errors import ConfigurationError, LocalStateError, StorageError

from .faultproxy import FaultProxy
from .helpers import NAME, Note, bodies, make_db, rows_in_file


@pytest.fixture
def storage(tmp_path):
    return {"storage": f"file://{tmp_path}/store"}


def restored(tmp_path, storage, name="r.db"):
    restore(target=str(tmp_path / name), database_name=NAME, **storage)
    return rows_in_file(tmp_path / name)


def test_edits_made_while_no_session_is_open_are_shipped_by_the_next(tmp_path, storage):
    db = make_db(tmp_path / "a.db", storage)
    db.create_tables([Note])
    Note.create(body="by the app")
    db.shutdown()
    conn = sqlite3.connect(str(tmp_path / "a.db"))
    with conn:
        conn.executemany("INSERT INTO note (body) VALUES (?)",
                         [(f"by hand {i:03}",) for i in range(500)])
        conn.execute("CREATE TABLE extra (x)")
    conn.close()

    again = make_db(tmp_path / "a.db", storage)
    again.connect()
    again.shutdown()
    conn = sqlite3.connect(str(restore(target=str(tmp_path / "r.db"), database_name=NAME,
                                       **storage).path))
    assert conn.execute("SELECT count(*) FROM note").fetchone()[0] == 501
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone()
    conn.close()


def test_a_wal_left_without_its_database_is_kept_aside_and_the_file_restored(tmp_path, storage):
    db = make_db(tmp_path / "a.db", storage)
    db.create_tables([Note])
    Note.create(body="stored")
    db.shutdown()
    stray = sqlite3.connect(str(tmp_path / "a.db"), isolation_level=None)
    stray.execute("PRAGMA wal_autocheckpoint=0")
    stray.execute("INSERT INTO note (body) VALUES ('only in the wal')")
    shutil.copy(tmp_path / "a.db-wal", tmp_path / "saved-wal")
    stray.close()
    os.remove(tmp_path / "a.db")
    shutil.copy(tmp_path / "saved-wal", tmp_path / "a.db-wal")

    again = make_db(tmp_path / "a.db", storage)
    assert bodies(again) == ["stored"]
    again.shutdown()
    kept = [name for name in os.listdir(tmp_path) if name.endswith("-wal")
            and ".before-restore-" in name]
    assert len(kept) == 1


def test_a_file_deleted_under_an_open_session_is_refused_not_silently_lost(tmp_path, storage):
    db = make_db(tmp_path / "a.db", storage)
    db.create_tables([Note])
    Note.create(body="shipped")
    db.sync()
    db.close()
    for suffix in ("", "-wal", "-shm"):
        os.remove(f"{tmp_path / 'a.db'}{suffix}")
    with pytest.raises(LocalStateError, match="deleted or replaced"):
        db.connect()                                 # said once; the session ended
    other = make_db(tmp_path / "b.db", storage)      # the lease was released: no wait
    other.connect()
    other.shutdown()
    assert bodies(db) == ["shipped"]                 # connect() again restores the file
    db.shutdown()


def test_shutdown_when_the_directory_is_gone_releases_the_lease_and_says_why(tmp_path, storage):
    os.mkdir(tmp_path / "app")
    db = make_db(tmp_path / "app" / "a.db", storage)
    db.create_tables([Note])
    Note.create(body="shipped")
    db.sync()
    db.close()
    shutil.rmtree(tmp_path / "app")
    with pytest.raises(LocalStateError):
        db.shutdown()
    again = make_db(tmp_path / "b.db", storage)
    assert bodies(again) == ["shipped"]
    again.shutdown()


def test_shutdown_waits_for_another_threads_transaction_and_ships_it(tmp_path, storage):
    db = make_db(tmp_path / "a.db", storage)
    db.create_tables([Note])
    inside = threading.Event()

    def slow_transaction():
        with db.atomic():
            Note.create(body="late")
            inside.set()
            time.sleep(1.0)
        db.close()

    writer = threading.Thread(target=slow_transaction)
    writer.start()
    inside.wait()
    db.shutdown()
    writer.join()
    assert restored(tmp_path, storage) == ["late"]


def test_a_failed_shutdown_leaves_the_session_open_to_try_again(tmp_path, moto_endpoint,
                                                                make_bucket, s3_kwargs):
    direct = s3_kwargs(moto_endpoint, make_bucket(moto_endpoint))
    with FaultProxy(moto_endpoint) as proxy:
        db = make_db(tmp_path / "a.db", {**direct, "endpoint_url": proxy.url})
        db.create_tables([Note])
        Note.create(body="kept")
        proxy.set_faults(rate=1.0, kinds=["503"])
        with pytest.raises(StorageError):
            db.shutdown()
        assert db.status()["open"] is True
        proxy.clear()
        db.shutdown()
    assert db.status()["open"] is False
    again = make_db(tmp_path / "b.db", direct)       # released: taken at once
    assert bodies(again) == ["kept"]
    again.shutdown()


def test_a_uri_names_the_file_it_opens(tmp_path, storage):
    path = tmp_path / "a.db"
    db = S3SqliteDatabase(f"file:{path}?cache=private", uri=True, database_name=NAME, **storage)
    db.bind([Note])
    db.create_tables([Note])
    Note.create(body="uri")
    db.shutdown()
    names = os.listdir(tmp_path)
    assert "a.db" in names and not [name for name in names if "file:" in name or "?" in name]
    assert restored(tmp_path, storage) == ["uri"]


def test_a_read_only_uri_is_refused_before_anything_is_touched(tmp_path, storage):
    with pytest.raises(ConfigurationError, match="read-only"):
        S3SqliteDatabase(f"file:{tmp_path / 'a.db'}?mode=ro", uri=True, database_name=NAME,
                         **storage)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["missing/sub", "a-file/sub"])
def test_a_local_path_under_a_missing_directory_or_a_file_is_named(tmp_path, storage, where):
    (tmp_path / "a-file").write_text("not a directory")
    db = make_db(tmp_path / where / "a.db", storage)
    with pytest.raises(ConfigurationError, match=str(tmp_path / where)):
        db.connect()
    assert not (tmp_path / "store").exists()          # no lease was taken


def test_the_sidecar_names_a_file_storage_as_its_url_and_still_reads_old_sidecars(tmp_path,
                                                                                  storage):
    db = make_db(tmp_path / "a.db", storage)
    db.create_tables([Note])
    Note.create(body="kept")
    db.shutdown()
    sidecar = tmp_path / "a.db.peewee-s3.json"
    written = json.loads(sidecar.read_text())
    assert written["origin"] == f"file://{tmp_path}/store/{NAME}"
    written["origin"] = f"file://{str(tmp_path).lstrip('/')}/store/{NAME}"  # as before 2026-12
    sidecar.write_text(json.dumps(written))
    again = make_db(tmp_path / "a.db", storage)
    assert bodies(again) == ["kept"]
    again.shutdown()
