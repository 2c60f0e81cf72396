"""A tiny todo API on FastAPI whose SQLite database is replicated by peewee-s3.

    uvicorn --app-dir examples/fastapi_app app:app      # or: python examples/fastapi_app/app.py
    uvicorn --workers 4 --app-dir examples/fastapi_app app:app    # one file, four processes

It serves Prometheus metrics of the replication at /metrics.

Runs as-is on a local directory as the storage; for S3 or an S3-compatible server set
PEEWEE_S3_STORAGE (e.g. s3://my-bucket/todo), PEEWEE_S3_ENDPOINT_URL (MinIO, R2, SeaweedFS) and
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. PEEWEE_S3_DATA_DIR is where the local file lives.
"""
import contextlib
import datetime
import os
import tempfile

import peewee
from fastapi import FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from peewee_s3 import S3SqliteDatabase
from peewee_s3.metrics import Collector

DATA_DIR = os.environ.get("PEEWEE_S3_DATA_DIR") or os.path.join(
    tempfile.gettempdir(), "peewee-s3-examples", "fastapi")
os.makedirs(DATA_DIR, exist_ok=True)
STORAGE = dict(storage=os.environ.get("PEEWEE_S3_STORAGE") or f"file://{DATA_DIR}/storage",
               database_name="todo")
if os.environ.get("PEEWEE_S3_ENDPOINT_URL"):  # an S3-compatible server: path-style addressing
    STORAGE.update(endpoint_url=os.environ["PEEWEE_S3_ENDPOINT_URL"], force_path_style=True)
# "process": replication in a helper process beside the workers, not in the first of them.
STORAGE["replicator"] = os.environ.get("PEEWEE_S3_REPLICATOR", "thread")

# sync: a write returns once it is durable in the storage, so an acknowledged todo is never lost.
db = S3SqliteDatabase(os.path.join(DATA_DIR, "todo.db"), sync_mode="sync", **STORAGE)


class Todo(peewee.Model):
    title = peewee.TextField()
    done = peewee.BooleanField(default=False)
    created = peewee.DateTimeField(default=datetime.datetime.now)

    class Meta:
        database = db

    def to_json(self):
        return {"id": self.id, "title": self.title, "done": self.done,
                "created": self.created.isoformat(timespec="seconds")}


class NewTodo(BaseModel):
    title: str


@contextlib.asynccontextmanager
async def lifespan(app):
    # The first connect takes the lease, restores the file if needed and starts replicating
    # (under `uvicorn --workers N`, in the first worker; the others write as members);
    # shutdown() ships what is pending and releases the lease (a member just leaves).
    with db.connection_context():
        db.create_tables([Todo])
    yield
    db.shutdown()


app = FastAPI(title="peewee-s3 todo", lifespan=lifespan)

# Prometheus metrics of the replication, read from db.status() at each scrape (no storage
# request). A registry of the app's own; `REGISTRY.register(Collector(db))` works as well.
metrics = CollectorRegistry()
metrics.register(Collector(db))

# The endpoints are plain `def`s: FastAPI runs each one in a worker thread, and
# `connection_context()` opens and closes that thread's connection around the request (the
# replication session stays open).


@app.get("/todos")
def list_todos():
    with db.connection_context():
        return [todo.to_json() for todo in Todo.select().order_by(Todo.id)]


@app.post("/todos", status_code=201)
def create_todo(new: NewTodo):
    if not new.title.strip():
        raise HTTPException(400, 'send {"title": "..."}')
    with db.connection_context():
        return Todo.create(title=new.title.strip()).to_json()


@app.post("/todos/{todo_id}/complete")
def complete_todo(todo_id: int):
    with db.connection_context():
        todo = Todo.get_or_none(Todo.id == todo_id)
        if todo is None:
            raise HTTPException(404, f"no todo {todo_id}")
        todo.done = True
        todo.save()
        return todo.to_json()


@app.get("/status")
def replication_status():
    return db.status()


@app.get("/metrics")
def prometheus_metrics():
    return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)


if __name__ == "__main__":
    import uvicorn

    print(f"local file {db.database}, storage {STORAGE['storage']}")
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
