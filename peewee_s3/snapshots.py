"""snapshots: a generation's starting point — the whole database, and its meta written last.

Takes a page-exact copy of the database with SQLite's backup API, streams it to and from
storage while hashing — compressed in independent chunks (compression.py) since format 2, as
the database's bytes in format 1, which is still read — and reads/writes `snapshot.meta.json`,
which carries a checksum of itself (`meta_sha256`) and, in format 2, the chunks' stored
lengths. See docs/FORMAT.md.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import BinaryIO, Callable, Optional

from . import compression
from .errors import LocalWriteError, PeeweeS3Error, ReplicaCorruptError
from .layout import Layout
from .storage import Storage

RAW_FORMAT = 1  # snapshot.db holds the database's bytes (what earlier versions wrote)
FORMAT = 2      # snapshot.db holds the database in chunks compressed one by one
READABLE = (RAW_FORMAT, FORMAT)
_CHUNKED = ("compression", "chunk_size", "chunks")  # the fields format 2 adds
BYTES_AHEAD = 4 << 20  # downloaded bytes waiting to be hashed and written (one piece at least)


@dataclass(frozen=True)
class SnapshotMeta:
    """What `snapshot.meta.json` says of a generation; its presence makes the generation complete.

    `parent` names the generation and last segment this one continues from (None for a new
    lineage): a restore of the parent for a time before this generation stops there.
    `size` is the database's length; `sha256` that of the object as stored (in format 2, the
    concatenated compressed chunks, whose lengths are `chunks`).
    """

    generation: str
    size: int
    sha256: str
    page_size: int
    created_at: float
    epoch: int
    parent: Optional[dict] = None
    format: int = RAW_FORMAT  # a meta without the chunk fields describes a raw snapshot
    compression: Optional[str] = None
    chunk_size: Optional[int] = None
    chunks: Optional[tuple] = None

    @property
    def stored_size(self) -> int:
        """The length of `snapshot.db` as stored (before any sealing): what a restore reads."""
        return self.size if self.format == RAW_FORMAT else sum(self.chunks)

    def to_bytes(self) -> bytes:
        data = asdict(self)
        if self.format == RAW_FORMAT:
            for name in _CHUNKED:
                del data[name]
        data["created_at_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at))
        data["meta_sha256"] = meta_sha256(data)
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> "SnapshotMeta":
        try:
            raw = json.loads(data)
            if raw.get("format") not in READABLE:
                raise ReplicaCorruptError(
                    f"{key} has format {raw.get('format')!r}; this version reads "
                    f"{' and '.join(map(str, READABLE))}: upgrade peewee-s3 or restore another "
                    "generation")
            _check_meta_sha256(raw, key)
            meta = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
            if meta.format == FORMAT:
                meta = _checked_chunks(meta, key)
            return meta
        except (ValueError, TypeError, AttributeError) as exc:
            raise ReplicaCorruptError(f"{key} is not a valid snapshot meta ({exc}); restore "
                                      "another generation (peewee-s3 generations)") from None


def _checked_chunks(meta: SnapshotMeta, key: str) -> SnapshotMeta:
    """A format-2 meta whose chunk fields make sense (its checksum matched: they are what the
    writer wrote; this refuses a writer's codec this version does not know)."""
    if meta.compression != compression.CODEC:
        raise ReplicaCorruptError(
            f"{key} says its snapshot is compressed with {meta.compression!r}; this version "
            f"reads {compression.CODEC!r}: upgrade peewee-s3 or restore another generation")
    chunks = tuple(meta.chunks)
    if not (isinstance(meta.chunk_size, int) and meta.chunk_size > 0
            and len(chunks) == compression.chunk_count(meta.size, meta.chunk_size)
            and all(isinstance(n, int) and n > 0 for n in chunks)):
        raise ValueError(f"its chunks do not cut {meta.size} bytes")
    return replace(meta, chunks=chunks)


def meta_sha256(fields: dict) -> str:
    """The checksum a meta carries of itself: the hex SHA-256 of the canonical JSON (sorted keys,
    no whitespace, ASCII) of every field but `meta_sha256`."""
    rest = {k: v for k, v in fields.items() if k != "meta_sha256"}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_meta_sha256(raw: dict, key: str) -> None:
    """Refuse a meta whose content does not match its `meta_sha256`; one written before the
    field existed (none) is read as it is."""
    if "meta_sha256" in raw and raw["meta_sha256"] != meta_sha256(raw):
        raise ReplicaCorruptError(
            f"{key} does not match its own checksum (meta_sha256): it was damaged or changed "
            "in storage, so nothing it says about its generation can be trusted. Restore "
            "another generation (peewee-s3 generations lists them)")


def copy_database(source: sqlite3.Connection, target_path: str) -> int:
    """Copy the database as `source` sees it (its open read transaction, if any) to a new file.

    The backup API copies pages as they are, so the copy matches the WAL's page numbers.
    Returns the page size.
    """
    target = sqlite3.connect(target_path)
    try:
        source.backup(target)
        return target.execute("PRAGMA page_size").fetchone()[0]
    finally:
        target.close()


class _Hashing:
    """Wraps a binary file: hashes and counts every byte written to it."""

    def __init__(self, f: BinaryIO, progress: Optional[Callable[[int], None]] = None) -> None:
        self._f, self._progress = f, progress
        self.sha256, self.size = hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        if self._progress:
            self._progress(len(data))
        return self._f.write(data)


def upload_snapshot(storage: Storage, layout: Layout, generation: str, path: str, *,
                    epoch: int, page_size: int, parent: Optional[dict],
                    created_at: Optional[float] = None,
                    progress: Optional[Callable[[int], None]] = None,
                    before_meta: Optional[Callable[[], None]] = None) -> SnapshotMeta:
    """Stream the file at `path` up as the generation's snapshot, compressed chunk by chunk,
    then write its meta last.

    `created_at` is the moment the copy was consistent (default: now): a point-in-time restore
    at or after it may start from this generation. `before_meta` runs between the two uploads
    (the writer checks its lease there: a long upload may outlive it). `progress` counts the
    database's bytes."""
    with open(path, "rb") as f, compression.CompressingReader(
            f, compression.CHUNK_SIZE, progress) as chunks:
        # The generation id is new and random: a plain upload, which a retry may repeat.
        storage.upload(layout.snapshot(generation), chunks)
    if before_meta:
        before_meta()
    meta = SnapshotMeta(generation, chunks.size, chunks.sha256.hexdigest(), page_size,
                        time.time() if created_at is None else created_at, epoch, parent,
                        format=FORMAT, compression=compression.CODEC, chunk_size=compression.CHUNK_SIZE,
                        chunks=tuple(chunks.lengths))
    storage.create(layout.snapshot_meta(generation), meta.to_bytes())
    return meta


def read_meta(storage: Storage, layout: Layout, generation: str) -> SnapshotMeta:
    key = layout.snapshot_meta(generation)
    return SnapshotMeta.from_bytes(storage.read(key), key)


def download_snapshot(storage: Storage, layout: Layout, meta: SnapshotMeta, f: BinaryIO,
                      progress: Optional[Callable[[int], None]] = None) -> None:
    """Stream the snapshot into `f` (an empty file), raising ReplicaCorruptError if what is
    stored differs from what its meta says: its length, its SHA-256, and (format 2) each
    chunk's stored length and decompressed length. `progress` counts the stored bytes.

    Format 1: the bytes are hashed and written by a thread of their own while the next ones
    arrive, at most BYTES_AHEAD behind (hashlib and file writes release the GIL). Format 2:
    chunks are hashed in order and decompressed and written by worker threads meanwhile."""
    key = layout.snapshot(meta.generation)
    if meta.format == RAW_FORMAT:
        with _HashingSink(f, progress) as sink:
            storage.download(key, sink)
        size, digest = sink.size, sink.sha256.hexdigest()
    else:
        f.flush()
        sink = compression.DecompressingSink(f.fileno(), key, meta.size, meta.chunk_size,
                                             meta.chunks, progress)
        try:
            storage.download(key, sink)
            digest, size = sink.finish(), meta.stored_size
        finally:
            sink.close()
    if size != meta.stored_size or digest != meta.sha256:
        raise ReplicaCorruptError(
            f"snapshot {key} is corrupt: {size} bytes stored with sha256 "
            f"{digest[:16]}…, its meta says {meta.stored_size} bytes and "
            f"{meta.sha256[:16]}…. Restore another generation (peewee-s3 generations)")


class _HashingSink:
    """A write-only file that hashes and writes what it is given in a worker thread, in order,
    with at most BYTES_AHEAD (or one piece) waiting. A failed local write is raised, as
    LocalWriteError, by the next `write` or on leaving the `with` block."""

    def __init__(self, f: BinaryIO, progress: Optional[Callable[[int], None]] = None) -> None:
        self._hashing = _Hashing(f, progress)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="peewee-s3-snapshot")
        self._ahead: deque = deque()  # (bytes, future) in order; only the caller's thread
        self._bytes_ahead = 0

    @property
    def sha256(self):
        return self._hashing.sha256

    @property
    def size(self) -> int:
        return self._hashing.size

    def write(self, data) -> int:
        data = bytes(data)  # the caller may reuse its buffer once this returns
        while self._ahead and (self._bytes_ahead + len(data) > BYTES_AHEAD
                               or self._ahead[0][1].done()):
            self._wait_oldest()
        self._ahead.append((len(data), self._pool.submit(self._hashing.write, data)))
        self._bytes_ahead += len(data)
        return len(data)

    def _wait_oldest(self) -> None:
        size, future = self._ahead.popleft()
        self._bytes_ahead -= size
        try:
            future.result()
        except OSError as error:
            if isinstance(error, PeeweeS3Error):
                raise
            raise LocalWriteError(f"writing the downloaded snapshot locally failed: "
                                  f"{error}") from error

    def __enter__(self) -> "_HashingSink":
        return self

    def __exit__(self, *exc) -> None:
        try:
            while self._ahead:
                self._wait_oldest()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
