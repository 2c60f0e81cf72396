"""Bad input, one table: each case gives the exception a user gets and the words its message
must hold. After every case the local directory is as it was (no file made, moved or left
behind), no live lease is left over, and where the storage was sound it still restores.
"""
import importlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from peewee_s3 import S3SqliteDatabase, restore
from peewee_s3.errors import (ConfigurationError, LeaseHeldError, LocalStateError,
                              NothingToRestoreError, ReplicaCorruptError, StorageError)
from peewee_s3.layout import Layout
from peewee_s3.lease import read_lease
from peewee_s3.restore import current_generation
from peewee_s3.sidecar import sidecar_path
from peewee_s3.storage import open_storage

from .conftest import _free_ports
from .helpers import NAME, Note, make_db

ROWS = ["one", "two"]
BIG_ROWS = ["x" * 4000] * 100   # about 400 KB: more than the small disks below hold
LAYOUT = Layout(NAME)


class Env:
    """One case's world: a storage directory, and a local directory the case may not change."""

    def __init__(self, tmp_path, request):
        self.tmp, self.request = tmp_path, request
        self.local = tmp_path / "local"
        self.local.mkdir()
        self.path = self.local / "app.db"
        self.store = {"storage": f"file://{tmp_path}/store"}

    def populate(self, rows=ROWS):
        """A lineage in storage holding `rows` (one segment each), written from elsewhere."""
        writer = self.tmp / "writer"
        writer.mkdir(exist_ok=True)
        db = make_db(writer / "w.db", self.store, sync_mode="sync")
        db.create_tables([Note])
        for body in rows:
            Note.create(body=body)
        db.shutdown()
        return self

    def storage(self):
        return open_storage(**self.store)

    def db(self, **options):
        options = {**self.store, "database_name": NAME, **options}
        return S3SqliteDatabase(str(self.path), **options)

    def generation(self):
        with self.storage() as storage:
            return current_generation(storage, LAYOUT).generation

    def put(self, key, data):
        with self.storage() as storage:
            storage.write(key, data)

    def get(self, key):
        with self.storage() as storage:
            return storage.read(key)

    def restore_into_local(self, **kwargs):
        return lambda: restore(target=str(self.path), database_name=NAME,
                               **{**self.store, **kwargs})

    def local_state(self):
        state = {}
        for root, _, files in os.walk(self.local):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    state[os.path.relpath(os.path.join(root, name), self.local)] = f.read()
        return state


CASES = []


def case(error, *words, restorable=False):
    """Register `arrange(env) -> act` as a case: `act()` must raise `error` with `words` (a
    tuple among them: any one of its words)."""
    def register(arrange):
        CASES.append(pytest.param(arrange, error, words, restorable, id=arrange.__name__))
        return arrange
    return register


def options_case(name, error, words, **options):
    """A case that only constructs S3SqliteDatabase with `options` over the defaults."""
    def arrange(env):
        return lambda: env.db(**options)
    arrange.__name__ = name
    case(error, *words)(arrange)


# -- options -------------------------------------------------------------------------------------

options_case("database_name_missing", ConfigurationError, ["database_name", "required"],
             database_name=None)
options_case("database_name_empty", ConfigurationError, ["database_name", "required"],
             database_name="")
options_case("database_name_not_a_string", ConfigurationError, ["database_name"],
             database_name=42)
options_case("database_name_dot_dot", ConfigurationError, ["database_name", "not allowed"],
             database_name="..")
options_case("database_name_climbs_out", ConfigurationError, ["database_name", "not allowed"],
             database_name="../etc")
options_case("database_name_with_slash", ConfigurationError, ["database_name", "no '/'"],
             database_name="a/b")
options_case("database_name_with_space", ConfigurationError, ["database_name", "not allowed"],
             database_name="my db")
options_case("key_prefix_with_dot_dot", ConfigurationError, ["key_prefix", "'..'"],
             key_prefix="apps/../prod")
options_case("key_prefix_only_slashes", ConfigurationError, ["key_prefix", "non-empty"],
             key_prefix="//")
options_case("key_prefix_double_slash", ConfigurationError, ["key_prefix", "single '/'"],
             key_prefix="apps//prod")
options_case("sync_mode_unknown", ConfigurationError, ["sync_mode", "'async'", "'sync'"],
             sync_mode="fast")
options_case("sync_interval_zero", ConfigurationError, ["sync_interval", "positive"],
             sync_interval=0)
options_case("sync_interval_negative", ConfigurationError, ["sync_interval", "positive"],
             sync_interval=-1)
options_case("sync_interval_bool", ConfigurationError, ["sync_interval", "positive"],
             sync_interval=True)
options_case("snapshot_interval_string", ConfigurationError, ["snapshot_interval", "positive"],
             snapshot_interval="300")
options_case("lock_ttl_too_short", ConfigurationError, ["lock_ttl", "at least 3"],
             lock_ttl=1)
options_case("lock_ttl_nan", ConfigurationError, ["lock_ttl", "positive"],
             lock_ttl=float("nan"))
options_case("lock_wait_negative", ConfigurationError, ["lock_wait", "seconds"], lock_wait=-5)
options_case("lock_wait_string", ConfigurationError, ["lock_wait", "seconds"], lock_wait="10")
options_case("lock_wait_nan", ConfigurationError, ["lock_wait", "seconds"],
             lock_wait=float("nan"))
options_case("storage_missing", ConfigurationError, ["storage is required"], storage=None)
options_case("storage_not_a_url", ConfigurationError, ["not a url", "s3://"],
             storage="my-bucket")
options_case("storage_of_wrong_type", ConfigurationError, ["fsspec", "int"], storage=42)
options_case("storage_root_with_a_url", ConfigurationError, ["storage_root"],
             storage_root="bucket/path")
options_case("credentials_without_secret", ConfigurationError,
             ["credentials", "secret_access_key"], credentials={"access_key_id": "AKIDEXAMPLE"})
options_case("credentials_with_unknown_key", ConfigurationError, ["credentials", "password"],
             credentials={"access_key_id": "a", "secret_access_key": "b", "password": "c"})
options_case("pragma_journal_mode", ConfigurationError, ["journal_mode", "remove"],
             pragmas={"journal_mode": "delete"})


@case(ConfigurationError, "file on disk")
def in_memory_database(env):
    return lambda: S3SqliteDatabase(":memory:", database_name=NAME, **env.store)


@case(ConfigurationError, "unknown storage protocol", "nosuch")
def storage_protocol_unknown(env):
    env.store = {"storage": "nosuch://bucket"}
    return env.db().connect             # found when the storage is opened, at the first connect


@case(ConfigurationError, "endpoint_url", "s3://")
def endpoint_url_for_a_directory(env):
    return env.db(endpoint_url="http://127.0.0.1:9").connect


# -- the storage cannot be used ------------------------------------------------------------------

@case(StorageError, "bucket", "does not exist", "create it")
def bucket_missing(env):
    endpoint = env.request.getfixturevalue("moto_endpoint")
    env.store = env.request.getfixturevalue("s3_kwargs")(endpoint, "no-such-bucket-here")
    return env.db().connect


@case(StorageError, "denied", "credentials")
def credentials_wrong(env):
    endpoint = env.request.getfixturevalue("seaweed_endpoint")
    kwargs = env.request.getfixturevalue("s3_kwargs")(
        endpoint, env.request.getfixturevalue("make_bucket")(endpoint))
    env.store = {**kwargs, "credentials": {"access_key_id": "testing",
                                           "secret_access_key": "not-the-secret"}}
    return env.db().connect


@case(StorageError, "cannot reach", "endpoint_url")
def endpoint_not_listening(env):
    port = _free_ports(1)[0]
    env.store = env.request.getfixturevalue("s3_kwargs")(f"http://127.0.0.1:{port}", "bucket")
    return env.db().connect


# -- what the storage holds is not what it should be ---------------------------------------------

@case(ReplicaCorruptError, "lock.json", "not a peewee-s3 lease", restorable=True)
def lock_json_garbage(env):
    env.populate().put(LAYOUT.lock, b"\x00\xffnot json at all")
    return env.db().connect


@case(ReplicaCorruptError, "lock.json", "not a peewee-s3 lease", restorable=True)
def lock_json_of_another_tool(env):
    env.populate().put(LAYOUT.lock, json.dumps({"owner": "litestream", "expires": 1}).encode())
    return env.db().connect


@case(ReplicaCorruptError, "lock.json", "not a peewee-s3 lease", restorable=True)
def lock_json_a_list(env):
    env.populate().put(LAYOUT.lock, b"[1, 2, 3]")
    return env.db().connect


@case(ReplicaCorruptError, "lock.json", "lacks lease fields", restorable=True)
def lock_json_without_fields(env):
    env.populate().put(LAYOUT.lock, b'{"format": 1, "epoch": 3}')
    return env.db().connect


@case(ReplicaCorruptError, "lock.json", "format 2", "upgrade")
def lock_json_from_the_future(env):
    record = json.loads(env.populate().get(LAYOUT.lock))
    env.put(LAYOUT.lock, json.dumps({**record, "format": 2}).encode())
    return env.db().connect


@case(LeaseHeldError, "held by", "lock_wait", "force_lock")
def lease_held_by_a_live_writer(env):
    holder = make_db(env.tmp / "holder.db", env.store)
    holder.connect()
    env.request.addfinalizer(holder.shutdown)
    return env.db().connect


@case(NothingToRestoreError, "no complete generation", NAME)
def nothing_stored(env):
    return env.restore_into_local()


@case(NothingToRestoreError, "no complete generation", NAME)
def generations_without_meta(env):
    env.populate()
    with env.storage() as storage:
        for info in storage.list(LAYOUT.generations):
            if info.key.endswith("/snapshot.meta.json"):
                storage.delete(info.key)
    return env.restore_into_local()


@case(ReplicaCorruptError, "snapshot", "corrupt", "bytes")
def snapshot_truncated(env):
    generation = env.populate().generation()
    key = LAYOUT.snapshot(generation)
    stored = env.get(key)
    env.put(key, stored[:len(stored) // 2])  # compressed, a small database's is < 1,000 bytes
    return env.restore_into_local()


def _generation_with_segments(env, at_least=3):
    """The writer's shutdown starts a generation with its final snapshot; the segments are in
    one before, which a restore by id (or to a time in it) reads."""
    with env.storage() as storage:
        for info in storage.list(LAYOUT.generations):
            if LAYOUT.segment_seq(info.key) == at_least:
                return LAYOUT.generation_of(info.key)
    raise AssertionError(f"no generation has {at_least} segments")


@case(ReplicaCorruptError, "segment", "checksum")
def segment_checksum_mismatch(env):
    generation = _generation_with_segments(env.populate())
    key = LAYOUT.segment(generation, 2)
    data = bytearray(env.get(key))
    data[len(data) // 2] ^= 0xFF
    env.put(key, bytes(data))
    return env.restore_into_local(generation=generation)


@case(ReplicaCorruptError, "segment", "missing from the chain")
def segment_missing_in_the_middle(env):
    generation = _generation_with_segments(env.populate(rows=["one", "two", "three"]))
    with env.storage() as storage:
        storage.delete(LAYOUT.segment(generation, 2))
    return env.restore_into_local(generation=generation)


@case(ReplicaCorruptError, "segment", "wrong place")
def segment_in_the_wrong_place(env):
    generation = _generation_with_segments(env.populate())
    env.put(LAYOUT.segment(generation, 2), env.get(LAYOUT.segment(generation, 1)))
    return env.restore_into_local(generation=generation)


@case(ReplicaCorruptError, "snapshot.meta.json", "not a valid snapshot meta")
def snapshot_meta_garbage(env):
    generation = env.populate().generation()
    env.put(LAYOUT.snapshot_meta(generation), b"{not json")
    return env.restore_into_local()


@case(ReplicaCorruptError, "snapshot.meta.json", "format 3", "upgrade")
def snapshot_meta_from_the_future(env):
    generation = env.populate().generation()
    meta = json.loads(env.get(LAYOUT.snapshot_meta(generation)))
    env.put(LAYOUT.snapshot_meta(generation), json.dumps({**meta, "format": 3}).encode())
    return env.restore_into_local()


@case(NothingToRestoreError, "generation", "20000101T000000000000Z-00000000")
def restore_of_an_unknown_generation(env):
    env.populate()
    return env.restore_into_local(generation="20000101T000000000000Z-00000000")


@case(NothingToRestoreError, "oldest available", restorable=True)
def restore_to_a_time_before_the_first_generation(env):
    env.populate()
    return env.restore_into_local(timestamp="2001-01-01T00:00:00Z")


@case(ConfigurationError, "ISO-8601", restorable=True)
def restore_to_a_time_that_is_not_one(env):
    env.populate()
    return env.restore_into_local(timestamp="yesterday at noon")


@case(LocalStateError, "exists", "overwrite=True", restorable=True)
def restore_over_an_existing_file(env):
    env.populate()
    env.path.write_bytes(b"precious")
    return env.restore_into_local()


# -- the local file is not what it should be -----------------------------------------------------

@case(LocalStateError, "app.db", "not a sqlite database")
def local_file_not_sqlite_and_storage_empty(env):
    env.path.write_bytes(b"these are my notes, not a database\n" * 200)
    return env.db().connect


@case(LocalStateError, "app.db", ("no sidecar", "not a sqlite database"), restorable=True)
def local_file_not_sqlite_and_storage_full(env):
    env.populate()
    env.path.write_bytes(b"these are my notes, not a database\n" * 200)
    return env.db().connect


@case(LocalStateError, "app.db", "no sidecar", restorable=True)
def local_database_without_sidecar(env):
    env.populate()
    conn = sqlite3.connect(str(env.path))
    conn.execute("CREATE TABLE mine (x)")
    conn.close()
    return env.db().connect


@case(LocalStateError, "app.db", "sidecar of", restorable=True)
def local_file_of_another_database(env):
    env.populate()
    _local_copy_of_another_database(env)
    return env.db().connect


@case(LocalStateError, "app.db", "was replicated to")
def local_file_of_another_database_and_storage_empty(env):
    _local_copy_of_another_database(env)
    return env.db().connect


def _local_copy_of_another_database(env):
    other = make_db(env.path, env.store, database_name="other")
    other.create_tables([Note])
    Note.create(body="other's")
    other.shutdown()
    with env.storage() as storage:                # "other" is gone from storage: only the
        for info in storage.list("other/"):       # local file says where it came from
            storage.delete(info.key)


@case(LocalStateError, "app.db", "damaged", restorable=True)
def local_sidecar_damaged(env):
    env.populate()
    _local_copy_of_another_database(env)
    with open(sidecar_path(str(env.path)), "w") as f:
        f.write("{half a sidecar")
    return env.db().connect


LOCAL_TROUBLE = (OSError, LocalStateError)   # the library may wrap it, or let it through


@case(LOCAL_TROUBLE, ("read-only", "permission denied"), "local", restorable=True)
def local_directory_read_only(env):
    env.populate()
    _make_read_only(env)
    return env.db().connect


DISK_FULL = ("no space left", "file too large")  # ENOSPC on a tmpfs, EFBIG under RLIMIT_FSIZE


@case(LOCAL_TROUBLE, DISK_FULL, "app.db", restorable=True)
def disk_full_during_restore(env):
    env.populate(rows=BIG_ROWS)
    if _make_small(env, size=64 * 1024) == "tmpfs":
        return env.restore_into_local()
    return lambda: _restore_with_file_size_limit(env, 64 * 1024)


@case(LOCAL_TROUBLE, DISK_FULL, "app.db", restorable=True)
def disk_full_during_restore_at_connect(env):
    env.populate(rows=BIG_ROWS)
    if _make_small(env, size=64 * 1024) != "tmpfs":
        pytest.skip("cannot mount a small tmpfs here (needs root): covered by "
                    "disk_full_during_restore with RLIMIT_FSIZE")
    return env.db().connect


# -- the test ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arrange, error, words, restorable", CASES)
def test_bad_input_fails_clearly_and_harms_nothing(tmp_path, request, arrange, error, words,
                                                   restorable):
    env = Env(tmp_path, request)
    act = arrange(env)
    before = env.local_state()

    with pytest.raises(error) as raised:
        act()

    message = str(raised.value).lower()
    missing = [w for w in words
               if not any(x.lower() in message for x in (w if isinstance(w, tuple) else [w]))]
    assert not missing, f"{type(raised.value).__name__}: {str(raised.value)!r} lacks {missing}"
    assert env.local_state() == before, "the local directory changed"
    if env.store["storage"].startswith("file://") and os.path.isdir(env.store["storage"][7:]):
        with env.storage() as storage:
            try:
                lease = read_lease(storage, LAYOUT.lock)
            except ReplicaCorruptError:
                lease = None                      # the case's own broken lock.json
        if lease and arrange.__name__ != "lease_held_by_a_live_writer":
            assert not lease.is_live(time.time()), "a live lease was left"
    if restorable:
        target = tmp_path / "check.db"
        restore(target=str(target), database_name=NAME, **env.store)
        conn = sqlite3.connect(str(target))
        try:
            assert sorted(r[0] for r in conn.execute("SELECT body FROM note")) == \
                sorted(_populated_rows(arrange))
        finally:
            conn.close()


def test_the_table_has_at_least_thirty_cases():
    assert len(CASES) >= 30


def _populated_rows(arrange):
    return BIG_ROWS if arrange.__name__.startswith("disk_full") else ROWS


# -- small and read-only local directories ---------------------------------------------------------

def _mount_tmpfs(env, options):
    """Mount a tmpfs over env.local (root only); unmounted at the end of the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(env.local)],
                          capture_output=True)
    if done.returncode != 0:
        return False
    env.request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(env.local)]))
    return True


def _make_read_only(env):
    if os.geteuid() != 0:
        env.local.chmod(0o555)
        env.request.addfinalizer(lambda: env.local.chmod(0o755))
    elif not _mount_tmpfs(env, "ro,size=1m"):
        pytest.skip("running as root and no read-only tmpfs can be mounted: root writes "
                    "through a read-only mode")


def _make_small(env, size):
    """'tmpfs' if env.local is now a tmpfs of `size` bytes, else 'rlimit'."""
    return "tmpfs" if _mount_tmpfs(env, f"size={size}") else "rlimit"


def _restore_with_file_size_limit(env, limit):
    """Restore in a child process whose files may not grow past `limit` bytes (RLIMIT_FSIZE),
    and raise here what it raised there."""
    script = textwrap.dedent(f"""
        import json, resource, signal, sys
        from peewee_s3 import restore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        try:
            restore(target={str(env.path)!r}, database_name={NAME!r}, **{env.store!r})
        except Exception as exc:
            print(json.dumps([type(exc).__module__, type(exc).__name__, str(exc)]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout, "the restore succeeded in spite of the file size limit"
    module, name, message = json.loads(out.stdout)
    raise getattr(importlib.import_module(module), name)(message)

