"""Snapshots as stored (format 2): the database in chunks, each compressed on its own; what a
restore reads of them is checked against the meta, and old (format 1, raw) snapshots still read."""
import json
import time

import pytest

from peewee_s3 import S3SqliteReplica, compression, restore
from peewee_s3.envelope import Keyring
from peewee_s3.errors import ReplicaCorruptError
from peewee_s3.layout import Layout
from peewee_s3.snapshots import FORMAT, meta_sha256, read_meta
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, make_db, rows_in_file, stored_keys

KEY = bytes([7]) * 32
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 64 << 10  # small chunks, so that a small database makes many of them


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(compression, "CHUNK_SIZE", CHUNK)


def write_notes(db, count, start=0):
    with db.atomic():
        for i in range(start, start + count):
            Note.create(body=f"note {i:05d} " + "compressible " * 40)


def expected(count, start=0):
    return sorted(f"note {i:05d} " + "compressible " * 40 for i in range(start, start + count))


@pytest.fixture
def stored(tmp_path, storage_kwargs):
    """A database of about 1.5 MiB (some 24 chunks) in storage, its writer shut down."""
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    write_notes(db, 2500)
    generation = db.snapshot()
    db.shutdown()
    return generation


def meta_of(storage_kwargs, generation):
    with open_storage(**storage_kwargs) as storage:
        return read_meta(storage, Layout(NAME), generation)


def test_a_new_snapshot_is_stored_compressed_in_chunks(tmp_path, storage_kwargs, stored):
    meta = meta_of(storage_kwargs, stored)
    key = f"{NAME}/generations/{stored}/snapshot.db"
    stored_size = stored_keys(storage_kwargs)[key]
    assert (meta.format, meta.compression, meta.chunk_size) == (FORMAT, "zstd", CHUNK)
    assert len(meta.chunks) == -(-meta.size // CHUNK) > 10
    assert stored_size == sum(meta.chunks) < meta.size / 4
    with open_storage(**storage_kwargs) as storage:
        assert storage.read(key).startswith(ZSTD_MAGIC)
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == expected(2500)


def damage(storage_kwargs, key, change):
    with open_storage(**storage_kwargs) as storage:
        storage.write(key, change(bytearray(storage.read(key))))


@pytest.mark.parametrize("how", ["flipped byte", "cut short", "chunks swapped", "appended"])
def test_a_damaged_chunk_is_refused_and_the_target_kept(tmp_path, storage_kwargs, stored, how):
    meta = meta_of(storage_kwargs, stored)
    third = sum(meta.chunks[:3])  # where chunk 3 starts
    one, two = sum(meta.chunks[:1]), sum(meta.chunks[:2])

    def change(data):
        if how == "flipped byte":
            data[third + meta.chunks[3] // 2] ^= 0x01
        elif how == "cut short":
            del data[third + 10:]
        elif how == "chunks swapped":  # each a valid frame of the right size, in the wrong place
            data[one:two], data[two:third] = data[two:third], data[one:two]
        else:
            data += b"\0"
        return bytes(data)

    damage(storage_kwargs, f"{NAME}/generations/{stored}/snapshot.db", change)
    target = tmp_path / "r.db"
    target.write_bytes(b"the user's own file")
    with pytest.raises(ReplicaCorruptError, match=f"snapshot .*{stored}/snapshot.db is corrupt"):
        restore(target=str(target), database_name=NAME, overwrite=True, **storage_kwargs)
    assert target.read_bytes() == b"the user's own file"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".restore-", "r.db."))]


def rewrite_meta(storage_kwargs, generation, **fields):
    """Change fields of a meta and give it a matching meta_sha256: a meta as another version
    of peewee-s3 might write it."""
    key = f"{NAME}/generations/{generation}/snapshot.meta.json"
    with open_storage(**storage_kwargs) as storage:
        raw = {**json.loads(storage.read(key)), **fields}
        raw["meta_sha256"] = meta_sha256(raw)
        storage.write(key, json.dumps(raw).encode())


@pytest.mark.parametrize("fields", [{"format": FORMAT + 1}, {"compression": "lz4"}])
def test_a_snapshot_of_a_newer_format_or_codec_says_to_upgrade(tmp_path, file_kwargs, fields):
    db = make_db(tmp_path / "a.db", file_kwargs)
    db.create_tables([Note])
    write_notes(db, 10)
    generation = db.snapshot()
    db.shutdown()
    rewrite_meta(file_kwargs, generation, **fields)
    with pytest.raises(ReplicaCorruptError, match="upgrade peewee-s3"):
        restore(target=str(tmp_path / "r.db"), database_name=NAME, generation=generation,
                **file_kwargs)
    assert not (tmp_path / "r.db").exists()


@pytest.fixture
def file_kwargs(tmp_path):
    return {"storage": f"file://{tmp_path}/store"}


def test_an_encrypted_snapshot_is_compressed_then_sealed(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync", encryption_key=KEY)
    db.create_tables([Note])
    write_notes(db, 2500)
    generation = db.snapshot()
    db.shutdown()
    key = f"{NAME}/generations/{generation}/snapshot.db"
    with open_storage(**storage_kwargs) as raw:
        sealed = raw.read(key)
    with open_storage(**storage_kwargs, encryption=Keyring([KEY])) as opened:
        meta = read_meta(opened, Layout(NAME), generation)
        plain = opened.read(key)
    assert plain.startswith(ZSTD_MAGIC) and len(plain) == sum(meta.chunks) < meta.size / 4
    assert ZSTD_MAGIC not in sealed[:100] and len(sealed) < meta.size / 4
    restore(target=str(tmp_path / "r.db"), database_name=NAME, encryption_key=KEY,
            **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == expected(2500)


def test_a_replica_starts_from_a_compressed_snapshot_and_follows(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    write_notes(db, 2500)
    db.snapshot()
    replica = S3SqliteReplica(str(tmp_path / "r.db"), database_name=NAME, poll_interval=0.05,
                              **storage_kwargs)
    try:
        assert replica.execute_sql("SELECT count(*) FROM note").fetchone()[0] == 2500
        write_notes(db, 1, start=2500)
        deadline = time.monotonic() + 15
        while replica.execute_sql("SELECT count(*) FROM note").fetchone()[0] != 2501:
            assert time.monotonic() < deadline, "the replica never showed the new row"
            time.sleep(0.01)
        assert replica.execute_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        replica.shutdown()
        db.shutdown()


def test_a_point_in_time_restore_reads_across_a_compressed_snapshot(tmp_path, storage_kwargs):
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    db.create_tables([Note])
    write_notes(db, 2000)
    write_notes(db, 5, start=2000)  # a segment of the first generation
    before = time.time()
    time.sleep(0.01)
    second = db.snapshot()
    write_notes(db, 5, start=2005)
    after = time.time()
    db.shutdown()
    assert meta_of(storage_kwargs, second).format == FORMAT
    early = restore(target=str(tmp_path / "early.db"), database_name=NAME, timestamp=before,
                    **storage_kwargs)
    late = restore(target=str(tmp_path / "late.db"), database_name=NAME, timestamp=after,
                   **storage_kwargs)
    assert early.generation != second and late.generation == second
    assert rows_in_file(tmp_path / "early.db") == expected(2005)
    assert rows_in_file(tmp_path / "late.db") == expected(2010)
