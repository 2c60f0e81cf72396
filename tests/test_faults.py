"""Storage that fails: 500/503, slow answers and dropped connections between us and the server.

A fault proxy (tests/faultproxy.py) sits in front of moto's server or SeaweedFS. Async mode keeps
accepting writes and catches up once the faults stop; sync mode either acknowledges a write or
raises StorageError for it, and nothing acknowledged is lost.
"""
import time

import pytest

from peewee_s3 import restore
from peewee_s3.errors import StorageError
from peewee_s3.storage import RETRIES

from .faultproxy import KINDS, FaultProxy
from .helpers import NAME, Note, bodies, make_db, rows_in_file

CATCH_UP_TIMEOUT = 20.0
WRITE_PAUSE = 0.002      # between async writes, so that the replicator ships many times


@pytest.fixture(params=["moto", "seaweedfs"])
def proxied(request, make_bucket, s3_kwargs):
    """(proxy, storage kwargs through the proxy, storage kwargs straight to the server)."""
    endpoint = request.getfixturevalue(f"{request.param}_endpoint" if request.param == "moto"
                                       else "seaweed_endpoint")
    direct = s3_kwargs(endpoint, make_bucket(endpoint))
    with FaultProxy(endpoint, seed=len(request.node.name)) as proxy:
        yield proxy, {**direct, "endpoint_url": proxy.url}, direct


def restored_bodies(tmp_path, storage_kwargs):
    target = tmp_path / "restored.db"
    restore(target=str(target), database_name=NAME, **storage_kwargs)
    return rows_in_file(target)


def wait_caught_up(db, timeout=CATCH_UP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = db.status()
        if status["pending_commits"] == 0 and status["last_error"] is None:
            return
        time.sleep(0.05)
    raise AssertionError(f"the replicator did not catch up in {timeout} s: {db.status()}")


def write_async_under_faults(tmp_path, proxied, writes, min_faults, rate=0.1, delay=0.2):
    """Write at least `writes` rows, and on until `min_faults` faults were injected."""
    proxy, through_proxy, direct = proxied
    db = make_db(tmp_path / "a.db", through_proxy, sync_interval=0.05)
    db.create_tables([Note])
    proxy.set_faults(rate, KINDS, delay=delay)
    expected = []
    try:
        while len(expected) < writes or proxy.faults_injected() < min_faults:
            body = f"row {len(expected)}"
            if len(expected) % 5 == 0:
                with db.atomic():
                    Note.create(body=body)
            else:
                Note.create(body=body)   # async mode: never blocks on, nor fails for, storage
            expected.append(body)
            time.sleep(WRITE_PAUSE)
        proxy.clear()
        wait_caught_up(db)
        db.sync()
    finally:
        proxy.clear()
        db.shutdown()
    assert restored_bodies(tmp_path, direct) == sorted(expected)
    return len(expected), dict(proxy.counts)


def write_sync_under_faults(tmp_path, proxied, writes, min_faults, rate=0.1, delay=0.2):
    proxy, through_proxy, direct = proxied
    db = make_db(tmp_path / "a.db", through_proxy, sync_mode="sync")
    db.create_tables([Note])
    proxy.set_faults(rate, KINDS, delay=delay)
    acknowledged, refused = [], []
    try:
        while len(acknowledged) + len(refused) < writes or proxy.faults_injected() < min_faults:
            body = f"row {len(acknowledged) + len(refused)}"
            try:
                Note.create(body=body)
            except StorageError:
                refused.append(body)     # the commit is in the local file, not yet stored
            else:
                acknowledged.append(body)
        proxy.clear()
        db.sync()
    finally:
        proxy.clear()
        db.shutdown()
    restored = restored_bodies(tmp_path, direct)
    assert set(acknowledged) <= set(restored)
    assert restored == sorted(acknowledged + refused)   # and once faults stop, everything ships
    return acknowledged, refused, dict(proxy.counts)


@pytest.mark.parametrize("proxied", ["moto"], indirect=True)   # both servers: the soak below
def test_async_writes_go_on_under_faults_and_catch_up_after(tmp_path, proxied):
    write_async_under_faults(tmp_path, proxied, writes=300, min_faults=8)


@pytest.mark.parametrize("proxied", ["seaweedfs"], indirect=True)
def test_sync_writes_are_acknowledged_or_refused_and_none_acknowledged_is_lost(tmp_path,
                                                                               proxied):
    write_sync_under_faults(tmp_path, proxied, writes=30, min_faults=8)


@pytest.mark.slow
def test_async_soak_thousands_of_writes_at_ten_percent_faults(tmp_path, proxied):
    writes, counts = write_async_under_faults(tmp_path, proxied, writes=5000, min_faults=300,
                                              delay=0.5)
    print(f"async soak: {writes} writes, all restored (0 lost); proxy: {counts}")


@pytest.mark.slow
def test_sync_soak_a_thousand_writes_at_ten_percent_faults(tmp_path, proxied):
    acknowledged, refused, counts = write_sync_under_faults(tmp_path, proxied, writes=1000,
                                                            min_faults=200, delay=0.5)
    print(f"sync soak: {len(acknowledged)} acknowledged, {len(refused)} refused, 0 lost; "
          f"proxy: {counts}")


# -- one fault at a precise place: a request the server carried out whose answer was lost ------

def test_a_segment_upload_whose_answer_was_lost_does_not_block_shipping(tmp_path, proxied):
    proxy, through_proxy, direct = proxied
    db = make_db(tmp_path / "a.db", through_proxy, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="before")
    proxy.fail_next("drop_response", method="PUT", path="/wal/")
    try:
        Note.create(body="answer lost")   # stored; whether it is acknowledged is up to the library
    except StorageError:
        pass
    Note.create(body="after")            # no fault any more: this must be acknowledged
    db.sync()
    db.shutdown()
    assert restored_bodies(tmp_path, direct) == ["after", "answer lost", "before"]


def test_a_lease_taken_whose_answer_was_lost_is_still_ours(tmp_path, proxied):
    proxy, through_proxy, direct = proxied
    proxy.fail_next("drop_response", method="PUT", path="lock.json")
    db = make_db(tmp_path / "a.db", through_proxy)
    db.create_tables([Note])             # connects: takes the lease
    Note.create(body="first")
    db.shutdown()
    assert restored_bodies(tmp_path, direct) == ["first"]


def test_a_snapshot_meta_whose_answer_was_lost_leaves_one_lineage(tmp_path, proxied):
    """The meta was stored, so that generation is complete: point-in-time restores must still
    find every commit made after it."""
    proxy, through_proxy, direct = proxied
    db = make_db(tmp_path / "a.db", through_proxy, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="one")
    # The first attempt stores the meta but its answer is lost; every retry then fails.
    proxy.fail_next("drop_response", method="PUT", path="snapshot.meta.json")
    proxy.fail_next("500", 100, method="PUT", path="snapshot.meta.json")
    with pytest.raises(StorageError):
        db.snapshot()
    proxy.clear()
    Note.create(body="two")
    after_two = time.time()
    time.sleep(0.05)
    db.snapshot()
    Note.create(body="three")
    db.shutdown()
    assert restored_bodies(tmp_path, direct) == ["one", "three", "two"]
    target = tmp_path / "at.db"
    restore(target=str(target), database_name=NAME, timestamp=after_two, **direct)
    assert rows_in_file(target) == ["one", "two"]


@pytest.mark.parametrize("proxied", ["moto"], indirect=True)
def test_a_failed_connect_whose_lease_was_stored_does_not_block_the_next(tmp_path, proxied):
    """Taking the lease is stored, but the answer to it and to every retry is a 500: connect
    fails, and must not leave a live lease of its own that refuses the next connect for
    lock_ttl seconds."""
    proxy, through_proxy, direct = proxied
    attempts = RETRIES["total_max_attempts"]
    proxy.fail_next("500_after", attempts, method="PUT", path="lock.json")
    with pytest.raises(StorageError):
        make_db(tmp_path / "a.db", through_proxy).connect()
    assert proxy.counts["500_after"] == attempts
    db = make_db(tmp_path / "a.db", through_proxy)
    db.connect()                          # lock_wait=0: fails at once if the lease is held
    db.shutdown()


@pytest.mark.parametrize("proxied, attempts", [
    ("moto", 3),
    pytest.param("moto", 20, marks=pytest.mark.slow),
    pytest.param("seaweedfs", 20, marks=pytest.mark.slow),
], indirect=["proxied"])
def test_connecting_under_faults_either_works_or_fails_cleanly(tmp_path, proxied, attempts):
    """Each attempt restores and takes the lease, or raises StorageError leaving no local file
    and no live lease behind: once the faults stop, the next attempt connects at once."""
    proxy, through_proxy, direct = proxied
    writer = make_db(tmp_path / "w.db", direct, sync_mode="sync")
    writer.create_tables([Note])
    for body in ("one", "two", "three"):
        Note.create(body=body)
    writer.shutdown()
    outcomes = []
    for attempt in range(attempts):
        path = tmp_path / f"a{attempt}.db"
        db = make_db(path, through_proxy)
        proxy.set_faults(0.3, ["500", "drop", "drop_response"])
        try:
            db.connect()
            outcomes.append("connected")
        except StorageError:
            outcomes.append("refused")
            assert not path.exists(), "a failed connect left a local file"
            db = make_db(path, through_proxy)
        finally:
            proxy.clear()
        assert bodies(db) == ["one", "three", "two"]   # no fault now, and no lease in the way
        db.shutdown()
    assert proxy.faults_injected() > 0, outcomes
    print(f"connect under 30% faults: {outcomes.count('connected')} connected, "
          f"{outcomes.count('refused')} refused cleanly")
