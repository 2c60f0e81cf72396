"""restore(): exact committed states, and corruption refused with the target untouched."""
import json
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from peewee_s3 import restore
from peewee_s3.host import LOCK_SUFFIX, MEMBERS_SUFFIX, STATE_SUFFIX
from peewee_s3.errors import ConfigurationError, LocalStateError, NothingToRestoreError, ReplicaCorruptError
from peewee_s3.layout import Layout
from peewee_s3.restore import complete_generations, restore_to, segment_seqs
from peewee_s3.segments import Segment
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, make_db, rows_in_file


@pytest.fixture
def stored(tmp_path, storage_kwargs):
    """A database with a snapshot and three segments in storage."""
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    for body in ("one", "two", "three"):
        Note.create(body=body)
    generation = db.status()["generation"]
    yield generation
    db.shutdown()


def flip_a_byte(storage_kwargs, key, offset):
    """Flip the byte at `offset`, or in the middle of an object shorter than twice that (a
    small database's compressed snapshot)."""
    with open_storage(**storage_kwargs) as storage:
        data = bytearray(storage.read(key))
        data[min(offset, len(data) // 2)] ^= 0xFF
        storage.write(key, bytes(data))


def test_the_latest_state_is_restored(tmp_path, storage_kwargs, stored):
    state = restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert state.generation == stored and state.seq == 4
    assert rows_in_file(tmp_path / "r.db") == ["one", "three", "two"]


@pytest.mark.parametrize("damaged", ["snapshot.db", "wal/0000000002.seg"])
def test_a_flipped_byte_is_refused_and_the_target_left_alone(tmp_path, storage_kwargs, stored,
                                                               damaged):
    flip_a_byte(storage_kwargs, f"{NAME}/generations/{stored}/{damaged}", 100)
    target = tmp_path / "r.db"
    target.write_bytes(b"the user's own file")
    with pytest.raises(ReplicaCorruptError, match="corrupt"):
        restore(target=str(target), database_name=NAME, overwrite=True, **storage_kwargs)
    assert target.read_bytes() == b"the user's own file"
    left = {p.name for p in tmp_path.iterdir()} - {"store"}
    assert left == {"a.db", "a.db-shm", "a.db-wal", "a.db.peewee-s3.json", "r.db",
                    *(f"a.db{suffix}" for suffix in (LOCK_SUFFIX, MEMBERS_SUFFIX, STATE_SUFFIX))}


def flip_a_bit_of(storage_kwargs, key, field):
    """Turn one bit of a digit (not the first) of a field's value in a JSON object: it stays
    valid JSON (a '2' becomes a '3'), as damage that no parser notices."""
    with open_storage(**storage_kwargs) as storage:
        data = bytearray(storage.read(key))
        at = data.index(f'"{field}": '.encode()) + len(field) + 5
        while not chr(data[at]).isdigit():
            at += 1
        data[at] ^= 0x01
        storage.write(key, bytes(data))


@pytest.mark.parametrize("field", ["generation", "created_at", "sha256"])
def test_a_meta_with_one_flipped_bit_is_refused_naming_it(tmp_path, storage_kwargs, stored,
                                                          field):
    key = f"{NAME}/generations/{stored}/snapshot.meta.json"
    flip_a_bit_of(storage_kwargs, key, field)
    with pytest.raises(ReplicaCorruptError, match="does not match its own checksum") as refused:
        restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert key in str(refused.value) and "peewee-s3 generations" in str(refused.value)
    assert not (tmp_path / "r.db").exists()


def test_a_meta_written_before_it_carried_its_own_checksum_is_still_read(tmp_path,
                                                                          storage_kwargs, stored):
    key = f"{NAME}/generations/{stored}/snapshot.meta.json"
    with open_storage(**storage_kwargs) as storage:
        old = json.loads(storage.read(key))
        old.pop("meta_sha256", None)
        storage.write(key, json.dumps(old, indent=1).encode())
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["one", "three", "two"]


def test_a_segment_missing_from_the_chain_is_refused(tmp_path, storage_kwargs, stored):
    with open_storage(**storage_kwargs) as storage:
        storage.delete(f"{NAME}/generations/{stored}/wal/0000000002.seg")
    with pytest.raises(ReplicaCorruptError, match="0000000002.seg is missing"):
        restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert not (tmp_path / "r.db").exists()


def test_an_existing_target_is_kept_aside_only_when_asked(tmp_path, storage_kwargs, stored):
    target = tmp_path / "r.db"
    target.write_bytes(b"precious")
    with pytest.raises(LocalStateError, match="overwrite=True"):
        restore(target=str(target), database_name=NAME, **storage_kwargs)
    restore(target=str(target), database_name=NAME, overwrite=True, **storage_kwargs)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.db.before-restore-")]
    assert [p.read_bytes() for p in aside] == [b"precious"]
    assert rows_in_file(target) == ["one", "three", "two"]


def test_empty_storage_says_where_it_looked(tmp_path, storage_kwargs):
    with pytest.raises(NothingToRestoreError, match="nothing-here"):
        restore(target=str(tmp_path / "r.db"), database_name="nothing-here", **storage_kwargs)


def test_a_generation_without_meta_is_never_restored(tmp_path, storage_kwargs, stored):
    with open_storage(**storage_kwargs) as storage:
        storage.write(f"{NAME}/generations/29991231T000000000000Z-deadbeef/snapshot.db", b"x")
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["one", "three", "two"]


def test_a_point_in_time_gives_the_rows_committed_by_then(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="early")
    moment = time.time()
    time.sleep(0.05)
    Note.create(body="late")
    db.snapshot()
    Note.create(body="later still")
    db.sync()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, timestamp=moment,
            **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["early"]
    db.shutdown()


def test_a_point_in_time_inside_one_segment_stops_at_the_right_commit(tmp_path,
                                                                        storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=30)
    db.create_tables([Note])
    db.sync()
    moments = []
    for body in ("a", "b", "c", "d"):
        Note.create(body=body)
        moments.append(time.time())
    db.sync()        # all four commits go up in one segment
    for i, moment in enumerate(moments):
        target = tmp_path / f"r{i}.db"
        restore(target=str(target), database_name=NAME, timestamp=moment, **storage_kwargs)
        assert rows_in_file(target) == ["a", "b", "c", "d"][:i + 1]
    db.shutdown()


def test_a_point_in_time_before_a_snapshot_finds_every_commit_made_by_then(tmp_path,
                                                                          storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=30)
    db.create_tables([Note])
    Note.create(body="before")
    moment = time.time()
    Note.create(body="after")
    db.snapshot()                       # nothing shipped by hand: the snapshot ships first
    Note.create(body="after the snapshot")
    db.sync()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, timestamp=moment,
            **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["before"]
    db.shutdown()


# -- objects written by an older version ---------------------------------------------------

FORMAT_1 = pathlib.Path(__file__).parent / "fixtures" / "format1"  # see make_format1.py


@pytest.fixture
def format_1_storage(tmp_path):
    """A copy of the committed storage directory that peewee-s3's format 1 wrote."""
    copy = tmp_path / "format1"
    shutil.copytree(FORMAT_1, copy)
    return f"file://{copy}"


def stored_notes(path):
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [tuple(r) for r in conn.execute("SELECT n, body FROM note ORDER BY n")]
    finally:
        conn.close()


def test_objects_of_format_1_still_restore(tmp_path, format_1_storage):
    restore(storage=format_1_storage, database_name="app", target=str(tmp_path / "r.db"))
    assert stored_notes(tmp_path / "r.db") == (
        [(n, f"note {n}") for n in range(4, 13)] + [(13, "note 13, changed")])


@pytest.mark.parametrize("merged", [True, False])
def test_format_1_restores_the_same_through_merged_segments_or_single_ones(tmp_path,
                                                                          format_1_storage,
                                                                          merged):
    with open_storage(format_1_storage) as storage:
        first = complete_generations(storage, Layout("app"))[0].generation
        state = restore_to(storage, Layout("app"), str(tmp_path / "r.db"), generation=first,
                           merged=merged)
    assert (state.generation, state.seq, state.commits) == (first, 13, 13)
    assert stored_notes(tmp_path / "r.db") == [(n, f"note {n}") for n in range(4, 11)]


def test_every_commit_of_format_1_still_restores_to_its_point_in_time(tmp_path,
                                                                     format_1_storage):
    """The first generation, segment by segment: each commit's time gives the rows
    committed by then."""
    with open_storage(format_1_storage) as storage:
        layout = Layout("app")
        first = complete_generations(storage, layout)[0].generation
        times = [Segment.decode(storage.read(layout.segment(first, seq)), "k").last_time
                 for seq in segment_seqs(storage, layout, first)]
    for seq, moment in enumerate(times[2:], start=3):  # 1, 2: the table and its index
        target = tmp_path / f"r{seq}.db"
        state = restore(storage=format_1_storage, database_name="app", target=str(target),
                        timestamp=moment)
        expected = [(n, f"note {n}") for n in range(1, min(seq - 2, 10) + 1)]
        assert (state.generation, state.seq) == (first, seq)
        assert stored_notes(target) == (expected[3:] if seq == 13 else expected)  # a delete


def test_a_point_in_time_through_merged_segments_is_refused(tmp_path, format_1_storage):
    with open_storage(format_1_storage) as storage, pytest.raises(ConfigurationError,
                                                                  match="merged"):
        restore_to(storage, Layout("app"), str(tmp_path / "r.db"), at=time.time(),
                   merged=True)
    assert not (tmp_path / "r.db").exists()


# A restore in a process that may write files of at most LIMIT bytes: a full disk, as far as
# the restored copy is concerned (RLIMIT_FSIZE; the signal it sends is ignored, so the write
# fails with EFBIG instead).
RESTORE_ON_A_FULL_DISK = """
import json, resource, signal, sys
from peewee_s3 import restore
from peewee_s3.errors import LocalWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
try:
    restore(**json.loads(sys.argv[1]), database_name="app", target=sys.argv[2])
except LocalWriteError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_disk_that_fills_up_while_the_snapshot_downloads_is_said_and_leaves_nothing(
        tmp_path, shared_kwargs):
    db = make_db(tmp_path / "a.db", shared_kwargs)
    db.create_tables([Note])
    with db.atomic():
        for i in range(2000):
            Note.create(body=f"note {i} " + "x" * 500)
    db.snapshot()   # about 1.2 MiB: several download pieces
    db.shutdown()
    out = tmp_path / "out"
    out.mkdir()
    limit = 256 << 10
    ran = subprocess.run(
        [sys.executable, "-c", RESTORE_ON_A_FULL_DISK, json.dumps(shared_kwargs),
         str(out / "r.db"), str(limit)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])})
    assert ran.returncode == 3, ran.stderr[-2000:]
    assert "could not write the restored copy" in ran.stdout and "free space" in ran.stdout
    assert list(out.iterdir()) == []
