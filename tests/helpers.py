"""Shared test helpers: a model, a database factory and storage readers."""
import sqlite3

import peewee

from peewee_s3 import S3SqliteDatabase
from peewee_s3.storage import open_storage

NAME = "app"


class Note(peewee.Model):
    body = peewee.TextField()


def make_db(path, storage_kwargs, **options):
    options.setdefault("database_name", NAME)
    db = S3SqliteDatabase(str(path), **storage_kwargs, **options)
    db.bind([Note])
    return db


def bodies(db):
    Note.bind(db)
    return sorted(n.body for n in Note.select())


def rows_in_file(path):
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return sorted(r[0] for r in conn.execute("SELECT body FROM note"))
    finally:
        conn.close()


def stored_keys(storage_kwargs, prefix=NAME + "/"):
    with open_storage(**storage_kwargs) as storage:
        return {info.key: info.size for info in storage.list(prefix)}
