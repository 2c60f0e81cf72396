"""restore: rebuilds a database file from storage alone — latest state or a point in time.

It picks a complete generation, streams its snapshot, verifies and applies its segments in
order, runs `PRAGMA integrity_check` (quick_check if the schema needs an app's function that is
not registered), and only then puts the file in place (temp, fsync, rename), moving aside any
file, -wal, -shm or -journal found there. It never writes to storage, nor deletes a user's file.
The steps overlap, so that a restore takes about as long as downloading the snapshot: segments
are listed and read ahead while the snapshot downloads, the snapshot is hashed, decompressed
(on two threads) and written a few MiB behind the download, and the file is fsynced while
segments apply and while it is checked. Memory stays bounded by what is read ahead, never by the database.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import re
import sqlite3
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

from .errors import (ConfigurationError, LocalStateError, LocalWriteError, NothingToRestoreError,
                     ObjectNotFoundError, PeeweeS3Error, ReplicaCorruptError, TornObjectError)
from .fence import lineage_end
from .layout import Layout
from .lease import read_lease
from .segments import PageWriter, Segment
from .sidecar import SUFFIX as SIDECAR_SUFFIX
from .snapshots import SnapshotMeta, download_snapshot, read_meta
from .storage import Storage

log = logging.getLogger("peewee_s3")

SEGMENTS_IN_FLIGHT = 16
BYTES_IN_FLIGHT = 8 << 20  # stored (compressed) bytes: decoded pages can be several times more
# What SQLite beside a database file would read into it: its WAL (replayed), its shared memory
# and its rollback journal (rolled back into it); and the sidecar, which describes that file.
NEIGHBOURS = ("-wal", "-shm", "-journal", SIDECAR_SUFFIX)
# sqlite3's errors when a schema uses a function or collation the connection does not have.
_NOT_REGISTERED = re.compile(
    r"(?:unknown function|no such function): (?P<function>[^()\s]+)"
    r"|no such collation sequence: (?P<collation>\S+)")

Prepare = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class RestoredState:
    """Where a restored file stands: the generation, its last applied segment, last commit time."""

    generation: str
    seq: int
    commits: int
    last_commit_time: Optional[float]
    path: str


def complete_generations(storage: Storage, layout: Layout) -> list:
    """The metas of every complete generation (one with a snapshot meta), oldest first."""
    metas = []
    for info in storage.list(layout.generations):
        generation = layout.generation_of(info.key)
        if generation and info.key == layout.snapshot_meta(generation):
            try:
                metas.append(read_meta(storage, layout, generation))
            except (ReplicaCorruptError, TornObjectError) as exc:  # torn: as if not there
                log.warning("skipping generation %s: %s", generation, exc)
    return sorted(metas, key=lambda m: (m.created_at, m.generation))


def segment_seqs(storage: Storage, layout: Layout, generation: str) -> list:
    """The sequence numbers of a generation's segments, checked to run 1, 2, 3… without a gap."""
    return [seq for seq, _ in segment_sizes(storage, layout, generation)]


def segment_sizes(storage: Storage, layout: Layout, generation: str, after: int = 0) -> list:
    """(seq, size) of a generation's segments in order, checked to run 1, 2, 3… without a gap;
    those after `after` only, checked to run after+1, after+2, …"""
    start_after = layout.segment(generation, after) if after else ""
    found = sorted((layout.segment_seq(i.key), i.size)
                   for i in storage.list(layout.segments(generation), start_after))
    found = [(seq, size) for seq, size in found if seq]
    for expected, (seq, _) in enumerate(found, start=after + 1):
        if seq != expected:
            raise ReplicaCorruptError(
                f"segment {layout.segment(generation, expected)} is missing from the chain "
                f"(the next one stored is {seq}). Restore to an earlier time, or another "
                "generation (peewee-s3 generations)")
    return found


def current_generation(storage: Storage, layout: Layout) -> SnapshotMeta:
    """The generation a latest-state restore reads: lock.json's, else the newest complete one."""
    try:
        lease = read_lease(storage, layout.lock)
    except ReplicaCorruptError as exc:
        log.warning("%s; restoring the newest complete generation", exc)
        lease = None
    if lease and lease.generation:
        try:
            return read_meta(storage, layout, lease.generation)
        except ObjectNotFoundError:
            log.warning("lock.json names generation %s, which is incomplete; using the newest "
                        "complete generation", lease.generation)
    metas = complete_generations(storage, layout)
    if not metas:
        raise NothingToRestoreError(
            f"{storage.describe()} holds no complete generation of {layout.base!r}: check "
            "storage, key_prefix and database_name, or start a new database there")
    return metas[-1]


def lineage(storage: Storage, layout: Layout) -> list:
    """The current generation and its ancestors by `parent` links, oldest first.

    Generations off this chain — a snapshot whose meta landed although its writer saw the
    upload fail, or one a writer made after losing its lease — hold no state of the lineage."""
    metas = {m.generation: m for m in complete_generations(storage, layout)}
    chain = [current_generation(storage, layout)]
    while chain[-1].parent and chain[-1].parent.get("generation") in metas:
        parent = metas[chain[-1].parent["generation"]]
        if parent in chain:
            break
        chain.append(parent)
    return chain[::-1]


def _generation_at(storage: Storage, layout: Layout, at: float) -> tuple:
    """The generation of the current lineage holding the state at time `at`, and the last
    segment of it to read (where its successor took over)."""
    chain = lineage(storage, layout)
    earlier = [i for i, m in enumerate(chain) if m.created_at <= at]
    if not earlier:
        oldest = _iso_at_or_after(chain[0].created_at)
        raise NothingToRestoreError(
            f"no state of {layout.base!r} at {_iso(at)} is kept: the oldest available is "
            f"{oldest}. Restore to {oldest} or later")
    i = earlier[-1]
    until = chain[i + 1].parent["seq"] if i + 1 < len(chain) else None
    return chain[i], until


def _end_of(generation: str, metas: list) -> Optional[int]:
    """The last segment of a generation that a later generation continued from, if any: a
    writer that lost its lease may have added segments after it, which no restore reads."""
    return min((m.parent["seq"] for m in metas
                if m.parent and m.parent.get("generation") == generation), default=None)


def restore_to(storage: Storage, layout: Layout, target: str, *, at: Optional[float] = None,
               generation: Optional[str] = None, until_seq: Optional[int] = None,
               merged: Optional[bool] = None, prepare: Optional[Prepare] = None
               ) -> RestoredState:
    """Rebuild the database into `target`; see the module docstring. Whatever lies at `target`
    (file, -wal, -shm, -journal, sidecar) is moved aside once the rebuilt file has passed.
    `merged`: read merged segments where there are some (default: unless restoring to `at`).
    `prepare(conn)` runs on the integrity check's connection first: it registers the functions
    and collations the schema uses (indexes on expressions, CHECK constraints)."""
    if at is not None and merged:
        raise ConfigurationError(
            "a restore to a point in time cannot read merged segments: their commits before "
            "the last carry no pages. Leave merged unset (or False) with `at`")
    end: Optional[Callable[[], Optional[int]]] = None  # the last segment to read, when asked
    if generation is not None:
        try:
            meta = read_meta(storage, layout, generation)
        except ObjectNotFoundError:
            raise NothingToRestoreError(
                f"generation {generation} of {layout.base!r} is not in {storage.describe()} "
                "or is incomplete: peewee-s3 generations lists those that can be restored"
            ) from None
        # Listing every generation takes a while: the segment reader does it, in the background.
        end = lambda: _end_of(generation, complete_generations(storage, layout))  # noqa: E731
    elif at is not None:
        meta, until_seq = _generation_at(storage, layout, at)
    else:
        meta = current_generation(storage, layout)
    end = end or (lambda: until_seq)
    directory = os.path.dirname(os.path.abspath(target))
    fd, temp = tempfile.mkstemp(prefix=".restore-", suffix=".db", dir=directory)
    try:
        with os.fdopen(fd, "r+b") as f, _SegmentReader(
                storage, layout, meta, end,
                merged=at is None if merged is None else merged) as segments:
            download_snapshot(storage, layout, meta, f)
            with _local_writes():
                # The snapshot's bytes go to disk while the segments are applied.
                f.flush()
                written = segments.in_background(os.fsync, f.fileno())
                seq, commits, last_time = _apply_segments(segments, f, meta.page_size, at)
                f.flush()
                written.result()
                # The check reads the file from the page cache while the rest goes to disk.
                written = segments.in_background(os.fsync, f.fileno())
            try:
                _check_integrity(temp, meta.generation, prepare)
            finally:
                with _local_writes():
                    written.result()
        aside = put_in_place(temp, target)
        if aside:
            log.warning("moved what was at %s aside to %s", target, aside)
    except LocalWriteError as error:
        remove_database_files(temp)
        raise LocalWriteError(
            f"could not write the restored copy of {target}: {error.__cause__ or error}. "
            f"Nothing was changed; free space in {directory} (or choose another target) and "
            "restore again") from error
    except BaseException:
        remove_database_files(temp)
        raise
    log.info("restored %s generation %s through segment %d (%d commits) to %s",
             layout.base, meta.generation, seq, commits, target)
    return RestoredState(meta.generation, seq, commits, last_time, target)


def read_plan(storage: Storage, layout: Layout, generation: str, until_seq: Optional[int],
              merged: bool = True) -> list:
    """The objects that rebuild a generation through `until_seq` (or, if None, the end of its
    lineage: its last segment before any fence), in order: (first seq, last seq, key, size) of
    merged segments where they cover the way, of single segments elsewhere.

    The segments are listed only after the merged segments that run from segment 1: those
    stand for segments their writer stored, each before any fence, so the lineage goes at
    least that far. The chain is checked from there (all of it when `merged` is False)."""
    runs = _merged_runs(storage, layout, generation) if merged else {}
    plan: list = []
    while step := _longest(runs, plan[-1][1] + 1 if plan else 1, until_seq):
        plan.append(step)
    covered = plan[-1][1] if plan else 0
    listed = segment_sizes(storage, layout, generation, after=covered)
    if until_seq is None:
        until_seq = lineage_end(storage, layout, generation, listed, floor=covered)
    sizes = {seq: size for seq, size in listed if seq <= until_seq}
    seq, end = covered + 1, max(sizes, default=covered)
    while seq <= end:
        step = (_longest(runs, seq, end)
                or (seq, seq, layout.segment(generation, seq), sizes[seq]))
        plan.append(step)
        seq = step[1] + 1
    return plan


def _merged_runs(storage: Storage, layout: Layout, generation: str) -> dict:
    """first seq -> [(last seq, key, size)] of the generation's merged segments, longest first
    (size 0, a torn upload, is left out)."""
    runs: dict = {}
    for info in storage.list(layout.merged_segments(generation)):
        span = layout.merged_range(info.key)
        if span and 1 <= span[0] < span[1] and info.size:
            runs.setdefault(span[0], []).append((span[1], info.key, info.size))
    for found in runs.values():
        found.sort(reverse=True)
    return runs


def _longest(runs: dict, seq: int, end: Optional[int]) -> Optional[tuple]:
    """(first, last, key, size) of the longest merged segment from `seq` not past `end` (if
    given), or None."""
    run = next((r for r in runs.get(seq, ()) if end is None or r[0] <= end), None)
    return (seq, *run) if run else None


class _SegmentReader:
    """A generation's segments in order, read and decoded ahead in worker threads from the
    moment it is made, so that they arrive while the snapshot downloads: thousands of small
    GETs one after another would be most of a restore's time. At most SEGMENTS_IN_FLIGHT
    segments and BYTES_IN_FLIGHT stored bytes are ahead at once, so memory stays flat.
    A latest-state restore reads merged segments where there are some (merging.py); one to a
    point in time reads single segments, whose commits it can stop between."""

    def __init__(self, storage: Storage, layout: Layout, meta: SnapshotMeta,
                 end: Callable[[], Optional[int]], merged: bool) -> None:
        self._storage, self._layout, self._generation = storage, layout, meta.generation
        self._todo: deque = deque()
        self._ahead: deque = deque()
        self._bytes_ahead = 0
        self._pool = ThreadPoolExecutor(SEGMENTS_IN_FLIGHT, thread_name_prefix="peewee-s3-restore")
        # Listing the segments is the first step in the background too; the queues are the
        # pool's until __iter__ has waited for it.
        self._started = self._pool.submit(self._start, end, merged)

    def _start(self, end: Callable[[], Optional[int]], merged: bool) -> None:
        self._todo.extend(read_plan(self._storage, self._layout, self._generation, end(),
                                    merged))
        self._read_ahead()

    def in_background(self, work: Callable, *args: Any) -> Future:
        """Run `work(*args)` in one of the reader's threads (an fsync while pages are applied)."""
        return self._pool.submit(work, *args)

    def __enter__(self) -> "_SegmentReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[Segment]:
        self._started.result()
        while self._ahead:
            size, future = self._ahead.popleft()
            self._bytes_ahead -= size
            self._read_ahead()
            yield from future.result()

    def _read_ahead(self) -> None:
        while self._todo and len(self._ahead) < SEGMENTS_IN_FLIGHT and (
                not self._ahead or self._bytes_ahead + self._todo[0][3] <= BYTES_IN_FLIGHT):
            first, last, key, size = self._todo.popleft()
            self._ahead.append((size, self._pool.submit(self._read, first, last, key)))
            self._bytes_ahead += size

    def _read(self, first: int, last: int, key: str) -> list:
        if first == last:
            return [self._decode(key, None, last)]
        try:
            return [self._decode(key, first, last)]
        except ReplicaCorruptError as exc:
            log.warning("%s; reading its segments one by one instead", exc)
            return [self._decode(self._layout.segment(self._generation, seq), None, seq)
                    for seq in range(first, last + 1)]

    def _decode(self, key: str, first: Optional[int], last: int) -> Segment:
        segment = Segment.decode(self._storage.read(key), key)
        if (segment.generation, segment.first_seq, segment.seq) != (self._generation, first, last):
            raise ReplicaCorruptError(
                f"segment {key} says it is {segment.generation}/{segment.first_seq or ''}"
                f"{'-' if segment.first_seq else ''}{segment.seq}: it was put in the wrong place")
        return segment


def _apply_segments(segments: _SegmentReader, f, page_size: int, at: Optional[float]) -> tuple:
    """Apply segments to the snapshot in `f` — up to the last commit at or before `at`."""
    seq = commits = 0
    last_time = None
    pages = PageWriter(f, page_size)
    for segment in segments:
        for commit in segment.commits:
            if at is not None and commit.time > at:
                pages.finish()
                return seq, commits, last_time
            pages.apply(commit)
            commits, last_time = commits + 1, commit.time
        seq = segment.seq
    pages.finish()
    return seq, commits, last_time


@contextlib.contextmanager
def _local_writes() -> Iterator[None]:
    """A local file's OSError (disk full, I/O error) as LocalWriteError; storage errors pass."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, PeeweeS3Error):   # StorageError is an OSError too
            raise
        raise LocalWriteError(str(exc)) from exc


def _check_integrity(path: str, generation: str, prepare: Optional[Prepare]) -> None:
    conn = sqlite3.connect(path)
    try:
        if prepare is not None:
            prepare(conn)
        check, result = _integrity_check(conn, generation)
    finally:
        conn.close()
    if result != ["ok"]:
        raise ReplicaCorruptError(
            f"the database rebuilt from generation {generation} fails PRAGMA {check} "
            f"({'; '.join(result[:3])}). Restore another generation or an earlier time")


def _integrity_check(conn: sqlite3.Connection, generation: str) -> tuple:
    """The check that ran and its rows: integrity_check, or quick_check when the schema needs
    a function or collation that `conn` lacks."""
    try:
        return "integrity_check", _pragma(conn, "integrity_check")
    except sqlite3.DatabaseError as exc:
        missing = _NOT_REGISTERED.search(str(exc))
        if missing is None:
            return "integrity_check", [str(exc)]
    result = _quick_check(conn, generation)
    if result == ["ok"]:
        log.warning(
            "the database rebuilt from generation %s passed PRAGMA quick_check, but its index "
            "contents were not verified: PRAGMA integrity_check needs the %s, which is not "
            "registered on the checking connection. To verify them, pass prepare=<a callable "
            "that registers it on a sqlite3.Connection> to restore()", generation,
            _describe(missing))
    return "quick_check", result


def _quick_check(conn: sqlite3.Connection, generation: str) -> list:
    """PRAGMA quick_check checks every b-tree but not what the indexes hold: a collation it asks
    for (to open an index) gets a stand-in that calls all keys equal. A function it needs (in
    CHECK constraints, generated columns) has no stand-in: the caller must `prepare` it."""
    stand_ins = set()
    while True:
        try:
            return _pragma(conn, "quick_check")
        except sqlite3.DatabaseError as exc:
            missing = _NOT_REGISTERED.search(str(exc))
            if missing is None:
                return [str(exc)]
            if missing["function"] or missing["collation"] in stand_ins:
                raise ConfigurationError(
                    f"the database rebuilt from generation {generation} cannot be checked: its "
                    f"schema needs the {_describe(missing)} even for PRAGMA quick_check. Pass "
                    "prepare=<a callable that registers it on a sqlite3.Connection> to "
                    "restore(); nothing was changed") from None
        stand_ins.add(missing["collation"])
        conn.create_collation(missing["collation"], lambda a, b: 0)


def _pragma(conn: sqlite3.Connection, name: str) -> list:
    return [row[0] for row in conn.execute(f"PRAGMA {name}")]


def _describe(missing: re.Match) -> str:
    if missing["function"]:
        return f"function {missing['function']}()"
    return f"collation {missing['collation']}"


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_database_files(path: str) -> None:
    """Delete a database file and its -wal, -shm and -journal, whichever exist."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def put_in_place(staged: str, target: str) -> Optional[str]:
    """Rename the checked file `staged` to `target`, first moving aside whatever lies there — a
    -wal or -journal left without its file too, which SQLite would replay onto (or roll back
    into) the restored file. Returns where the old files went, or None if there were none."""
    found = any(os.path.lexists(target + suffix) for suffix in ("",) + NEIGHBOURS)
    aside = move_aside(target) if found else None
    os.rename(staged, target)
    _fsync_dir(os.path.dirname(os.path.abspath(target)))
    return aside


def move_aside(path: str) -> str:
    """Rename a database file (with its -wal, -shm, -journal and sidecar) out of the way;
    returns the new name, `<path>.before-restore-<UTC time>`, which no earlier one had. The
    sidecar goes too: it describes the old file, not the one restored in place."""
    stamp = f"{path}.before-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    aside, n = stamp, 1
    while any(os.path.lexists(aside + suffix) for suffix in ("",) + NEIGHBOURS):
        n += 1
        aside = f"{stamp}.{n}"
    for suffix in ("",) + NEIGHBOURS:
        if os.path.lexists(path + suffix):
            os.rename(path + suffix, aside + suffix)
    return aside


def parse_time(value: Union[str, float, dt.datetime]) -> float:
    """A point in time as unix seconds: a datetime or ISO-8601 string (naive means UTC)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigurationError(f"timestamp {value!r} is not ISO-8601; write it like "
                                     "2026-11-25T14:02:00Z") from None
    if not isinstance(value, dt.datetime):
        raise ConfigurationError(f"timestamp must be a datetime or ISO-8601 string, "
                                 f"not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="microseconds")


def _iso_at_or_after(t: float) -> str:
    """`t` to the microsecond, rounded up: `parse_time` of it is never earlier than `t`."""
    micros = math.ceil(t * 1_000_000)
    while micros / 1_000_000 < t:  # parse_time's own arithmetic
        micros += 1
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)
    return moment.isoformat(timespec="microseconds")


def restore(*, storage: Any, database_name: str, target: str, timestamp: Any = None,
            generation: Optional[str] = None, overwrite: bool = False,
            prepare: Optional[Prepare] = None, **options: Any) -> RestoredState:
    """Restore a database from storage into the file `target`.

    Takes the same storage options as S3SqliteDatabase (key_prefix, endpoint_url, credentials,
    …). `timestamp` (datetime or ISO-8601; naive is UTC) restores the newest commit at or before
    it; `generation` a given generation. An existing `target` is refused unless `overwrite`,
    and then it is moved aside, never lost; so is a -wal, -shm or -journal found without it.
    `prepare(conn)` registers on the integrity check's sqlite3 connection the functions and
    collations the schema uses (say an index on an app's function), so that it can run whole.
    """
    from .config import Options
    from .storage import open_storage

    opts = Options(storage=storage, database_name=database_name, **options)
    if os.path.exists(target) and os.path.getsize(target) > 0 and not overwrite:
        raise LocalStateError(f"{target} exists: restore refuses to overwrite it. Choose another "
                              "target, or pass overwrite=True to move the old file aside")
    at = parse_time(timestamp) if timestamp is not None else None
    layout = Layout(opts.base_key)
    try:
        store = open_storage(opts.storage, **opts.storage_kwargs(), create_root=False)
    except NothingToRestoreError as exc:  # a missing directory: a reader creates none
        raise NothingToRestoreError(f"no complete generation of {layout.base!r} to restore: "
                                    f"{exc}") from None
    try:
        return restore_to(store, layout, target, at=at, generation=generation,
                          prepare=prepare)
    finally:
        store.close()
