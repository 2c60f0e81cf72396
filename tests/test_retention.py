"""Retention: only whole generations older than the policy go; current and newest never do."""
import re
import time

import pytest

from peewee_s3 import restore
from peewee_s3.errors import ConfigurationError, NothingToRestoreError, StorageError
from peewee_s3.layout import Layout, new_generation_id
from peewee_s3.lease import LeaseRecord
from peewee_s3.restore import complete_generations
from peewee_s3.retention import generation_time, plan_prune, prune, stored_generations
from peewee_s3.snapshots import SnapshotMeta
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, make_db, rows_in_file

LAYOUT = Layout(NAME)
HOUR = 3600.0
NOW = 1_800_000_000.0


def meta(created_at, generation=None):
    generation = generation or new_generation_id(created_at)
    return SnapshotMeta(generation, 10, "0" * 64, 4096, created_at, 1)


def hours_ago(*hours):
    return [meta(NOW - h * HOUR) for h in hours]


def test_generations_older_than_the_policy_go_and_the_newest_stay():
    metas = hours_ago(50, 40, 30, 20, 1)
    doomed = plan_prune(metas, metas[-1].generation, keep_generations=2, max_age=24 * HOUR,
                        now=NOW)
    # The third is 30 h old, but its states reach until 20 h ago: within the day, so it stays.
    assert doomed == [m.generation for m in metas[:2]]


def test_at_least_keep_generations_stay_however_old():
    metas = hours_ago(50, 40, 30)
    assert plan_prune(metas, None, keep_generations=3, max_age=0, now=NOW) == []
    assert plan_prune(metas, None, keep_generations=1, max_age=0, now=NOW) == [
        m.generation for m in metas[:2]]


def test_the_current_generation_and_everything_after_it_stay():
    metas = hours_ago(50, 40, 30, 20)
    doomed = plan_prune(metas, metas[1].generation, keep_generations=1, max_age=0, now=NOW)
    assert doomed == [metas[0].generation]


def test_no_max_age_keeps_every_complete_generation_but_not_abandoned_uploads():
    metas = hours_ago(50, 40)
    abandoned, uploading = new_generation_id(NOW - 2 * HOUR), new_generation_id(NOW - 60)
    doomed = plan_prune(metas, None, incomplete=[abandoned, uploading], keep_generations=1,
                        max_age=None, now=NOW)
    assert doomed == [abandoned]


def test_an_incomplete_current_generation_is_never_an_abandoned_upload():
    current = new_generation_id(NOW - 5 * HOUR)
    assert plan_prune([], current, incomplete=[current], now=NOW) == []


@pytest.mark.parametrize("policy", [{"keep_generations": 0}, {"keep_generations": 1.5},
                                    {"max_age": -1}, {"max_age": "1d"}])
def test_a_policy_that_could_delete_everything_is_refused(policy):
    with pytest.raises(ConfigurationError, match=next(iter(policy))):
        plan_prune(hours_ago(3, 2, 1), None, now=NOW, **policy)


def test_generation_ids_tell_when_they_were_made():
    assert generation_time(new_generation_id(NOW + 0.25)) == NOW + 0.25


def store_generation(storage, created_at, segments=2, complete=True):
    m = meta(created_at)
    storage.write(LAYOUT.snapshot(m.generation), b"snapshot")
    for seq in range(1, segments + 1):
        storage.write(LAYOUT.segment(m.generation, seq), b"segment")
    if complete:
        storage.write(LAYOUT.snapshot_meta(m.generation), m.to_bytes())
    return m.generation


def set_current(storage, generation):
    now = time.time()
    record = LeaseRecord("holder", "host", 1, 1, generation, now, now + 60)
    storage.write(LAYOUT.lock, record.to_bytes())


def test_prune_deletes_whole_generations_and_a_dry_run_nothing(storage):
    now = time.time()
    old, older_current, newer, newest = (store_generation(storage, now - h * HOUR)
                                         for h in (30, 28, 26, 25))
    abandoned = store_generation(storage, now - 2 * HOUR, complete=False)
    set_current(storage, older_current)
    before = storage.list(LAYOUT.generations)

    planned = prune(storage, LAYOUT, keep_generations=1, max_age=HOUR, dry_run=True, now=now)
    assert [(p.generation, p.complete, p.objects) for p in planned] == [
        (old, True, 4), (abandoned, False, 3)]
    assert storage.list(LAYOUT.generations) == before

    assert prune(storage, LAYOUT, keep_generations=1, max_age=HOUR, now=now) == planned
    assert [g.id for g in stored_generations(storage, LAYOUT)] == [older_current, newer, newest]


class FailingAfter:
    """A storage whose deletes fail after the first `n`."""

    def __init__(self, storage, n):
        self._storage, self._left = storage, n

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def delete(self, key):
        if self._left == 0:
            raise StorageError(f"cannot delete {key}")
        self._left -= 1
        self._storage.delete(key)


def test_a_prune_that_stops_half_way_leaves_an_incomplete_generation_that_the_next_removes(
        storage):
    now = time.time()
    half = store_generation(storage, now - 3 * HOUR)
    kept = store_generation(storage, now - 2 * HOUR)
    with pytest.raises(StorageError):
        prune(FailingAfter(storage, 1), LAYOUT, keep_generations=1, max_age=0)
    assert [m.generation for m in complete_generations(storage, LAYOUT)] == [kept]
    assert [g.complete for g in stored_generations(storage, LAYOUT)] == [False, True]

    pruned = prune(storage, LAYOUT, keep_generations=1, max_age=0)
    assert [(p.generation, p.complete) for p in pruned] == [(half, False)]
    assert [g.id for g in stored_generations(storage, LAYOUT)] == [kept]


def test_a_point_in_time_that_was_pruned_is_refused_naming_the_oldest_kept(tmp_path):
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="pruned away")
    moment = time.time()
    time.sleep(0.01)
    for body in ("one", "two", "three"):
        db.snapshot()
        Note.create(body=body)
    with open_storage(**storage_kwargs) as storage:
        pruned = prune(storage, LAYOUT, keep_generations=2, max_age=0)
    assert len(pruned) == 2 and db.status()["generation"] not in {p.generation for p in pruned}

    with pytest.raises(NothingToRestoreError, match="the oldest available is"):
        restore(target=str(tmp_path / "then.db"), database_name=NAME, timestamp=moment,
                **storage_kwargs)
    restore(target=str(tmp_path / "now.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "now.db") == ["one", "pruned away", "three", "two"]
    db.shutdown()


def test_the_oldest_time_a_refusal_names_can_be_restored_to(tmp_path):
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="pruned away")
    moment = time.time()
    time.sleep(0.01)
    for body in ("one", "two"):
        db.snapshot()
        Note.create(body=body)
    with open_storage(**storage_kwargs) as storage:
        assert len(prune(storage, LAYOUT, keep_generations=2, max_age=0)) == 1
    with pytest.raises(NothingToRestoreError) as refused:
        restore(target=str(tmp_path / "then.db"), database_name=NAME, timestamp=moment,
                **storage_kwargs)

    oldest = re.search(r"Restore to (\S+) or later", str(refused.value))[1]
    restore(target=str(tmp_path / "oldest.db"), database_name=NAME, timestamp=oldest,
            **storage_kwargs)
    assert rows_in_file(tmp_path / "oldest.db") == ["pruned away"]
    db.shutdown()


def test_the_writer_prunes_old_generations_by_itself(tmp_path):
    from .helpers import Note, make_db, stored_keys
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, retention_generations=2, retention_age=0.01,
                 sync_interval=0.05)
    db.create_tables([Note])
    for i in range(4):
        Note.create(body=str(i))
        db.snapshot()
        time.sleep(0.05)
    db.prune()
    generations = {k.split("/")[2] for k in stored_keys(storage_kwargs) if "/generations/" in k}
    assert len(generations) == 2
    assert db.status()["generation"] in generations
    db.shutdown()
