"""storage: every behaviour on every backend (memory, file, moto, SeaweedFS), and bad input."""

import io
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest

from peewee_s3.errors import (
    ConfigurationError,
    ObjectNotFoundError,
    PreconditionFailedError,
    StorageError,
    TornObjectError,
)
from peewee_s3.storage import ObjectInfo, open_storage

SENTINEL = "sentinel-secret-c0ffee-do-not-print"
RACERS = 8
BIG = 20 * 2**20


def test_written_bytes_read_back_with_the_same_tag(storage):
    tag = storage.write("db/a.bin", b"\x00hello\xff")
    assert storage.read("db/a.bin") == b"\x00hello\xff"
    assert storage.read_tagged("db/a.bin") == (b"\x00hello\xff", tag)


def test_write_overwrites_and_changes_the_tag(storage):
    first = storage.write("k", b"one")
    second = storage.write("k", b"two")
    assert storage.read_tagged("k") == (b"two", second)
    assert second != first


def test_an_empty_object_reads_as_torn_and_is_listed(storage):
    # Nothing we store is empty: an empty object is what SeaweedFS keeps of a PUT whose
    # client died after its headers (tests/test_torn.py makes one that way).
    storage.write("empty", b"")
    with pytest.raises(TornObjectError, match="empty"):
        storage.read("empty")
    assert storage.list("") == [ObjectInfo("empty", 0)]


def test_create_takes_the_place_of_a_torn_object_but_replace_does_not(storage):
    storage.write("seg", b"")
    with pytest.raises(PreconditionFailedError):
        storage.replace("seg", b"late", "a-tag-it-never-had")
    tag = storage.create("seg", b"mine")
    assert storage.read_tagged("seg") == (b"mine", tag)
    with pytest.raises(PreconditionFailedError):
        storage.create("seg", b"theirs")


def test_create_succeeds_once_then_raises_precondition_failed(storage):
    tag = storage.create("lock.json", b"first")
    with pytest.raises(PreconditionFailedError, match="lock.json"):
        storage.create("lock.json", b"second")
    assert storage.read_tagged("lock.json") == (b"first", tag)


def test_replace_with_the_current_tag_returns_a_new_tag(storage):
    tag = storage.create("lock.json", b"v1")
    new_tag = storage.replace("lock.json", b"v2", tag)
    assert new_tag != tag
    assert storage.read_tagged("lock.json") == (b"v2", new_tag)


def test_replace_with_a_stale_tag_fails_and_keeps_the_object(storage):
    stale = storage.create("lock.json", b"v1")
    current = storage.replace("lock.json", b"v2", stale)
    with pytest.raises(PreconditionFailedError):
        storage.replace("lock.json", b"v3", stale)
    assert storage.read_tagged("lock.json") == (b"v2", current)


def test_replace_of_a_missing_object_fails(storage):
    tag = storage.create("lock.json", b"v1")
    storage.delete("lock.json")
    with pytest.raises(PreconditionFailedError):
        storage.replace("lock.json", b"v2", tag)
    assert not storage.exists("lock.json")


def test_delete_if_deletes_only_an_unchanged_object(storage):
    stale = storage.create("lock.json", b"v1")
    current = storage.replace("lock.json", b"v2", stale)
    with pytest.raises(PreconditionFailedError):
        storage.delete_if("lock.json", stale)
    assert storage.exists("lock.json")
    storage.delete_if("lock.json", current)
    assert not storage.exists("lock.json")
    with pytest.raises(PreconditionFailedError):
        storage.delete_if("lock.json", current)


def test_delete_removes_and_tolerates_a_missing_object(storage):
    storage.write("a/b", b"x")
    storage.delete("a/b")
    storage.delete("a/b")
    assert not storage.exists("a/b")
    assert storage.list("") == []


def test_missing_object_raises_object_not_found(storage):
    with pytest.raises(ObjectNotFoundError, match="no object 'nothing/here'"):
        storage.read("nothing/here")
    with pytest.raises(ObjectNotFoundError):
        storage.read_tagged("nothing/here")
    with pytest.raises(ObjectNotFoundError):
        storage.download("nothing/here", io.BytesIO())
    assert not storage.exists("nothing/here")


def test_list_is_recursive_sorted_and_relative(storage):
    keys = ["db/generations/g2/snapshot.db", "db/lock.json", "db/generations/g1/wal/1", "other"]
    for key in keys:
        storage.write(key, key.encode())
    assert storage.list("db/") == [
        ObjectInfo("db/generations/g1/wal/1", 23),
        ObjectInfo("db/generations/g2/snapshot.db", 29),
        ObjectInfo("db/lock.json", 12),
    ]
    assert [o.key for o in storage.list("db/gen")] == [
        "db/generations/g1/wal/1",
        "db/generations/g2/snapshot.db",
    ]
    assert [o.key for o in storage.list("")][-1] == "other"
    assert storage.list("missing/") == []


def test_keys_are_relative_to_a_nested_root(storage_kwargs):
    kwargs = {**storage_kwargs, "storage": storage_kwargs["storage"] + "/some/root"}
    with open_storage(**kwargs) as nested, open_storage(**storage_kwargs) as top:
        nested.write("db/lock.json", b"x")
        assert nested.list("") == [ObjectInfo("db/lock.json", 1)]
        assert nested.list("db/", start_after="db/a") == [ObjectInfo("db/lock.json", 1)]
        assert top.read("some/root/db/lock.json") == b"x"


def test_big_objects_stream_up_and_down(storage, tmp_path):
    data = os.urandom(BIG)
    sent, received = [], []
    tag = storage.upload("snapshot.db", io.BytesIO(data), progress=sent.append)
    out = io.BytesIO()
    assert storage.download("snapshot.db", out, progress=received.append) == BIG
    assert out.getvalue() == data
    assert sum(sent) == sum(received) == BIG and len(sent) > 1 and len(received) > 1
    assert storage.read_tagged("snapshot.db")[1] == tag
    assert storage.list("") == [ObjectInfo("snapshot.db", BIG)]


def test_upload_create_only_refuses_an_existing_object(storage):
    storage.write("snapshot.db", b"old")
    for size in (10, BIG):
        with pytest.raises(PreconditionFailedError):
            storage.upload("snapshot.db", io.BytesIO(b"n" * size), create_only=True)
    assert storage.read("snapshot.db") == b"old"
    assert storage.list("") == [ObjectInfo("snapshot.db", 3)]


def test_exactly_one_of_racing_creators_wins(storage):
    outcomes = _race(lambda i: storage.create("lock.json", b"racer %d" % i))
    assert outcomes.count("won") == 1
    assert storage.read("lock.json") == b"racer %d" % outcomes.index("won")


def test_exactly_one_of_racing_replacers_wins(storage):
    tag = storage.create("lock.json", b"start")
    outcomes = _race(lambda i: storage.replace("lock.json", b"racer %d" % i, tag))
    assert outcomes.count("won") == 1
    assert storage.read("lock.json") == b"racer %d" % outcomes.index("won")


def test_exactly_one_of_racing_processes_wins_on_a_directory(tmp_path):
    kwargs = {"storage": f"file://{tmp_path}/store"}
    with open_storage(**kwargs) as storage:
        tag = storage.create("replaced.json", b"start")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(RACERS), context.Queue()
    processes = [
        context.Process(target=_race_in_process, args=(kwargs, tag, i, barrier, results))
        for i in range(RACERS)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=60) for _ in processes)  # racer -> (create, replace)
    for process in processes:
        process.join(timeout=60)
    created = [i for i, (create, _) in outcomes.items() if create == "won"]
    replaced = [i for i, (_, replace) in outcomes.items() if replace == "won"]
    assert len(outcomes) == RACERS and len(created) == len(replaced) == 1
    with open_storage(**kwargs) as storage:
        assert storage.read("created.json") == b"racer %d" % created[0]
        assert storage.read("replaced.json") == b"racer %d" % replaced[0]
        assert [o.key for o in storage.list("")] == ["created.json", "replaced.json"]


def test_directory_storage_hides_temp_and_lock_files(tmp_path):
    with open_storage(f"file://{tmp_path}/new/store") as storage:
        tag = storage.create("db/lock.json", b"1")
        storage.replace("db/lock.json", b"2", tag)
        with pytest.raises(PreconditionFailedError):
            storage.create("db/lock.json", b"3")
        assert storage.list("") == [ObjectInfo("db/lock.json", 1)]
    assert not [n for n in os.listdir(tmp_path / "new/store/db") if n.endswith(".tmp")]


def test_a_filesystem_instance_with_a_root_works():
    fs = fsspec.filesystem("memory")
    with open_storage(fs, storage_root="/instance-root/x") as storage:
        storage.write("k", b"v")
        assert fs.cat_file("/instance-root/x/k") == b"v"
        assert storage.describe() == "memory:///instance-root/x"


def test_storage_options_reach_fsspec_over_ours(moto_endpoint, make_bucket, s3_kwargs):
    kwargs = s3_kwargs(moto_endpoint, make_bucket(moto_endpoint))
    with open_storage(**kwargs, storage_options={"default_block_size": 5 * 2**20}) as storage:
        assert storage.fs.default_block_size == 5 * 2**20
        assert storage.fs.config_kwargs["s3"] == {"addressing_style": "path"}


def test_unknown_protocol_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match=r"'nosuch'.*s3://bucket.*file://.*memory://"):
        open_storage("nosuch://bucket/path")


def test_s3_options_on_other_storage_are_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="endpoint_url only apply to s3://"):
        open_storage(f"file://{tmp_path}", endpoint_url="http://127.0.0.1:9")


def test_incomplete_credentials_are_a_configuration_error_without_the_secret():
    with pytest.raises(ConfigurationError, match="access_key_id") as caught:
        open_storage("s3://bucket", credentials={"secret_access_key": SENTINEL})
    assert_no_secret(caught.value)


@pytest.mark.parametrize(
    "server", ["moto_endpoint", "seaweed_endpoint"], ids=["moto", "seaweedfs"]
)
def test_missing_bucket_says_to_create_it(request, s3_kwargs, server):
    kwargs = s3_kwargs(request.getfixturevalue(server), "no-such-bucket-here")
    if server == "moto_endpoint":  # which ignores credentials; SeaweedFS checks them
        kwargs["credentials"]["secret_access_key"] = SENTINEL
    reads = ["read", "list", "download"]  # SeaweedFS creates a missing bucket on a write
    with open_storage(**kwargs) as storage:
        for operation in reads + ["write"] * (server == "moto_endpoint"):
            with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist") as caught:
                _attempt(storage, operation)
            assert "create it" in str(caught.value)
            assert not isinstance(caught.value, ObjectNotFoundError)
            assert_no_secret(caught.value, storage)


@pytest.mark.parametrize("wrong", ["access_key_id", "secret_access_key"])
def test_wrong_credentials_say_to_check_them(seaweed_endpoint, make_bucket, s3_kwargs, wrong):
    kwargs = s3_kwargs(seaweed_endpoint, make_bucket(seaweed_endpoint))
    kwargs["credentials"][wrong] = SENTINEL
    with open_storage(**kwargs) as storage:
        for operation in ["read", "write", "list"]:
            with pytest.raises(StorageError, match="denied.*check the credentials") as caught:
                _attempt(storage, operation)
            assert_no_secret(caught.value, storage)


def test_list_after_a_key_gives_only_the_keys_after_it(storage):
    for seq in range(1, 6):
        storage.write(f"db/wal/{seq:010d}.seg", b"s")
    storage.write("db/wal2", b"x")  # beside the prefix, not in it
    after = storage.list("db/wal/", start_after="db/wal/0000000003.seg")
    assert [o.key for o in after] == ["db/wal/0000000004.seg", "db/wal/0000000005.seg"]
    assert storage.list("db/wal/", start_after="db/wal/0000000005.seg") == []
    assert len(storage.list("db/wal/", start_after="db/wal/")) == 5


def test_endpoint_not_listening_says_it_cannot_be_reached(s3_kwargs):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    kwargs = s3_kwargs(endpoint, "bucket")
    kwargs["credentials"]["secret_access_key"] = SENTINEL
    with open_storage(**kwargs) as storage:
        with pytest.raises(StorageError, match=f"cannot reach the endpoint.*{endpoint}") as caught:
            storage.read("k")
        assert_no_secret(caught.value, storage)


def test_a_directory_storage_never_imports_the_s3_stack(tmp_path):
    """aiohttp, botocore and s3fs cost a file:// user half a second and 30 MiB at start."""
    script = f"""
import sys, peewee_s3
db = peewee_s3.S3SqliteDatabase({str(tmp_path / 'a.db')!r}, storage={f'file://{tmp_path}/s'!r},
                                database_name="a", sync_mode="sync")
db.connect()
db.execute_sql("CREATE TABLE t (x)")
db.execute_sql("INSERT INTO t VALUES (1)")
db.shutdown()
peewee_s3.restore(target={str(tmp_path / 'b.db')!r}, storage={f'file://{tmp_path}/s'!r},
                  database_name="a")
print(sorted(m for m in ("aiohttp", "botocore", "s3fs", "aiobotocore") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_one_gib_streams_in_little_memory(seaweed_endpoint, make_bucket, s3_kwargs, tmp_path):
    source = tmp_path / "big"
    with open(source, "wb") as f:
        f.truncate(2**30)
    kwargs = s3_kwargs(seaweed_endpoint, make_bucket(seaweed_endpoint))
    script = (  # VmHWM, not ru_maxrss: that one keeps the parent's peak across fork and exec
        "import re; from peewee_s3.storage import open_storage\n"
        f"s = open_storage(**{kwargs!r})\n"
        f"s.upload('big', open({str(source)!r}, 'rb'))\n"
        f"assert s.download('big', open({str(tmp_path / 'back')!r}, 'wb')) == 2**30\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024)\n"
    )
    child = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    peak_mib = int(child.stdout)
    assert peak_mib < 100, f"peak RSS {peak_mib} MiB while streaming 1 GiB"
    assert os.path.getsize(tmp_path / "back") == 2**30


def assert_no_secret(error, storage=None):
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    text += repr(error) + (repr(storage) + storage.describe() if storage else "")
    assert SENTINEL not in text


def _attempt(storage, operation):
    """One call of `operation` ("read", "write", "list" or "download") on key "k"."""
    if operation == "write":
        return storage.write("k", b"x")
    if operation == "download":
        return storage.download("k", io.BytesIO())
    return getattr(storage, operation)("k")


def _race(operation):
    """Run `operation(i)` in RACERS threads at once; return each racer's "won" or "lost"."""
    barrier = threading.Barrier(RACERS)

    def run(i):
        barrier.wait()
        try:
            operation(i)
            return "won"
        except PreconditionFailedError:
            return "lost"

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(run, range(RACERS)))


def _race_in_process(kwargs, tag, i, barrier, results):
    """One racing process: create one object, then replace another, both against the others."""
    storage = open_storage(**kwargs)
    outcomes = []
    for operation in (
        lambda: storage.create("created.json", b"racer %d" % i),
        lambda: storage.replace("replaced.json", b"racer %d" % i, tag),
    ):
        barrier.wait()
        try:
            operation()
            outcomes.append("won")
        except PreconditionFailedError:
            outcomes.append("lost")
    results.put((i, tuple(outcomes)))


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
