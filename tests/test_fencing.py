"""Two writers on one database: the second waits or is refused; a writer taken over is fenced."""
import pytest

from peewee_s3 import restore
from peewee_s3.errors import LeaseHeldError, LeaseLostError

from .helpers import NAME, Note, bodies, make_db, rows_in_file, stored_keys


def test_a_second_writer_is_refused_until_the_first_shuts_down(tmp_path, storage_kwargs):
    first = make_db(tmp_path / "a.db", storage_kwargs)
    first.create_tables([Note])
    Note.create(body="first")
    second = make_db(tmp_path / "b.db", storage_kwargs)
    with pytest.raises(LeaseHeldError, match="held by"):
        second.connect()
    assert not (tmp_path / "b.db").exists()
    first.shutdown()
    assert bodies(second) == ["first"]
    second.shutdown()


def test_a_writer_taken_over_is_fenced_and_uploads_nothing_more(tmp_path, storage_kwargs):
    first = make_db(tmp_path / "a.db", storage_kwargs, sync_mode="sync")
    first.create_tables([Note])
    Note.create(body="before")
    old_generation = first.status()["generation"]
    second = make_db(tmp_path / "b.db", storage_kwargs, force_lock=True)
    second.connect()
    keys_after_takeover = stored_keys(storage_kwargs, f"{NAME}/generations/{old_generation}/")

    Note.bind(first)
    with pytest.raises(LeaseLostError, match="lost the lease"):
        Note.create(body="stale")
    with pytest.raises(LeaseLostError):
        Note.create(body="staler")
    assert first.status()["fenced"] is True
    first.shutdown()          # releases nothing, raises nothing

    assert stored_keys(storage_kwargs, f"{NAME}/generations/{old_generation}/") \
        == keys_after_takeover
    assert second.status()["generation"] != old_generation
    assert bodies(second) == ["before"]
    Note.create(body="second")
    second.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert rows_in_file(tmp_path / "r.db") == ["before", "second"]


def test_an_async_writer_taken_over_is_fenced_at_its_next_shipment(tmp_path, storage_kwargs):
    first = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=30)
    first.create_tables([Note])
    Note.create(body="not shipped yet")
    second = make_db(tmp_path / "b.db", storage_kwargs, force_lock=True)
    second.connect()
    Note.bind(first)
    with pytest.raises(LeaseLostError):
        first.sync()
    with pytest.raises(LeaseLostError):
        Note.create(body="refused")
    first.shutdown()
    second.shutdown()
