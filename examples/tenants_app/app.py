"""A notes API on Flask with a database per tenant, each replicated by peewee-s3.

    python examples/tenants_app/app.py          # http://127.0.0.1:5000/notes

The tenant comes from the `X-Tenant` header, or else from the first label of the host name
(`acme.notes.example` -> `acme`): each has its own SQLite file `<tenant>.db`, replicated as
database_name `<tenant>`, made (or restored from storage) at its first request and shut down
after IDLE_SECONDS without one. Runs as-is on a local directory as the storage; for S3 set
PEEWEE_S3_STORAGE (e.g. s3://my-bucket/notes), PEEWEE_S3_ENDPOINT_URL (MinIO, R2, SeaweedFS) and
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. PEEWEE_S3_DATA_DIR is where the local files live.
"""
import datetime
import os
import signal
import sys
import tempfile
import threading
import time

import peewee
from flask import Flask, abort, g, jsonify, request

from peewee_s3 import ConfigurationError, Tenants

DATA_DIR = os.environ.get("PEEWEE_S3_DATA_DIR") or os.path.join(
    tempfile.gettempdir(), "peewee-s3-examples", "tenants")
os.makedirs(os.path.join(DATA_DIR, "tenants"), exist_ok=True)
STORAGE = dict(storage=os.environ.get("PEEWEE_S3_STORAGE") or f"file://{DATA_DIR}/storage")
if os.environ.get("PEEWEE_S3_ENDPOINT_URL"):  # an S3-compatible server: path-style addressing
    STORAGE.update(endpoint_url=os.environ["PEEWEE_S3_ENDPOINT_URL"], force_path_style=True)
IDLE_SECONDS = 600  # a tenant's database is shut down after this long without a request

# Every tenant's database shares the process's few replication threads and one storage client,
# however many tenants there are. sync: a note is durable in the storage when its POST returns.
tenants = Tenants(os.path.join(DATA_DIR, "tenants"), sync_mode="sync", key_prefix="tenants",
                  **STORAGE)


class Note(peewee.Model):
    text = peewee.TextField()
    created = peewee.DateTimeField(default=datetime.datetime.now)

    def to_json(self):
        return {"id": self.id, "text": self.text,
                "created": self.created.isoformat(timespec="seconds")}


# A model class per tenant's database (binding one class to another database per request
# would race between threads), made with its table at the tenant's first request, and made
# anew for the new database object after an idle one was shut down. `_models_lock` guards it.
_models: dict = {}
_models_lock = threading.Lock()


def notes_of(name, db):
    with _models_lock:
        model = _models.get(name)
        if model is None or model._meta.database is not db:
            meta = type("Meta", (), {"database": db, "table_name": "note"})
            model = _models[name] = type("Note", (Note,), {"Meta": meta})
            db.create_tables([model])
        return model


app = Flask(__name__)
_last_sweep = [time.monotonic()]


def tenant_name():
    """The X-Tenant header, or the subdomain: acme.notes.example (or acme.localhost)."""
    host = request.host.split(":")[0]
    subdomain = "." in host and not host.replace(".", "").isdigit()  # not 127.0.0.1
    name = request.headers.get("X-Tenant") or (host.split(".")[0] if subdomain else None)
    if not name:
        abort(400, description="say which tenant: an X-Tenant header, or a subdomain")
    return name


@app.before_request
def open_tenant():
    name = tenant_name()
    try:
        g.db = tenants.database(name)
    except ConfigurationError as exc:
        abort(400, description=str(exc))
    g.db.connect(reuse_if_open=True)  # the first one opens the tenant's session
    g.Note = notes_of(name, g.db)


@app.teardown_request
def close_tenant(exc):
    db = g.pop("db", None)
    if db is not None and not db.is_closed():
        db.close()
    if time.monotonic() - _last_sweep[0] > 60:  # now and then, idle tenants are let go
        _last_sweep[0] = time.monotonic()
        tenants.close_idle(IDLE_SECONDS)


@app.get("/notes")
def list_notes():
    return jsonify([note.to_json() for note in g.Note.select().order_by(g.Note.id)])


@app.post("/notes")
def create_note():
    text = (request.get_json(silent=True) or {}).get("text")
    if not isinstance(text, str) or not text.strip():
        abort(400, description='send {"text": "..."}')
    return jsonify(g.Note.create(text=text.strip()).to_json()), 201


@app.get("/status")
def replication_status():
    return jsonify(g.db.status())


if __name__ == "__main__":
    # Python runs no exit handler when killed by SIGTERM: turn it into an exit, so that
    # tenants.shutdown() below runs when a process manager stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"tenants' files in {tenants.directory}, storage {STORAGE['storage']}")
    try:
        app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), use_reloader=False)
    finally:
        tenants.shutdown()
