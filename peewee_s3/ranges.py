"""ranges: a large S3 object downloaded as several ranged GETs at once, written in order.

Against a remote S3, one stream is bound by its round trips and per-connection throughput, and a
few ranged GETs in parallel download a snapshot several times faster. On loopback they only add
work (measured on 2 cores: 8 streams were slower than one), so the number of streams follows the
endpoint unless the caller sets `download_streams`. Parts are written to the file in order, so
the caller can hash the bytes as they go; memory holds at most `streams` parts.
"""
from __future__ import annotations

import ipaddress
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional
from urllib.parse import urlsplit

RANGE_PART = 4 << 20
REMOTE_STREAMS = 4
LOOPBACK_STREAMS = 1


def default_streams(endpoint_url: Optional[str]) -> int:
    """One stream for a server on this machine, REMOTE_STREAMS for any other (AWS included)."""
    if not endpoint_url:
        return REMOTE_STREAMS
    host = urlsplit(endpoint_url).hostname or ""
    if host == "localhost":
        return LOOPBACK_STREAMS
    try:
        return LOOPBACK_STREAMS if ipaddress.ip_address(host).is_loopback else REMOTE_STREAMS
    except ValueError:
        return REMOTE_STREAMS


def download_ranges(read_range: Callable[[int, int], bytes], size: int, streams: int,
                    write: Callable[[bytes], None]) -> int:
    """Read bytes [0, size) with `read_range(first, last)` (inclusive, as HTTP ranges), up to
    `streams` parts at once, and `write` each part in order. Returns the bytes written."""
    total = 0
    with ThreadPoolExecutor(streams, thread_name_prefix="peewee-s3-range") as pool:
        ahead: deque = deque()
        for start in range(0, size, RANGE_PART):
            if len(ahead) >= streams:
                total += _written(ahead.popleft().result(), write)
            ahead.append(pool.submit(read_range, start, min(start + RANGE_PART, size) - 1))
        while ahead:
            total += _written(ahead.popleft().result(), write)
    return total


def _written(part: bytes, write: Callable[[bytes], None]) -> int:
    write(part)
    return len(part)


def worth_it(size: int, streams: int) -> bool:
    """Whether ranged GETs can help: more than one stream, and at least two parts."""
    return streams > 1 and size >= 2 * RANGE_PART

