"""The lease: one holder at a time, taken and renewed only with conditional writes."""
import threading
import time

import pytest

from peewee_s3.errors import LeaseHeldError, LeaseLostError, ReplicaCorruptError
from peewee_s3.lease import Lease, LeaseRecord, read_lease

KEY = "db/lock.json"


def lease(storage, **kwargs):
    return Lease(storage, KEY, kwargs.pop("ttl", 30), **kwargs)


def test_the_first_writer_takes_the_lease_and_a_second_is_told_who_holds_it(storage):
    first = lease(storage)
    assert first.acquire().epoch == 1
    with pytest.raises(LeaseHeldError) as info:
        lease(storage).acquire()
    assert first.holder_id in str(info.value) and "more seconds" in str(info.value)


def test_a_released_lease_goes_to_the_next_writer_with_a_higher_epoch(storage):
    first = lease(storage)
    first.acquire()
    first.release()
    second = lease(storage)
    assert second.acquire().epoch == 2
    assert second.previous.released and second.previous.holder_id == first.holder_id


def test_an_expired_lease_is_taken_over(storage):
    now = time.time()
    stale = LeaseRecord("zombie", "host", 1, 4, "gen", now - 100, now - 1)
    storage.create(KEY, stale.to_bytes())
    taker = lease(storage)
    record = taker.acquire()
    assert record.epoch == 5 and record.generation == "gen"
    assert not taker.previous.released


def test_force_takes_a_live_lease_and_the_old_holder_finds_out(storage):
    old = lease(storage)
    old.acquire()
    new = lease(storage, force=True)
    assert new.acquire().epoch == 2
    with pytest.raises(LeaseLostError, match="lost the lease"):
        old.check()
    with pytest.raises(LeaseLostError):
        old.renew()
    new.check()


def test_renewals_change_the_tag_but_not_the_holder(storage):
    holder = lease(storage)
    first = holder.acquire()
    renewed = holder.renew(generation="g2")
    assert renewed.expires_at >= first.expires_at and renewed.generation == "g2"
    holder.check()
    assert read_lease(storage, KEY).generation == "g2"


def test_a_waiting_writer_gets_the_lease_when_the_holder_lets_go(storage):
    holder = lease(storage)
    holder.acquire()
    threading.Timer(0.5, holder.release).start()
    waiter = lease(storage, wait=10)
    assert waiter.acquire().epoch == 2


def test_exactly_one_of_many_racers_wins(storage):
    results = []

    def race():
        try:
            lease(storage).acquire()
            results.append("won")
        except LeaseHeldError:
            results.append("held")

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["held"] * 7 + ["won"]


@pytest.mark.parametrize("content, words", [
    (b"not json", "not a peewee-s3 lease"),
    (b'{"holder": "litestream"}', "not a peewee-s3 lease"),
    (b'{"format": 99}', "lease format 99"),
])
def test_a_foreign_lock_file_is_refused_clearly(storage, content, words):
    storage.create(KEY, content)
    with pytest.raises(ReplicaCorruptError, match=words):
        lease(storage).acquire()
