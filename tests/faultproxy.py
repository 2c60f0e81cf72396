"""A fault-injecting HTTP proxy for the tests: sits on 127.0.0.1 in front of an S3 server.

`FaultProxy(upstream)` forwards every request to `upstream` (moto's server, SeaweedFS) and,
for a fraction `rate` of them, injects one fault instead, chosen from `kinds`:

    "500", "503"     answer with that status and an S3 error body; the server never sees it
    "slow"           wait `delay` seconds, then forward
    "drop"           close the connection before forwarding (the server never sees it)
    "drop_response"  forward, then close the connection without answering (the server did it)
    "500_after"      forward, then answer 500 instead of the server's answer (it did it)

Switch faults at run time with `set_faults(...)` and `clear()`, or script the next requests
with `fail_next(kind, n)` (those come first); `counts` says what happened.
It forwards the Host header unchanged, so signed requests (SigV4) stay valid.
"""
from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Optional
from urllib.parse import urlsplit

KINDS = ("500", "503", "slow", "drop", "drop_response", "500_after")
_ERROR_CODES = {"500": "InternalError", "503": "SlowDown"}
# Hop-by-hop headers, and those this proxy recomputes.
_NOT_FORWARDED = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                  "trailer", "upgrade", "expect", "content-length"}


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1; use as a context manager or call close()."""

    def __init__(self, upstream: str, *, rate: float = 0.0, kinds: Iterable[str] = KINDS,
                 delay: float = 0.5, seed: Optional[int] = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port or 80)
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # guards the fault settings, the random source and counts
        self.counts: Counter = Counter()
        self._scripted: deque = deque()
        self.set_faults(rate, kinds, delay)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def set_faults(self, rate: float, kinds: Iterable[str] = KINDS, delay: float = 0.5) -> None:
        kinds = tuple(kinds)
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds or not 0 <= rate <= 1:
            raise ValueError(f"rate must be in [0, 1] and kinds among {KINDS}, not {unknown}")
        with self._lock:
            self.rate, self.kinds, self.delay = rate, kinds, delay

    def fail_next(self, kind: str, n: int = 1, *, method: Optional[str] = None,
                  path: Optional[str] = None, delay: Optional[float] = None) -> None:
        """Inject `kind` into the next `n` requests that match: of `method` only, and whose
        path contains `path` only, if given. `delay` sets how long "slow" waits."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        with self._lock:
            self._scripted.extend([(kind, method, path)] * n)
            if delay is not None:
                self.delay = delay

    def clear(self) -> None:
        """No more faults: every request is forwarded as it is."""
        with self._lock:
            self.rate = 0.0
            self._scripted.clear()

    def faults_injected(self) -> int:
        with self._lock:
            return sum(n for kind, n in self.counts.items() if kind in KINDS)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _choose(self, method: str, path: str) -> Optional[str]:
        """The fault for the next request, or None; counts every request."""
        with self._lock:
            self.counts["requests"] += 1
            self.counts[method] += 1
            if self._scripted:
                kind, only_method, only_path = self._scripted[0]
                if only_method in (None, method) and (only_path is None or only_path in path):
                    self._scripted.popleft()
                    self.counts[kind] += 1
                    return kind
            if self.rate and self._random.random() < self.rate:
                kind = self._random.choice(self.kinds)
                self.counts[kind] += 1
                return kind
            return None


def _handler_for(proxy: FaultProxy) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, *args) -> None:  # quiet
            pass

        def _relay(self) -> None:
            body = self._read_body()
            fault = proxy._choose(self.command, self.path)
            if fault in ("500", "503"):
                return self._answer_error(int(fault))
            if fault == "drop":
                return self._drop()
            if fault == "slow":
                time.sleep(proxy.delay)
            status, reason, headers, data = self._forward(body)
            if fault == "drop_response":
                return self._drop()
            if fault == "500_after":
                return self._answer_error(500)
            self.send_response_only(status, reason)
            for name, value in headers:
                if name.lower() not in _NOT_FORWARDED:
                    self.send_header(name, value)
            length = dict((k.lower(), v) for k, v in headers).get("content-length")
            if self.command == "HEAD" and length is not None:
                self.send_header("Content-Length", length)
            elif self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self, body: bytes) -> tuple:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _NOT_FORWARDED}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                return response.status, response.reason, response.getheaders(), data
            finally:
                conn.close()

        def _answer_error(self, status: int) -> None:
            code = _ERROR_CODES[str(status)]
            data = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>injected by faultproxy</Message></Error>").encode()
            self.send_response_only(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler
