"""segments: the object that carries committed pages from one generation's WAL to storage.

A segment holds one or more commits, each with its commit time, the database size after it and
the image of every page it changed. The replicator ships the WAL's frames as they are (format
2, `FrameSegment`: no per-page work on the writing side); merged segments hold each page once
(format 1, `Segment`). Both decode to a `Segment`. Encoding and decoding only; see
docs/FORMAT.md.
"""
from __future__ import annotations

import array
import base64
import binascii
import hashlib
import json
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Optional

from .errors import ReplicaCorruptError
from .wal import FRAME_HEADER, frame_struct, parse_commits

MAGIC = b"PWS3SEG1"
FORMAT = 1         # page records: merged segments (and every segment before 0.2)
FRAMES_FORMAT = 2  # WAL frames verbatim: the segments the replicator ships
READABLE = (FORMAT, FRAMES_FORMAT)
# zlib level of a frames body: a burst (a large body) is compressed fast, since its CPU is
# spent beside the writers; a trickle small, since then bytes cost more than CPU. Measured on
# 3,000 single-row commits: level 1 compresses 440 MB/s to 80 bytes a commit, level 6 260
# MB/s to 58 bytes.
FAST_BODY_BYTES = 1 << 20
_LENGTH = struct.Struct(">I")
_PGNO = struct.Struct(">I")
_DIGEST = 32


class CommitRecord(NamedTuple):
    """One commit: when it was captured (unix seconds, UTC), database size after it, its pages.
    (A named tuple: a burst makes tens of thousands of them.)"""

    time: float
    db_pages: int
    pages: dict

    def apply_to(self, f: BinaryIO, page_size: int) -> None:
        """Write the pages into a database file and cut it to the size after the commit."""
        pages = PageWriter(f, page_size)
        pages.apply(self)
        pages.finish()


class PageWriter:
    """Applies many commits to an open database file in order, as cheaply as the OS allows:
    pages written in place, the file cut only when the database shrinks, and brought to the
    last commit's size by `finish()`. The result equals `apply_to` commit by commit."""

    def __init__(self, f: BinaryIO, page_size: int) -> None:
        f.flush()
        self.fd, self.page_size = f.fileno(), page_size
        self.db_pages = os.fstat(self.fd).st_size // page_size

    def apply(self, commit: CommitRecord) -> None:
        if commit.db_pages < self.db_pages:
            os.ftruncate(self.fd, commit.db_pages * self.page_size)
        for pgno, data in commit.pages.items():
            if pgno <= commit.db_pages:  # a page past the end would be cut at once
                os.pwrite(self.fd, data, (pgno - 1) * self.page_size)
        self.db_pages = commit.db_pages

    def finish(self) -> None:
        os.ftruncate(self.fd, self.db_pages * self.page_size)


@dataclass(frozen=True)
class Segment:
    generation: str
    seq: int
    epoch: int
    page_size: int
    commits: tuple
    first_seq: Optional[int] = None  # a merged segment: the first of the segments it stands for

    @property
    def first_time(self) -> float:
        return self.commits[0].time

    @property
    def last_time(self) -> float:
        return self.commits[-1].time

    @property
    def page_bytes(self) -> int:
        return sum(len(data) for c in self.commits for data in c.pages.values())

    def encode(self) -> bytes:
        """MAGIC, header length, zlib'd JSON header, zlib body of (pgno, page) records, sha256.

        The header is compressed too: its per-commit entries are most of a small segment."""
        body = b"".join(piece for commit in self.commits for pgno, data in commit.pages.items()
                        for piece in (_PGNO.pack(pgno), data))
        header = {
            "format": FORMAT, "generation": self.generation, "seq": self.seq,
            "epoch": self.epoch, "page_size": self.page_size, "body_length": len(body),
            "commits": [{"time": c.time, "db_pages": c.db_pages, "pages": len(c.pages)}
                        for c in self.commits],
        }
        if self.first_seq is not None:
            header["first_seq"] = self.first_seq
        return _seal(header, zlib.compress(body, 6))

    @classmethod
    def decode(cls, data: bytes, key: str) -> "Segment":
        """The segment stored at `key`; any damage raises ReplicaCorruptError naming the key."""
        payload, digest = data[:-_DIGEST], data[-_DIGEST:]
        if len(data) < len(MAGIC) + _LENGTH.size + _DIGEST or not payload.startswith(MAGIC):
            raise _corrupt(key, "it is not a peewee-s3 segment (wrong magic or too short)")
        if hashlib.sha256(payload).digest() != digest:
            raise _corrupt(key, "its sha256 checksum does not match its content")
        (length,) = _LENGTH.unpack_from(payload, len(MAGIC))
        start = len(MAGIC) + _LENGTH.size
        try:
            header = json.loads(zlib.decompress(payload[start:start + length]))
            if header["format"] not in READABLE:
                raise _corrupt(key, f"it has format {header['format']}, this version reads "
                               f"formats {READABLE}: upgrade peewee-s3")
            body = zlib.decompress(payload[start + length:])
            if header["format"] == FRAMES_FORMAT:
                return cls._from_frames(header, body, key)
            return cls._from_parts(header, body, key)
        except (ValueError, KeyError, TypeError, zlib.error, struct.error, binascii.Error) as exc:
            raise _corrupt(key, f"it cannot be decoded ({exc})") from None

    @classmethod
    def _from_parts(cls, header: dict, body: bytes, key: str) -> "Segment":
        page_size = header["page_size"]
        if len(body) != header["body_length"]:
            raise _corrupt(key, "its body has the wrong length")
        commits, offset = [], 0
        for c in header["commits"]:
            pages = {}
            for _ in range(c["pages"]):
                (pgno,) = _PGNO.unpack_from(body, offset)
                pages[pgno] = body[offset + 4:offset + 4 + page_size]
                offset += 4 + page_size
            commits.append(CommitRecord(c["time"], c["db_pages"], pages))
        if offset != len(body) or not commits:
            raise _corrupt(key, "its header does not describe its body")
        return cls(header["generation"], header["seq"], header["epoch"], page_size, tuple(commits),
                   header.get("first_seq"))


    @classmethod
    def _from_frames(cls, header: dict, body: bytes, key: str) -> "Segment":
        page_size, first = header["page_size"], header["first_frame"]
        ends = [end - first for end in _unpack(_U32, header["ends"])]
        times = _unpack("d", header["times"])
        size = FRAME_HEADER.size + page_size
        if len(body) != header["body_length"] or not ends or len(ends) != len(times) \
                or ends[-1] * size != len(body) \
                or any(b <= a for a, b in zip([0] + ends, ends)):
            raise _corrupt(key, "its header does not describe its body")
        commit_frames = sum(1 for _, db_pages, *_ in frame_struct(page_size).iter_unpack(body)
                            if db_pages)
        if commit_frames != len(ends):
            raise _corrupt(key, "its header does not describe its commits")
        commits = []
        for time, commit in zip(times, parse_commits(body, page_size, ends)):
            if commit.db_pages == 0:
                raise _corrupt(key, "a commit does not end on a commit frame")
            commits.append(CommitRecord(time, commit.db_pages, commit.pages))
        return cls(header["generation"], header["seq"], header["epoch"], page_size,
                   tuple(commits))


@dataclass(frozen=True)
class FrameSegment:
    """A segment as the replicator ships it: the frames of its commits verbatim from the WAL
    (`chunks`, concatenated: whole frames only, the first numbered `first_frame` + 1), the
    number of each commit's commit frame (`ends`, counted as the first is) and the commit
    times. Nothing here loops over commits or pages in Python: see `encode`."""

    generation: str
    seq: int
    epoch: int
    page_size: int
    chunks: tuple
    first_frame: int
    ends: tuple
    times: tuple

    @property
    def frames(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def page_bytes(self) -> int:
        """Page bytes it carries (a page rewritten in it counts each time)."""
        length = sum(len(chunk) for chunk in self.chunks)
        return length // (FRAME_HEADER.size + self.page_size) * self.page_size

    @property
    def commits(self) -> tuple:
        """Its commits as page records (parsed here: the merger and tests want them)."""
        ends = [end - self.first_frame for end in self.ends]
        return tuple(CommitRecord(t, c.db_pages, c.pages) for t, c in
                     zip(self.times, parse_commits(self.frames, self.page_size, ends)))

    def encode(self) -> bytes:
        """Format 2: as format 1, with the body the frames themselves and the header holding
        the commit frames' numbers and the commit times as packed arrays (each commit's size
        is in its commit frame). The frames are compressed chunk by chunk, never joined."""
        length = sum(len(chunk) for chunk in self.chunks)
        header = {
            "format": FRAMES_FORMAT, "generation": self.generation, "seq": self.seq,
            "epoch": self.epoch, "page_size": self.page_size, "body_length": length,
            "first_frame": self.first_frame, "ends": _pack(_U32, self.ends),
            "times": _pack("d", self.times),
        }
        compressor = zlib.compressobj(1 if length >= FAST_BODY_BYTES else 6)
        body = b"".join([compressor.compress(chunk) for chunk in self.chunks]
                        + [compressor.flush()])
        return _seal(header, body)


_U32 = next(code for code in "IL" if array.array(code).itemsize == 4)


def _pack(typecode: str, values) -> str:
    """`values` as a little-endian array (u32, or "d": float64), base64: no per-value work in
    Python, and a few bytes each."""
    packed = array.array(typecode, values)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _unpack(typecode: str, text: str) -> list:
    packed = array.array(typecode)
    packed.frombytes(base64.b64decode(text, validate=True))
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()


def _seal(header: dict, body: bytes) -> bytes:
    """MAGIC, header length, zlib'd JSON header, the compressed body, and the sha256 of all.
    The header is compressed too: its per-commit entries are most of a small segment."""
    header = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 6)
    payload = MAGIC + _LENGTH.pack(len(header)) + header + body
    return payload + hashlib.sha256(payload).digest()


def _corrupt(key: str, why: str) -> ReplicaCorruptError:
    return ReplicaCorruptError(
        f"segment {key} is corrupt: {why}. Restore to an earlier time or generation "
        "(peewee-s3 generations lists them)")
