"""replicator="process": replication runs in a helper process of its own; every app process
writes as a member. The helper leaves after the last app process, having shipped everything
and released the lease; if it is SIGKILLed, a member starts the next one."""
import json
import os
import signal
import sqlite3
import time

import peewee
import pytest

from peewee_s3 import S3SqliteDatabase, restore
from peewee_s3.errors import ConfigurationError, LeaseHeldError, LocalStateError, PeeweeS3Error
from peewee_s3.host import read_state
from peewee_s3.lease import process_running
from tests.test_host import Worker, restored_tags

KEY = bytes(range(32))


def _database(path, storage, **options):
    db = S3SqliteDatabase(str(path), database_name="hosts", replicator="process", **storage,
                          **options)

    class Row(peewee.Model):
        tag = peewee.TextField()

        class Meta:
            database = db

    return db, Row


def _gone(pid, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while process_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _cmdline_and_environ(pid) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f, open(f"/proc/{pid}/environ", "rb") as g:
        return f.read() + g.read()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_the_helper_replicates_and_leaves_after_the_last_process(tmp_path, mode):
    storage = {"storage": f"file://{tmp_path}/store"}
    db, Row = _database(tmp_path / "app.db", storage, sync_mode=mode, encryption_key=KEY)
    db.connect()
    db.create_tables([Row])
    status = db.status()
    helper = status["replicator_pid"]
    assert status["role"] == "member" and helper != os.getpid() and process_running(helper)
    assert KEY.hex().encode() not in _cmdline_and_environ(helper)  # options went by its stdin
    for n in range(50):
        Row.create(tag=f"row-{n}")
    if mode == "sync":  # each commit returned durable: it is in storage already
        assert "row-49" in restored_tags(tmp_path, {**storage, "encryption_key": KEY})
    db.close()
    db.shutdown()
    assert not process_running(helper)  # shutdown() returned after the helper's end
    # The lease is released: another local file may take it at once.
    other = S3SqliteDatabase(str(tmp_path / "other.db"), database_name="hosts",
                             encryption_key=KEY, **storage)
    other.connect()
    assert other.execute_sql("SELECT count(*) FROM row").fetchone()[0] == 50
    other.close()
    other.shutdown()


def test_a_second_host_is_refused_through_the_helper(tmp_path):
    storage = {"storage": f"file://{tmp_path}/store"}
    holder = S3SqliteDatabase(str(tmp_path / "holder.db"), database_name="hosts", **storage)
    holder.connect()
    try:
        db, _ = _database(tmp_path / "app.db", storage)
        with pytest.raises(LeaseHeldError):
            db.connect()
        state = read_state(str(tmp_path / "app.db"))
        assert state is None or not process_running(state.pid)  # no helper left behind
    finally:
        holder.close()
        holder.shutdown()
    db.connect()  # the host lock was given back: once the lease is free, it opens
    assert db.status()["role"] == "member"
    db.close()
    db.shutdown()


def test_a_sigkilled_last_process_leaves_its_commits_to_the_helper(tmp_path):
    storage = {"storage": f"file://{tmp_path}/store", "replicator": "process"}
    worker = Worker(tmp_path, "async", storage)
    try:
        worker.wait_for(lambda: len(worker.acknowledged) >= 100)
        helper = read_state(str(tmp_path / "app.db")).pid
        assert worker.role == "member" and helper != worker.proc.pid
        worker.kill()
        assert _gone(helper)  # alone, it shipped what was left and released the lease
    finally:
        if worker.proc.poll() is None:
            worker.kill()
    assert set(worker.acknowledged) <= restored_tags(tmp_path, storage)
    lock = json.loads((tmp_path / "store" / "hosts" / "lock.json").read_bytes())
    assert lock["released"]


def _cases():
    return [pytest.param("file", "async", id="file-async"),
            pytest.param("file", "sync", id="file-sync"),
            pytest.param("seaweedfs", "sync", id="seaweedfs-sync"),
            pytest.param("seaweedfs", "async", id="seaweedfs-async", marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend,mode", _cases())
def test_four_processes_survive_the_helper_being_killed(tmp_path, request, backend, mode,
                                                        make_bucket, s3_kwargs):
    if backend == "file":
        storage = {"storage": f"file://{tmp_path}/store"}
    else:
        endpoint = request.getfixturevalue("seaweed_endpoint")
        storage = s3_kwargs(endpoint, make_bucket(endpoint))
    storage["replicator"] = "process"
    workers = []
    try:
        workers += [Worker(tmp_path, mode, storage) for _ in range(4)]
        for worker in workers:
            worker.wait_for(lambda: len(worker.acknowledged) >= 20)
        assert {w.role for w in workers} == {"member"}
        path = str(tmp_path / "app.db")
        helper = read_state(path).pid
        assert helper not in {w.proc.pid for w in workers}

        os.kill(helper, signal.SIGKILL)              # the replicating process dies
        counts = [len(w.acknowledged) for w in workers]
        for worker, count in zip(workers, counts):   # ... and the others keep writing
            worker.wait_for(lambda: len(worker.acknowledged) >= count + 20, timeout=30)
        workers[0].wait_for(lambda: read_state(path).pid != helper, timeout=30)
        successor = read_state(path).pid
        assert successor not in {w.proc.pid for w in workers} and process_running(successor)

        (tmp_path / "stop").touch()
        for worker in workers:
            worker.join()
        assert _gone(successor)
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.kill()
    stored = restored_tags(tmp_path, storage)
    assert {tag for w in workers for tag in w.acknowledged} <= stored
    assert all(w.finished for w in workers)


def test_four_database_objects_in_one_process_share_one_helper(tmp_path):
    storage = {"storage": f"file://{tmp_path}/store"}
    objects = [_database(tmp_path / "app.db", storage, sync_mode="sync") for _ in range(4)]
    for db, Row in objects:
        db.connect()
        db.create_tables([Row], safe=True)
    helpers = {db.status()["replicator_pid"] for db, _ in objects}
    assert len(helpers) == 1
    for n in range(10):
        for i, (db, Row) in enumerate(objects):
            Row.create(tag=f"{i}-{n}")
    for db, _ in objects:
        db.close()
        db.shutdown()
    assert not process_running(helpers.pop())
    target = tmp_path / "restored.db"
    restore(target=str(target), database_name="hosts", **storage)
    conn = sqlite3.connect(str(target))
    assert conn.execute("SELECT count(*) FROM row").fetchone()[0] == 40
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_db_snapshot_in_the_app_asks_the_helper_for_a_new_generation(tmp_path):
    storage = {"storage": f"file://{tmp_path}/store"}
    db, Row = _database(tmp_path / "app.db", storage)
    db.connect()
    db.create_tables([Row])
    first = read_state(str(tmp_path / "app.db")).generation
    Row.create(tag="before the snapshot")
    generation = db.snapshot()
    assert generation != first
    assert (tmp_path / "store" / "hosts" / "generations" / generation /
            "snapshot.meta.json").exists()
    db.close()
    db.shutdown()
    assert "before the snapshot" in restored_tags(tmp_path, storage)


def test_an_in_memory_storage_is_refused_for_a_helper(tmp_path):
    with pytest.raises(ConfigurationError, match="memory"):
        S3SqliteDatabase(str(tmp_path / "app.db"), storage="memory://x", database_name="hosts",
                         replicator="process")
    with pytest.raises(ConfigurationError, match="replicator='fork' is not known"):
        S3SqliteDatabase(str(tmp_path / "app.db"), storage=f"file://{tmp_path}/store",
                         database_name="hosts", replicator="fork")


def test_a_file_replaced_under_the_helper_ends_its_session_and_the_next_open_starts_anew(
        tmp_path, caplog):
    storage = {"storage": f"file://{tmp_path}/store"}
    path = tmp_path / "app.db"
    db, Row = _database(path, storage, sync_mode="sync")
    db.connect()
    db.create_tables([Row])
    Row.create(tag="first file")
    helper = db.status()["replicator_pid"]
    db.close()
    for suffix in ("", "-wal", "-shm"):   # what peewee's own tests do between two tests
        if os.path.exists(f"{path}{suffix}"):
            os.unlink(f"{path}{suffix}")
    assert _gone(helper, timeout=10)     # it saw the file go and ended its session
    with pytest.raises(LocalStateError):
        db.connect()                      # the session of the deleted file is over …
    db.shutdown()
    # … and it left at once: it neither waited for a shipment that cannot come nor took
    # over to ship its commits to the deleted file (which restored a file the user removed)
    assert "before the replicating process shipped" not in caplog.text
    assert not path.exists()
    db.connect()                          # … and a new one restores the file from storage
    assert [r.tag for r in Row.select()] == ["first file"]
    db.close()
    db.shutdown()


def test_a_helper_that_cannot_start_is_reported_and_gives_the_lock_back(tmp_path, monkeypatch):
    storage = {"storage": f"file://{tmp_path}/store"}
    db, Row = _database(tmp_path / "app.db", storage)
    monkeypatch.setattr("sys.executable", "/bin/false")   # a Python that cannot run it
    with pytest.raises(PeeweeS3Error, match="exited with code 1 before it was ready"):
        db.connect()
    monkeypatch.undo()
    db.connect()                                          # the host lock was given back
    db.create_tables([Row])
    Row.create(tag="after")
    db.close()
    db.shutdown()
    assert "after" in restored_tags(tmp_path, storage)


def test_a_member_that_wrote_nothing_leaves_at_once(tmp_path, caplog):
    """A worker that only read (a GET-only web worker) has no commit to wait for: its
    shutdown() used to wait 10 s for a shipment that covered nothing of its own."""
    storage = {"storage": f"file://{tmp_path}/store"}
    writer, Row = _database(tmp_path / "app.db", storage)
    writer.connect()
    writer.create_tables([Row])
    Row.create(tag="written")
    writer.close()
    writer.shutdown()
    reader, ReadRow = _database(tmp_path / "app.db", storage)
    reader.connect()        # a member of a new helper …
    assert [r.tag for r in ReadRow.select()] == ["written"]
    reader.close()
    reader.shutdown()       # … that only read
    assert "before the replicating process shipped" not in caplog.text
