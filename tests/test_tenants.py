"""A database per tenant: many databases in one process share the scheduler's threads and one
storage client per storage; `Tenants` makes, tracks and shuts them down."""
import json
import os
import sqlite3
import threading
import time

import pytest

from peewee_s3 import ConfigurationError, Tenants, restore
from peewee_s3.cli import main

from .faultproxy import FaultProxy

THREAD_BOUND = 20  # the "about 20 threads in the process for any number of databases"


def rows_of(path):
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in conn.execute("SELECT body FROM note ORDER BY id")]
    finally:
        conn.close()


def write(db, *bodies):
    with db.connection_context():
        db.execute_sql("CREATE TABLE IF NOT EXISTS note (id INTEGER PRIMARY KEY, body TEXT)")
        for body in bodies:
            db.execute_sql("INSERT INTO note (body) VALUES (?)", (body,))


def wait_until_shipped(databases, timeout=120):
    deadline = time.monotonic() + timeout
    for db in databases:
        while db.status()["pending_commits"] or not db.status()["commits_uploaded"]:
            assert time.monotonic() < deadline, f"{db} did not replicate: {db.status()}"
            time.sleep(0.02)


def test_two_hundred_tenants_replicate_on_a_bounded_number_of_threads(tmp_path):
    (tmp_path / "local").mkdir()
    storage = f"file://{tmp_path}/store"
    tenants = Tenants(str(tmp_path / "local"), storage=storage, sync_interval=0.1)
    names = [f"tenant-{n:03}" for n in range(200)]
    most_threads = 0
    try:
        for name in names:
            write(tenants.database(name), f"{name} first", f"{name} second")
            most_threads = max(most_threads, threading.active_count())
        wait_until_shipped([tenants.database(name) for name in names])
        most_threads = max(most_threads, threading.active_count())
        storages = {id(tenants.database(name)._session.role.storage) for name in names}
    finally:
        tenants.shutdown()
    assert most_threads <= THREAD_BOUND
    assert len(storages) == 1  # one storage (one client) for all of them
    assert len(tenants) == 0
    for name in names:
        target = tmp_path / "restored" / f"{name}.db"
        target.parent.mkdir(exist_ok=True)
        restore(storage=storage, database_name=name, target=str(target))
        assert rows_of(target) == [f"{name} first", f"{name} second"]


def test_tenants_refuse_a_helper_process_per_database(tmp_path):
    with pytest.raises(ConfigurationError, match="helper process per tenant"):
        Tenants(str(tmp_path), storage=f"file://{tmp_path}/store", replicator="process")


def test_sync_mode_tenants_are_durable_when_the_write_returns(tmp_path):
    (tmp_path / "local").mkdir()
    storage = f"file://{tmp_path}/store"
    tenants = Tenants(str(tmp_path / "local"), storage=storage, sync_mode="sync")
    try:
        for name in ("a", "b", "c"):
            write(tenants.database(name), f"{name} row")
            restore(storage=storage, database_name=name, target=str(tmp_path / f"{name}.db"))
            assert rows_of(tmp_path / f"{name}.db") == [f"{name} row"]
    finally:
        tenants.shutdown()


def test_the_same_tenant_is_the_same_database_until_it_is_shut_down(tmp_path):
    tenants = Tenants(str(tmp_path), storage=f"file://{tmp_path}/store")
    first = tenants.database("acme")
    assert tenants.database("acme") is first and "acme" in tenants
    assert first.database == str(tmp_path / "acme.db")
    assert first.options.database_name == "acme"
    write(first, "kept")
    tenants.shutdown()
    assert "acme" not in tenants and first.status()["open"] is False
    again = tenants.database("acme")
    assert again is not first
    with again.connection_context():
        assert again.execute_sql("SELECT body FROM note").fetchall() == [("kept",)]
    tenants.shutdown()


def test_close_idle_shuts_down_only_the_databases_not_used_lately(tmp_path):
    tenants = Tenants(str(tmp_path), storage=f"file://{tmp_path}/store")
    write(tenants.database("idle"), "x")
    time.sleep(1.0)
    write(tenants.database("busy"), "y")
    try:
        assert tenants.close_idle(0.5) == ["idle"]
        assert tenants.names() == ["busy"]
        assert tenants.database("busy").status()["open"] is True
    finally:
        tenants.shutdown()
    restore(storage=f"file://{tmp_path}/store", database_name="idle",
            target=str(tmp_path / "restored.db"))
    assert rows_of(tmp_path / "restored.db") == ["x"]


def test_a_lost_tenant_file_is_restored_on_first_use(tmp_path):
    storage = f"file://{tmp_path}/store"
    (tmp_path / "one").mkdir()
    tenants = Tenants(str(tmp_path / "one"), storage=storage)
    write(tenants.database("acme"), "from the first host")
    tenants.shutdown()
    (tmp_path / "two").mkdir()
    elsewhere = Tenants(str(tmp_path / "two"), storage=storage)
    db = elsewhere.database("acme")
    try:
        with db.connection_context():
            assert db.execute_sql("SELECT body FROM note").fetchall() == [("from the first host",)]
    finally:
        elsewhere.shutdown()


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "-x", "x" * 129, None, "a b"])
def test_a_tenant_name_that_cannot_name_a_file_is_refused(tmp_path, name):
    tenants = Tenants(str(tmp_path), storage=f"file://{tmp_path}/store")
    with pytest.raises(ConfigurationError, match="tenant name"):
        tenants.database(name)
    assert len(tenants) == 0


def test_tenants_refuse_a_database_name_and_a_missing_directory(tmp_path):
    with pytest.raises(ConfigurationError, match="drop database_name"):
        Tenants(str(tmp_path), storage=f"file://{tmp_path}/store", database_name="x")
    with pytest.raises(ConfigurationError, match="does not exist"):
        Tenants(str(tmp_path / "missing"), storage=f"file://{tmp_path}/store")
    with pytest.raises(ConfigurationError, match="sync_mode"):
        Tenants(str(tmp_path), storage=f"file://{tmp_path}/store", sync_mode="sometimes")



def test_the_command_restores_and_lists_many_databases_by_pattern(tmp_path, capsys):
    storage = f"file://{tmp_path}/store"
    tenants = Tenants(str(tmp_path), storage=storage, key_prefix="customers")
    for name in ("tenant-a", "tenant-b", "other"):
        write(tenants.database(name), f"{name} row")
    tenants.shutdown()
    where = ["--storage", storage, "--key-prefix", "customers"]

    assert main(["restore", "--match", "tenant-*", "-o", str(tmp_path / "out"), *where]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["tenant-a.db", "tenant-b.db"]
    assert rows_of(tmp_path / "out" / "tenant-b.db") == ["tenant-b row"]
    assert main(["restore", "--all", "--if-not-exists", "-o", str(tmp_path / "out"),
                 *where]) == 0
    assert rows_of(tmp_path / "out" / "other.db") == ["other row"]
    capsys.readouterr()

    assert main(["generations", "--all", "--json", *where]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(listed) == ["other", "tenant-a", "tenant-b"]
    assert all(rows[0]["current"] for rows in listed.values())
    assert main(["generations", "--match", "tenant-a", *where]) == 0
    out = capsys.readouterr().out
    assert "== tenant-a" in out and "tenant-b" not in out


def test_the_command_refuses_a_pattern_that_matches_nothing_or_a_name_with_all(tmp_path, capsys):
    storage = f"file://{tmp_path}/store"
    tenants = Tenants(str(tmp_path), storage=storage)
    write(tenants.database("acme"), "x")
    tenants.shutdown()
    capsys.readouterr()
    assert main(["generations", "--match", "nobody-*", "--storage", storage]) == 1
    assert "named like 'nobody-*'" in capsys.readouterr().err
    assert main(["restore", "--all", "--database-name", "acme", "-o", str(tmp_path / "o"),
                 "--storage", storage]) == 1
    assert "drop --database-name" in capsys.readouterr().err


def test_idle_databases_send_nothing_but_their_lease_renewals(tmp_path, moto_endpoint,
                                                              make_bucket, s3_kwargs):
    with FaultProxy(moto_endpoint) as proxy:
        tenants = Tenants(str(tmp_path), **s3_kwargs(proxy.url, make_bucket(moto_endpoint)),
                          sync_interval=0.1, lock_ttl=3)  # a renewal a second
        try:
            databases = [tenants.database(f"idle-{n}") for n in range(10)]
            for db in databases:
                write(db, "the last write")
                db.sync()
            time.sleep(0.5)  # the ticks that follow those writes are over: idle from here
            proxy.counts.clear()
            began = time.monotonic()
            time.sleep(2.5)
            idle_for, seen = time.monotonic() - began, dict(proxy.counts)
        finally:
            tenants.shutdown()
    renewals = len(databases) * (int(idle_for / 1.0) + 1)
    assert set(seen) <= {"requests", "PUT"}, seen          # no GET, HEAD, LIST or DELETE
    assert seen.get("PUT", 0) <= renewals
