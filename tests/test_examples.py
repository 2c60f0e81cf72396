"""The examples run as shipped: the web apps through their test clients (and the Flask one as a
server, scraped over HTTP), the scripts as processes, on a local directory by default and on S3
(moto) through the environment variables."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST

from peewee_s3 import restore

from .conftest import _free_ports
from .test_metrics import Exposition

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture(params=["file", "moto"])
def example_env(request, tmp_path, monkeypatch):
    """The environment an example reads: its data directory, and the storage when on S3."""
    monkeypatch.setenv("PEEWEE_S3_DATA_DIR", str(tmp_path / "data"))
    if request.param == "file":
        monkeypatch.delenv("PEEWEE_S3_STORAGE", raising=False)
        monkeypatch.delenv("PEEWEE_S3_ENDPOINT_URL", raising=False)
        return {"storage": f"file://{tmp_path}/data/storage"}
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = request.getfixturevalue("make_bucket")(endpoint)
    for name, value in {"PEEWEE_S3_STORAGE": f"s3://{bucket}/todo",
                        "PEEWEE_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    return request.getfixturevalue("s3_kwargs")(endpoint, bucket) | {
        "storage": f"s3://{bucket}/todo"}


def load_example(relative_path):
    """Import an example file afresh, as running it would (its module code connects)."""
    name = f"example_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exercise_the_todo_api(get, post):
    """The same conversation with either app: list, create, complete, and the errors."""
    assert get("/todos") == (200, [])
    status, created = post("/todos", {"title": "  write the tests "})
    assert status == 201 and created["title"] == "write the tests" and created["done"] is False
    assert post("/todos", {"title": "ship it"})[0] == 201
    status, completed = post(f"/todos/{created['id']}/complete", None)
    assert status == 200 and completed["done"] is True
    assert post("/todos/999/complete", None)[0] == 404
    assert post("/todos", {"title": " "})[0] == 400
    status, todos = get("/todos")
    assert [(t["title"], t["done"]) for t in todos] == [("write the tests", True),
                                                        ("ship it", False)]
    status, replication = get("/status")
    assert status == 200 and replication["open"] and replication["pending_commits"] == 0


def assert_the_metrics_of_the_todo_database(text):
    """What /metrics serves after the conversation above: the todo database's replication."""
    shown = Exposition(text)
    todo = {"database_name": "todo"}
    assert shown.value("peewee_s3_session_open", **todo) == 1
    assert shown.value("peewee_s3_pending_commits", **todo) == 0           # sync mode
    assert shown.value("peewee_s3_replication_lag_seconds", **todo) == 0
    assert shown.value("peewee_s3_uploaded_bytes_total", **todo) > 0
    assert shown.total("peewee_s3_uploaded_objects_total", **todo) >= 3    # the three writes
    assert shown.value("peewee_s3_errors_total", kind="StorageError", **todo) == 0
    assert shown.value("peewee_s3_lease_expiry_timestamp_seconds", **todo) > time.time()
    assert shown.value("peewee_s3_last_snapshot_timestamp_seconds", **todo) <= time.time()
    assert {s.labels["database_name"] for s in shown.samples} == {"todo"}


def titles_in_storage(tmp_path, storage):
    import sqlite3

    state = restore(target=str(tmp_path / f"check-{uuid.uuid4().hex}.db"), database_name="todo",
                    **storage)
    with sqlite3.connect(state.path) as conn:
        return [title for (title,) in conn.execute("SELECT title FROM todo ORDER BY id")]


def test_the_flask_example_serves_its_todo_api(tmp_path, example_env):
    example = load_example("flask_app/app.py")
    client = example.app.test_client()

    def get(path):
        response = client.get(path)
        return response.status_code, response.get_json()

    def post(path, body):
        response = client.post(path, json=body) if body is not None else client.post(path)
        return response.status_code, response.get_json()

    exercise_the_todo_api(get, post)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.content_type == CONTENT_TYPE_LATEST
    assert_the_metrics_of_the_todo_database(metrics.get_data(as_text=True))
    assert example.db.is_closed()  # every request closed its connection; the session lives on
    example.db.shutdown()
    assert titles_in_storage(tmp_path, example_env) == ["write the tests", "ship it"]


def test_the_fastapi_example_serves_its_todo_api(tmp_path, example_env):
    example = load_example("fastapi_app/app.py")
    with TestClient(example.app) as client:  # runs the lifespan: connect ... shutdown
        def get(path):
            response = client.get(path)
            return response.status_code, response.json()

        def post(path, body):
            response = client.post(path, json=body) if body is not None else client.post(path)
            return response.status_code, response.json()

        exercise_the_todo_api(get, post)
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"] == CONTENT_TYPE_LATEST
        assert_the_metrics_of_the_todo_database(metrics.text)
    assert example.db.status()["open"] is False  # the lifespan shut it down
    assert titles_in_storage(tmp_path, example_env) == ["write the tests", "ship it"]


def test_the_tenants_example_keeps_a_database_per_tenant(tmp_path, example_env):
    example = load_example("tenants_app/app.py")
    client = example.app.test_client()
    note = {"text": "call globex"}
    assert client.post("/notes", json=note, headers={"X-Tenant": "acme"}).status_code == 201
    assert client.post("/notes", json={"text": "hi"},
                       base_url="http://globex.localhost").status_code == 201
    acme = client.get("/notes", base_url="http://acme.localhost").get_json()
    assert [n["text"] for n in acme] == ["call globex"]
    assert [n["text"] for n in client.get("/notes", headers={"X-Tenant": "globex"}).get_json()
            ] == ["hi"]
    assert client.get("/notes").status_code == 400                       # no tenant named
    assert client.get("/notes", headers={"X-Tenant": "../x"}).status_code == 400
    assert example.tenants.names() == ["acme", "globex"]
    example.tenants.shutdown()
    storage = {**example_env, "key_prefix": "tenants"}
    state = restore(target=str(tmp_path / "acme.db"), database_name="acme", **storage)
    import sqlite3
    with sqlite3.connect(state.path) as conn:
        assert conn.execute("SELECT text FROM note").fetchall() == [("call globex",)]


def test_the_running_flask_example_serves_metrics_over_http(tmp_path, example_env):
    port = _free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w+")
    server = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "flask_app", "app.py")],
                              env=dict(os.environ, PORT=str(port)), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:                                   # up once it answers
            try:
                urllib.request.urlopen(f"{base}/todos", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.monotonic() < deadline, \
                    _server_log(log)
                time.sleep(0.1)
        for title in ("scrape me", "and me"):
            created = urllib.request.Request(
                f"{base}/todos", data=json.dumps({"title": title}).encode(), method="POST",
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(created, timeout=30) as answer:
                assert answer.status == 201
        urllib.request.urlopen(urllib.request.Request(f"{base}/todos/1/complete",
                                                      method="POST"), timeout=30).close()
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
            text = answer.read().decode()
    finally:
        server.send_signal(signal.SIGTERM)            # the app turns it into db.shutdown()
        try:
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
    assert server.returncode == 0, _server_log(log)
    assert_the_metrics_of_the_todo_database(text)
    assert titles_in_storage(tmp_path, example_env) == ["scrape me", "and me"]


def _server_log(log):
    log.seek(0)
    return f"the Flask example's output:\n{log.read()}"


def test_the_read_replica_example_prints_the_lag_of_two_replicas():
    env = dict(os.environ, PEEWEE_S3_DEMO_SECONDS="2")
    env.pop("PEEWEE_S3_STORAGE", None)
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, "read_replica.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("replica-1", "replica-2"):
        assert f"{name}: newest row #" in done.stdout
        assert f"{name}: newest row seen was written p50" in done.stdout
    assert "writer:    wrote" in done.stdout
