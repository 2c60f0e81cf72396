"""restore() beside what a user leaves lying around, and of schemas that need an app's functions.

A -wal, -shm or -journal left by a process that died is kept aside, never replayed onto the
restored file; a schema that uses an app-registered function or collation is checked with it
(`prepare`) or, without it, with PRAGMA quick_check and a warning; corruption is still refused.
"""
import logging
import re
import sqlite3
import subprocess
import sys

import pytest

from peewee_s3 import restore
from peewee_s3.errors import ConfigurationError, ReplicaCorruptError
from peewee_s3.layout import Layout
from peewee_s3.restore import restore_to
from peewee_s3.snapshots import read_meta, upload_snapshot
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, make_db, rows_in_file

ROWS = ["one", "three", "two"]

# A process of the user's own that writes to PATH in JOURNAL_MODE and dies mid-transaction.
CRASHING_WRITER = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute(f"PRAGMA journal_mode={sys.argv[2]}")
conn.execute("PRAGMA cache_size=1")  # the transaction below spills into the file itself
conn.execute("CREATE TABLE junk(x)")
conn.executemany("INSERT INTO junk VALUES (?)", [("old row " * 50,)] * 200)
conn.execute("BEGIN")
conn.execute("UPDATE junk SET x = 'changed ' || x")
os._exit(0)
"""


@pytest.fixture
def storage_kwargs(tmp_path):
    return {"storage": f"file://{tmp_path}/store"}


@pytest.fixture
def stored(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    for body in ("one", "two", "three"):
        Note.create(body=body)
    yield db
    db.shutdown()


def crash_while_writing(path, journal_mode):
    subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(path), journal_mode], check=True)


def kept_aside(directory, name):
    """{suffix: bytes} of the files moved aside from `name`, whose names are checked too."""
    pattern = re.compile(re.escape(name) + r"\.before-restore-\d{8}T\d{6}Z(?:\.\d+)?(.*)$")
    found = {}
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found.setdefault(match[1], []).append(path.read_bytes())
    return found


def bodies_in(path):
    """The rows, read without PRAGMA integrity_check (which would need the app's function)."""
    conn = sqlite3.connect(str(path))
    try:
        return sorted(r[0] for r in conn.execute("SELECT body FROM note"))
    finally:
        conn.close()


def tables_in(path):
    conn = sqlite3.connect(str(path))
    try:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    finally:
        conn.close()


@pytest.mark.parametrize("journal_mode, left", [("wal", ("-wal", "-shm")),
                                                ("delete", ("-journal",))])
@pytest.mark.parametrize("file_removed", [True, False], ids=["file-removed", "overwrite"])
def test_what_a_crashed_process_left_beside_the_target_is_kept_aside_not_replayed(
        tmp_path, storage_kwargs, stored, journal_mode, left, file_removed):
    target = tmp_path / "r.db"
    crash_while_writing(target, journal_mode)
    if file_removed:
        target.unlink()        # the user deletes the file, not what lies beside it
    before = {suffix: (tmp_path / f"r.db{suffix}").read_bytes() for suffix in left}

    restore(target=str(target), database_name=NAME, overwrite=not file_removed,
            **storage_kwargs)

    assert tables_in(target) == ["note"] and rows_in_file(target) == ROWS
    aside = kept_aside(tmp_path, "r.db")
    assert {suffix: aside[suffix] for suffix in left} == {s: [b] for s, b in before.items()}
    assert ("" in aside) == (not file_removed)


def test_restores_in_the_same_second_keep_every_earlier_file(tmp_path, storage_kwargs,
                                                             stored):
    target = tmp_path / "r.db"
    for content in (b"first", b"second", b"third"):
        target.write_bytes(content)
        restore(target=str(target), database_name=NAME, overwrite=True, **storage_kwargs)
    assert sorted(kept_aside(tmp_path, "r.db")[""]) == [b"first", b"second", b"third"]
    assert rows_in_file(target) == ROWS


@pytest.fixture
def app_db(tmp_path, storage_kwargs):
    """A database whose schema uses the app's own function and collation, both registered
    with peewee's decorators as an app does."""
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")

    @db.func("pylower", deterministic=True)
    def pylower(value):
        return value.lower()

    @db.collation("appcoll")
    def appcoll(a, b):
        return (a.lower() > b.lower()) - (a.lower() < b.lower())

    db.create_tables([Note])
    db.execute_sql("CREATE UNIQUE INDEX note_lower ON note (pylower(body))")
    db.execute_sql("CREATE INDEX note_coll ON note (body COLLATE appcoll)")
    for body in ("one", "two", "three"):
        Note.create(body=body * 400)   # several pages, so that one of them can be damaged
    yield db
    db.shutdown()


def register_the_apps_own(calls):
    def prepare(conn):
        calls.append(conn)
        conn.create_function("pylower", 1, lambda value: calls.append(value) or value.lower(),
                             deterministic=True)
        conn.create_collation("appcoll", lambda a, b: (a.lower() > b.lower())
                              - (a.lower() < b.lower()))
    return prepare


def test_prepare_registers_the_apps_function_for_the_whole_integrity_check(
        tmp_path, storage_kwargs, app_db, caplog):
    calls = []
    with caplog.at_level(logging.WARNING, logger="peewee_s3"):
        restore(target=str(tmp_path / "r.db"), database_name=NAME,
                prepare=register_the_apps_own(calls), **storage_kwargs)
    assert isinstance(calls[0], sqlite3.Connection)
    assert sorted(calls[1:]) == sorted(b * 400 for b in ROWS)   # index contents were checked
    assert not [r for r in caplog.records if "not verified" in r.getMessage()]


def test_without_prepare_an_apps_function_in_the_schema_is_checked_by_quick_check_with_a_warning(
        tmp_path, storage_kwargs, app_db, caplog):
    with caplog.at_level(logging.WARNING, logger="peewee_s3"):
        restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert bodies_in(tmp_path / "r.db") == [b * 400 for b in ROWS]
    warning, = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert re.search(r"index contents were not verified.*pylower\(\).*prepare=",
                     warning.getMessage())


def test_an_apps_collation_alone_is_stood_in_for_by_quick_check(tmp_path, storage_kwargs,
                                                                caplog):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.collation("appcoll")(lambda a, b: (a > b) - (a < b))
    db.create_tables([Note])
    db.execute_sql("CREATE INDEX note_coll ON note (body COLLATE appcoll)")
    Note.create(body="one")
    with caplog.at_level(logging.WARNING, logger="peewee_s3"):
        restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    db.shutdown()
    assert "collation appcoll" in caplog.text and "not verified" in caplog.text


def test_an_apps_function_in_a_check_constraint_without_prepare_is_refused_saying_to_pass_it(
        tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.func("pylower")(str.lower)
    db.execute_sql("CREATE TABLE note (id INTEGER PRIMARY KEY, "
                   "body TEXT CHECK (pylower(body) = body))")
    Note.create(body="one")
    with pytest.raises(ConfigurationError, match=r"function pylower\(\).*prepare="):
        restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert not (tmp_path / "r.db").exists()
    restore(target=str(tmp_path / "r.db"), database_name=NAME,
            prepare=lambda conn: conn.create_function("pylower", 1, str.lower), **storage_kwargs)
    assert bodies_in(tmp_path / "r.db") == ["one"]
    db.shutdown()


def test_a_corrupt_file_whose_schema_needs_an_apps_function_is_still_refused(
        tmp_path, storage_kwargs, app_db):
    generation = app_db.snapshot()     # a generation that is its snapshot alone
    layout = Layout(NAME)
    copy = tmp_path / "copy.db"
    with open_storage(**storage_kwargs) as storage:
        restore_to(storage, layout, str(copy), generation=generation)
        meta = read_meta(storage, layout, generation)
        data = bytearray(copy.read_bytes())
        page = len(data) // meta.page_size - 1   # the last page: a b-tree page of note's
        data[page * meta.page_size:(page + 1) * meta.page_size] = b"\x0d" * meta.page_size
        copy.write_bytes(bytes(data))
        # As if the writer's own file had been damaged before it was snapshotted: the
        # snapshot and the checksums in its meta are those of the damaged bytes.
        storage.delete(layout.snapshot_meta(generation))
        upload_snapshot(storage, layout, generation, str(copy), epoch=meta.epoch,
                        page_size=meta.page_size, parent=meta.parent,
                        created_at=meta.created_at)
    with pytest.raises(ReplicaCorruptError, match="fails PRAGMA quick_check"):
        restore(target=str(tmp_path / "r.db"), database_name=NAME, generation=generation,
                **storage_kwargs)
    assert not (tmp_path / "r.db").exists()
