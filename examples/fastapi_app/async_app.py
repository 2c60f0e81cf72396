"""The todo API of app.py with `async def` endpoints, on AsyncS3SqliteDatabase (peewee 4).

    uvicorn --app-dir examples/fastapi_app async_app:app
    # or: python examples/fastapi_app/async_app.py
    uvicorn --workers 4 --app-dir examples/fastapi_app async_app:app    # four processes

Needs `pip install 'peewee-s3[async,metrics]'`. Serves the replication's Prometheus metrics at
/metrics, as app.py does. The same environment variables as app.py: PEEWEE_S3_STORAGE (e.g. s3://my-bucket/todo), PEEWEE_S3_ENDPOINT_URL,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and PEEWEE_S3_DATA_DIR for the local file.
"""
import contextlib
import datetime
import os
import tempfile

import peewee
from fastapi import FastAPI, HTTPException, Response
from playhouse.pwasyncio import AsyncModel
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from peewee_s3 import AsyncS3SqliteDatabase
from peewee_s3.metrics import Collector

DATA_DIR = os.environ.get("PEEWEE_S3_DATA_DIR") or os.path.join(
    tempfile.gettempdir(), "peewee-s3-examples", "fastapi-async")
os.makedirs(DATA_DIR, exist_ok=True)
STORAGE = dict(storage=os.environ.get("PEEWEE_S3_STORAGE") or f"file://{DATA_DIR}/storage",
               database_name="todo")
if os.environ.get("PEEWEE_S3_ENDPOINT_URL"):  # an S3-compatible server: path-style addressing
    STORAGE.update(endpoint_url=os.environ["PEEWEE_S3_ENDPOINT_URL"], force_path_style=True)
# "process": replication in a helper process beside the workers, not in the first of them.
STORAGE["replicator"] = os.environ.get("PEEWEE_S3_REPLICATOR", "thread")

# sync: an awaited write resumes once it is durable in the storage, so an acknowledged todo is
# never lost; while it waits, the event loop serves the other requests.
db = AsyncS3SqliteDatabase(os.path.join(DATA_DIR, "todo.db"), sync_mode="sync", **STORAGE)


class Todo(AsyncModel):
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


# Read from db.status() at each scrape: no storage request, nothing that waits.
metrics = CollectorRegistry()
metrics.register(Collector(db))


@contextlib.asynccontextmanager
async def lifespan(app):
    # The first query takes the lease, restores the file if needed and starts replicating;
    # ashutdown() closes the connections, ships what is pending and releases the lease. Both
    # wait for the storage in a thread. Without ashutdown() the process would not exit:
    # aiosqlite's connection threads keep it alive.
    await db.acreate_tables([Todo])
    yield
    await db.ashutdown()


app = FastAPI(title="peewee-s3 todo (asyncio)", lifespan=lifespan)

# Each request is a task, and pwasyncio gives each task its own pooled connection, returned
# to the pool when the task ends: no connection_context() needed.


@app.get("/todos")
async def list_todos():
    return [todo.to_json() for todo in await db.list(Todo.select().order_by(Todo.id))]


@app.post("/todos", status_code=201)
async def create_todo(new: NewTodo):
    if not new.title.strip():
        raise HTTPException(400, 'send {"title": "..."}')
    return (await Todo.acreate(title=new.title.strip())).to_json()


@app.post("/todos/{todo_id}/complete")
async def complete_todo(todo_id: int):
    todo = await Todo.aget_or_none(Todo.id == todo_id)
    if todo is None:
        raise HTTPException(404, f"no todo {todo_id}")
    todo.done = True
    await todo.asave()
    return todo.to_json()


@app.get("/status")
async def replication_status():
    return db.status()


@app.get("/metrics")
async def prometheus_metrics():
    return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)


if __name__ == "__main__":
    import uvicorn

    print(f"local file {db.database}, storage {STORAGE['storage']}")
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
