"""Several database objects on one file share its session: one lease, one replicator; the last
one out ships and releases."""
import threading

import peewee
import pytest

from peewee_s3 import S3SqliteDatabase, restore
from peewee_s3.errors import ConfigurationError

from .helpers import NAME, rows_in_file


def database(path, storage_kwargs, **options):
    db = S3SqliteDatabase(str(path), database_name=NAME, **storage_kwargs, **options)

    class Note(peewee.Model):
        body = peewee.TextField()

        class Meta:
            database = db
    return db, Note


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_four_objects_on_one_file_all_write_and_every_row_is_restored(tmp_path, storage_kwargs,
                                                                      mode):
    objects = [database(tmp_path / "a.db", storage_kwargs, sync_mode=mode) for _ in range(4)]
    objects[0][0].create_tables([objects[0][1]])
    acknowledged = []

    def write(index):
        db, Note = objects[index]
        for i in range(25):
            Note.create(body=f"{index}-{i:02}")
            acknowledged.append(f"{index}-{i:02}")
        db.close()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({db.status()["generation"] for db, _ in objects}) == 1
    for db, _ in objects[1:]:
        db.shutdown()                       # the others leave; the session stays
    assert objects[0][0].status()["open"] is True
    if mode == "sync":
        restore(target=str(tmp_path / "mid.db"), database_name=NAME, **storage_kwargs)
        assert sorted(acknowledged) == rows_in_file(tmp_path / "mid.db")
    objects[0][0].shutdown()                # the last one ships and releases
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage_kwargs)
    assert sorted(acknowledged) == rows_in_file(tmp_path / "r.db")
    again, _ = database(tmp_path / "b.db", storage_kwargs)
    again.connect()                          # released: taken at once
    again.shutdown()


def test_a_second_object_naming_another_database_for_the_same_file_is_refused(tmp_path):
    first, _ = database(tmp_path / "a.db", {"storage": f"file://{tmp_path}/one"})
    first.connect()
    other = S3SqliteDatabase(str(tmp_path / "a.db"), database_name="other",
                             storage=f"file://{tmp_path}/one")
    with pytest.raises(ConfigurationError, match="already replicated"):
        other.connect()
    first.shutdown()
