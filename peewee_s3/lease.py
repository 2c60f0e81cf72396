"""lease: the one-writer lock, `lock.json`, taken and renewed with conditional writes only.

The lease names its holder (a random id, host, pid, local file), an epoch that grows with every
new holder, the current generation and when it expires. A holder that finds another id or epoch
in `lock.json` has lost it: the caller must stop writing (fencing; its segments are stopped by
the new holder's fence, fence.py). A live lease is taken over without waiting for it to expire
only when the caller proves its holder gone: same host, same local file, whose host lock
(host.py) the caller now holds, and a pid no longer running. It never touches SQLite.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional

from .errors import (LeaseHeldError, LeaseLostError, ObjectNotFoundError,
                     PreconditionFailedError, ReplicaCorruptError, StorageError)
from .storage import Storage

FORMAT = 1


@dataclass(frozen=True)
class LeaseRecord:
    """The content of `lock.json`; every field is at the top level."""

    holder_id: str
    host: str
    pid: int
    epoch: int
    generation: Optional[str]
    acquired_at: float
    expires_at: float
    released: bool = False
    file: Optional[str] = None  # the holder's local database file (its real path)
    format: int = FORMAT

    def is_live(self, now: float) -> bool:
        return not self.released and self.expires_at > now

    def same_holder(self, other: "LeaseRecord") -> bool:
        return (self.holder_id, self.epoch) == (other.holder_id, other.epoch)

    def describe(self) -> str:
        return f"{self.holder_id} on {self.host} (pid {self.pid}, epoch {self.epoch})"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> "LeaseRecord":
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or "format" not in raw:
                raise ValueError("no 'format' field")
        except ValueError as exc:
            raise ReplicaCorruptError(
                f"{key} is not a peewee-s3 lease ({exc}). If no writer is running, remove it "
                "(peewee-s3 lease release --force) and connect again") from None
        if raw["format"] != FORMAT:
            raise ReplicaCorruptError(
                f"{key} has lease format {raw['format']!r}, this version knows {FORMAT}: "
                "it was written by another version of peewee-s3; upgrade before writing here")
        try:
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except TypeError as exc:
            raise ReplicaCorruptError(f"{key} lacks lease fields ({exc}); remove it with "
                                      "peewee-s3 lease release --force if no writer runs") from None


def process_running(pid: int) -> bool:
    """Whether a process of this host has this pid (one we may not signal counts). A zombie
    does not: it has died, only its parent has not reaped it yet (uvicorn's supervisor looks
    every 0.5 s; a process opening the file meanwhile must take over, not be refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _dead_unreaped(pid)


def _dead_unreaped(pid: int) -> bool:
    """Whether /proc shows `pid` dead (Linux); without /proc, a pid counts until reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return os.path.isdir("/proc/self")   # reaped since os.kill, if /proc is there at all
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] in (b"Z", b"X")   # after "pid (comm) "


def read_lease(storage: Storage, key: str) -> Optional[LeaseRecord]:
    """The lease as stored, or None if there is none."""
    try:
        return LeaseRecord.from_bytes(storage.read(key), key)
    except ObjectNotFoundError:
        return None


class Lease:
    """This process's claim on one database's `lock.json`.

    Not thread-safe by itself: the replicator (under its I/O lock) is its only user once the
    session is open.
    """

    def __init__(self, storage: Storage, key: str, ttl: float, *, force: bool = False,
                 wait: float = 0.0, local_file: Optional[str] = None) -> None:
        """`local_file`: the file this holder replicates, given only by a caller that holds
        that file's host lock (so a holder on this host with this file is gone)."""
        self.storage, self.key, self.ttl, self.force, self.wait = storage, key, ttl, force, wait
        self.local_file = local_file
        self.holder_id = secrets.token_hex(8)
        self.record: Optional[LeaseRecord] = None
        self.previous: Optional[LeaseRecord] = None
        self._tag: Optional[str] = None

    @property
    def epoch(self) -> int:
        return self.record.epoch if self.record else 0

    @property
    def generation(self) -> Optional[str]:
        return self.record.generation if self.record else None

    def acquire(self) -> LeaseRecord:
        """Take the lease, waiting up to `wait` seconds for a live holder to let go."""
        deadline = time.monotonic() + self.wait
        while True:
            try:
                return self._try_acquire()
            except PreconditionFailedError:
                continue
            except StorageError:
                self._let_go_if_stored()
                raise
            except LeaseHeldError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _try_acquire(self) -> LeaseRecord:
        now = time.time()
        try:
            data, tag = self.storage.read_tagged(self.key)
        except ObjectNotFoundError:
            return self._store(self._new_record(1, None, now), None)
        current = LeaseRecord.from_bytes(data, self.key)
        if current.is_live(now) and not self.force and not self._holder_gone(current):
            raise LeaseHeldError(
                f"the lease on {self.storage.describe(self.key)} is held by "
                f"{current.describe()} for {current.expires_at - now:.0f} more seconds. Stop "
                "that writer (its shutdown() releases the lease), wait for it to expire, use "
                "lock_wait=SECONDS to wait, or force_lock=True to take it over (dev only)")
        self.previous = current
        return self._store(self._new_record(current.epoch + 1, current.generation, now), tag)

    def _holder_gone(self, current: LeaseRecord) -> bool:
        """Whether the live lease's holder provably died: it replicated our file on our host
        (whose host lock we now hold) and its pid runs no more."""
        if self.local_file is None or current.file != self.local_file \
                or current.host != socket.gethostname():
            return False
        return current.pid == os.getpid() or not process_running(current.pid)

    @property
    def took_over(self) -> bool:
        """Whether this holder took the lease from one that did not release it (expired,
        forced, or gone), who may still be uploading into its generation."""
        return self.previous is not None and not self.previous.released

    def _let_go_if_stored(self) -> None:
        """Taking the lease failed, but the write may have landed with its answer lost: if
        lock.json names us, end it (see `release`), so that the next connect is not refused
        for lock_ttl."""
        try:
            data, tag = self.storage.read_tagged(self.key)
            stored = LeaseRecord.from_bytes(data, self.key)
            if stored.holder_id == self.holder_id:
                self.storage.replace(self.key, replace(stored, released=not self.took_over,
                                                       expires_at=time.time()).to_bytes(), tag)
        except (StorageError, ReplicaCorruptError):
            pass

    def _new_record(self, epoch: int, generation: Optional[str], now: float) -> LeaseRecord:
        return LeaseRecord(self.holder_id, socket.gethostname(), os.getpid(), epoch, generation,
                           now, now + self.ttl, file=self.local_file)

    def _store(self, record: LeaseRecord, tag: Optional[str]) -> LeaseRecord:
        data = record.to_bytes()
        self._tag = (self.storage.create(self.key, data) if tag is None
                     else self.storage.replace(self.key, data, tag))
        self.record = record
        return record

    def renew(self, generation: Optional[str] = None) -> LeaseRecord:
        """Push the expiry out (and record a new current generation); LeaseLostError if lost."""
        assert self.record is not None, "renew() before acquire()"
        changes = {"expires_at": time.time() + self.ttl}
        if generation is not None:
            changes["generation"] = generation
        try:
            return self._store(replace(self.record, **changes), self._tag)
        except (PreconditionFailedError, ObjectNotFoundError):
            self.check()
            return self._store(replace(self.record, **changes), self._tag)

    def check(self) -> None:
        """Raise LeaseLostError unless `lock.json` still names this holder and epoch."""
        assert self.record is not None, "check() before acquire()"
        try:
            data, tag = self.storage.read_tagged(self.key)
        except ObjectNotFoundError:
            raise self.lost("lock.json was deleted") from None
        if tag == self._tag:
            return
        stored = LeaseRecord.from_bytes(data, self.key)
        if not stored.same_holder(self.record):
            raise self.lost(f"it is now held by {stored.describe()}")
        self._tag, self.record = tag, stored

    def lost(self, why: str) -> LeaseLostError:
        """The error that fences this holder, saying why."""
        return LeaseLostError(
            f"this writer ({self.record.describe()}) lost the lease on {self.key}: {why}. "
            "It is fenced: nothing more is uploaded and writes fail. Commits not yet shipped "
            "stay in the local file; open the database again to continue from storage")

    def release(self, clean: bool = True) -> None:
        """Mark the lease released (keeping epoch and generation for the next holder).
        `clean=False` ends it without saying it was released: it expires now, and the next
        holder takes it over as from a writer that stopped uncleanly (so it fences the
        generation, fence.py) — for a holder that took over and then gave up before its own
        generation began, whose predecessor may still be writing."""
        if self.record is None:
            return
        self._store(replace(self.record, released=clean, expires_at=time.time()), self._tag)
