"""A tiny todo API on Flask whose SQLite database is replicated by peewee-s3.

    python examples/flask_app/app.py            # http://127.0.0.1:5000/todos, /metrics

Runs as-is on a local directory as the storage; for S3 or an S3-compatible server set
PEEWEE_S3_STORAGE (e.g. s3://my-bucket/todo), PEEWEE_S3_ENDPOINT_URL (MinIO, R2, SeaweedFS) and
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. PEEWEE_S3_DATA_DIR is where the local file lives.
"""
import datetime
import os
import signal
import sys
import tempfile

import peewee
from flask import Flask, Response, abort, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from peewee_s3 import S3SqliteDatabase
from peewee_s3.metrics import Collector

DATA_DIR = os.environ.get("PEEWEE_S3_DATA_DIR") or os.path.join(
    tempfile.gettempdir(), "peewee-s3-examples", "flask")
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


app = Flask(__name__)

# Prometheus metrics of the replication, read from db.status() at each scrape (no storage
# request). A registry of the app's own; `REGISTRY.register(Collector(db))` works as well.
metrics = CollectorRegistry()
metrics.register(Collector(db))

# The first connect takes the lease, restores the file if needed and starts replicating; the
# session outlives every per-request connection. db.shutdown() (registered at exit by the
# first connect as well) ships what is pending, snapshots and releases the lease.
with db.connection_context():
    db.create_tables([Todo])


@app.before_request
def connect():
    db.connect(reuse_if_open=True)


@app.teardown_request
def close(exc):
    if not db.is_closed():
        db.close()


@app.get("/todos")
def list_todos():
    return jsonify([todo.to_json() for todo in Todo.select().order_by(Todo.id)])


@app.post("/todos")
def create_todo():
    title = (request.get_json(silent=True) or {}).get("title")
    if not isinstance(title, str) or not title.strip():
        abort(400, description='send {"title": "..."}')
    return jsonify(Todo.create(title=title.strip()).to_json()), 201


@app.post("/todos/<int:todo_id>/complete")
def complete_todo(todo_id):
    todo = Todo.get_or_none(Todo.id == todo_id)
    if todo is None:
        abort(404, description=f"no todo {todo_id}")
    todo.done = True
    todo.save()
    return jsonify(todo.to_json())


@app.get("/status")
def replication_status():
    return jsonify(db.status())


@app.get("/metrics")
def prometheus_metrics():
    return Response(generate_latest(metrics), content_type=CONTENT_TYPE_LATEST)


if __name__ == "__main__":
    # Python runs no exit handler when killed by SIGTERM: turn it into an exit, so that
    # db.shutdown() below runs when a process manager stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"local file {db.database}, storage {STORAGE['storage']}")
    try:
        app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), use_reloader=False)
    finally:
        db.shutdown()
