"""proxy: a counting HTTP proxy on 127.0.0.1 in front of the S3 server.

Every system under test talks to the server through it, so requests and uploaded bytes are
counted on the wire, not taken from anyone's own counters. It parses requests only (method,
headers, body length; keep-alive and chunked bodies), passes responses through untouched, and
runs in a process of its own. `CountingProxy` starts it and reads or resets its counters.

    python -m bench.proxy UPSTREAM_HOST UPSTREAM_PORT     (prints "PORT <n>" once listening)
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from bench.processes import python_module, stop_process

CONTROL = "/__bench__/"
PIECE = 256 * 1024


@dataclass
class Counts:
    """Requests and request-body bytes by method, and response bytes (headers included).

    `body_bytes` is the payload: for `aws-chunked` bodies (Litestream's SDK sends them) the
    decoded length the client declares, not the chunk signatures around it.
    """

    requests: Counter = field(default_factory=Counter)
    body_bytes: Counter = field(default_factory=Counter)
    response_bytes: int = 0

    def to_dict(self) -> dict:
        return {"requests": dict(self.requests), "body_bytes": dict(self.body_bytes),
                "response_bytes": self.response_bytes}


@dataclass(frozen=True)
class Traffic:
    """What the proxy saw between two readings."""

    requests: dict
    body_bytes: dict
    response_bytes: int

    @property
    def puts(self) -> int:
        """PUT requests: whole objects and multipart parts (multipart create/complete are POSTs)."""
        return self.requests.get("PUT", 0)

    @property
    def uploaded(self) -> int:
        return sum(self.body_bytes.values())

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def get(self, method: str) -> int:
        return self.requests.get(method, 0)


# -- the server (runs in the child process) ------------------------------------------------

class _Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.counts = Counts()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        upstream_w: Optional[asyncio.StreamWriter] = None
        pump: Optional[asyncio.Task] = None
        try:
            while True:
                try:
                    head = await client_r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, path, headers = _parse_head(head)
                if path.startswith(CONTROL):
                    await self._control(path, client_w)
                    return
                if upstream_w is None:
                    upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
                    pump = asyncio.create_task(self._pump(upstream_r, client_w))
                self.counts.requests[method] += 1
                upstream_w.write(head)
                body = await _forward_body(headers, client_r, upstream_w)
                declared = headers.get("x-amz-decoded-content-length")
                self.counts.body_bytes[method] += int(declared) if declared else body
                await upstream_w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if upstream_w is not None:
                upstream_w.close()
            if pump is not None:
                pump.cancel()
            client_w.close()

    async def _pump(self, upstream_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        """Responses, byte for byte; when the server closes, the client's connection closes."""
        try:
            while data := await upstream_r.read(PIECE):
                self.counts.response_bytes += len(data)
                client_w.write(data)
                await client_w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            client_w.close()

    async def _control(self, path: str, writer: asyncio.StreamWriter) -> None:
        body = json.dumps(self.counts.to_dict()).encode()
        if path.startswith(CONTROL + "reset"):
            self.counts = Counts()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()


def _parse_head(head: bytes) -> tuple:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method.upper(), path, headers


async def _forward_body(headers: dict, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> int:
    """Copy one request body upstream; return its length (decoded length if chunked)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _forward_chunked(reader, writer)
    remaining = int(headers.get("content-length") or 0)
    total = remaining
    while remaining:
        data = await reader.read(min(PIECE, remaining))
        if not data:
            raise asyncio.IncompleteReadError(b"", remaining)
        writer.write(data)
        remaining -= len(data)
        if writer.transport.get_write_buffer_size() > 4 * PIECE:
            await writer.drain()
    return total


async def _forward_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the empty line
                line = await reader.readuntil(b"\r\n")
                writer.write(line)
                if line == b"\r\n":
                    return total
        writer.write(await reader.readexactly(size + 2))
        total += size
        await writer.drain()


async def _serve(upstream_host: str, upstream_port: int) -> None:
    proxy = _Proxy(upstream_host, upstream_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=2**20)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# -- the client (runs in the bench) --------------------------------------------------------

class CountingProxy:
    """Starts the proxy in front of `upstream` (http://host:port); stop it with `stop()`."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rstrip("/").split(":")
        self._process = python_module("proxy", host, port, stdout=subprocess.PIPE)
        line = self._process.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the counting proxy did not start (it said {line!r})")
        self.endpoint = f"http://127.0.0.1:{int(line.split()[1])}"

    def read(self) -> Traffic:
        return self._ask("counters")

    def reset(self) -> Traffic:
        """Zero the counters; returns what they held."""
        return self._ask("reset")

    def _ask(self, what: str) -> Traffic:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no env proxy
        with opener.open(f"{self.endpoint}{CONTROL}{what}", timeout=10) as response:
            data = json.loads(response.read())
        return Traffic(data["requests"], data["body_bytes"], data["response_bytes"])

    def stop(self) -> None:
        stop_process(self._process, timeout=5)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sys.argv[1], int(sys.argv[2])))
