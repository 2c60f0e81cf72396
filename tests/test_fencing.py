"""Two writers on one database: the second waits or is refused; a writer taken over is fenced."""
import threading
import time

import pytest

from peewee_s3 import restore
from peewee_s3.errors import LeaseHeldError, LeaseLostError

from .faultproxy import FaultProxy
from .helpers import NAME, Note, bodies, make_db, rows_in_file, stored_keys


def test_a_second_writer_is_refused_until_the_first_shuts_down(tmp_path, storage_kwargs):
    first = make_db(tmp_path / "a.db", storage_kwargs)
    first.create_tables([Note])
    Note.create(body="first")
    second = make_db(tmp_path / "b.db", storage_kwargs)
    with pytest.raises(LeaseHeldError, match="held by"):
        second.connect()
    assert not (tmp_path / "b.db").exists()
    first.shutdown()
    assert bodies(second) == ["first"]
    second.shutdown()


def test_a_writer_taken_over_is_fenced_and_uploads_nothing_more(tmp_path, storage_kwargs):
    first = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    first.create_tables([Note])
    Note.create(body="before")
    old_generation = first.status()["generation"]
    second = make_db(tmp_path / "b.db", storage_kwargs, force_lock=True)
    second.connect()
    keys_after_takeover = stored_keys(storage_kwargs, f"{NAME}/generations/{old_generation}/")

    Note.bind(first)
    with pytest.raises(LeaseLostError, match="lost the lease"):
        Note.create(body="stale")
    with pytest.raises(LeaseLostError):
        Note.create(body="staler")
    assert first.status()["fenced"] is True
    first.shutdown()          # releases nothing, raises nothing

    assert stored_keys(storage_kwargs, f"{NAME}/generations/{old_generation}/") \
        == keys_after_takeover
    assert second.status()["generation"] != old_generation
    assert bodies(second) == ["before"]
    Note.create(body="second")
    second.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["before", "second"]


def test_an_async_writer_taken_over_is_fenced_at_its_next_shipment(tmp_path, storage_kwargs):
    first = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=30)
    first.create_tables([Note])
    Note.create(body="not shipped yet")
    second = make_db(tmp_path / "b.db", storage_kwargs, force_lock=True)
    second.connect()
    Note.bind(first)
    with pytest.raises(LeaseLostError):
        first.sync()
    with pytest.raises(LeaseLostError):
        Note.create(body="refused")
    first.shutdown()
    second.shutdown()


# -- sync mode: one request per commit, fenced by the new holder's fence ------------------------

@pytest.fixture(params=["moto", "seaweedfs"])
def proxied(request, make_bucket, s3_kwargs):
    """(proxy counting requests, a bucket's kwargs through it, the same bucket's kwargs)."""
    endpoint = request.getfixturevalue(f"{request.param.replace('seaweedfs', 'seaweed')}"
                                       "_endpoint")
    direct = s3_kwargs(endpoint, make_bucket(endpoint))
    with FaultProxy(endpoint) as proxy:
        yield proxy, {**direct, "endpoint_url": proxy.url}, direct


def insert(db, body):
    db.execute_sql("INSERT INTO note (body) VALUES (?)", (body,))


def test_a_force_takeover_during_sync_writing_fences_the_old_writer_at_its_next_commit(
        tmp_path, proxied):
    proxy, through_proxy, direct = proxied
    old = make_db(tmp_path / "old.db", through_proxy, sync_mode="sync", lock_ttl=600)
    old.create_tables([Note])
    before = dict(proxy.counts)
    for n in range(10):
        insert(old, f"old {n}")
    sent = {method: proxy.counts[method] - before.get(method, 0) for method in proxy.counts
            if proxy.counts[method] > before.get(method, 0)}
    assert sent == {"requests": 10, "PUT": 10}    # one request per sync commit: its segment

    acknowledged, failures, stop = [], [], threading.Event()

    def write_on():
        n = 10
        while not stop.is_set() and len(failures) < 3:
            try:
                insert(old, f"old {n}")
                acknowledged.append(f"old {n}")
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                failures.append((f"old {n}", exc))
            n += 1
            time.sleep(0.002)  # moto serves in this process: leave the new writer the GIL too

    writer = threading.Thread(target=write_on)
    writer.start()
    try:
        while len(acknowledged) < 5:
            time.sleep(0.001)
        new = make_db(tmp_path / "new.db", direct, sync_mode="sync", force_lock=True)
        new.connect()                             # while the old writer commits on
        taken_over = set(stored_keys(direct))
        writer.join(timeout=60)
    finally:
        stop.set()
        writer.join()

    assert len(failures) == 3 and all(isinstance(e, LeaseLostError) for _, e in failures), failures
    assert old.status()["fenced"] is True
    old.shutdown()
    assert set(stored_keys(direct)) == taken_over  # the fenced writer stored nothing more
    # Every commit it acknowledged is in the new writer's lineage; of those that raised, only
    # the first may be (stored, but the writer was fenced by a lease check before it could say).
    got = bodies(new)
    acknowledged = [f"old {n}" for n in range(10)] + acknowledged
    assert set(acknowledged) <= set(got)
    assert set(got) - set(acknowledged) <= {failures[0][0]}
    insert(new, "new")
    new.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **direct)
    assert rows_in_file(tmp_path / "r.db") == sorted(got + ["new"])
