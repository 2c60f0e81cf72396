"""S3SqliteReplica: restores, follows one writer through storage, and every read sees one
committed state — across processes, tables, schema changes and new generations."""
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import threading
import time

import peewee
import pytest

from peewee_s3 import S3SqliteDatabase
from peewee_s3.errors import (ConfigurationError, NothingToRestoreError, PreconditionFailedError,
                              ReplicaCorruptError)
from peewee_s3.fence import fence_generation
from peewee_s3.layout import Layout
from peewee_s3.lease import read_lease
from peewee_s3.replica import ReadOnlyReplicaError, S3SqliteReplica
from peewee_s3.restore import restore_to, segment_sizes
from peewee_s3.segments import CommitRecord, Segment
from peewee_s3.storage import open_storage

from .faultproxy import FaultProxy
from .helpers import NAME, Note, make_db

POLL = 0.1
WAIT = 15.0  # the bounded wait for "the replica returns it": generous, never the measurement


def make_replica(path, storage_kwargs, **options):
    options.setdefault("database_name", NAME)
    options.setdefault("poll_interval", POLL)
    return S3SqliteReplica(str(path), **storage_kwargs, **options)


def scalar(replica, sql):
    """Raw SQL on the replica: the test models stay bound to the writer."""
    return replica.execute_sql(sql).fetchone()[0]


def wait_until(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"the replica did not show {what} within {WAIT} s")
        time.sleep(0.005)


@pytest.fixture
def file_storage(tmp_path):
    return {"storage": f"file://{tmp_path}/store"}


@pytest.fixture
def moto_storage(moto_endpoint, make_bucket, s3_kwargs):
    return s3_kwargs(moto_endpoint, make_bucket(moto_endpoint))


def test_a_replica_restores_at_connect_then_follows_the_writer(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "w.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="before")
    replica = make_replica(tmp_path / "r.db", storage_kwargs)
    assert replica.execute_sql("SELECT body FROM note").fetchall() == [("before",)]

    Note.create(body="after")
    wait_until(lambda: scalar(replica, "SELECT count(*) FROM note") == 2, "the second row")
    wait_until(lambda: replica.status()["position"] == db.status()["position"], "its position")
    assert scalar(replica, "PRAGMA integrity_check") == "ok"
    assert scalar(replica, "PRAGMA journal_mode") == "delete"
    replica.shutdown()
    db.shutdown()


def test_a_replica_follows_the_hand_over_to_the_next_writer(tmp_path, file_storage):
    first = make_db(tmp_path / "a.db", file_storage, sync_mode="sync")
    first.create_tables([Note])
    Note.create(body="from the first writer")
    replica = make_replica(tmp_path / "r.db", file_storage)
    replica.connect()
    first.shutdown()  # a final snapshot: a new generation
    second = make_db(tmp_path / "b.db", file_storage, sync_mode="sync")  # another machine
    Note.create(body="from the second writer")
    wait_until(lambda: scalar(replica, "SELECT count(*) FROM note") == 2, "the second writer's row")
    wait_until(lambda: replica.status()["position"] == second.status()["position"],
               "the second writer's position")
    replica.shutdown()
    second.shutdown()


# -- two replica processes on moto ---------------------------------------------------------

class Tick(peewee.Model):
    k = peewee.IntegerField()


def follow_in_a_process(name, path, storage_kwargs, rows, started, seen):
    """A replica process: report (name, K, when) each time a newer row K becomes readable."""
    replica = make_replica(path, storage_kwargs)
    replica.connect()
    started.put(name)
    newest, deadline = 0, time.monotonic() + 60
    while newest < rows and time.monotonic() < deadline:
        k = scalar(replica, "SELECT coalesce(max(k), 0) FROM tick")
        if k > newest:
            seen.put((name, k, time.time()))
            newest = k
        time.sleep(0.002)
    replica.shutdown()


def test_two_replica_processes_follow_a_writer_across_a_snapshot(tmp_path, moto_storage, capsys):
    rows, snapshot_after = 40, 20
    db = S3SqliteDatabase(str(tmp_path / "w.db"), database_name=NAME, sync_mode="sync",
                          **moto_storage)
    Tick.bind(db)
    db.create_tables([Tick])
    spawn = multiprocessing.get_context("spawn")
    started, seen = spawn.Queue(), spawn.Queue()
    names = ["replica-1", "replica-2"]
    processes = [spawn.Process(target=follow_in_a_process,
                               args=(n, str(tmp_path / f"{n}.db"), moto_storage, rows, started,
                                     seen)) for n in names]
    for process in processes:
        process.start()
    try:
        for _ in names:
            started.get(timeout=60)
        committed = {}
        for k in range(1, rows + 1):
            Tick.create(k=k)  # sync mode: durable in the bucket when it returns
            committed[k] = time.time()
            if k == snapshot_after:
                db.snapshot()  # a new generation mid-stream
            time.sleep(random.uniform(0.02, 0.12))
        events = []
        while sum(1 for _, k, _ in events if k == rows) < len(names):
            events.append(seen.get(timeout=WAIT))
    finally:
        for process in processes:
            process.join(WAIT)
            if process.exitcode is None:
                process.kill()
    db.shutdown()

    lags = {name: [] for name in names}
    for name in names:
        times = sorted((k, t) for n, k, t in events if n == name)
        for k in range(1, rows + 1):
            first_seen = min(t for seen_k, t in times if seen_k >= k)
            lags[name].append(first_seen - committed[k])
    assert [p.exitcode for p in processes] == [0, 0]
    every = sorted(lag for name in names for lag in lags[name])
    cuts = statistics.quantiles(every, n=100, method="inclusive")
    within = sum(lag <= 2 * POLL for lag in every)
    after_snapshot = max(lags[name][snapshot_after] for name in names)  # row snapshot_after+1
    with capsys.disabled():
        print(f"\nreplica lag on moto, poll_interval {POLL} s, {len(names)} processes x {rows} "
              f"sync commits (snapshot after {snapshot_after}): p50 {cuts[49] * 1000:.0f} ms, "
              f"p99 {cuts[98] * 1000:.0f} ms, max {every[-1] * 1000:.0f} ms; "
              f"{within}/{len(every)} within 2 x poll_interval; first row of the new "
              f"generation {after_snapshot * 1000:.0f} ms")


# -- every read one committed state --------------------------------------------------------

class Checking(peewee.Model):
    balance = peewee.IntegerField()
    note = peewee.TextField(default="")


class Savings(peewee.Model):
    balance = peewee.IntegerField()
    note = peewee.TextField(default="")


def test_every_read_on_a_replica_sees_one_committed_state(tmp_path, file_storage):
    accounts, opening = 400, 1000
    total = 2 * accounts * opening
    db = S3SqliteDatabase(str(tmp_path / "w.db"), database_name=NAME, sync_interval=0.05,
                          **file_storage)
    db.bind([Checking, Savings])
    db.create_tables([Checking, Savings])
    with db.atomic():
        for _ in range(accounts):
            Checking.create(balance=opening, note="c" * 200)
            Savings.create(balance=opening, note="s" * 200)
    db.sync()
    replica = make_replica(tmp_path / "r.db", file_storage, poll_interval=0.02)
    replica.connect()
    stop, broken, counts_seen = threading.Event(), [], set()
    per_table = "SELECT sum(balance), count(*) FROM {}"
    both = "SELECT (SELECT sum(balance) FROM checking) + (SELECT sum(balance) FROM savings)"

    def read(reconnect):
        while not stop.is_set():
            try:
                with replica.atomic():  # one read transaction, two statements, two tables
                    a = replica.execute_sql(per_table.format("checking")).fetchone()
                    b = replica.execute_sql(per_table.format("savings")).fetchone()
                if a[0] + b[0] != total or a[1] != b[1]:
                    broken.append((a, b))
                counts_seen.add(a[1])
                if scalar(replica, both) != total:
                    broken.append("one statement")
            except Exception as exc:  # noqa: BLE001 - reported below
                broken.append(repr(exc))
            if reconnect:  # as a web app does per request: the next read starts uncached
                replica.close()
        replica.close()

    readers = [threading.Thread(target=read, args=(reconnect,)) for reconnect in (1, 1, 0)]
    for reader in readers:
        reader.start()
    deadline, snapshot_at, transfers = time.monotonic() + 2.5, time.monotonic() + 1.2, 0
    while time.monotonic() < deadline:
        amount = random.randint(1, 50)
        with db.atomic():  # a transfer: the sum over both tables never changes
            Checking.update(balance=Checking.balance - amount).where(
                Checking.id == random.randint(1, accounts)).execute()
            Savings.update(balance=Savings.balance + amount).where(
                Savings.id == random.randint(1, accounts)).execute()
            if transfers % 5 == 0:  # the tables grow: new pages, page 1 changes
                Checking.create(balance=0, note="c" * 300)
                Savings.create(balance=0, note="s" * 300)
        transfers += 1
        if snapshot_at and time.monotonic() > snapshot_at:
            db.snapshot()
            snapshot_at = None
        time.sleep(0.002)
    db.sync()
    replica.refresh()
    stop.set()
    for reader in readers:
        reader.join()

    assert broken == []
    assert scalar(replica, "SELECT sum(balance) FROM checking") + \
        scalar(replica, "SELECT sum(balance) FROM savings") == total
    assert scalar(replica, "SELECT count(*) FROM checking") == Checking.select().count()
    assert len(counts_seen) >= 5, "the readers should have seen many states go by"
    assert replica.status()["generations_installed"] >= 2
    assert scalar(replica, "PRAGMA integrity_check") == "ok"
    replica.shutdown()
    db.shutdown()


def test_a_table_created_on_the_writer_is_readable_on_an_open_connection(tmp_path, file_storage):
    db = make_db(tmp_path / "w.db", file_storage, sync_mode="sync")
    db.create_tables([Note])
    replica = make_replica(tmp_path / "r.db", file_storage, poll_interval=60)
    assert scalar(replica, "SELECT count(*) FROM note") == 0  # this connection knows the schema
    db.execute_sql("CREATE TABLE later (x)")
    db.execute_sql("INSERT INTO later VALUES (42)")
    replica.refresh()
    assert replica.execute_sql("SELECT x FROM later").fetchall() == [(42,)]
    replica.shutdown()
    db.shutdown()


# -- read-only, lag, the local file, options ------------------------------------------------

def test_writes_through_a_replica_raise(tmp_path, file_storage):
    db = make_db(tmp_path / "w.db", file_storage)
    db.create_tables([Note])
    Note.create(body="kept")
    db.sync()
    replica = make_replica(tmp_path / "r.db", file_storage)
    with Note.bind_ctx(replica):
        with pytest.raises(ReadOnlyReplicaError, match="read replica of 'app'.*INSERT"):
            Note.create(body="no")
        with pytest.raises(ReadOnlyReplicaError, match="UPDATE"):
            Note.update(body="no").execute()
        with pytest.raises(ReadOnlyReplicaError):
            replica.create_tables([Note])
        with pytest.raises(ReadOnlyReplicaError, match="PRAGMA"):
            replica.execute_sql("PRAGMA user_version = 3")
        with replica.atomic():  # a read transaction is fine
            assert [n.body for n in Note.select()] == ["kept"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        replica.connection().execute("DELETE FROM note")  # even bypassing peewee
    replica.shutdown()
    db.shutdown()


def test_a_long_read_holds_updates_back_and_lag_says_so(tmp_path, file_storage):
    db = make_db(tmp_path / "w.db", file_storage, sync_mode="sync")
    db.create_tables([Note])
    replica = make_replica(tmp_path / "r.db", file_storage, poll_interval=60)
    replica.connect()
    assert replica.lag() == 0.0 and replica.status()["caught_up"]
    failed = []
    with replica.atomic():
        assert scalar(replica, "SELECT count(*) FROM note") == 0
        Note.create(body="new")
        refresher = threading.Thread(target=lambda: failed.append(_raises(replica.refresh)))
        refresher.start()
        refresher.join()
        assert scalar(replica, "SELECT count(*) FROM note") == 0  # still its own snapshot
    assert failed == [True]  # the update gave up waiting for the read; it is kept for later
    status = replica.status()
    assert status["lag_commits"] == 1 and status["lag_seconds"] > 0 and not status["caught_up"]
    replica.refresh()
    assert scalar(replica, "SELECT count(*) FROM note") == 1
    assert replica.lag() == 0.0 and replica.status()["lag_commits"] == 0
    replica.shutdown()
    db.shutdown()


def _raises(call):
    try:
        call()
    except peewee.OperationalError:
        return True
    except sqlite3.OperationalError:
        return True
    return False


def test_the_replicas_own_file_is_replaced_and_a_writers_refused(tmp_path, file_storage):
    db = make_db(tmp_path / "w.db", file_storage)
    db.create_tables([Note])
    Note.create(body="stored")
    db.sync()
    (tmp_path / "r.db").write_bytes(b"an old cache")
    replica = make_replica(tmp_path / "r.db", file_storage)
    assert scalar(replica, "SELECT body FROM note") == "stored"
    with pytest.raises(ConfigurationError, match="another running replica"):
        make_replica(tmp_path / "r.db", file_storage).connect()
    with pytest.raises(ConfigurationError, match="writer's local file"):
        make_replica(tmp_path / "w.db", file_storage).connect()
    replica.shutdown()
    db.shutdown()


def test_shutdown_stops_following_and_connect_starts_again(tmp_path, file_storage):
    db = make_db(tmp_path / "w.db", file_storage, sync_mode="sync")
    db.create_tables([Note])
    replica = make_replica(tmp_path / "r.db", file_storage)
    replica.connect()
    follower = replica._follower
    assert follower._job is not None  # its polls are scheduled
    replica.shutdown()
    replica.shutdown()
    assert follower._job is None and replica.status()["open"] is False
    Note.create(body="while it was shut down")
    replica.connect()
    assert scalar(replica, "SELECT count(*) FROM note") == 1
    replica.shutdown()
    db.shutdown()


def test_shutdown_leaves_the_locks_of_readers_still_reading_the_copy(tmp_path, file_storage):
    """A thread still reads the copy when the replica shuts down: the read lock its connection
    holds must stay (closing any descriptor of the file drops the process's locks on it, and
    a replica process started next could then rewrite pages under that read)."""
    db = make_db(tmp_path / "w.db", file_storage, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="stored")
    replica = make_replica(tmp_path / "r.db", file_storage)
    replica.connect()
    reader = sqlite3.connect(str(tmp_path / "r.db"), isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM note").fetchone()[0] == 1  # holds SHARED
    replica.shutdown()
    other = multiprocessing.get_context("spawn").Pool(1)
    try:
        took = other.apply(_try_exclusive, (str(tmp_path / "r.db"),))
    finally:
        other.terminate()
    assert took is False, "another process took the copy's EXCLUSIVE lock under a reader"
    reader.execute("COMMIT")
    reader.close()
    db.shutdown()


def _try_exclusive(path):
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def test_a_replica_of_nothing_says_where_it_looked(tmp_path, file_storage):
    replica = make_replica(tmp_path / "r.db", file_storage, database_name="nothing-here")
    with pytest.raises(NothingToRestoreError, match="nothing-here"):
        replica.connect()
    assert replica.status()["open"] is False
    assert not os.path.exists(tmp_path / "r.db")


@pytest.mark.parametrize("options, message", [
    ({"sync_mode": "sync"}, "sync_mode only apply to the writer"),
    ({"poll_interval": 0}, "poll_interval=0 must be a positive"),
    ({"pragmas": {"journal_mode": "wal"}}, "journal_mode"),
    ({"database_name": None}, "database_name is required"),
])
def test_replica_options_are_checked(tmp_path, file_storage, options, message):
    with pytest.raises(ConfigurationError, match=message):
        make_replica(tmp_path / "r.db", file_storage, **options)


def test_a_failed_local_write_keeps_readers_out_until_a_fresh_restore(tmp_path, file_storage,
                                                                      monkeypatch):
    db = make_db(tmp_path / "w.db", file_storage, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="one")
    replica = make_replica(tmp_path / "r.db", file_storage, poll_interval=60, timeout=0.2)
    assert scalar(replica, "SELECT count(*) FROM note") == 1
    Note.create(body="two")

    def torn_write(commit, f, page_size):
        f.seek(0)
        f.write(b"\0" * page_size)  # page 1 wiped, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CommitRecord, "apply_to", torn_write)
    with pytest.raises(OSError, match="No space left"):
        replica.refresh()
    with pytest.raises(peewee.OperationalError, match="locked"):
        scalar(replica, "SELECT count(*) FROM note")  # it waits, it never reads the torn file
    monkeypatch.undo()
    replica.refresh()
    assert scalar(replica, "SELECT count(*) FROM note") == 2
    assert scalar(replica, "PRAGMA integrity_check") == "ok"
    replica.shutdown()
    db.shutdown()


def test_a_corrupt_segment_stops_the_replica_where_it_is(tmp_path, file_storage):
    db = make_db(tmp_path / "w.db", file_storage, sync_mode="sync")
    db.create_tables([Note])
    replica = make_replica(tmp_path / "r.db", file_storage, poll_interval=60)
    replica.connect()
    Note.create(body="damaged on its way")
    position = db.status()["position"]
    with open_storage(**file_storage) as storage:
        key = f"{NAME}/generations/{position['generation']}/wal/{position['seq']:010d}.seg"
        data = bytearray(storage.read(key))
        data[60] ^= 0xFF
        storage.write(key, bytes(data))
    with pytest.raises(ReplicaCorruptError, match="corrupt"):
        replica.refresh()
    assert "corrupt" in replica.status()["last_error"] and replica.lag() > 0
    assert scalar(replica, "SELECT count(*) FROM note") == 0  # the last good state, readable
    replica.shutdown()
    db.shutdown()


# -- a takeover's fence and a fenced writer's stray segment ---------------------------------

def test_a_replica_stops_at_a_takeovers_fence_and_follows_the_new_writer(tmp_path,
                                                                         file_storage):
    old = make_db(tmp_path / "old.db", file_storage, sync_mode="sync")
    old.create_tables([Note])
    Note.create(body="before the takeover")
    replica = make_replica(tmp_path / "r.db", file_storage, poll_interval=60)
    replica.connect()
    generation = old.status()["generation"]
    with open_storage(**file_storage) as storage:  # a new holder's first step
        fence_generation(storage, Layout(NAME), generation,
                         segment_sizes(storage, Layout(NAME), generation), epoch=99,
                         holder_id="f" * 16)
    status = replica.refresh()
    assert status["last_error"] is None and status["generation"] == generation
    assert notes(replica) == ["before the takeover"]
    new = make_db(tmp_path / "new.db", file_storage, sync_mode="sync", force_lock=True)
    Note.bind(new)
    Note.create(body="after the takeover")
    assert replica.refresh()["generation"] == new.status()["generation"]
    assert notes(replica) == ["after the takeover", "before the takeover"]
    for db in (replica, new, old):
        db.shutdown()


META_DELAY = 2.5  # how long the new writer's snapshot meta is held up on its way to the bucket


@pytest.fixture
def proxied_moto(moto_endpoint, make_bucket, s3_kwargs):
    """(proxy, a bucket's kwargs through the proxy, the same bucket's kwargs straight to moto)."""
    direct = s3_kwargs(moto_endpoint, make_bucket(moto_endpoint))
    with FaultProxy(moto_endpoint) as proxy:
        yield proxy, {**direct, "endpoint_url": proxy.url}, direct


def test_a_fenced_writers_stray_segment_never_shows_on_a_replica(tmp_path, proxied_moto):
    proxy, through_proxy, direct = proxied_moto
    old = make_db(tmp_path / "old.db", direct, sync_mode="sync")
    old.create_tables([Note])
    Note.create(body="before the takeover")
    replica = make_replica(tmp_path / "r.db", direct)
    new = make_db(tmp_path / "new.db", through_proxy, force_lock=True, sync_mode="sync")
    late = make_replica(tmp_path / "late.db", direct)
    seen, stop = set(), threading.Event()
    watcher = threading.Thread(target=watch_rows, args=(replica, seen, stop))
    watcher.start()
    try:
        taking_over = stray_lands_during_a_takeover(old, new, proxy, direct, tmp_path)
        replica.refresh()
        during = notes(replica)
        late_during = notes(late)  # a replica started while the stray is there
        taking_over.join()
        wait_until(lambda: replica.status()["generation"] == new.status()["generation"],
                   "the new writer's generation")
        after = notes(replica)
        Note.bind(new)
        Note.create(body="after the takeover")
        wait_until(lambda: "after the takeover" in seen, "the new writer's row")
        wait_until(lambda: "after the takeover" in notes(late), "the new writer's row")
        late_after = notes(late)
    finally:
        stop.set()
        watcher.join()
        for db in (late, replica, old, new):
            db.shutdown()

    assert during == late_during == after == ["before the takeover"]
    assert "stray" not in seen
    assert late_after == ["after the takeover", "before the takeover"]


def stray_lands_during_a_takeover(old, new, proxy, storage_kwargs, tmp_path):
    """`new` takes the lease over from `old` (force_lock), fences the old generation and reads
    it; while its snapshot meta is held up, the old writer's delayed upload comes for the next
    key of the old generation with the old epoch. The fence refuses it; it lands all the same,
    as on a server that ignores If-None-Match on the request completing a multipart upload.
    Returns the thread that is connecting the new writer."""
    position = old.status()["position"]
    with open_storage(**storage_kwargs) as storage:
        old_epoch = read_lease(storage, Layout(NAME).lock).epoch
        proxy.fail_next("slow", method="PUT", path="snapshot.meta.json", delay=META_DELAY)
        taking_over = threading.Thread(target=new.connect)
        taking_over.start()
        wait_for(lambda: proxy.counts["slow"], "the new writer's snapshot meta on its way")
        seq = position["seq"] + 1
        key = Layout(NAME).segment(position["generation"], seq)
        stray = stray_segment(storage, position["generation"], seq, old_epoch, "stray", tmp_path)
        with pytest.raises(PreconditionFailedError):
            storage.create(key, stray)            # the new writer's fence holds the key
        storage.write(key, stray)
    return taking_over


def stray_segment(storage, generation, seq, epoch, body, work_dir):
    """The segment a fenced writer's delayed upload lands: `generation` through `seq - 1` plus
    one row, encoded with the package's own Segment, as that writer would have shipped it."""
    before, after = work_dir / "stray-before.db", work_dir / "stray-after.db"
    restore_to(storage, Layout(NAME), str(before), generation=generation)
    shutil.copyfile(before, after)
    conn = sqlite3.connect(str(after))
    conn.execute("INSERT INTO note (body) VALUES (?)", (body,))
    conn.commit()
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()  # the last connection checkpoints: the file holds the commit
    old, new = before.read_bytes(), after.read_bytes()
    pages = {n // page_size + 1: new[n:n + page_size] for n in range(0, len(new), page_size)
             if new[n:n + page_size] != old[n:n + page_size]}
    commit = CommitRecord(time.time(), len(new) // page_size, pages)
    return Segment(generation, seq, epoch, page_size, (commit,)).encode()


def notes(replica):
    return sorted(row[0] for row in replica.execute_sql("SELECT body FROM note").fetchall())


def watch_rows(replica, seen, stop):
    """Read the replica as an application does, noting every row it ever shows."""
    while not stop.is_set():
        seen.update(notes(replica))
        replica.close()
        time.sleep(0.002)


def wait_for(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"no sign of {what} within {WAIT} s")
        time.sleep(0.005)
