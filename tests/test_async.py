"""AsyncS3SqliteDatabase (peewee_s3/aio.py): every kind of awaited write comes back from storage,
a sync-mode write waits for durability while the event loop runs on, ashutdown() ends the
session, the class refuses clearly without pwasyncio, and the async FastAPI example serves its
todo API over real HTTP."""
import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import peewee
import pytest

pwasyncio = pytest.importorskip("playhouse.pwasyncio")

from peewee_s3 import AsyncS3SqliteDatabase, S3SqliteDatabase, restore  # noqa: E402
from peewee_s3.errors import ConfigurationError, LeaseHeldError  # noqa: E402
from peewee_s3.host import wal_end  # noqa: E402

from .conftest import _free_ports  # noqa: E402
from .faultproxy import FaultProxy  # noqa: E402
from .helpers import NAME, rows_in_file  # noqa: E402
from .test_examples import (EXAMPLES, example_env, exercise_the_todo_api,  # noqa: E402,F401
                            titles_in_storage)

ROOT = os.path.dirname(EXAMPLES)


class Note(pwasyncio.AsyncModel):
    body = peewee.TextField()


def make_db(path, storage_kwargs, **options):
    options.setdefault("database_name", NAME)
    db = AsyncS3SqliteDatabase(str(path), **storage_kwargs, **options)
    db.bind([Note])
    return db


def stored_rows(tmp_path, storage_kwargs):
    """The rows a restore from storage gives now."""
    target = tmp_path / f"restored-{uuid.uuid4().hex}.db"
    restore(target=str(target), database_name=NAME, **storage_kwargs)
    return rows_in_file(target)


def the_whole_wal_is_durable(db, path):
    """The replicator's durable position (what it publishes to members; a process alone on
    its file keeps it in memory) covers the local WAL's last commit."""
    salts, frame = wal_end(str(path))
    state = db._session._state
    return state is not None and state.covers(salts, frame, committed_at=time.time())


def run(main, *dbs):
    """asyncio.run(main()), closing each database's pool even when main failed: aiosqlite's
    threads would keep the test process alive."""
    async def guarded():
        try:
            return await main()
        finally:
            for db in dbs:
                await db.close_pool()
    return asyncio.run(guarded())


async def local_rows(db):
    return sorted(note.body for note in await db.list(Note.select()))


class Ticker:
    """A task that counts while the event loop is free: a blocked loop stops its count."""

    def __init__(self, every=0.01):
        self.count, self.every = 0, every

    async def __aenter__(self):
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info):
        self._task.cancel()

    async def _run(self):
        while True:
            await asyncio.sleep(self.every)
            self.count += 1


async def write_every_kind_of_commit(db, after_each):
    await db.acreate_tables([Note])                                    # DDL
    after_each("create_tables")
    await Note.acreate(body="autocommit")                              # autocommit statement
    after_each("acreate")
    async with db.atomic():                                            # transaction
        await Note.acreate(body="atomic")
        async with db.atomic():                                        # nested savepoint
            await Note.acreate(body="savepoint")
    after_each("atomic")
    async with db.savepoint():                                         # top-level savepoint
        await Note.acreate(body="top-savepoint")
    after_each("savepoint")
    async with db.transaction():
        await Note.acreate(body="transaction")
    after_each("transaction")
    await Note.update(body="updated").where(Note.body == "autocommit").aexecute()
    after_each("update")
    async for _ in db.iterate(Note.insert(body="returning").returning(Note.id)):
        pass                                                           # a write, streamed
    after_each("iterate")
    await db.run(lambda: Note.delete().where(Note.body == "transaction").execute())
    after_each("run")


EXPECTED = sorted(["updated", "atomic", "savepoint", "top-savepoint", "returning"])


def test_every_awaited_write_is_durable_when_it_returns_in_sync_mode(tmp_path, storage_kwargs):
    # sync_interval=60: the replicator would not ship on its own; only captured commits ship.
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync", sync_interval=60)
    seen = []

    def after_each(kind):
        assert the_whole_wal_is_durable(db, tmp_path / "a.db"), kind
        seen.append((kind, stored_rows(tmp_path, storage_kwargs)))

    async def main():
        await write_every_kind_of_commit(db, after_each)
        seen.append(("local", await local_rows(db)))
        await db.ashutdown()

    run(main, db)
    assert dict(seen)["acreate"] == ["autocommit"]
    assert dict(seen)["atomic"] == ["atomic", "autocommit", "savepoint"]
    assert dict(seen)["iterate"] == sorted(EXPECTED + ["transaction"])
    assert dict(seen)["run"] == dict(seen)["local"] == EXPECTED


@pytest.mark.parametrize("storage_kwargs", ["file", "moto"], indirect=True)
def test_in_async_mode_every_write_is_shipped_and_ashutdown_releases_the_lease(
        tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs)

    async def main():
        await write_every_kind_of_commit(db, lambda kind: None)
        await db.ashutdown()

    run(main, db)
    assert db.status()["open"] is False
    assert stored_rows(tmp_path, storage_kwargs) == EXPECTED
    # The lease is free: a writer elsewhere takes it at once (lock_wait=0 would refuse).
    other = S3SqliteDatabase(str(tmp_path / "b.db"), database_name=NAME, lock_wait=0,
                             **storage_kwargs)
    other.connect()
    other.shutdown()


@pytest.mark.parametrize("storage_kwargs", ["file", "moto"], indirect=True)
def test_the_first_query_restores_a_missing_file_and_takes_the_lease(tmp_path, storage_kwargs):
    first = make_db(tmp_path / "a.db", storage_kwargs)

    async def write():
        await first.acreate_tables([Note])
        await Note.acreate(body="before the loss")
        await first.ashutdown()

    run(write, first)
    os.remove(tmp_path / "a.db")
    again = make_db(tmp_path / "a.db", storage_kwargs)

    async def read_and_hold():
        rows = await local_rows(again)
        other = S3SqliteDatabase(str(tmp_path / "b.db"), database_name=NAME, **storage_kwargs)
        with pytest.raises(LeaseHeldError):
            await asyncio.to_thread(other.connect)
        await again.ashutdown()
        return rows

    assert run(read_and_hold, again) == ["before the loss"]


@pytest.fixture
def slow_storage(moto_endpoint, make_bucket, s3_kwargs):
    """(proxy, options): a moto bucket reached through a FaultProxy that can slow requests."""
    with FaultProxy(moto_endpoint) as proxy:
        yield proxy, s3_kwargs(proxy.url, make_bucket(moto_endpoint))


def test_a_sync_write_waits_for_the_slow_storage_while_other_tasks_run(tmp_path, slow_storage):
    proxy, storage_kwargs = slow_storage
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync", sync_interval=60)
    delay = 0.5
    waits = {}

    async def timed(name, write):
        async with Ticker() as ticker:
            started = time.monotonic()
            await write()
            waits[name] = (time.monotonic() - started, ticker.count)

    async def atomic_write():
        async with db.atomic():
            await Note.acreate(body="atomic")

    async def main():
        await db.acreate_tables([Note])
        proxy.set_faults(1.0, kinds=["slow"], delay=delay)
        await timed("autocommit", lambda: Note.acreate(body="autocommit"))
        await timed("atomic", atomic_write)
        await timed("ddl", lambda: db.run(db.execute_sql, "CREATE INDEX by_body ON note (body)"))
        proxy.clear()
        assert stored_rows(tmp_path, storage_kwargs) == ["atomic", "autocommit"]
        proxy.set_faults(1.0, kinds=["slow"], delay=delay)
        await timed("ashutdown", db.ashutdown)
        proxy.clear()

    run(main, db)
    for name, (seconds, ticks) in waits.items():
        assert seconds >= delay, name          # it did wait for the storage...
        assert ticks >= seconds / 0.01 / 4, (name, seconds, ticks)   # ...and the loop ran on


def test_opening_the_session_takes_as_long_as_the_storage_not_acquire_timeout(
        tmp_path, slow_storage):
    proxy, storage_kwargs = slow_storage
    db = make_db(tmp_path / "a.db", storage_kwargs, acquire_timeout=0.5)
    proxy.set_faults(1.0, kinds=["slow"], delay=0.3)   # the lease, the first snapshot: > 0.5 s

    async def main():
        await db.acreate_tables([Note])
        await Note.acreate(body="slowly")
        proxy.clear()
        await db.ashutdown()

    run(main, db)
    assert stored_rows(tmp_path, storage_kwargs) == ["slowly"]


def test_ashutdown_inside_a_transaction_refuses_and_the_session_stays_open(tmp_path):
    db = make_db(tmp_path / "a.db", {"storage": f"file://{tmp_path}/store"})

    async def main():
        await db.acreate_tables([Note])
        async with db.atomic():
            await Note.acreate(body="in a transaction")
            with pytest.raises(peewee.OperationalError, match="transaction is open"):
                await db.ashutdown()
        assert db.status()["open"] is True
        with pytest.raises(peewee.InterfaceError, match="await db.ashutdown"):
            db.shutdown()                            # it would block the loop
        await db.ashutdown()
        assert db.status()["open"] is False
        await Note.acreate(body="after ashutdown")   # the next query opens a new session
        assert db.status()["open"] is True
        await db.ashutdown()

    run(main, db)
    assert stored_rows(tmp_path, {"storage": f"file://{tmp_path}/store"}) == [
        "after ashutdown", "in a transaction"]


def test_it_takes_the_options_of_s3sqlitedatabase_and_of_pwasyncio(tmp_path):
    storage = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage, sync_mode="sync", lock_ttl=30, pool_size=2,
                 acquire_timeout=5, pragmas={"cache_size": -4000})
    assert (db.options.sync_mode, db.options.lock_ttl, db._pool_size) == ("sync", 30, 2)

    async def pragmas():
        rows = [await db.run(lambda name=name: db.execute_sql(f"PRAGMA {name}").fetchone()[0])
                for name in ("cache_size", "wal_autocheckpoint", "journal_mode")]
        await db.ashutdown()
        return rows

    assert run(pragmas, db) == [-4000, 0, "wal"]
    with pytest.raises(ConfigurationError, match="journal_mode"):
        make_db(tmp_path / "b.db", storage, pragmas={"journal_mode": "delete"})
    with pytest.raises(ConfigurationError, match="memory"):
        make_db(":memory:", storage)
    with pytest.raises(ConfigurationError, match="sync_mode"):
        make_db(tmp_path / "b.db", storage, sync_mode="sometimes")


def test_a_schema_using_the_apps_own_function_restores_at_the_first_query(tmp_path, caplog):
    storage = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage)
    db.func("pylower", deterministic=True)(str.lower)

    async def write():
        await db.acreate_tables([Note])
        await db.run(db.execute_sql, "CREATE UNIQUE INDEX note_lower ON note (pylower(body))")
        await Note.acreate(body="Hello")
        await db.ashutdown()

    async def read():
        rows = await local_rows(db)            # restores, and checks every index
        with pytest.raises(peewee.IntegrityError):
            await Note.acreate(body="HELLO")
        await db.ashutdown()
        return rows

    run(write, db)
    os.remove(tmp_path / "a.db")
    with caplog.at_level("WARNING", logger="peewee_s3"):
        assert run(read, db) == ["Hello"]
    assert "not verified" not in caplog.text


def test_without_pwasyncio_the_package_imports_and_the_class_says_what_to_install(tmp_path):
    # As on peewee 3.x, which has no playhouse.pwasyncio.
    code = ("import sys; sys.modules['playhouse.pwasyncio'] = None\n"
            "import peewee_s3\n"
            "try:\n"
            "    peewee_s3.AsyncS3SqliteDatabase('a.db', storage='file://store', "
            "database_name='app')\n"
            "except peewee_s3.ConfigurationError as exc:\n"
            "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert "playhouse.pwasyncio" in done.stdout and "peewee-s3[async]" in done.stdout
    assert os.listdir(tmp_path) == []          # refused before touching anything


# -- the async FastAPI example, served by uvicorn ------------------------------------------


class Client:
    def __init__(self, port):
        self.port = port

    def request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = None if body is None else json.dumps(body)
            conn.request(method, path, body=data,
                         headers={"content-type": "application/json"} if data else {})
            response = conn.getresponse()
            text = response.read().decode()
            if response.getheader("content-type", "").startswith("application/json"):
                return response.status, json.loads(text)
            return response.status, text
        finally:
            conn.close()

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body):
        return self.request("POST", path, body)


@pytest.fixture
def served_async_example(tmp_path, example_env):
    """uvicorn serving examples/fastapi_app/async_app.py on a free loopback port, with the
    storage of `example_env` (its environment variables)."""
    port, = _free_ports(1)
    log = open(tmp_path / "uvicorn.log", "w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", os.path.join(EXAMPLES, "fastapi_app"),
         "--host", "127.0.0.1", "--port", str(port), "async_app:app"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    client = Client(port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.get("/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"uvicorn did not come up:\n{log.read()}")
                time.sleep(0.1)
        yield server, client
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()


def test_the_async_fastapi_example_serves_its_todo_api_over_http(tmp_path, example_env,
                                                                 served_async_example):
    server, client = served_async_example
    exercise_the_todo_api(client.get, client.post)
    answers = []
    posts = [threading.Thread(target=lambda n=n: answers.append(
        client.post("/todos", {"title": f"at once {n}"})[0])) for n in range(6)]
    for post in posts:
        post.start()
    for post in posts:
        post.join()
    assert answers == [201] * 6
    status, scraped = client.get("/metrics")
    assert status == 200 and 'peewee_s3_pending_commits{database_name="todo"} 0.0' in scraped
    # Acknowledged means durable (sync mode): a restore has them while the server runs.
    written = ["write the tests", "ship it"] + [f"at once {n}" for n in range(6)]
    assert sorted(titles_in_storage(tmp_path, example_env)) == sorted(written)

    server.send_signal(signal.SIGINT)         # the lifespan's ashutdown() releases the lease
    assert server.wait(timeout=60) == 0
    other = S3SqliteDatabase(str(tmp_path / "b.db"), database_name="todo", lock_wait=0,
                             **example_env)
    other.connect()
    other.shutdown()
