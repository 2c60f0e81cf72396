"""compression: a snapshot's bytes as stored — the database cut into chunks of CHUNK_SIZE bytes,
each compressed on its own with zstd (format 2 of `snapshot.meta.json`, docs/FORMAT.md).

Independent chunks let a restore decompress on every core while the download goes on, and keep
memory to a few chunks whatever the database's size. Bytes in, bytes out: it never talks to
storage, and knows nothing of metas (snapshots.py) or SQLite.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable, Optional, Sequence

import zstandard

from .errors import LocalWriteError, PeeweeS3Error, ReplicaCorruptError

CODEC = "zstd"
CHUNK_SIZE = 1 << 20  # database bytes per compressed chunk
LEVEL = 1  # on the bench's pages, level 3 stores 1 % less at half the speed
INFLATE_THREADS = 2  # zstd releases the GIL: chunks decompress on both cores
CHUNKS_AHEAD = INFLATE_THREADS + 1  # chunks received but not yet written: memory stays flat
WRITE_PIECE = 256 << 10  # decompressed bytes written to the file at a time

_local = threading.local()  # one decompression context per thread (they are not shared)


class CompressingReader(io.RawIOBase):
    """A readable file of the compressed chunks of `source`, read from its start to its end.

    The next chunk is compressed in a thread of its own while the caller uploads this one;
    zstd releases the GIL, so the application's threads run meanwhile. `lengths` (the stored
    length of each chunk), `sha256` (of every byte handed out) and `size` (of the database
    read) are complete once a read has returned b"".
    """

    def __init__(self, source: BinaryIO, chunk_size: int = CHUNK_SIZE,
                 progress: Optional[Callable[[int], None]] = None) -> None:
        super().__init__()
        self._source, self._chunk_size, self._progress = source, chunk_size, progress
        self._compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
        self._chunk, self._offset = memoryview(b""), 0
        self._raw = bytearray(chunk_size)  # read into again for every chunk
        self.lengths: list = []
        self.sha256, self.size = hashlib.sha256(), 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="peewee-s3-compress")
        self._next: Optional[Future] = self._pool.submit(self._compress_next)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._offset == len(self._chunk) and not self._advance():
            return 0
        count = min(len(buffer), len(self._chunk) - self._offset)
        buffer[:count] = self._chunk[self._offset:self._offset + count]
        self._offset += count
        return count

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()

    def _advance(self) -> bool:
        """Take the chunk compressed ahead and start on the next; False at the end."""
        if self._next is None:
            return False
        compressed = self._next.result()
        if compressed is None:
            self._next = None
            return False
        self._next = self._pool.submit(self._compress_next)
        self.lengths.append(len(compressed))
        self.sha256.update(compressed)
        self._chunk, self._offset = memoryview(compressed), 0
        return True

    def _compress_next(self) -> Optional[bytes]:
        count = _read_full(self._source, self._raw)
        if not count:
            return None
        self.size += count
        if self._progress:
            self._progress(count)
        with memoryview(self._raw)[:count] as data:
            return self._compressor.compress(data)


class DecompressingSink:
    """A write-only file for a snapshot's stored bytes: it cuts them into the chunks `lengths`
    names, hashes them in order, and has each one decompressed and written at its place in
    the file `fd` by a worker thread, at most CHUNKS_AHEAD chunks behind the download.

    A chunk that does not decompress to its expected length raises ReplicaCorruptError (from a
    later `write` or `finish`); `finish` checks that every chunk came, and nothing more, and
    returns the SHA-256 of what was stored, for the caller to compare with its meta.
    """

    def __init__(self, fd: int, key: str, size: int, chunk_size: int, lengths: Sequence[int],
                 progress: Optional[Callable[[int], None]] = None) -> None:
        self._fd, self._key, self._size, self._chunk_size = fd, key, size, chunk_size
        self._lengths = deque(lengths)
        self._progress = progress
        self._chunk: Optional[memoryview] = None  # the chunk being received, at its full length
        self._buffer: Optional[bytearray] = None  # the buffer under it
        # Buffers of the longest chunk's size, reused: a few allocations in all, instead of one
        # per chunk that the allocator would keep around.
        self._free: list = []
        self._capacity = max(lengths, default=0)
        self._filled = 0
        self._index = 0
        self._stored_before = 0  # the stored length of the chunks handed to the workers
        self._received = 0
        self._sha256 = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="peewee-s3-hash")  # in order
        self._workers = ThreadPoolExecutor(INFLATE_THREADS, thread_name_prefix="peewee-s3-inflate")
        self._ahead: deque = deque()  # (hashed, written, buffer) of the chunks in flight

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._received += len(view)
        if self._progress:
            self._progress(len(view))
        while view:
            if self._chunk is None:
                if not self._lengths:
                    break  # more than the meta lists: `finish` says so
                self._buffer = self._free.pop() if self._free else bytearray(self._capacity)
                self._chunk = memoryview(self._buffer)[:self._lengths.popleft()]
                self._filled = 0
            count = min(len(view), len(self._chunk) - self._filled)
            self._chunk[self._filled:self._filled + count] = view[:count]
            self._filled += count
            view = view[count:]
            if self._filled == len(self._chunk):
                self._submit(self._chunk, self._buffer)
                self._chunk = self._buffer = None
        return len(data)

    def finish(self) -> str:
        """Wait for every chunk; raise ReplicaCorruptError unless the object held exactly the
        chunks its meta lists. Returns the hex SHA-256 of the stored bytes."""
        self._drain()
        listed = self._index + len(self._lengths) + (self._chunk is not None)
        expected = self._expected_stored()
        if self._lengths or self._chunk is not None or self._received != expected:
            raise ReplicaCorruptError(
                f"snapshot {self._key} is corrupt: {self._received} bytes stored, its meta "
                f"lists {expected} in {listed} chunks. Restore another generation "
                "(peewee-s3 generations)")
        return self._sha256.hexdigest()

    def close(self) -> None:
        """Stop the threads (after `finish`, or after a failure: what is in flight is dropped)."""
        self._hasher.shutdown(wait=True, cancel_futures=True)
        self._workers.shutdown(wait=True, cancel_futures=True)

    def _expected_stored(self) -> int:
        return self._stored_before + sum(self._lengths) + (len(self._chunk) if self._chunk else 0)

    def _submit(self, chunk: memoryview, buffer: bytearray) -> None:
        self._stored_before += len(chunk)
        while len(self._ahead) >= CHUNKS_AHEAD or (self._ahead and _done(self._ahead[0])):
            self._wait_oldest()
        index, self._index = self._index, self._index + 1
        offset = index * self._chunk_size
        expected = min(self._chunk_size, self._size - offset)
        self._ahead.append((self._hasher.submit(self._sha256.update, chunk),
                            self._workers.submit(self._inflate, index, chunk, offset, expected),
                            buffer))

    def _drain(self) -> None:
        while self._ahead:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        hashed, written, buffer = self._ahead.popleft()
        hashed.result()
        try:
            written.result()
            self._free.append(buffer)
        except OSError as error:
            if isinstance(error, PeeweeS3Error):
                raise
            raise LocalWriteError(f"writing the downloaded snapshot locally failed: "
                                  f"{error}") from error

    def _inflate(self, index: int, chunk: memoryview, offset: int, expected: int) -> None:
        """Decompress one chunk and write it at `offset`, a piece at a time (memory: a piece)."""
        written = 0
        try:
            # The frame says its size; checked first, so a damaged one allocates nothing big.
            declared = zstandard.frame_content_size(chunk)
            if declared != expected:
                raise self._corrupt(index, f"its frame says {declared} bytes, not {expected}")
            for piece in _decompressor().read_to_iter(chunk, write_size=WRITE_PIECE):
                if written + len(piece) > expected:
                    raise self._corrupt(index, f"it decompresses to more than {expected} bytes")
                _pwrite_all(self._fd, piece, offset + written)
                written += len(piece)
        except zstandard.ZstdError as error:
            raise self._corrupt(index, f"it does not decompress ({error})") from None
        if written != expected:
            raise self._corrupt(index, f"it decompresses to {written} bytes, not {expected}")

    def _corrupt(self, index: int, why: str) -> ReplicaCorruptError:
        return ReplicaCorruptError(
            f"snapshot {self._key} is corrupt: chunk {index} (of {self._chunk_size} database "
            f"bytes each) {why}. Restore another generation (peewee-s3 generations)")


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a database of `size` bytes is cut into."""
    return -(-size // chunk_size)


def _read_full(source: BinaryIO, buffer: bytearray) -> int:
    """Fill `buffer` from `source` (less only at its end); returns the bytes read."""
    filled = 0
    with memoryview(buffer) as view:
        while filled < len(buffer) and (count := source.readinto(view[filled:])):
            filled += count
    return filled


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        count = os.pwrite(fd, view, offset)
        view, offset = view[count:], offset + count


def _done(entry: tuple) -> bool:
    return all(f.done() for f in entry[:2])


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor
