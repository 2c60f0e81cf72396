"""Ranged downloads: several GETs at once for a large snapshot, the same bytes in order."""
import hashlib
import io
import os

import pytest

from peewee_s3 import ranges, restore
from peewee_s3.config import Options
from peewee_s3.errors import ConfigurationError
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, make_db, rows_in_file


@pytest.mark.parametrize("endpoint, streams", [
    ("http://127.0.0.1:9000", 1), ("http://localhost:8333", 1), ("http://[::1]:9000", 1),
    ("https://s3.eu-west-1.amazonaws.com", ranges.REMOTE_STREAMS),
    ("https://acct.r2.cloudflarestorage.com", ranges.REMOTE_STREAMS),
    ("http://10.0.0.5:9000", ranges.REMOTE_STREAMS), (None, ranges.REMOTE_STREAMS),
])
def test_the_default_number_of_streams_follows_the_endpoint(endpoint, streams):
    assert ranges.default_streams(endpoint) == streams


@pytest.mark.parametrize("streams", [1, 3, 8])
def test_a_large_object_comes_back_whole_and_in_order(moto_endpoint, make_bucket, s3_kwargs,
                                                      monkeypatch, streams):
    monkeypatch.setattr(ranges, "RANGE_PART", 256 << 10)
    data = os.urandom((5 << 20) + 12345)  # 20 parts and a short one
    reads = []
    with open_storage(**s3_kwargs(moto_endpoint, make_bucket(moto_endpoint)),
                      download_streams=streams) as storage:
        storage.write("big", data)
        original = storage._read_range
        monkeypatch.setattr(storage, "_read_range",
                            lambda *args: reads.append(args) or original(*args))
        out = io.BytesIO()
        assert storage.download("big", out) == len(data)
    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest()
    assert len(reads) == (0 if streams == 1 else 21)


def test_a_restore_with_parallel_streams_is_the_same_database(tmp_path, moto_endpoint,
                                                              make_bucket, s3_kwargs,
                                                              monkeypatch):
    monkeypatch.setattr(ranges, "RANGE_PART", 64 << 10)
    kwargs = s3_kwargs(moto_endpoint, make_bucket(moto_endpoint))
    db = make_db(tmp_path / "a.db", kwargs, sync_mode="sync")
    db.create_tables([Note])
    with db.atomic():
        for i in range(400):
            Note.create(body=f"{i:04d}" + "x" * 1000)
    db.snapshot()
    Note.create(body="after the snapshot")
    state = restore(target=str(tmp_path / "r.db"), database_name=NAME, download_streams=4,
                    **kwargs)
    assert state.commits == 1
    assert len(rows_in_file(tmp_path / "r.db")) == 401
    db.shutdown()


@pytest.mark.parametrize("value", [0, 65, "4", True, 2.5])
def test_download_streams_must_be_a_small_positive_integer(value):
    with pytest.raises(ConfigurationError, match="download_streams"):
        Options(storage="file:///tmp/x", database_name="db", download_streams=value)
