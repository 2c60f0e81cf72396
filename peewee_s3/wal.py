"""wal: reads committed transactions out of a SQLite WAL file.

It parses the WAL format (https://sqlite.org/fileformat.html#the_write_ahead_log) and returns
whole commits only; it never writes the WAL and knows nothing of storage or peewee. It reads
`-wal` and `-shm` only through the descriptors `files` keeps (never open-and-close: that drops
SQLite's locks).
"""
from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, NamedTuple, Optional

from . import files

HEADER = struct.Struct(">8I")
FRAME_HEADER = struct.Struct(">6I")
MAGIC_LITTLE_ENDIAN = 0x377F0682
MAGIC_BIG_ENDIAN = 0x377F0683
_MASK = 0xFFFFFFFF
WAL_INDEX_HEADER_SIZE = 48


@dataclass(frozen=True)
class WalHeader:
    magic: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum: tuple

    @property
    def salts(self) -> tuple:
        return (self.salt1, self.salt2)

    @property
    def frame_size(self) -> int:
        return FRAME_HEADER.size + self.page_size


class Commit(NamedTuple):
    """One committed transaction: its pages (last image of each), the database size after it,
    and the number of WAL frames up to and including its commit frame."""

    pages: dict
    db_pages: int
    end_frame: int = 0


@dataclass(frozen=True)
class WalPosition:
    """How far a WAL has been read: the cycle (salts) and the frames consumed in it.

    `checksum` is the running frame checksum after the last consumed frame, so that reading can
    go on verifying from there. `salts is None` means: nothing read yet, start at frame 0.
    """

    salts: Optional[tuple] = None
    frames: int = 0
    checksum: Optional[tuple] = None


@dataclass
class WalRead:
    """What one read found: the whole frames of the commits after a position, verbatim.

    The frames are kept as read (`chunks`, concatenated they are frames `start_frame`+1 ...
    `position.frames` of the cycle), with the frame number of each commit's commit frame
    (`ends`): the replicator ships them as they are (segment format 2), so that reading a
    burst of commits costs one pass over the frame headers and no per-page work under
    SQLite's write lock or the GIL. `commits` parses them into pages when someone needs them.
    """

    header: Optional[WalHeader]
    chunks: list = field(default_factory=list)
    ends: list = field(default_factory=list)
    start_frame: int = 0
    position: WalPosition = field(default_factory=WalPosition)
    restarted: bool = False
    times: list = field(default_factory=list)

    def followed_by(self, later: "WalRead") -> "WalRead":
        """This read and the one made after it from its position, as one. The WAL may have
        started over between them: a segment applies pages by number, so frames of two
        cycles go together; `ends` then count frames from `start_frame` through both."""
        if not self.ends:
            return later
        offset = self.ends[-1] - later.start_frame
        return WalRead(later.header or self.header, self.chunks + later.chunks,
                       self.ends + [end + offset for end in later.ends], self.start_frame,
                       later.position, later.restarted, self.times + later.times)

    @property
    def frame_bytes(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def commits(self) -> list:
        if not self.ends:
            return []
        return list(parse_commits(self.frame_bytes, self.header.page_size,
                                  [end - self.start_frame for end in self.ends],
                                  self.start_frame))


def parse_commits(frames: bytes, page_size: int, ends: list, first_frame: int = 0
                  ) -> Iterator[Commit]:
    """The commits in `frames` (whole WAL frames), whose commit frames are the `ends`-th
    (1-based, counted in `frames`): each page's last image in its commit, the database size
    from its commit frame. `end_frame` counts from `first_frame`."""
    size = FRAME_HEADER.size + page_size
    start = 0
    for end in ends:
        pages = {}
        db_pages = 0
        for offset in range(start * size, end * size, size):
            pgno, db_pages = _PGNO_AND_SIZE.unpack_from(frames, offset)
            pages[pgno] = frames[offset + FRAME_HEADER.size:offset + size]
        yield Commit(pages, db_pages, first_frame + end)
        start = end


_PGNO_AND_SIZE = struct.Struct(">II")


def checksum(data: bytes, s1: int, s2: int, big_endian: bool) -> tuple:
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes), continuing from (s1, s2)."""
    words = struct.unpack(("%s%dI" % (">" if big_endian else "<", len(data) // 4)), data)
    it = iter(words)
    for x0 in it:
        s1 = (s1 + x0 + s2) & _MASK
        s2 = (s2 + next(it) + s1) & _MASK
    return s1, s2


def read_header(f: BinaryIO) -> Optional[WalHeader]:
    """The WAL header, or None if the file holds no valid header (empty, new, or torn)."""
    raw = os.pread(f.fileno(), HEADER.size, 0)
    if len(raw) < HEADER.size:
        return None
    magic, _version, page_size, seq, salt1, salt2, c1, c2 = HEADER.unpack(raw)
    if magic not in (MAGIC_LITTLE_ENDIAN, MAGIC_BIG_ENDIAN):
        return None
    if checksum(raw[:24], 0, 0, magic == MAGIC_BIG_ENDIAN) != (c1, c2):
        return None
    return WalHeader(magic, page_size, seq, salt1, salt2, (c1, c2))


def read_commits(path: str, position: WalPosition, *, verify: bool = True,
                 ahead: Optional[WalRead] = None) -> WalRead:
    """The commits in the WAL at `path` after `position`.

    If the WAL began a new cycle (its salts differ from `position`'s), or was emptied or
    removed after `position` had read some of it, reading starts at its first frame and
    `restarted` is set: the caller decides whether frames of the old cycle were lost.
    Frames after the last commit frame (a transaction still being written or rolled back) are
    left for a later call. With `verify`, each frame's cumulative checksum is checked, which is
    what tells a torn frame from a whole one; without it, only salts are checked, which is enough
    while the caller holds SQLite's write lock on a WAL no crash has touched. `ahead`, what
    `read_ahead` found after the same `position`, is kept if the WAL is still in that cycle, and
    reading goes on after it.
    """
    with files.reader(path) as f:
        header = read_header(f) if f is not None else None
        if header is None:
            return WalRead(None, restarted=position.salts is not None)
        restarted = position.salts is not None and position.salts != header.salts
        if position.salts != header.salts:
            position = WalPosition(header.salts, 0, header.checksum)
        start = position.frames
        chunks, ends = [], []
        if ahead is not None and ahead.header.salts == header.salts \
                and ahead.start_frame == position.frames:
            chunks, ends, position = list(ahead.chunks), list(ahead.ends), ahead.position
        more, more_ends, position = _read_frames(f, header, position, verify)
        return WalRead(header, chunks + more, ends + more_ends, start, position, restarted)


def read_ahead(database_path: str, position: WalPosition) -> Optional[WalRead]:
    """Without SQLite's write lock: the commits after `position` up to the last frame the
    wal-index says is committed, or None — from the first frame if the WAL started a new
    cycle since. Within a WAL cycle such frames are never written again, and a new cycle
    rewrites the WAL header first; so what this returns is exact if the WAL is still in the
    same cycle when `read_commits(..., ahead=)` looks under the lock — and ignored there
    otherwise."""
    index = parse_wal_index(files.pread(database_path + "-shm", WAL_INDEX_NOTE_SIZE))
    if index is None or index[1] == 0 or (index[0] == position.salts
                                          and index[1] <= position.frames):
        return None
    with files.reader(wal_path(database_path)) as f:
        header = read_header(f) if f is not None else None
        if header is None or header.salts != index[0]:
            return None
        if header.salts != position.salts:  # a new cycle: read it from its first frame
            position = WalPosition(header.salts, 0, header.checksum)
        chunks, ends, end = _read_frames(f, header, position, False, last_frame=index[1])
    return WalRead(header, chunks, ends, position.frames, end)


def _read_frames(f: BinaryIO, header: WalHeader, position: WalPosition, verify: bool,
                 last_frame: Optional[int] = None):
    """(chunks, ends, position): the whole frames after `position` up to the last commit frame
    before the WAL ends (or `last_frame`), the frame number of each commit frame, and the
    position after the last commit. Per frame only its header is looked at, in one C call per
    chunk; without `verify`, the checksum kept is the last commit frame's own."""
    big_endian = header.magic == MAGIC_BIG_ENDIAN
    salt1, salt2 = header.salts
    size = header.frame_size
    chunks, ends = [], []
    frames, running = position.frames, position.checksum or header.checksum
    committed = (position.frames, position.checksum)
    for chunk in _chunks(f, header, position.frames, last_frame):
        chunks.append(chunk)
        whole = True
        start = -size
        for pgno, db_pages, s1, s2, c1, c2 in frame_struct(header.page_size).iter_unpack(chunk):
            start += size
            if s1 != salt1 or s2 != salt2 or pgno == 0:
                whole = False
                break
            if verify:
                running = checksum(chunk[start:start + 8], *running, big_endian)
                running = checksum(chunk[start + FRAME_HEADER.size:start + size], *running,
                                   big_endian)
                if running != (c1, c2):
                    whole = False
                    break
            frames += 1
            if db_pages:
                ends.append(frames)
                committed = (frames, (c1, c2))
        if not whole:
            break  # a frame that is not whole, or of another cycle: the WAL ends there
    if committed == (position.frames, position.checksum):
        return [], [], position
    return (_cut(chunks, (committed[0] - position.frames) * size), ends,
            WalPosition((salt1, salt2), *committed))


def _cut(chunks: list, length: int) -> list:
    """The first `length` bytes of the concatenated `chunks`, as chunks."""
    kept, total = [], 0
    for chunk in chunks:
        if total >= length:
            break
        if total + len(chunk) > length:
            chunk = chunk[:length - total]
        kept.append(chunk)
        total += len(chunk)
    return kept


READ_CHUNK_FRAMES = 1024  # frames read at a time: one call each, memory bounded


@functools.lru_cache(maxsize=None)
def frame_struct(page_size: int) -> struct.Struct:
    """A whole frame: its header's six fields, then the page, skipped."""
    return struct.Struct(f"{FRAME_HEADER.format}{page_size}x")


def _chunks(f: BinaryIO, header: WalHeader, first: int,
            last_frame: Optional[int] = None) -> Iterator[bytes]:
    """The whole frames from frame number `first` on (and up to frame `last_frame`, 1-based,
    if given), READ_CHUNK_FRAMES at a time. (Positioned reads, not a memory map: a map holds
    a descriptor of its own, closed with it, and a mapped file cut short raises SIGBUS.)"""
    size = header.frame_size
    offset = HEADER.size + first * size
    end = os.fstat(f.fileno()).st_size
    if last_frame is not None:
        end = min(end, HEADER.size + last_frame * size)
    while offset + size <= end:
        count = min(READ_CHUNK_FRAMES, (end - offset) // size)
        chunk = os.pread(f.fileno(), count * size, offset)
        whole = len(chunk) - len(chunk) % size
        if whole:
            yield chunk[:whole] if whole < len(chunk) else chunk
        if whole < count * size:
            return
        offset += count * size


WAL_INDEX_NOTE_SIZE = 2 * WAL_INDEX_HEADER_SIZE  # both copies of the wal-index header


def parse_wal_index(raw: bytes) -> Optional[tuple]:
    """(salts, last committed frame) from the first WAL_INDEX_NOTE_SIZE bytes of `-shm`."""
    if len(raw) < WAL_INDEX_NOTE_SIZE or raw[:48] != raw[48:96]:
        return None
    (max_frame,) = struct.unpack_from("=I", raw, 16)
    return struct.unpack_from(">II", raw, 32), max_frame


def wal_path(database_path: str) -> str:
    return database_path + "-wal"
