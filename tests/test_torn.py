"""Torn uploads: what SeaweedFS keeps of a PUT whose client died after sending its headers.

SeaweedFS stores such a PUT as an empty object (a PUT that sent part of its body leaves nothing),
and a writer SIGKILLed at that moment leaves one at its next segment key, or at lock.json while
renewing. Nothing peewee-s3 stores is empty, so an empty object is a torn upload: it reads as
absent, ends a generation's lineage where it stands (its writer never got past it), and the next
create of its key takes its place. Each test tears a real PUT on a real SeaweedFS, the way a
killed process does: headers sent, connection closed.
"""
import socket
import time
from urllib.parse import urlparse

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bench.processes import KEY, SECRET
from peewee_s3 import S3SqliteReplica, restore
from peewee_s3.errors import LeaseLostError, TornObjectError
from peewee_s3.layout import Layout
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, bodies, make_db, rows_in_file


@pytest.fixture
def seaweed_kwargs(seaweed_endpoint, make_bucket, s3_kwargs):
    return s3_kwargs(seaweed_endpoint, make_bucket(seaweed_endpoint))


def tear(kwargs: dict, key: str) -> None:
    """A PUT of `key` whose client dies after its headers, as a SIGKILLed writer's would."""
    endpoint = urlparse(kwargs["endpoint_url"])
    path = f"/{kwargs['storage'].removeprefix('s3://')}/{key}"
    request = AWSRequest("PUT", f"{kwargs['endpoint_url']}{path}", data=b"x" * 1000,
                         headers={"Content-Length": "1000",
                                  "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(Credentials(KEY, SECRET), "s3", "us-east-1").add_auth(request)
    head = f"PUT {path} HTTP/1.1\r\nHost: {endpoint.netloc}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request.headers.items()) + "\r\n"
    with socket.create_connection((endpoint.hostname, endpoint.port)) as conn:
        conn.sendall(head.encode())
        time.sleep(0.2)                   # the server has begun the upload
    with open_storage(**kwargs) as storage:
        deadline = time.monotonic() + 10
        while not any(o.key == key and o.size == 0 for o in storage.list(key)):
            assert time.monotonic() < deadline, f"SeaweedFS kept no torn object at {key}"
            time.sleep(0.05)


def next_segment(db) -> str:
    """The key the writer's next shipment creates."""
    position = db.status()["position"]
    return Layout(NAME).segment(position["generation"], position["seq"] + 1)


def writer_with_rows(tmp_path, kwargs, *rows, **options):
    db = make_db(tmp_path / "a.db", kwargs, sync_mode="sync", **options)
    db.create_tables([Note])
    for body in rows:
        Note.create(body=body)
    return db


def test_a_torn_segment_after_the_last_reads_as_the_end_of_the_generation(tmp_path,
                                                                          seaweed_kwargs):
    db = writer_with_rows(tmp_path, seaweed_kwargs, "one", "two")
    key = next_segment(db)
    tear(seaweed_kwargs, key)
    with open_storage(**seaweed_kwargs) as storage, pytest.raises(TornObjectError):
        storage.read(key)
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **seaweed_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["one", "two"]
    db.shutdown()


def test_a_writer_killed_mid_upload_is_fenced_behind_its_torn_segment(tmp_path, seaweed_kwargs):
    first = writer_with_rows(tmp_path, seaweed_kwargs, "one", "two")
    tear(seaweed_kwargs, next_segment(first))     # where its next commit would have gone
    second = make_db(tmp_path / "b.db", seaweed_kwargs, sync_mode="sync", force_lock=True)
    second.connect()
    assert bodies(second) == ["one", "two"]
    Note.bind(first)
    with pytest.raises(LeaseLostError):           # the new holder's fence took the torn key
        Note.create(body="stale")
    Note.bind(second)
    Note.create(body="three")
    second.shutdown()
    first.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **seaweed_kwargs)
    assert sorted(rows_in_file(tmp_path / "r.db")) == ["one", "three", "two"]


def test_a_writer_whose_own_upload_tore_overwrites_it_and_goes_on(tmp_path, seaweed_kwargs):
    # Its connection broke after the headers, and botocore's retry meets the torn object.
    db = writer_with_rows(tmp_path, seaweed_kwargs, "one")
    tear(seaweed_kwargs, next_segment(db))
    Note.create(body="two")
    db.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **seaweed_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["one", "two"]


def test_a_torn_lock_json_is_taken_as_missing(tmp_path, seaweed_kwargs):
    first = writer_with_rows(tmp_path, seaweed_kwargs, "one")
    tear(seaweed_kwargs, Layout(NAME).lock)      # its holder died renewing the lease
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **seaweed_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["one"]
    second = make_db(tmp_path / "b.db", seaweed_kwargs, sync_mode="sync")
    second.connect()                              # no LeaseHeldError, no corrupt lock.json
    assert bodies(second) == ["one"]
    Note.create(body="two")
    second.shutdown()
    first.shutdown()                              # fenced: it releases nothing
    restore(target=str(tmp_path / "r2.db"), database_name=NAME, **seaweed_kwargs)
    assert rows_in_file(tmp_path / "r2.db") == ["one", "two"]


def test_a_replica_stops_at_a_torn_segment_and_follows_the_next_writer(tmp_path,
                                                                       seaweed_kwargs):
    first = writer_with_rows(tmp_path, seaweed_kwargs, "one")
    replica = S3SqliteReplica(str(tmp_path / "replica.db"), database_name=NAME,
                              poll_interval=0.05, **seaweed_kwargs)
    try:
        tear(seaweed_kwargs, next_segment(first))
        second = make_db(tmp_path / "b.db", seaweed_kwargs, sync_mode="sync", force_lock=True)
        second.connect()
        Note.bind(second)
        Note.create(body="two")
        deadline = time.monotonic() + 20
        while replica.execute_sql("SELECT count(*) FROM note").fetchone()[0] < 2:
            assert time.monotonic() < deadline, "the replica did not follow the new writer"
            time.sleep(0.05)
        assert [r[0] for r in replica.execute_sql("SELECT body FROM note ORDER BY id")] == \
            ["one", "two"]
        second.shutdown()
    finally:
        replica.shutdown()
        first.shutdown()
