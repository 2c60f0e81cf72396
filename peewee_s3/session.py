"""session: one writer's time with a database — from taking the lease to releasing it.

Opening a session takes the lease before SQLite touches the local file, then settles the local
file against the storage (DESIGN.md, "Local file versus storage") and starts the replicator.
Closing it ships what is pending, takes the final snapshot and releases the lease; a closing
that fails for a reason that can pass (a lock held, the storage down) leaves the session open
to be closed again. It reads the local file only through `files` (stat and pread).
The caller holds the file's host lock (host.py): no other process of this host replicates it,
so a lease held by a dead process for this very file is taken over at once, and the file is
newer than anything such a holder stored.
"""
from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable, Optional

from . import files
from .config import Options
from .errors import (ConfigurationError, LeaseLostError, LocalStateError, NothingToRestoreError,
                     PreconditionFailedError)
from .fence import fence_generation, lineage_end
from .layout import Layout
from .lease import Lease
from .probe import probe_conditional_writes
from .replicator import Replicator
from .restore import current_generation, move_aside, restore_to, segment_sizes
from .sidecar import Sidecar, describe_file, read_sidecar, remove_sidecar
from .storage import Storage, release_storage, share_storage
from .wal import WalPosition, read_commits, wal_path

log = logging.getLogger("peewee_s3")


@dataclass(frozen=True)
class Plan:
    """How to begin: carry on in `generation` after segment `seq`, or (`carry_on` False) start
    a new generation whose parent is `generation`/`seq` (None: a new lineage)."""

    carry_on: bool
    generation: Optional[str] = None
    seq: int = 0
    created_at: float = 0.0
    file: Optional[dict] = None  # carry on only if the file is still this (sidecar.describe_file)


class Session:
    def __init__(self, path: str, options: Options, storage: Storage, lease: Lease,
                 replicator: Replicator) -> None:
        self.path, self.options, self.storage = path, options, storage
        self.lease, self.replicator = lease, replicator
        self.closed = False
        self.role = "replicator"
        self.check_writable = replicator.check_writable  # every write: no call through here

    # -- what a database object asks of its session (the same of host.Member) ---------------

    def check_file(self) -> None:
        self.replicator.local.check()

    def check_writable(self) -> None:
        self.replicator.check_writable()

    def committed(self, sync: bool) -> None:
        """A commit of this process returned: note its time; in sync mode, return once it
        is durable (or raise)."""
        r = self.replicator
        r.clock.note()
        ticket = r.tickets.issue()
        if sync:
            r.wait_durable(ticket)
        else:
            r.notify()

    def sync(self) -> None:
        self.replicator.sync()

    def snapshot(self) -> str:
        return self.replicator.start_generation()

    def prune(self) -> list:
        return self.replicator.prune()

    def status(self) -> dict:
        r, lease, s = self.replicator, self.lease, self.replicator.shipped
        return {
            "storage": self.storage.describe(),
            "role": self.role,
            "generation": s.generation,
            "position": {"generation": s.generation, "seq": s.seq},
            "last_sync": s.last_sync,
            "seconds_since_sync": None if s.last_sync is None else time.time() - s.last_sync,
            "pending_commits": r.tickets.pending,
            "pending_bytes": r.pending_bytes(),
            "bytes_uploaded": s.bytes_uploaded,
            "segments_uploaded": s.segments_uploaded,
            "merged_segments_uploaded": s.merged_uploaded,
            "commits_uploaded": s.commits_uploaded,
            "lease": {"holder": lease.record.describe() if lease.record else None,
                      "epoch": lease.epoch,
                      "expires_at": lease.record.expires_at if lease.record else None},
            "fenced": r.fenced is not None,
            "last_error": str(r.last_error) if r.last_error else None,
            "errors": dict(r.errors),
            "oldest_pending_commit": r.oldest_pending(),
            "last_snapshot": s.last_snapshot,
        }

    def shutdown(self, hand_over: bool = False) -> None:
        """Ship, take the final snapshot, release the lease. A fenced writer releases nothing.
        If the local file is gone, what was shipped stays the stored state: the lease is
        released and LocalStateError says so. Any other failure leaves the session open (the
        replicator running again) so that shutdown can be called again."""
        r = self.replicator
        r.stop()
        try:
            if not r.fenced:
                r.finish(hand_over)
        except (LeaseLostError, PreconditionFailedError):
            log.warning("%s was taken over before shutdown: released nothing", r.layout.base)
        except LocalStateError:
            self._close(release=True)
            raise
        except BaseException:
            r.start()
            raise
        self._close(release=not r.fenced)

    def _close(self, release: bool) -> None:
        r = self.replicator
        try:
            if release:
                self.lease.release()
                log.info("released the lease on %s", r.layout.base)
        except (LeaseLostError, PreconditionFailedError):
            log.warning("%s was taken over before shutdown: released nothing", r.layout.base)
        finally:
            self.closed = True
            r.close_connections()
            release_storage(self.storage)


def open_session(path: str, options: Options,
                 prepare: Optional[Callable[[sqlite3.Connection], None]] = None) -> Session:
    """`prepare` registers the app's functions and collations on the connection that checks
    a restored file (its schema may use them)."""
    storage = share_storage(options.storage, **options.storage_kwargs())
    try:
        layout = Layout(options.base_key)
        origin = _origin(storage, layout)
        _check_conditional_writes(storage, layout, options)
        lease = Lease(storage, layout.lock, options.lock_ttl, force=options.force_lock,
                      wait=options.lock_wait, local_file=os.path.realpath(path))
        lease.acquire()
        log.info("took the lease on %s (epoch %d)", layout.base, lease.epoch)
        try:
            plan = _settle_local_file(path, storage, layout, lease, origin, prepare)
            replicator = Replicator(path, options, storage, lease, origin)
            try:
                _begin(replicator, plan)
            except BaseException:
                replicator.close_connections()
                raise
        except BaseException:
            lease.release(clean=not lease.took_over)
            raise
    except BaseException:
        release_storage(storage)
        raise
    replicator.start()
    return Session(path, options, storage, lease, replicator)


def _check_conditional_writes(storage: Storage, layout: Layout, options: Options) -> None:
    """The lease is only as safe as the storage's create-if-absent: ask it, every session."""
    if probe_conditional_writes(storage, layout.base):
        return
    if not options.unsafe_storage:
        raise ConfigurationError(
            f"{storage.describe()} ignores conditional writes (it accepted a second "
            "create-if-absent of the same key), so its lease cannot keep a second writer out. "
            "Use storage that honours If-None-Match/If-Match (AWS S3, R2, MinIO, SeaweedFS, a "
            "local directory), or pass unsafe_storage=True if you are sure only one instance "
            "ever runs")
    log.warning("%s ignores conditional writes: running with unsafe_storage=True, the lease "
                "cannot keep a second writer out — make sure only one instance runs",
                storage.describe())


def _begin(replicator: Replicator, plan: Plan) -> None:
    """Carry on in the plan's generation if the file is still what was checked before SQLite
    opened it (nobody wrote it in between: our checkpoint then changed nothing), else start
    a new generation with a snapshot of it."""
    emptied = replicator.checkpoint_truncate()
    unchanged = plan.file is None or plan.file == describe_file(replicator.path)
    if plan.generation:
        replicator.adopt(plan.generation, plan.seq, plan.created_at)
    if not (plan.carry_on and emptied and unchanged):
        replicator.start_generation()


def _origin(storage: Storage, layout: Layout) -> str:
    """Which database a sidecar belongs to: protocol, root and key as a URL (`file:///srv/x/
    app`, `s3://bucket/path/app`), no endpoint spelling and no secret (a trailing '/' or
    another spelling of the same URL is the same)."""
    protocol = storage.fs.protocol
    protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
    return f"{protocol}://{storage.root.rstrip('/')}/{layout.base}"


def _same_origin(a: str, b: str) -> bool:
    """Origins compared as places: sidecars written before 2026-12 dropped the root's
    leading '/' (`file://srv/x/app`)."""
    def place(origin: str) -> tuple:
        protocol, _, rest = origin.partition("://")
        return protocol, rest.strip("/")
    return place(a) == place(b)


def _settle_local_file(path: str, storage: Storage, layout: Layout, lease: Lease,
                       origin: str, prepare: Optional[Callable] = None) -> Plan:
    """Restore, keep or refuse the local file; see DESIGN.md "Local file versus storage"."""
    try:
        meta = current_generation(storage, layout)
    except NothingToRestoreError:
        return _new_lineage(path, origin)
    end, fenced = _end_of_previous_writer(storage, layout, lease, meta.generation)
    if not _exists(path):
        return _restore(path, storage, layout, lease, meta, fenced, prepare)
    _check_is_sqlite(path)
    sidecar = read_sidecar(path)
    if sidecar is None or not _same_origin(sidecar.origin, origin):
        found = "no sidecar" if sidecar is None else f"a sidecar of {sidecar.origin}"
        raise LocalStateError(
            f"{path} exists with {found}, and {origin} already holds a database: it cannot be "
            "proved to be a state of it. Move the file away to restore from storage, or use "
            "another database_name to replicate this file as a new database")
    if _replicated_here(lease, path) and sidecar.generation == meta.generation:
        # Its last holder shipped from this very file and died: nothing it stored is newer
        # than the file (other processes may have committed more to it since).
        return Plan(False, meta.generation, end)
    if sidecar.generation == meta.generation and sidecar.seq == end:
        if (_wal_matches(path, sidecar) and sidecar.describes(path) and not fenced
                and _clean_handover(lease, meta.generation)):
            return Plan(True, meta.generation, end, meta.created_at, sidecar.file)
        if not sidecar.describes(path):
            log.warning("%s changed since its last session ended (or that session did not end "
                        "cleanly): starting a new generation with a snapshot of it", path)
        return Plan(False, meta.generation, end)
    if ((sidecar.generation == meta.generation and sidecar.seq < end)
            or sidecar.generation < meta.generation):
        aside = move_aside(path)
        remove_sidecar(path)
        log.warning("%s held an older state (generation %s, segment %d); moved it to %s and "
                    "restoring %s", path, sidecar.generation, sidecar.seq, aside, meta.generation)
        return _restore(path, storage, layout, lease, meta, fenced, prepare)
    raise LocalStateError(
        f"{path} says it shipped generation {sidecar.generation} segment {sidecar.seq}, but "
        f"{origin} holds generation {meta.generation} through segment {end}: neither is "
        "provably newer. Move the file away to restore from storage, or copy it elsewhere "
        "and replicate it under another database_name")


def _check_is_sqlite(path: str) -> None:
    magic = files.pread(path, 16)
    if magic and magic != b"SQLite format 3\x00":
        raise LocalStateError(
            f"{path} is not a SQLite database (it starts with {magic[:8]!r}): nothing was "
            "changed. Point S3SqliteDatabase at the right file, or move this one away")


def _new_lineage(path: str, origin: str) -> Plan:
    if _exists(path):
        _check_is_sqlite(path)
        sidecar = read_sidecar(path)
        if sidecar and not _same_origin(sidecar.origin, origin):
            raise LocalStateError(
                f"{path} was replicated to {sidecar.origin}, not {origin}: use that storage "
                "and database_name, or remove its sidecar to replicate it here as a new database")
        if sidecar:
            log.warning("%s is empty: starting a new lineage from %s", origin, path)
    else:
        _remove_leftovers(path)
    return Plan(False)


def _restore(path: str, storage: Storage, layout: Layout, lease: Lease, meta, fenced: bool,
             prepare: Optional[Callable] = None) -> Plan:
    _remove_leftovers(path)
    state = restore_to(storage, layout, path, generation=meta.generation, prepare=prepare)
    return Plan(_clean_handover(lease, state.generation) and not fenced, state.generation,
                state.seq, meta.created_at)


def _end_of_previous_writer(storage: Storage, layout: Layout, lease: Lease,
                            generation: str) -> tuple:
    """(last segment of `generation` in the lineage, whether a fence ends it). Unless its last
    writer released the lease itself, that writer may still be uploading into it: fence it
    first (fence.py), so that the end read here is final. Called with the lease just taken."""
    listed = segment_sizes(storage, layout, generation)
    last = listed[-1][0] if listed else 0
    if _clean_handover(lease, generation):
        end = lineage_end(storage, layout, generation, listed)
        return end, end < last
    end = fence_generation(storage, layout, generation, listed, epoch=lease.epoch,
                           holder_id=lease.holder_id)
    log.info("fenced generation %s of %s after segment %d: its last writer (%s) did not "
             "release the lease", generation, layout.base, end,
             lease.previous.describe() if lease.previous else "lock.json was missing")
    return end, True


def _replicated_here(lease: Lease, path: str) -> bool:
    """Whether the last lease holder replicated this file on this host, without releasing."""
    previous = lease.previous
    return bool(previous and not previous.released and previous.file == os.path.realpath(path)
                and previous.host == socket.gethostname())


def _clean_handover(lease: Lease, generation: str) -> bool:
    """Carry on in a generation only after its last writer released the lease itself: a writer
    whose lease was taken over may still be uploading into it."""
    previous = lease.previous
    return bool(previous and previous.released and previous.generation == generation)


def _wal_matches(path: str, sidecar: Sidecar) -> bool:
    read = read_commits(wal_path(path), WalPosition(), verify=True)
    if not read.commits:
        return sidecar.wal_frames == 0
    return (list(read.position.salts) == sidecar.wal_salts
            and read.position.frames == sidecar.wal_frames)


def _exists(path: str) -> bool:
    """Whether there is a local state: a non-empty file, or an empty one whose WAL holds
    commits. (A WAL without its database file is no state: see `_remove_leftovers`.)"""
    if not os.path.exists(path):
        return False
    if os.path.getsize(path) > 0:
        return True
    return bool(read_commits(wal_path(path), WalPosition(), verify=True).commits)


def _remove_leftovers(path: str) -> None:
    """No local state (see `_exists`): an empty file and its -shm go, and so does a WAL
    without commits. A WAL that holds commits but has lost its database file is kept aside,
    never deleted: it is someone's data, but cannot be replayed without the file."""
    if read_commits(wal_path(path), WalPosition(), verify=True).commits:
        aside = move_aside(path)
        log.warning("%s is missing but its WAL holds commits: moved the WAL to %s-wal; "
                    "starting from storage", path, aside)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
