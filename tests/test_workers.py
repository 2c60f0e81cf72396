"""The examples under real multi-process servers — the Flask app under `gunicorn -w 4`, the
FastAPI apps (`def` and `async def` endpoints) under `uvicorn --workers 4` — with the worker
that replicates (named by the host's state file, docs/HOSTS.md) SIGKILLed under load: the
others go on answering, and a restore holds every acknowledged write. What a run saw (who took
over, whether the server replaced the killed worker, the longest wait for an answer) is
printed: `pytest -rP tests/test_workers.py`."""
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from peewee_s3 import restore
from peewee_s3.host import read_state
from peewee_s3.layout import Layout
from peewee_s3.lease import process_running, read_lease
from peewee_s3.storage import open_storage

from .conftest import _free_ports

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")
GUNICORN = shutil.which("gunicorn", path=os.path.dirname(sys.executable))
UVICORN = shutil.which("uvicorn", path=os.path.dirname(sys.executable))
# uvicorn's runs: file:// by default, the S3 servers (10-15 s each) with --runslow.
UVICORN_BACKENDS = ["file", pytest.param("moto", marks=pytest.mark.slow),
                    pytest.param("seaweedfs", marks=pytest.mark.slow)]


def post_todo(port, title):
    """True once the server acknowledged the todo (201), False if the request failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/todos", json.dumps({"title": title}),
                     {"Content-Type": "application/json"})
        return conn.getresponse().status == 201
    except OSError:
        return False
    finally:
        conn.close()


class Load:
    """Client threads posting todos without end; `acknowledged` holds what was answered 201,
    `answered_at` when (time.monotonic())."""

    def __init__(self, port, clients=4):
        self.acknowledged, self.answered_at, self._stop = [], [], threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(port, c), daemon=True)
                         for c in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, port, client):
        n = 0
        while not self._stop.is_set():
            n += 1
            title = f"c{client}-{n:05}"
            if post_todo(port, title):
                self.acknowledged.append(title)
                self.answered_at.append(time.monotonic())

    def wait_for(self, count, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} acknowledged"
            time.sleep(0.05)

    def longest_silence(self, since):
        """The longest time after `since` that no write was acknowledged (up to the last one)."""
        times = [since, *sorted(t for t in self.answered_at if t > since)]
        return max(later - earlier for earlier, later in zip(times, times[1:]))

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join()


def example_env(tmp_path, shared_kwargs, replicator="thread"):
    """The environment an example reads: its data directory and storage, S3 settings as a
    user would give them, where replication runs, and this tree's peewee_s3 on the path."""
    env = dict(os.environ, PEEWEE_S3_DATA_DIR=str(tmp_path), PEEWEE_S3_STORAGE=shared_kwargs[
        "storage"], PYTHONPATH=os.path.abspath(os.path.join(EXAMPLES, os.pardir)),
        PEEWEE_S3_REPLICATOR=replicator)
    if "endpoint_url" in shared_kwargs:
        credentials = shared_kwargs["credentials"]
        env.update(PEEWEE_S3_ENDPOINT_URL=shared_kwargs["endpoint_url"],
                   AWS_ACCESS_KEY_ID=credentials["access_key_id"],
                   AWS_SECRET_ACCESS_KEY=credentials["secret_access_key"],
                   AWS_DEFAULT_REGION=shared_kwargs["region"])
    return env


@dataclass
class Killing:
    """What happened around the SIGKILL of the replicating worker (pids from the server's log)."""
    killed: int            # its pid
    took_over: int         # the pid of the worker that replicates afterwards
    before: list           # the workers the server had started before the kill
    after: list            # ... and those it started after it
    noticed: bool          # whether the server logged the death
    silence: float         # seconds, the longest that no write was acknowledged after the kill
    helper: bool = False   # replicator="process": the killed and the next are helpers

    def report(self, server):
        if self.helper:
            print(f"{server}: the helper {self.killed} SIGKILLed; the helper {self.took_over}, "
                  f"started by a worker, replicated afterwards; no write was acknowledged for "
                  f"at most {self.silence:.2f} s")
            return
        seen = "the server logged its death" if self.noticed else "the server did not log it"
        started = f"started {self.after}" if self.after else "started no worker that logged"
        by = "a worker started before the kill" if self.took_over in self.before else \
            "a worker started after it"
        print(f"{server}: replicating process {self.killed} SIGKILLed; {seen} and {started} "
              f"before it stopped; {by} ({self.took_over}) took over replication; no write was "
              f"acknowledged for at most {self.silence:.2f} s")


def kill_the_replicating_worker_under_load(tmp_path, shared_kwargs, argv, started_worker,
                                           died, replicator="thread"):
    """Serve an example (`argv`, with "{port}" for the port it listens on) while 4 clients
    post todos; once 100 are acknowledged, SIGKILL the replicating worker; once 100 more are,
    stop the server with SIGTERM. Then the lease is released, and a restore passes
    integrity_check and holds every acknowledged todo. `started_worker`: a regular expression
    that finds a worker's pid in the server's log; `died`, one that finds the death of the
    worker whose pid it is formatted with. With `replicator="process"` the replicating process
    is the helper, not a worker: it is what is killed, and a worker starts the next one."""
    port = _free_ports(1)[0]
    database = str(tmp_path / "todo.db")
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen([arg.format(port=port) for arg in argv],
                                  env=example_env(tmp_path, shared_kwargs, replicator),
                                  stdout=subprocess.DEVNULL, stderr=log)
    load = None
    try:
        load = Load(port)
        load.wait_for(100)
        killed = read_state(database).pid
        os.kill(killed, signal.SIGKILL)
        killed_at, count = time.monotonic(), len(load.acknowledged)
        before = started_workers(tmp_path, started_worker)
        load.wait_for(count + 100)
        took_over = read_state(database).pid
        assert took_over != killed
        silence = load.longest_silence(killed_at)
        load.stop()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    except BaseException:
        print((tmp_path / "server.log").read_text())   # shown with the failure
        raise
    finally:
        if load:
            load.stop()
        if server.poll() is None:
            server.kill()
            server.wait()
    with open_storage(**shared_kwargs) as storage:   # the last worker out let go of it
        assert read_lease(storage, Layout("todo").lock).released
    restore(target=str(tmp_path / "restored.db"), database_name="todo", **shared_kwargs)
    conn = sqlite3.connect(str(tmp_path / "restored.db"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT title FROM todo")}
    finally:
        conn.close()
    assert set(load.acknowledged) <= stored
    after = started_workers(tmp_path, started_worker)[len(before):]
    if replicator == "process":  # helpers, never workers
        assert killed not in before and took_over not in before + after
        deadline = time.monotonic() + 10  # it exits after it released the lease
        while process_running(took_over) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_running(took_over)  # gone after the last worker
        return Killing(killed, took_over, before, after, False, silence, helper=True)
    assert killed in before and took_over in before + after
    noticed = re.search(died.format(pid=killed), (tmp_path / "server.log").read_text())
    return Killing(killed, took_over, before, after, bool(noticed), silence)


def started_workers(tmp_path, started_worker):
    """The pids of the workers the server has started so far, as its log names them."""
    return [int(pid) for pid in re.findall(started_worker, (tmp_path / "server.log").read_text())]


def gunicorn_server() -> dict:
    """`gunicorn -w 4` serving the Flask example, and how its log names a worker's start and
    death."""
    return dict(argv=[GUNICORN, "-w", "4", "-b", "127.0.0.1:{port}", "--chdir",
                      os.path.join(EXAMPLES, "flask_app"), "app:app"],
                started_worker=r"Booting worker with pid: (\d+)\n",
                died=r"Worker \(pid:{pid}\) was sent SIGKILL")


def uvicorn_server(app: str) -> dict:
    """`uvicorn --workers 4` serving a FastAPI example, and its log's words for the same."""
    return dict(argv=[UVICORN, "--workers", "4", "--host", "127.0.0.1", "--port", "{port}",
                      "--app-dir", os.path.join(EXAMPLES, "fastapi_app"), "--no-access-log",
                      app],
                started_worker=r"Started server process \[(\d+)\]",
                died=r"Child process \[{pid}\] died")


@pytest.mark.skipif(GUNICORN is None, reason="gunicorn is not installed (the test extra has it)")
def test_gunicorn_with_four_workers_loses_nothing_when_the_replicating_one_is_killed(
        tmp_path, shared_kwargs):
    kill_the_replicating_worker_under_load(tmp_path, shared_kwargs, **gunicorn_server()
                                           ).report("gunicorn -w 4")


@pytest.mark.skipif(UVICORN is None, reason="uvicorn is not installed (the test extra has it)")
@pytest.mark.parametrize("shared_kwargs", UVICORN_BACKENDS, indirect=True)
@pytest.mark.parametrize("app", ["app:app", "async_app:app"])
def test_uvicorn_with_four_workers_loses_nothing_when_the_replicating_one_is_killed(
        tmp_path, shared_kwargs, app):
    # uvicorn's supervisor (0.30 and later) starts a new worker in place of a dead one; the
    # test holds either way, and reports which it saw.
    kill_the_replicating_worker_under_load(tmp_path, shared_kwargs, **uvicorn_server(app)
                                           ).report(f"uvicorn --workers 4 {app}")


@pytest.mark.parametrize("shared_kwargs", UVICORN_BACKENDS, indirect=True)
@pytest.mark.parametrize("server", [
    pytest.param("gunicorn", marks=pytest.mark.skipif(GUNICORN is None, reason="no gunicorn")),
    pytest.param("uvicorn", marks=pytest.mark.skipif(UVICORN is None, reason="no uvicorn"))])
def test_four_workers_and_a_helper_lose_nothing_when_the_helper_is_killed(
        tmp_path, shared_kwargs, server):
    spec = gunicorn_server() if server == "gunicorn" else uvicorn_server("app:app")
    kill_the_replicating_worker_under_load(tmp_path, shared_kwargs, **spec,
                                           replicator="process"
                                           ).report(f"{server}, replicator='process'")
