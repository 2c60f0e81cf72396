"""Fences: the object a new lease holder puts at the next segment key of the generation it
continues from. It holds the key against the old writer, ends the lineage there, and every
reader stops at it instead of taking it for a damaged segment."""
import time

import pytest

from peewee_s3 import restore
from peewee_s3.config import Options
from peewee_s3.errors import LeaseLostError, PreconditionFailedError, ReplicaCorruptError
from peewee_s3.fence import Fence, fence_generation, lineage_end, read_fence
from peewee_s3.layout import Layout
from peewee_s3.lease import read_lease
from peewee_s3.restore import read_plan, segment_sizes
from peewee_s3.session import open_session
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, bodies, make_db, rows_in_file

LAYOUT = Layout(NAME)


def written(tmp_path, storage_kwargs, rows=3, **options):
    """A sync writer that stored `rows` segments and is left running (not released)."""
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync", **options)
    db.create_tables([Note])
    for n in range(rows):
        Note.create(body=f"row {n}")
    return db


def fence(storage, generation, listed=None, epoch=99):
    if listed is None:
        listed = segment_sizes(storage, LAYOUT, generation)
    return fence_generation(storage, LAYOUT, generation, listed, epoch=epoch,
                            holder_id="f" * 16)


def test_a_fence_takes_the_next_key_and_the_old_writers_next_commit_fails(tmp_path,
                                                                         storage_kwargs):
    db = written(tmp_path, storage_kwargs)
    generation, seq = db.status()["generation"], db.status()["position"]["seq"]
    with open_storage(**storage_kwargs) as storage:
        assert fence(storage, generation) == seq
        assert read_fence(storage, LAYOUT.segment(generation, seq + 1)).epoch == 99
        with pytest.raises(LeaseLostError, match="fence"):
            Note.create(body="refused")
        assert db.status()["fenced"] is True
        assert [s for s, _ in segment_sizes(storage, LAYOUT, generation)] \
            == list(range(1, seq + 2))       # the segments, then the fence: no gap
    db.shutdown()


def test_a_generation_fenced_already_gets_no_second_fence(tmp_path, storage_kwargs):
    db = written(tmp_path, storage_kwargs)
    generation, seq = db.status()["generation"], db.status()["position"]["seq"]
    db.shutdown()
    with open_storage(**storage_kwargs) as storage:
        assert fence(storage, generation) == seq
        assert fence(storage, generation, epoch=100) == seq
        listed = segment_sizes(storage, LAYOUT, generation)
        assert listed[-1][0] == seq + 1
        assert read_fence(storage, LAYOUT.segment(generation, seq + 1)).epoch == 99


def test_segments_that_land_while_fencing_are_in_the_lineage(tmp_path, storage_kwargs):
    """The listing lags behind a writer that keeps committing: the fence goes to the first
    key that is free, and what landed before it counts."""
    db = written(tmp_path, storage_kwargs)
    generation = db.status()["generation"]
    with open_storage(**storage_kwargs) as storage:
        stale = segment_sizes(storage, LAYOUT, generation)
        Note.create(body="landed while fencing")
        Note.create(body="this one too")
        end = fence(storage, generation, listed=stale)
        assert end == stale[-1][0] + 2
        assert read_fence(storage, LAYOUT.segment(generation, end + 1)) is not None
    with pytest.raises(LeaseLostError):
        Note.create(body="refused")
    db.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, generation=generation,
            **storage_kwargs)
    assert "this one too" in rows_in_file(tmp_path / "r.db")
    assert "refused" not in rows_in_file(tmp_path / "r.db")


def test_a_racing_holders_fence_among_the_taken_keys_ends_the_lineage(tmp_path,
                                                                     storage_kwargs):
    db = written(tmp_path, storage_kwargs)
    generation, seq = db.status()["generation"], db.status()["position"]["seq"]
    db.shutdown()
    with open_storage(**storage_kwargs) as storage:
        stale = [entry for entry in segment_sizes(storage, LAYOUT, generation)
                 if entry[0] < seq]           # listed before the last segment landed
        storage.create(LAYOUT.segment(generation, seq + 1),
                       Fence(generation, seq + 1, 98, "e" * 16, 0.0).encode())
        assert fence(storage, generation, listed=stale) == seq


def test_restores_of_a_generation_that_ends_in_a_fence_stop_before_it(tmp_path,
                                                                      storage_kwargs):
    """The window in which the new holder has fenced but not yet completed a generation of its
    own (or died first): lock.json still names the fenced one."""
    db = written(tmp_path, storage_kwargs)
    generation, seq = db.status()["generation"], db.status()["position"]["seq"]
    db.shutdown()
    with open_storage(**storage_kwargs) as storage:
        fence(storage, generation)
        assert lineage_end(storage, LAYOUT, generation,
                           segment_sizes(storage, LAYOUT, generation)) == seq
        assert read_plan(storage, LAYOUT, generation, None)[-1][1] == seq
    state = restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert (state.generation, state.seq) == (generation, seq)
    assert rows_in_file(tmp_path / "r.db") == ["row 0", "row 1", "row 2"]


def test_a_released_generation_that_ends_in_a_fence_is_not_carried_on(tmp_path,
                                                                      storage_kwargs):
    """A holder that fenced and then released without a generation of its own (its connect
    failed): the next one must start a new generation, not write at the fence's key."""
    db = written(tmp_path, storage_kwargs)
    generation = db.status()["generation"]
    db.shutdown()                             # released: a clean handover
    with open_storage(**storage_kwargs) as storage:
        fence(storage, generation)
    again = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    Note.bind(again)
    Note.create(body="after the fence")
    assert again.status()["generation"] != generation
    assert bodies(again) == ["after the fence", "row 0", "row 1", "row 2"]
    again.shutdown()


def test_a_fence_is_never_read_as_a_segment_and_damage_to_one_is_named(storage):
    key = LAYOUT.segment("20261125T155617190454Z-9d3c7259", 4)
    good = Fence("20261125T155617190454Z-9d3c7259", 4, 7, "a" * 16, 1.5).encode()
    assert Fence.decode(good, key).epoch == 7
    assert Fence.decode(b"PWS3SEG1" + bytes(40), key) is None       # a segment's magic
    with pytest.raises(ReplicaCorruptError, match="fence .* is corrupt"):
        Fence.decode(good[:-1] + bytes([good[-1] ^ 1]), key)
    with pytest.raises(ReplicaCorruptError, match="wrong place"):
        Fence.decode(good, LAYOUT.segment("20261125T155617190454Z-9d3c7259", 5))
    storage.create(key, good)
    with pytest.raises(PreconditionFailedError):
        storage.create(key, b"PWS3SEG1 a late segment")


def test_a_holder_that_took_over_and_gave_up_does_not_hand_the_generation_on(tmp_path,
                                                                            storage_kwargs):
    """Its connect failed after the takeover (here: the app's check of the restored file): a
    clean release would let the next holder carry on where the old writer may still write,
    so the lease is left expired instead, and the next holder fences again."""
    db = written(tmp_path, storage_kwargs)

    def refuse(conn):
        raise RuntimeError("the app refuses this file")

    options = Options(**storage_kwargs, database_name=NAME, force_lock=True)
    with pytest.raises(RuntimeError, match="refuses"):
        open_session(str(tmp_path / "b.db"), options, refuse)
    with open_storage(**storage_kwargs) as storage:
        lease = read_lease(storage, LAYOUT.lock)
    assert not lease.released and not lease.is_live(time.time())
    with pytest.raises(LeaseLostError):
        Note.create(body="refused")               # the old writer is fenced all the same
    db.shutdown()
