"""The examples under real multi-process servers: `gunicorn -w 4` (Flask) with a worker
SIGKILLed under load — the replicating one — then every acknowledged write in a restore."""
import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from peewee_s3 import restore
from peewee_s3.host import read_state

from .conftest import _free_ports

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")
GUNICORN = shutil.which("gunicorn", path=os.path.dirname(sys.executable))


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
    """Client threads posting todos without end; `acknowledged` holds what was answered 201."""

    def __init__(self, port, clients=4):
        self.acknowledged, self._stop = [], threading.Event()
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

    def wait_for(self, count, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} acknowledged"
            time.sleep(0.05)

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join()


@pytest.mark.skipif(GUNICORN is None, reason="gunicorn is not installed (the test extra has it)")
def test_gunicorn_with_four_workers_loses_nothing_when_the_replicating_one_is_killed(
        tmp_path, shared_kwargs):
    port = _free_ports(1)[0]
    env = dict(os.environ, PEEWEE_S3_DATA_DIR=str(tmp_path), PEEWEE_S3_STORAGE=shared_kwargs[
        "storage"], PYTHONPATH=os.path.abspath(os.path.join(EXAMPLES, os.pardir)))
    if "endpoint_url" in shared_kwargs:         # the example takes S3 settings as a user would
        credentials = shared_kwargs["credentials"]
        env.update(PEEWEE_S3_ENDPOINT_URL=shared_kwargs["endpoint_url"],
                   AWS_ACCESS_KEY_ID=credentials["access_key_id"],
                   AWS_SECRET_ACCESS_KEY=credentials["secret_access_key"],
                   AWS_DEFAULT_REGION=shared_kwargs["region"])
    server = subprocess.Popen([GUNICORN, "-w", "4", "-b", f"127.0.0.1:{port}", "--chdir",
                               os.path.join(EXAMPLES, "flask_app"), "app:app"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    load = None
    try:
        load = Load(port)
        load.wait_for(100)
        replicating = read_state(str(tmp_path / "todo.db")).pid
        os.kill(replicating, signal.SIGKILL)
        count = len(load.acknowledged)
        load.wait_for(count + 100)
        assert read_state(str(tmp_path / "todo.db")).pid != replicating
        load.stop()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if load:
            load.stop()
        if server.poll() is None:
            server.kill()
            server.wait()
    restore(target=str(tmp_path / "restored.db"), database_name="todo", **shared_kwargs)
    conn = sqlite3.connect(str(tmp_path / "restored.db"))
    stored = {row[0] for row in conn.execute("SELECT title FROM todo")}
    conn.close()
    assert set(load.acknowledged) <= stored
