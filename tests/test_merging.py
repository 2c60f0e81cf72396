"""Merged segments: the same file as their segments, stored by the writer, read by restore."""
import logging
import random
import time

import pytest

from peewee_s3 import merging, restore
from peewee_s3.errors import ReplicaCorruptError
from peewee_s3.layout import Layout
from peewee_s3.merging import Merger
from peewee_s3.restore import read_plan
from peewee_s3.segments import CommitRecord, PageWriter, Segment
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, make_db, rows_in_file, stored_keys

PAGE = 512


def random_segments(rng, count, generation="g"):
    """Segments of random commits that write pages, grow the database and shrink it."""
    segments, db_pages = [], 8
    for seq in range(1, count + 1):
        commits = []
        for _ in range(rng.randint(1, 3)):
            db_pages = max(1, db_pages + rng.choice([-3, -1, 0, 0, 1, 2, 4]))
            pages = {pgno: bytes([rng.randrange(256)]) * PAGE
                     for pgno in rng.sample(range(1, db_pages + 1), min(db_pages, 3))}
            commits.append(CommitRecord(float(seq), db_pages, pages))
        segments.append(Segment(generation, seq, 1, PAGE, tuple(commits)))
    return segments


def applied(tmp_path, name, segments):
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * (8 * PAGE // 256))
    with open(path, "r+b") as f:
        for segment in segments:
            for commit in segment.commits:
                commit.apply_to(f, PAGE)
    return path.read_bytes()


@pytest.mark.parametrize("seed", range(20))
def test_a_merged_segment_leaves_the_file_as_its_segments_do(tmp_path, seed, monkeypatch):
    monkeypatch.setattr(merging, "MERGE_SEGMENTS", 12)
    segments = random_segments(random.Random(seed), 12)
    merger = Merger()
    for segment in segments:
        merger.add(segment)
    merged = Segment.decode(merger.take()[0].encode(), "k")
    assert (merged.first_seq, merged.seq) == (1, 12)
    assert len(merged.commits) == sum(len(s.commits) for s in segments)
    assert applied(tmp_path, "one-by-one", segments) == applied(tmp_path, "merged", [merged])


@pytest.mark.parametrize("seed", range(5))
def test_the_page_writer_leaves_the_file_as_apply_to_does(tmp_path, seed):
    segments = random_segments(random.Random(seed), 30)
    path = tmp_path / "written"
    path.write_bytes(bytes(range(256)) * (8 * PAGE // 256))
    with open(path, "r+b") as f:
        pages = PageWriter(f, PAGE)
        for segment in segments:
            for commit in segment.commits:
                pages.apply(commit)
        pages.finish()
    assert path.read_bytes() == applied(tmp_path, "applied", segments)


def test_merging_is_due_after_enough_segments_or_bytes(monkeypatch):
    segments = random_segments(random.Random(1), 6)
    monkeypatch.setattr(merging, "MERGE_SEGMENTS", 4)
    merger = Merger()
    for segment in segments[:3]:
        merger.add(segment)
    assert not merger.due
    merger.add(segments[3])
    assert merger.due
    merger.take()
    assert not merger.due
    monkeypatch.setattr(merging, "MERGE_BYTES", 3 * PAGE)
    merger = Merger()
    two_pages = {1: b"a" * PAGE, 2: b"b" * PAGE}
    merger.add(Segment("g", 5, 1, PAGE, (CommitRecord(5.0, 8, two_pages),)))
    assert not merger.due
    merger.add(Segment("g", 6, 1, PAGE, (CommitRecord(6.0, 8, {3: b"c" * PAGE}),)))
    assert merger.due  # 3 pages held, though each segment is small


def test_a_large_segment_is_not_merged(monkeypatch):
    monkeypatch.setattr(merging, "MERGE_BYTES", 4 * PAGE)
    merger = Merger()
    small = Segment("g", 1, 1, PAGE, (CommitRecord(1.0, 4, {1: b"a" * PAGE}),))
    large = Segment("g", 2, 1, PAGE, (CommitRecord(2.0, 4, {p: b"b" * PAGE for p in (1, 2, 3, 4)}),))
    merger.add(small)
    merger.add(large)
    merger.add(Segment("g", 3, 1, PAGE, small.commits))
    merger.add(Segment("g", 4, 1, PAGE, small.commits))
    merged, _ = merger.take()
    assert (merged.first_seq, merged.seq) == (3, 4)  # the run starts again after it


def test_a_segment_that_does_not_follow_starts_a_new_run(monkeypatch):
    monkeypatch.setattr(merging, "MERGE_SEGMENTS", 2)
    merger = Merger()
    first, _, third = random_segments(random.Random(2), 3)
    merger.add(first)
    merger.add(third)
    merger.add(Segment("g", 4, 1, PAGE, third.commits))
    assert merger.take()[0].first_seq == 3


def merge_as_the_writer_does(merger, segments):
    """Add each segment, then store what is due as the replicator does: the merged segments
    in the order they would be stored."""
    stored = []
    for segment in segments:
        merger.add(segment, 100)
        while merger.due:
            merged, _ = merger.take()
            stored.append(merged)
            merger.stored(merged, 10)
    return stored


def test_merged_segments_are_merged_again_level_by_level(tmp_path, monkeypatch):
    monkeypatch.setattr(merging, "FANOUT", 2)
    monkeypatch.setattr(merging, "MERGE_SEGMENTS", 8)
    segments = random_segments(random.Random(3), 8)
    stored = merge_as_the_writer_does(Merger(), segments)
    assert [(m.first_seq, m.seq) for m in stored] == [
        (1, 2), (3, 4), (1, 4), (5, 6), (7, 8), (5, 8), (1, 8)]
    top = Segment.decode(stored[-1].encode(), "k")
    assert len(top.commits) == sum(len(s.commits) for s in segments)
    assert applied(tmp_path, "one-by-one", segments) == applied(tmp_path, "top", [top])
    assert applied(tmp_path, "halves", stored[2:3] + stored[5:6]) == applied(
        tmp_path, "top-again", [top])


def test_a_level_stands_for_what_a_restore_read_before_it(monkeypatch):
    """take() says how many stored bytes the merged segment replaces: the level below's."""
    monkeypatch.setattr(merging, "FANOUT", 2)
    monkeypatch.setattr(merging, "MERGE_SEGMENTS", 4)
    merger, replaced = Merger(), []
    for segment in random_segments(random.Random(4), 4):
        merger.add(segment, 100)
        while merger.due:
            merged, stands_for = merger.take()
            replaced.append(stands_for)
            merger.stored(merged, 10)
    assert replaced == [200, 200, 20]  # two segments, two segments, two merged segments


# -- the writer and restore ------------------------------------------------------------------

@pytest.fixture
def merged_store(tmp_path, storage_kwargs, monkeypatch):
    """A writer that stored 13 segments, and the merged segments it stored for them by now."""
    monkeypatch.setattr(merging, "MERGE_SEGMENTS", 4)
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync", sync_interval=0.05)
    db.create_tables([Note])
    generation = db.status()["generation"]
    for i in range(12):
        Note.create(body=f"note {i:02d}")
    merged = f"{NAME}/generations/{generation}/merged/"
    deadline = time.monotonic() + 20
    while not stored_keys(storage_kwargs, merged) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield db, generation, sorted(stored_keys(storage_kwargs, merged))
    db.shutdown()


def test_the_writer_stores_merged_segments_and_restore_reads_them(tmp_path, storage_kwargs,
                                                                   merged_store):
    db, generation, merged = merged_store
    spans = [Layout.merged_range(key) for key in merged]
    assert spans and spans[0][0] == 1 and all(first < last <= 13 for first, last in spans)
    assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:]))  # one after another
    # A damaged single segment inside a merged range: the latest state does not need it...
    inside = spans[0][0] + 1
    with open_storage(**storage_kwargs) as storage:
        storage.write(f"{NAME}/generations/{generation}/wal/{inside:010d}.seg", b"damaged")
    state = restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert state.seq == 13 and state.commits == 13
    assert rows_in_file(tmp_path / "r.db") == [f"note {i:02d}" for i in range(12)]
    # ...while a point-in-time restore, which reads single segments, does.
    with pytest.raises(ReplicaCorruptError, match=f"{inside:010d}.seg is corrupt"):
        restore(target=str(tmp_path / "t.db"), database_name=NAME, timestamp=time.time(),
                **storage_kwargs)


def test_a_damaged_merged_segment_falls_back_to_its_segments(tmp_path, storage_kwargs,
                                                              merged_store, caplog):
    db, generation, merged = merged_store
    with open_storage(**storage_kwargs) as storage:
        data = bytearray(storage.read(merged[0]))
        data[40] ^= 0xFF
        storage.write(merged[0], bytes(data))
    with caplog.at_level(logging.WARNING, logger="peewee_s3"):
        state = restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert state.commits == 13
    assert rows_in_file(tmp_path / "r.db") == [f"note {i:02d}" for i in range(12)]
    assert "reading its segments one by one" in caplog.text


def test_a_new_generation_is_judged_by_what_a_restore_reads(storage_kwargs, merged_store):
    """The size rule for a new snapshot counts merged segments instead of those they replace."""
    db, generation, _ = merged_store
    base = f"{NAME}/generations/{generation}/"

    def restore_reads():
        with open_storage(**storage_kwargs) as storage:
            return sum(size for *_, size in read_plan(storage, Layout(NAME), generation, None))

    shipped = db._session.role.replicator.shipped
    deadline = time.monotonic() + 10
    while shipped.generation_bytes != restore_reads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shipped.generation_bytes == restore_reads()
    assert shipped.generation_bytes < sum(
        size for k, size in stored_keys(storage_kwargs, base + "wal/").items())


def test_the_writer_merges_its_merged_segments_and_a_restore_reads_the_longest(
        tmp_path, storage_kwargs, monkeypatch):
    monkeypatch.setattr(merging, "FANOUT", 2)
    monkeypatch.setattr(merging, "MERGE_SEGMENTS", 8)
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync", sync_interval=0.05)
    try:
        db.create_tables([Note])
        generation = db.status()["generation"]
        for i in range(12):
            Note.create(body=f"note {i:02d}")

        def plan(sizes=False):
            with open_storage(**storage_kwargs) as storage:
                objects = read_plan(storage, Layout(NAME), generation, None)
            return sum(o[3] for o in objects) if sizes else [o[:2] for o in objects]
        deadline = time.monotonic() + 20
        while plan() != [(1, 8), (9, 12), (13, 13)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert plan() == [(1, 8), (9, 12), (13, 13)]  # of 13 segments and 10 merged ones
        # what a restore reads, for the snapshot policy
        assert db._session.role.replicator.shipped.generation_bytes == plan(sizes=True)
        assert len(stored_keys(storage_kwargs, f"{NAME}/generations/{generation}/merged/")) == 10
    finally:
        db.shutdown()
    state = restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert (state.seq, state.commits) == (13, 13)
    assert rows_in_file(tmp_path / "r.db") == [f"note {i:02d}" for i in range(12)]


def test_a_latest_restore_lists_only_the_segments_after_the_merged_ones(tmp_path, storage_kwargs,
                                                                       merged_store):
    """A segment missing under a merged segment that runs from segment 1 does not stop a
    restore of the latest state, which never lists it; a point-in-time restore, which reads
    every segment, and a gap after the merged ones, which the latest state needs, do."""
    db, generation, merged = merged_store
    first, last = Layout.merged_range(merged[0])
    assert first == 1
    wal = f"{NAME}/generations/{generation}/wal/"
    with open_storage(**storage_kwargs) as storage:
        storage.delete(f"{wal}{last - 1:010d}.seg")
    state = restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert state.commits == 13
    assert rows_in_file(tmp_path / "r.db") == [f"note {i:02d}" for i in range(12)]
    with pytest.raises(ReplicaCorruptError, match=f"{last - 1:010d}.seg is missing"):
        restore(target=str(tmp_path / "t.db"), database_name=NAME, timestamp=time.time(),
                **storage_kwargs)
    # Without the last merged segment, the one after those left is needed, and missed.
    assert len(merged) >= 2
    covered = Layout.merged_range(merged[-2])[1]
    with open_storage(**storage_kwargs) as storage:
        storage.delete(merged[-1])
        storage.delete(f"{wal}{covered + 1:010d}.seg")
    with pytest.raises(ReplicaCorruptError, match=f"{covered + 1:010d}.seg is missing"):
        restore(target=str(tmp_path / "u.db"), database_name=NAME, **storage_kwargs)
