"""watcher: another client of the storage, in a process of its own, that notices new commits.

Replication lag is measured from a commit to the moment this client can read it. It talks to
the server directly (not through the counting proxy) and polls every `POLL` seconds. Protocol
on stdin/stdout, one JSON object a line: the bench sends a spec (see `_arrived`), the watcher takes
the "before" state and answers {"armed": true}; the bench commits; the watcher answers
{"seen": <time.monotonic()>} (comparable across processes on Linux) or {"seen": null} on timeout.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Optional

from botocore.exceptions import ClientError

from bench.processes import python_module

POLL = 0.005
TIMEOUT = 30.0


def _arrived(client, spec: dict, before) -> bool:
    kind, bucket = spec["kind"], spec["bucket"]
    if kind == "segment":  # peewee-s3: the next segment, or a newer complete generation
        return _exists(client, bucket, spec["key"]) or any(
            _exists(client, bucket, f"{spec['generations']}{g}/snapshot.meta.json")
            for g in _folders(client, bucket, spec["generations"]) if g > spec["generation"])
    if kind == "new-key":  # Litestream: a new object in its L0 listing
        return bool(_keys(client, bucket, spec["prefix"]) - before)
    if kind == "etag":  # the seed's way: the database object was replaced
        return client.head_object(Bucket=bucket, Key=spec["key"])["ETag"] != spec["etag"]
    raise ValueError(kind)


def _exists(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False


def _folders(client, bucket: str, prefix: str) -> list:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
    return [p["Prefix"][len(prefix):].rstrip("/") for p in listing.get("CommonPrefixes", [])]


def _keys(client, bucket: str, prefix: str) -> set:
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


def _serve(endpoint: str) -> None:
    from bench.servers import s3_client

    client = s3_client(endpoint)
    for line in sys.stdin:
        spec = json.loads(line)
        before = _keys(client, spec["bucket"], spec["prefix"]) if spec["kind"] == "new-key" \
            else None
        _say({"armed": True})
        deadline = time.monotonic() + TIMEOUT
        seen = None
        while time.monotonic() < deadline:
            if _arrived(client, spec, before):
                seen = time.monotonic()
                break
            time.sleep(POLL)
        _say({"seen": seen})


def _say(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Watcher:
    """The bench's end: `arm(spec)` before a commit, `seen()` after it."""

    def __init__(self, endpoint: str) -> None:
        self._process = python_module("watcher", endpoint, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)

    def arm(self, spec: dict) -> None:
        self._process.stdin.write(json.dumps(spec) + "\n")
        self._process.stdin.flush()
        assert json.loads(self._process.stdout.readline())["armed"]

    def seen(self) -> Optional[float]:
        return json.loads(self._process.stdout.readline())["seen"]

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=10)


if __name__ == "__main__":
    _serve(sys.argv[1])
