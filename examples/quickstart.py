"""peewee-s3 quickstart: replicate a SQLite database, lose the file, get it back.

Runs as-is with no server: the storage is a local directory in a temporary folder, which is
removed at the end. To run it against S3 or an S3-compatible server instead:

    PEEWEE_S3_STORAGE=s3://my-bucket/demo python examples/quickstart.py
    PEEWEE_S3_STORAGE=s3://my-bucket PEEWEE_S3_ENDPOINT_URL=http://127.0.0.1:9000 \
        AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... python examples/quickstart.py

Credentials come from boto's default chain (AWS_* variables, ~/.aws, an instance role). The
replica left in a bucket is continued by the next run: its first connect restores it.
"""
import datetime
import json
import os
import shutil
import sqlite3
import tempfile
import time

import peewee

import peewee_s3
from peewee_s3 import S3SqliteDatabase

workdir = tempfile.mkdtemp(prefix="peewee-s3-quickstart-")
local_file = os.path.join(workdir, "quickstart.db")
storage = os.environ.get("PEEWEE_S3_STORAGE") or f"file://{workdir}/storage"
endpoint_url = os.environ.get("PEEWEE_S3_ENDPOINT_URL")
# The storage options, shared by the database and by restore().
replica = dict(storage=storage, database_name="quickstart")
if endpoint_url:  # MinIO, SeaweedFS, R2, ...: a custom endpoint, path-style addressing
    replica.update(endpoint_url=endpoint_url, force_path_style=True)

db = S3SqliteDatabase(local_file, **replica)


class Note(peewee.Model):
    text = peewee.TextField()
    created = peewee.DateTimeField(default=datetime.datetime.now)

    class Meta:
        database = db


def remove_local_file(path):
    """The database file, its WAL and shared memory, and the peewee-s3 sidecar beside it."""
    for suffix in ("", "-wal", "-shm", ".peewee-s3.json"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def rows_of(path):
    """The notes in a database file, read with plain sqlite3."""
    with sqlite3.connect(path) as conn:
        return [text for (text,) in conn.execute("SELECT text FROM note ORDER BY id")]


try:
    print(f"local file: {local_file}\nstorage:    {storage}\n")

    # 1. Connect (takes the lease, starts the replicator) and write. Every commit is shipped
    #    in the background within sync_interval (1 s); db.sync() waits until it is durable.
    db.connect()
    db.create_tables([Note])
    earlier = Note.select().count()
    if earlier:
        print(f"the storage already held {earlier} notes: they were restored at connect\n")
    for text in ("buy milk", "write the report"):
        Note.create(text=text)
    db.sync()
    before_last_note = time.time()
    time.sleep(0.1)
    with db.atomic():
        Note.create(text="call the bank")
    written = [note.text for note in Note.select().order_by(Note.id)]
    print("status:", json.dumps(db.status(), indent=2), "\n")

    # 2. Shut down: ships what is pending and releases the lease.
    #    (It also runs at interpreter exit.) Then lose the local file.
    db.close()
    db.shutdown()
    remove_local_file(local_file)
    print(f"shut down and deleted {os.path.basename(local_file)}\n")

    # 3. Restore from the storage alone, into another file: the latest state ...
    restored = peewee_s3.restore(target=os.path.join(workdir, "restored.db"), **replica)
    print(f"restored generation {restored.generation} into {restored.path}:")
    print("  ", rows_of(restored.path))
    assert rows_of(restored.path) == written

    # ... or the state at a point in time (here: before the last note was written).
    at = datetime.datetime.fromtimestamp(before_last_note, datetime.timezone.utc)
    earlier_state = peewee_s3.restore(target=os.path.join(workdir, "earlier.db"),
                                      timestamp=at, **replica)
    print(f"restored the state at {at.isoformat(timespec='seconds')}:")
    print("  ", rows_of(earlier_state.path))
    assert rows_of(earlier_state.path) == written[:-1]

    # 4. Reopen the database: its local file is missing, so connect() restores it.
    db.connect()
    print("reopened; connect() restored the local file:")
    print("  ", [note.text for note in Note.select().order_by(Note.id)])
    assert [note.text for note in Note.select().order_by(Note.id)] == written
    db.close()
    db.shutdown()
finally:
    db.shutdown()  # harmless if already done
    shutil.rmtree(workdir, ignore_errors=True)
