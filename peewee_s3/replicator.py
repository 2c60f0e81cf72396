"""replicator: ships committed WAL pages to storage and keeps the lease — a job per database on
the process's scheduler (scheduler.py), and in the committing thread in sync mode.

It reads new commits out of the WAL under SQLite's write lock (local I/O only, localfile.py),
releases the lock, and uploads them as a segment of the current generation (with no lease read:
a new holder's fence at the next key stops a writer taken over, fence.py);
it renews the lease, starts new generations with a snapshot, and checkpoints only frames
already read. A WAL restart that the pin cannot prove harmless starts a new generation.
Network I/O never happens while it holds SQLite's write lock.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

from . import scheduler
from .clock import CommitClock
from .config import Options
from .errors import (LeaseLostError, PeeweeS3Error, PreconditionFailedError, ReplicaCorruptError,
                     SessionClosedError, StorageError)
from .layout import Layout, new_generation_id
from .lease import Lease
from .localfile import ASYNC_CHECK_EVERY, LocalFile
from .merging import Merger
from .restore import read_plan, remove_database_files
from .retention import prune
from .segments import FrameSegment
from .sidecar import Sidecar, describe_file, write_sidecar
from .snapshots import read_meta, upload_snapshot
from .storage import CHUNK_SIZE, Storage
from .wal import WalPosition, WalRead, wal_path

log = logging.getLogger("peewee_s3")

# A new generation starts once what a restore reads after the snapshot (merged segments and the
# segments since the last of them) outweighs this share of the snapshot, and this many bytes so
# that a small database is not snapshotted over and over; or at `snapshot_interval` at the
# latest. Snapshots then never upload more than the segments did, and a restore reads at most
# about twice the database.
SEGMENTS_SHARE_OF_SNAPSHOT = 1.0
SEGMENTS_MIN_BYTES_FOR_SNAPSHOT = 4 << 20
FINISH_ATTEMPTS = 3  # times shutdown tries to end on an empty WAL while others commit


@dataclass
class Shipped:
    """Where replication stands: the generation, its last stored segment, the WAL read so far."""

    generation: Optional[str] = None
    seq: int = 0
    position: WalPosition = WalPosition()
    last_sync: Optional[float] = None
    last_snapshot: Optional[float] = None
    bytes_uploaded: int = 0
    segments_uploaded: int = 0
    merged_uploaded: int = 0
    snapshot_size: int = 0
    generation_bytes: int = 0  # what a latest restore reads after the snapshot
    commits_uploaded: int = 0


class Tickets:
    """Group commit: each captured commit takes a ticket; one shipment covers every ticket
    issued before it started. `_lock` guards both counters (a plain lock: nobody waits on it,
    and every commit takes it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.issued = 0
        self.shipped = 0

    def issue(self) -> int:
        with self._lock:
            self.issued += 1
            return self.issued

    def covered(self, ticket: int) -> bool:
        with self._lock:
            return self.shipped >= ticket

    def mark_shipped(self, through: int) -> None:
        with self._lock:
            self.shipped = max(self.shipped, through)

    @property
    def pending(self) -> int:
        with self._lock:
            return self.issued - self.shipped


class Replicator:
    def __init__(self, path: str, options: Options, storage: Storage, lease: Lease,
                 origin: str) -> None:
        self.path, self.options, self.storage, self.lease = path, options, storage, lease
        self.origin = origin
        self.layout = Layout(options.base_key)
        self.shipped = Shipped()
        self.tickets = Tickets()
        self.merger = Merger()
        self.clock = CommitClock(path)
        self.fenced: Optional[LeaseLostError] = None
        self.last_error: Optional[Exception] = None
        self.errors: Counter = Counter()  # the background thread's failures, by exception name
        # `_io` serialises every step that reads the WAL or talks to storage: the job's ticks,
        # sync-mode commits shipping their own pages, db.sync(), db.snapshot() and shutdown.
        self._io = threading.RLock()
        self._job: Optional[scheduler.Job] = None  # its ticks on the process's scheduler
        self._woken = False  # a tick is scheduled for the commits since the last one
        self._postponed = False  # the next run ticks whatever the interval says
        self._unsent: Optional[tuple] = None
        self._carry: Optional[WalRead] = None  # read by a checkpoint, shipped next
        self._folded = False  # our checkpoint put commits nobody read into the file
        self.closed = False   # finish() is done: later sync-mode commits raise
        self._prune_due = False
        self._last_renewal = time.monotonic()
        self._wal_stat: Optional[tuple] = None
        self._file_checked = float("-inf")  # when a writer last checked the file (monotonic)
        self.local = LocalFile(path, self.clock)
        # Told (salts, frames, last snapshot time) whenever more is durable: what other
        # processes on this file wait on (host.py).
        # (salts, frames, snapshot_at, generation) each time more is durable (host.py)
        self.on_durable: Optional[Callable[[Optional[tuple], int, float, str], None]] = None
        self._urgent = False  # another process waits for a shipment: skip the interval
        self._snapshot_asked = False  # another process's db.snapshot() waits for a generation
        self._publications = 0  # times publish_durable ran

    def close_connections(self) -> None:
        self.local.close()

    def _read_locked(self, action: Optional[Callable[[WalRead], None]] = None) -> WalRead:
        """The commits after our position, read under SQLite's write lock (localfile.py)."""
        return self.local.read(self.shipped.position, action)

    # -- the background job ------------------------------------------------------------------

    def start(self) -> None:
        """Tick in the background (scheduler.py): when a commit or another process asks, at
        most once per sync_interval, and at least every min(sync_interval, renew_every)."""
        self._woken = False
        self._job = scheduler.run_every(f"replicator {self.layout.base}", self._run,
                                        first=self._next_tick())

    def stop(self) -> None:
        """No tick runs after this returns (one in progress is waited for)."""
        job, self._job = self._job, None
        if job is not None:
            scheduler.get().cancel(job)

    def notify(self) -> None:
        """A commit happened: ship soon (at most one shipment per sync_interval)."""
        if not self._woken:  # once per tick, not per commit: scheduling takes a lock
            self._woken = True
            self._wake(self._until_interval())

    def request_shipment(self) -> None:
        """Another process's sync-mode commit waits: ship now, not at the next interval."""
        self._urgent = True
        self._wake(0.0)

    def request_snapshot(self) -> None:
        """Another process's db.snapshot() waits: start a new generation at the next tick,
        which runs now."""
        self._snapshot_asked = True
        self.request_shipment()

    def _wake(self, delay: float) -> None:
        job = self._job
        if job is not None:
            scheduler.get().schedule(job, delay)

    def _until_interval(self) -> float:
        """Seconds until sync_interval has passed since the last shipment."""
        return max(0.0, self.options.sync_interval - (time.time() - (self.shipped.last_sync or 0)))

    def _next_tick(self) -> float:
        return min(self.options.sync_interval, self.options.renew_every)

    def publish_durable(self) -> None:
        self._publications += 1
        if self.on_durable is not None:
            s = self.shipped
            self.on_durable(s.position.salts, s.position.frames, s.last_snapshot or 0.0,
                            s.generation)

    def _run(self) -> Optional[float]:
        """One run of the job: a tick, unless the last shipment was less than sync_interval
        ago (then the tick runs once that has passed: postponed once, so that sync-mode
        commits shipping all the time never keep renewals away; merged segments due are
        stored meanwhile); returns when to run next, None to stop."""
        if self.fenced:
            return None
        wait = self._until_interval()
        if wait > 0 and not self._urgent and not self._postponed:
            if self.merger.due:  # woken by _upload_segment: only that, the tick still waits
                return self._attempt(self._store_merged, wait)
            self._postponed = True
            return wait
        urgent = self._urgent
        self._woken = self._urgent = self._postponed = False
        return self._attempt(lambda: self._tick_answering(urgent), self._next_tick())

    def _attempt(self, work: Callable[[], None], then: float) -> Optional[float]:
        """Run `work` under the I/O lock; `then` if it went well, None once fenced, a retry
        after sync_interval if it failed."""
        try:
            with self._io:
                work()
            self.last_error = None
            if self._prune_due:
                self.prune()
        except LeaseLostError:
            return None
        except (PeeweeS3Error, sqlite3.Error, OSError) as exc:
            self.last_error = exc
            self.errors[type(exc).__name__] += 1
            log.warning("replication of %s failed, will retry: %s", self.layout.base, exc)
            return self.options.sync_interval
        return then

    def _tick_answering(self, urgent: bool) -> None:
        published = self._publications
        self._tick()
        if urgent and self._publications == published:
            self.publish_durable()  # a member waits: where we stand, though unchanged

    def _tick(self) -> None:
        if time.monotonic() - self._last_renewal >= self.options.renew_every:
            self.renew()
        changed = self._wal_changed()
        if self._snapshot_asked:
            self._snapshot_asked = False
            self.start_generation()
        elif self._snapshot_due() and (changed or self.shipped.seq > 0):
            self.start_generation()
        elif changed:
            self.ship()
        self._store_merged()

    def _snapshot_due(self) -> bool:
        """The policy: a new generation once what a restore reads after the snapshot
        outweighs it, or at snapshot_interval at the latest."""
        s = self.shipped
        return (time.time() - (s.last_snapshot or 0) >= self.options.snapshot_interval
                or s.generation_bytes > max(SEGMENTS_SHARE_OF_SNAPSHOT * s.snapshot_size,
                                            SEGMENTS_MIN_BYTES_FOR_SNAPSHOT))

    def _wal_changed(self) -> bool:
        """Whether the WAL file changed since we last looked (catches raw sqlite3 writes)."""
        try:
            st = os.stat(wal_path(self.path))
            stat = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stat = None
        changed, self._wal_stat = stat != self._wal_stat, stat
        return changed or self.tickets.pending > 0 or self._unsent is not None \
            or self._carry is not None \
            or self.last_error is not None

    # -- lease -------------------------------------------------------------------------------

    def _fence(self, exc: LeaseLostError) -> LeaseLostError:
        if not self.fenced:
            self.fenced = exc
            log.error("%s", exc)
            self.publish_durable()
        return exc

    def check_fenced(self) -> None:
        if self.fenced:
            raise LeaseLostError(str(self.fenced))

    def check_writable(self) -> None:
        """Before a write: this writer is not fenced, and its file is still the one at its
        path (a write to a replaced file would never be shipped; in async mode looked at
        every ASYNC_CHECK_EVERY seconds)."""
        self.check_fenced()
        now = time.monotonic()
        if self.options.sync_mode == "sync" or now >= self._file_checked + ASYNC_CHECK_EVERY:
            self.local.check()
            self._file_checked = now

    def _guard(self, step: Callable):
        """Run a storage step; a lost lease fences this writer for good."""
        self.check_fenced()
        try:
            return step()
        except LeaseLostError as exc:
            raise self._fence(exc) from None

    def renew(self, generation: Optional[str] = None) -> None:
        with self._io:
            self._guard(lambda: self.lease.renew(generation))
            self._last_renewal = time.monotonic()
            log.debug("renewed the lease on %s (epoch %d)", self.layout.base, self.lease.epoch)

    # -- shipping ----------------------------------------------------------------------------

    def ship(self) -> None:
        """Upload every commit in the WAL that is not in storage yet, as one segment.

        Commits read but not yet stored (an upload failed) are kept and go first: the WAL may
        already have been checkpointed past them. After a shipment that leaves the WAL long,
        the shipped frames are checkpointed (`_checkpoint`), which may read a few more commits
        to carry into the next shipment.
        """
        with self._io:
            self.check_fenced()
            if self._unsent is None:
                through = self.tickets.issued
                read = self._read_on()
                if read is None:
                    self.start_generation(ship_first=False)
                    return
                self._unsent = (read, through)
            read, through = self._unsent
            if read.ends:
                self._upload_segment(read)
            else:  # nothing new, but the WAL may have started over (safely: see _read_on)
                self.shipped.position = read.position
            self._unsent = None
            self.tickets.mark_shipped(through)
            if read.position.frames >= self.options.checkpoint_frames:
                self._checkpoint()

    def ship_all(self) -> None:
        """Ship, and ship again the commits a checkpoint carried over: nothing read is left
        only in memory."""
        with self._io:
            self.ship()
            while self._carry is not None:
                self.ship()

    def _read_on(self, checkpoint: bool = False) -> Optional[WalRead]:
        """The commits after those read so far (the carried ones first), read under SQLite's
        write lock; with `checkpoint`, the WAL is also checkpointed under that lock, once
        everything in it is read. None if the WAL started over with some of it unread
        (then a new generation must start: see `_restart_is_safe`)."""
        carry = self._carry
        start = carry.position if carry is not None else self.shipped.position
        lost = []

        def judge(read: WalRead) -> None:
            lost.append(self._folded
                        or (read.restarted and not self._restart_is_safe(read, start)))
            if checkpoint and not lost[0]:
                self.local.checkpoint_passive()

        read = self.local.read(start, judge)
        self._carry = None  # from here on in `read`, or covered by the new generation
        if lost[0]:
            log.warning("the WAL of %s started over without all of it read (emptied, "
                        "removed, or checkpointed by someone else): starting a new "
                        "generation so that no commit is lost", self.path)
            return None
        return carry.followed_by(read) if carry is not None else read

    def _checkpoint(self) -> None:
        """Move the shipped frames into the database file so that the WAL starts over at the
        next write, holding SQLite's write lock only for the few frames committed meanwhile.

        First without the lock: a PASSIVE checkpoint on the writer connection copies the
        frames up to the pin (the shipped position) and stops there. Then under the lock: the
        commits made since are read (and carried into the next shipment) and the rest is
        checkpointed, with the pin let go; the pin is taken again at the end of what was read.
        """
        self.local.checkpoint_to_pin()
        read = self._read_on(checkpoint=True)
        if read is None:
            self.start_generation(ship_first=False)
        elif read.ends or read.position != self.shipped.position:
            self._carry = read

    def sync(self) -> None:
        """Ship everything, and confirm the lease even when there was nothing to ship."""
        with self._io:
            self.ship_all()
            self._guard(self.lease.check)

    def _restart_is_safe(self, read: WalRead, start: WalPosition) -> bool:
        """A new WAL cycle loses nothing if the pin stood where this read started (the end of
        what was read before) until it began: while it stands, the WAL can start over only
        once every frame is checkpointed and none is after the pin (localfile.py), so the old
        cycle ended where we had read. SQLite's restart adds one to salt-1 (whichever
        connection makes it); a WAL emptied and begun anew has other salts."""
        return (read.header is not None and self.local.last_pin == start
                and start.salts is not None
                and read.header.salt1 == (start.salts[0] + 1) & 0xFFFFFFFF)

    def _upload_segment(self, read: WalRead) -> None:
        now = time.time()
        seq = self.shipped.seq + 1
        segment = FrameSegment(self.shipped.generation, seq, self.lease.epoch,
                               read.header.page_size, tuple(read.chunks), read.start_frame,
                               tuple(read.ends), tuple(read.times))
        data = segment.encode()
        key = self.layout.segment(self.shipped.generation, seq)
        # The fence fences (docs/FORMAT.md, "Fences"): a new holder creates the next key of
        # this generation first, so this create fails. A segment sent in several requests
        # (multipart) is checked against lock.json as well, on servers that might not apply
        # If-None-Match to the request that completes it.
        several = len(data) >= CHUNK_SIZE
        if several:
            self._guard(self.lease.check)
        try:
            self.storage.create(key, data)
        except PreconditionFailedError:
            raise self._fence(self._fenced_at(key)) from None
        if several and self.options.sync_mode == "sync":
            self._guard(self.lease.check)
        s = self.shipped
        s.seq, s.position, s.last_sync = seq, read.position, now
        s.bytes_uploaded += len(data)
        s.generation_bytes += len(data)
        s.segments_uploaded += 1
        s.commits_uploaded += len(read.ends)
        self.merger.add(segment, len(data))
        if self.merger.due:  # stored at once, not at the next tick: a writer that stopped
            self._wake(0.0)  # first would leave a restore its segments to read one by one
        self.write_sidecar()
        self.publish_durable()
        log.info("shipped %d commits of %s as %s (%d bytes)", len(read.ends),
                 self.layout.base, key, len(data))

    def _fenced_at(self, key: str) -> LeaseLostError:
        """The segment key was taken: a new holder's fence (nothing else writes it). Its
        lease check says who took over."""
        try:
            self.lease.check()
        except LeaseLostError as exc:
            return exc
        except (StorageError, ReplicaCorruptError):
            pass
        return self.lease.lost(f"the next segment key, {key}, holds another writer's fence")

    def _store_merged(self) -> None:
        """Store the merged segments due (merging.py), the lowest level first. They only spare
        restores requests, so failing to store one loses nothing. The lease read before each
        is not for them (they stand for segments stored before any fence): it bounds how long
        a writer that commits faster than a new holder can try keys outruns its fence."""
        while self.merger.due:
            merged, replaced = self.merger.take()
            key = self.layout.merged_segment(merged.generation, merged.first_seq, merged.seq)
            data = merged.encode()
            self._guard(self.lease.check)
            try:
                self.storage.create(key, data)
            except StorageError as exc:
                log.warning("could not store %s; restores will read what it stands for "
                            "instead: %s", key, exc)
                self.merger.stored(merged, replaced)
                continue
            self.merger.stored(merged, len(data))
            s = self.shipped
            s.bytes_uploaded += len(data)
            s.merged_uploaded += 1
            s.generation_bytes += len(data) - replaced
            log.info("merged segments %d-%d of %s as %s (%d bytes)", merged.first_seq,
                     merged.seq, self.layout.base, key, len(data))

    def wait_durable(self, ticket: int) -> None:
        """Sync mode: return once the commit holding `ticket` is in storage, or raise."""
        while not self.tickets.covered(ticket):
            self.check_fenced()
            with self._io:
                if self.tickets.covered(ticket):
                    return
                if self.closed:
                    raise SessionClosedError(
                        f"{self.path} was shut down while this commit was made: it stands in "
                        "the local file but was not shipped. connect() again to ship it")
                self.ship()

    def write_sidecar(self, file: Optional[dict] = None) -> None:
        """Record where replication stands; `file` describes the database file when the WAL
        is empty and everything is shipped (the end of a session), else nothing is promised."""
        s = self.shipped
        write_sidecar(self.path, Sidecar(self.origin, s.generation, s.seq, self.lease.epoch,
                                         list(s.position.salts) if s.position.salts else None,
                                         s.position.frames, file))

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint_truncate(self) -> bool:
        """Empty the WAL (everything read must be shipped or in the current snapshot); True if
        it is empty with nothing unshipped folded into the file. Folded commits (made since
        the last read) make the next shipment start a new generation."""
        truncation = self.local.truncate(self.shipped.position)
        if truncation.emptied or truncation.folded:
            self.shipped.position = WalPosition()
        self._folded = self._folded or truncation.folded
        if truncation.emptied:
            self.publish_durable()
        return truncation.emptied

    def finish(self, hand_over: bool = False) -> None:
        """The end of a session: ship everything, take the final snapshot, empty the WAL, and
        leave a sidecar that describes the file. Commits made meanwhile are shipped too (or,
        folded into the file, snapshotted); a sync-mode commit after this raises.
        `hand_over`: other processes go on using the file (and one of them replicates next):
        ship, and leave the WAL and the file to them."""
        with self._io:
            self.ship_all()
            if hand_over:
                self.closed = True
                return
            if self.shipped.seq > 0 and (self.options.snapshot_on_shutdown
                                         or self._snapshot_due()):
                self.start_generation()
            for _ in range(FINISH_ATTEMPTS):
                if self.checkpoint_truncate():
                    self.closed = True
                    self.write_sidecar(describe_file(self.path))
                    return
                if self._folded:
                    self.start_generation(ship_first=False)
                else:
                    self.ship_all()
            self.closed = True
            self.write_sidecar()
            log.warning("%s could not be left with an empty WAL (other connections kept "
                        "reading or writing it): the next session starts a new generation",
                        self.path)

    # -- generations -------------------------------------------------------------------------

    def start_generation(self, ship_first: bool = True) -> str:
        """Snapshot the database as it is now and make it the start of a new generation.

        First ships what is pending into the old generation, so that it ends as late as it can
        and a point-in-time restore before the snapshot finds every commit there."""
        with self._io:
            self.check_fenced()
            if ship_first and self.shipped.generation:
                self.ship_all()
            through = self.tickets.issued
            parent = ({"generation": self.shipped.generation, "seq": self.shipped.seq}
                      if self.shipped.generation else None)
            generation = new_generation_id()
            fd, temp = tempfile.mkstemp(prefix=".snapshot-", suffix=".db",
                                        dir=os.path.dirname(os.path.abspath(self.path)))
            os.close(fd)
            try:
                read = self._read_locked()
                pinned_at = time.time()
                page_size = self.local.copy_pinned(temp)
                self._guard(self.lease.check)
                meta = upload_snapshot(self.storage, self.layout, generation, temp,
                                       epoch=self.lease.epoch, page_size=page_size,
                                       parent=parent, created_at=pinned_at,
                                       before_meta=lambda: self._guard(self.lease.check))
            finally:
                remove_database_files(temp)
            self.renew(generation)
            s = self.shipped
            s.generation, s.seq, s.last_snapshot = generation, 0, meta.created_at
            s.position = read.position
            s.bytes_uploaded += meta.stored_size
            s.snapshot_size, s.generation_bytes = meta.size, 0
            self.merger.reset()
            self._folded = False
            self._unsent = self._carry = None
            self._prune_due = True
            self.write_sidecar()
            self.tickets.mark_shipped(through)
            self.publish_durable()
            log.info("started generation %s of %s with a %d-byte snapshot (%d bytes stored)",
                     generation, self.layout.base, meta.size, meta.stored_size)
            return generation

    def prune(self) -> list:
        """Delete whole generations the retention policy no longer needs (never the current
        one); runs in the background after each new generation, outside the I/O lock."""
        self._prune_due = False
        self.check_fenced()
        options = self.options
        pruned = prune(self.storage, self.layout, keep_generations=options.retention_generations,
                       max_age=options.retention_age)
        for generation in pruned:
            log.info("pruned generation %s of %s (%s)", generation.generation, self.layout.base,
                     generation.reason)
        return pruned

    def adopt(self, generation: str, seq: int, created_at: float) -> None:
        """Carry on in a stored generation whose end is this file's state (WAL emptied),
        weighing it for the snapshot policy by what a restore of it reads."""
        s = self.shipped
        s.generation, s.seq, s.last_snapshot = generation, seq, created_at
        s.snapshot_size = read_meta(self.storage, self.layout, generation).size
        s.generation_bytes = sum(size for *_, size in read_plan(self.storage, self.layout,
                                                                 generation, seq))
        self.merger.reset()
        self.write_sidecar()

    def oldest_pending(self) -> Optional[float]:
        """The commit time of the oldest commit not durable yet (None if none is pending)."""
        if not self.tickets.pending:
            return None
        unsent, carry = self._unsent, self._carry
        times = ((unsent[0].times[:1] if unsent else []) + (carry.times[:1] if carry else [])
                 + [self.clock.oldest()])
        times = [t for t in times if t is not None]
        return min(times) if times else time.time()

    def pending_bytes(self) -> int:
        """WAL bytes written after the position shipped (an estimate: frames, not pages)."""
        try:
            size = os.path.getsize(wal_path(self.path))
        except FileNotFoundError:
            return 0
        page_size = self.local.page_size()
        shipped = 32 + self.shipped.position.frames * (24 + page_size)
        return max(0, size - shipped) if self.shipped.position.salts else size
