"""Encryption at rest: every object but lock.json is sealed (envelope.py) on its way through
the storage (storage/sealed.py); restore, the replica and the command line read it with the key,
and without it, or with a wrong one, say that the database is encrypted — never a garbled file."""
import base64
import io
import os
import subprocess
import sys
import time
import zlib

import pytest
from playhouse import db_url

from peewee_s3 import S3SqliteReplica, merging, ranges, restore
from peewee_s3.envelope import (CHUNK, HEADER_SIZE, MAGIC, TAG_SIZE, Keyring, SealingReader,
                                UnsealingWriter, key_id, plain_size)
from peewee_s3.errors import ConfigurationError, EncryptionError, ReplicaCorruptError
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, bodies, make_db, rows_in_file, stored_keys

MARKER = "PLAINTEXT-MARKER-ROW-5c1e"
OLD_KEY, NEW_KEY, WRONG_KEY = (bytes([n]) * 32 for n in (1, 2, 3))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def raw_objects(storage_kwargs, prefix=NAME + "/"):
    """{key: bytes} of every object as the storage holds it (no key to open them)."""
    with open_storage(**storage_kwargs) as storage:
        return {info.key: storage.read(info.key) for info in storage.list(prefix)}


def zlib_streams(data: bytes):
    """Everything that decompresses as a zlib stream starting anywhere in `data`."""
    for i in range(len(data) - 1):
        if data[i] & 0x0F == 8 and (data[i] << 8 | data[i + 1]) % 31 == 0:
            try:
                yield zlib.decompressobj().decompress(data[i:])
            except zlib.error:
                pass


@pytest.fixture(params=["file", "moto"])
def kwargs(request, tmp_path, make_bucket, s3_kwargs):
    if request.param == "file":
        return {"storage": f"file://{tmp_path}/store"}
    endpoint = request.getfixturevalue("moto_endpoint")
    return s3_kwargs(endpoint, make_bucket(endpoint))


def write_rows(db, rows, start=0):
    for i in range(start, start + rows):
        Note.create(body=f"{MARKER} {i:03d}")


# -- what is stored ----------------------------------------------------------------------------

def test_no_stored_object_holds_a_row_in_plain_not_even_decompressed(tmp_path, storage_kwargs,
                                                                      monkeypatch):
    kwargs = storage_kwargs  # every backend: memory://, file://, moto, SeaweedFS
    monkeypatch.setattr(merging, "MERGE_SEGMENTS", 4)
    db = make_db(tmp_path / "a.db", kwargs, sync_mode="sync", encryption_key=NEW_KEY)
    db.create_tables([Note])
    write_rows(db, 10)
    generation = db.status()["generation"]
    deadline = time.monotonic() + 20
    while not stored_keys(kwargs, f"{NAME}/generations/{generation}/merged/") \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    db.snapshot()
    write_rows(db, 3, start=10)
    db.shutdown()
    stored = raw_objects(kwargs)
    kinds = {key.rsplit("/", 2)[-2] if "/wal/" in key or "/merged/" in key
             else key.rsplit("/", 1)[-1] for key in stored}
    assert {"snapshot.db", "snapshot.meta.json", "wal", "merged", "lock.json"} <= kinds
    for key, data in stored.items():
        assert MARKER.encode() not in data, key
        assert all(MARKER.encode() not in d for d in zlib_streams(data)), key
        if not key.endswith("/lock.json"):
            assert data.startswith(MAGIC + key_id(NEW_KEY)), key
    for secret in (NEW_KEY, NEW_KEY.hex().encode(), b64(NEW_KEY).encode()):
        assert secret not in stored[f"{NAME}/lock.json"]
    restore(target=str(tmp_path / "r.db"), database_name=NAME, encryption_key=NEW_KEY, **kwargs)
    assert rows_in_file(tmp_path / "r.db") == [f"{MARKER} {i:03d}" for i in range(13)]


def test_a_large_snapshot_streams_through_multipart_and_ranged_gets(tmp_path, moto_endpoint,
                                                                    make_bucket, s3_kwargs,
                                                                    monkeypatch):
    monkeypatch.setattr(ranges, "RANGE_PART", 300 << 10)  # parts that cut across chunks
    kwargs = s3_kwargs(moto_endpoint, make_bucket(moto_endpoint))
    db = make_db(tmp_path / "a.db", kwargs, sync_mode="sync", encryption_key=NEW_KEY)
    db.create_tables([Note])
    with db.atomic():
        for i in range(1600):  # ~12 MB, ~9.7 MB compressed: still multipart
            Note.create(body=f"{i:05d} " + base64.b85encode(os.urandom(6000)).decode())
    db.snapshot()
    db.shutdown()
    with open_storage(**kwargs) as storage:
        sizes = [o.size for o in storage.list(NAME) if o.key.endswith("/snapshot.db")]
    assert max(sizes) > 8 << 20
    restore(target=str(tmp_path / "r.db"), database_name=NAME, download_streams=3,
            encryption_key=NEW_KEY, **kwargs)
    assert rows_in_file(tmp_path / "r.db") == rows_in_file(tmp_path / "a.db")


# -- reading it back ---------------------------------------------------------------------------

def write_encrypted(tmp_path, kwargs):
    """An encrypted database of five rows in `kwargs`' storage, its writer shut down."""
    db = make_db(tmp_path / "a.db", kwargs, sync_mode="sync", encryption_key=NEW_KEY)
    db.create_tables([Note])
    write_rows(db, 5)
    db.shutdown()
    return kwargs


@pytest.fixture
def encrypted(tmp_path, kwargs):
    return write_encrypted(tmp_path, kwargs)


@pytest.fixture
def file_kwargs(tmp_path):
    return {"storage": f"file://{tmp_path}/store"}


def left_in(directory):
    """What a failed restore must not leave: the target, or its temporary file."""
    return [n for n in os.listdir(directory) if n.startswith((".restore-", "r.db"))]


EXPECTED = [f"{MARKER} {i:03d}" for i in range(5)]


def test_restore_with_the_key_from_bytes_or_an_environment_variable(tmp_path, encrypted,
                                                                    monkeypatch):
    restore(target=str(tmp_path / "r1.db"), database_name=NAME, encryption_key=NEW_KEY,
            **encrypted)
    monkeypatch.setenv("APP_DB_KEY", b64(NEW_KEY))
    restore(target=str(tmp_path / "r2.db"), database_name=NAME, encryption_key="APP_DB_KEY",
            **encrypted)
    assert rows_in_file(tmp_path / "r1.db") == rows_in_file(tmp_path / "r2.db") == EXPECTED


@pytest.mark.parametrize("given, says", [
    ({}, "is encrypted: this database was replicated with encryption_key"),
    ({"encryption_key": WRONG_KEY}, f"is encrypted with another key (key id "
                                    f"{key_id(NEW_KEY).hex()}"),
])
def test_restore_without_the_key_or_with_a_wrong_one_says_so_and_writes_nothing(
        tmp_path, encrypted, given, says):
    with pytest.raises(EncryptionError, match=says.replace("(", r"\(")):
        restore(target=str(tmp_path / "r.db"), database_name=NAME, **given, **encrypted)
    assert left_in(tmp_path) == []


def test_a_writer_without_the_key_is_refused_at_connect_and_leaves_no_file(tmp_path, encrypted):
    db = make_db(tmp_path / "b.db", encrypted)
    with pytest.raises(EncryptionError, match="is encrypted"):
        db.connect()
    assert not os.path.exists(tmp_path / "b.db")
    again = make_db(tmp_path / "b.db", encrypted, encryption_key=NEW_KEY)  # the lease was let go
    assert bodies(again) == EXPECTED
    again.shutdown()


def test_a_plain_database_read_with_a_key_says_it_is_not_encrypted(tmp_path, kwargs):
    db = make_db(tmp_path / "a.db", kwargs, sync_mode="sync")
    db.create_tables([Note])
    write_rows(db, 2)
    db.shutdown()
    with pytest.raises(EncryptionError, match="is not encrypted, but encryption keys were given"):
        restore(target=str(tmp_path / "r.db"), database_name=NAME, encryption_key=NEW_KEY,
                **kwargs)
    assert not os.path.exists(tmp_path / "r.db")


def test_a_replica_follows_with_the_key_and_is_refused_without(tmp_path, file_kwargs):
    db = make_db(tmp_path / "w.db", file_kwargs, sync_mode="sync", encryption_key=NEW_KEY)
    db.create_tables([Note])
    write_rows(db, 2)
    replica = S3SqliteReplica(str(tmp_path / "r.db"), database_name=NAME, poll_interval=0.1,
                              encryption_key=NEW_KEY, **file_kwargs)
    assert replica.execute_sql("SELECT count(*) FROM note").fetchone()[0] == 2
    write_rows(db, 1, start=2)
    assert replica.refresh()["caught_up"]
    assert replica.execute_sql("SELECT count(*) FROM note").fetchone()[0] == 3
    replica.shutdown()
    for given, says in (({}, "is encrypted"), ({"encryption_key": WRONG_KEY}, "another key")):
        blind = S3SqliteReplica(str(tmp_path / "blind.db"), database_name=NAME, **given,
                                **file_kwargs)
        with pytest.raises(EncryptionError, match=says):
            blind.connect()
    db.shutdown()


# -- rotation ----------------------------------------------------------------------------------

def test_after_rotation_old_objects_still_restore_and_new_ones_use_the_new_key(tmp_path,
                                                                                kwargs):
    old = make_db(tmp_path / "a.db", kwargs, sync_mode="sync", encryption_key=OLD_KEY)
    old.create_tables([Note])
    write_rows(old, 3)
    old.shutdown()
    before_rotation = time.time()
    time.sleep(0.01)
    new = make_db(tmp_path / "a.db", kwargs, sync_mode="sync",
                  encryption_keys=[NEW_KEY, OLD_KEY])
    write_rows(new, 2, start=3)
    new.shutdown()
    ids = {key: data[len(MAGIC):len(MAGIC) + 8] for key, data in raw_objects(kwargs).items()
           if not key.endswith("lock.json")}
    assert {key_id(OLD_KEY), key_id(NEW_KEY)} == set(ids.values())
    both = {"encryption_keys": [NEW_KEY, OLD_KEY]}
    restore(target=str(tmp_path / "now.db"), database_name=NAME, **both, **kwargs)
    restore(target=str(tmp_path / "then.db"), database_name=NAME, timestamp=before_rotation,
            **both, **kwargs)
    assert rows_in_file(tmp_path / "now.db") == [f"{MARKER} {i:03d}" for i in range(5)]
    assert rows_in_file(tmp_path / "then.db") == [f"{MARKER} {i:03d}" for i in range(3)]
    with pytest.raises(EncryptionError, match=f"key id {key_id(OLD_KEY).hex()}"):
        restore(target=str(tmp_path / "x.db"), database_name=NAME, encryption_key=NEW_KEY,
                **kwargs)


# -- tampering ---------------------------------------------------------------------------------

def test_swapped_truncated_or_plain_objects_are_refused(tmp_path, file_kwargs):
    db = make_db(tmp_path / "a.db", file_kwargs, sync_mode="sync", encryption_key=NEW_KEY)
    db.create_tables([Note])
    write_rows(db, 3)
    generation = db.status()["generation"]
    db.shutdown()
    wal = f"{NAME}/generations/{generation}/wal/"
    stored = raw_objects(file_kwargs, wal)
    first, second = sorted(stored)[:2]
    damage = [  # what lands at the second segment's key, and what restore then says
        (stored[first], ReplicaCorruptError, "fails authentication"),      # another's object
        (stored[second][:-1], ReplicaCorruptError, "fails authentication"),  # cut short
        (b"PWS3SEG1 a plain segment where a sealed one was", EncryptionError, "not encrypted"),
    ]
    for data, error, says in damage:
        with open_storage(**file_kwargs) as storage:
            storage.write(second, data)
        with pytest.raises(error, match=f"{second} is .*{says}"):
            restore(target=str(tmp_path / "r.db"), database_name=NAME, encryption_key=NEW_KEY,
                    **file_kwargs)
        assert left_in(tmp_path) == []


# -- the command line --------------------------------------------------------------------------

def run_cli(storage, *command, env=None):
    done = subprocess.run([sys.executable, "-m", "peewee_s3", *command, "--storage", storage,
                           "--database-name", NAME], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    return done.returncode, done.stdout + done.stderr


def test_the_cli_reads_the_key_from_the_environment_only(tmp_path, file_kwargs):
    storage = write_encrypted(tmp_path, file_kwargs)["storage"]
    env = {"PEEWEE_S3_ENCRYPTION_KEY": b64(NEW_KEY)}
    code, output = run_cli(storage, "restore", "-o", str(tmp_path / "r.db"), env=env)
    assert code == 0, output
    assert rows_in_file(tmp_path / "r.db") == EXPECTED
    code, output = run_cli(storage, "generations", "--encryption-key-env", "OTHER_KEY",
                           env={"OTHER_KEY": b64(NEW_KEY)})
    assert code == 0 and "DAMAGED" not in output, output
    code, output = run_cli(storage, "verify", env=env)
    assert code == 0, output
    code, output = run_cli(storage, "restore", "-o", str(tmp_path / "x.db"))
    assert code == 1 and "is encrypted" in output and "PEEWEE_S3_ENCRYPTION_KEY" in output
    code, output = run_cli(storage, "restore", "-o", str(tmp_path / "x.db"),
                           env={"PEEWEE_S3_ENCRYPTION_KEY": b64(WRONG_KEY)})
    assert code == 1 and "another key" in output, output
    assert b64(WRONG_KEY) not in output
    assert not os.path.exists(tmp_path / "x.db")


# -- options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("options, says", [
    ({"encryption_key": b"short"}, "must be 32 bytes"),
    ({"encryption_key": b64(NEW_KEY)}, "no variable name — is it the key itself"),
    ({"encryption_key": NEW_KEY.hex()}, "no variable name — is it the key itself"),
    ({"encryption_key": "NO_SUCH_KEY_VARIABLE"}, "NO_SUCH_KEY_VARIABLE, which is not set"),
    ({"encryption_key": "BAD_KEY_VARIABLE"}, "does not hold a 32-byte key in base64"),
    ({"encryption_key": 12}, "not int"),
    ({"encryption_key": NEW_KEY, "encryption_keys": [OLD_KEY]}, "not both"),
    ({"encryption_keys": []}, "non-empty list"),
    ({"encryption_keys": NEW_KEY}, "non-empty list"),
])
def test_bad_keys_are_refused_without_showing_them(tmp_path, monkeypatch, options, says):
    monkeypatch.setenv("BAD_KEY_VARIABLE", base64.b64encode(b"sixteen bytes!!!").decode())
    with pytest.raises(ConfigurationError, match=says) as raised:
        make_db(tmp_path / "a.db", {"storage": f"file://{tmp_path}/s"}, **options)
    for secret in (b64(NEW_KEY), NEW_KEY.hex(), repr(NEW_KEY), "c2l4dGVlbiBieXRlcyEhIQ"):
        assert secret not in str(raised.value)


def test_a_database_url_names_the_variable_that_holds_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("APP_DB_KEY", b64(NEW_KEY))
    db = db_url.connect(f"s3sqlite:///{tmp_path}/a.db?storage=file://{tmp_path}/store"
                        f"&database_name={NAME}&encryption_key=APP_DB_KEY")
    assert db.options.keyring.ids == [key_id(NEW_KEY).hex()]
    with pytest.raises(ConfigurationError, match="encryption_keys cannot be written in a URL"):
        db_url.connect(f"s3sqlite:///{tmp_path}/a.db?storage=file://{tmp_path}/store"
                       f"&database_name={NAME}&encryption_keys=APP_DB_KEY")


def test_keys_stay_out_of_reprs_and_status(tmp_path, file_kwargs):
    db = make_db(tmp_path / "a.db", file_kwargs, encryption_keys=[NEW_KEY, OLD_KEY])
    db.connect()
    shown = [repr(db), repr(db.options), str(db.status()), repr(db.options.storage_kwargs())]
    db.shutdown()
    for text in shown:
        for key in (NEW_KEY, OLD_KEY):
            assert repr(key)[2:-1] not in text and key.hex() not in text and b64(key) not in text


# -- the envelope ------------------------------------------------------------------------------

@pytest.mark.parametrize("piece", [7, 5000, CHUNK + TAG_SIZE])
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_sealed_objects_open_whole_or_streamed_in_any_pieces(size, piece):
    ring = Keyring([NEW_KEY])
    data = os.urandom(size)
    sealed = SealingReader(ring, "k", io.BytesIO(data))
    stored = b"".join(iter(lambda: sealed.read(7777), b""))
    assert len(stored) == HEADER_SIZE + size + TAG_SIZE * max(1, -(-size // CHUNK))
    assert plain_size(len(stored)) == size
    out = io.BytesIO()
    opening = UnsealingWriter(Keyring([OLD_KEY, NEW_KEY]), "k", out)
    for start in range(0, len(stored), piece):
        opening.write(stored[start:start + piece])
    assert opening.finish() == size and out.getvalue() == data
    assert ring.open("k", ring.seal("k", data)) == data


def test_chunks_cut_off_or_reordered_fail_and_only_authentic_plaintext_is_written():
    ring = Keyring([NEW_KEY])
    data = os.urandom(3 * CHUNK)
    sealed = ring.seal("k", data)
    one = CHUNK + TAG_SIZE
    header, chunks = sealed[:HEADER_SIZE], [sealed[HEADER_SIZE + i * one:][:one] for i in range(3)]
    for damaged in (header + chunks[0] + chunks[1],                 # the last chunk cut off
                    header + chunks[1] + chunks[0] + chunks[2],     # reordered
                    sealed[:-1] + bytes([sealed[-1] ^ 1])):         # one bit flipped
        out = io.BytesIO()
        opening = UnsealingWriter(ring, "k", out)
        with pytest.raises(ReplicaCorruptError, match="k is corrupt"):
            opening.write(damaged)
            opening.finish()
        assert data.startswith(out.getvalue()) and len(out.getvalue()) < len(data)


def test_each_object_gets_a_fresh_salt_so_equal_content_seals_differently():
    ring = Keyring([NEW_KEY])
    assert ring.seal("k", b"same") != ring.seal("k", b"same")
