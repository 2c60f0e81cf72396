"""host: the processes of one machine on one database file — which one replicates, and how the
others' commits become durable.

The first process to take the file's host lock (`<file>.peewee-s3.lock`, an flock the kernel
drops when its holder dies) opens the replica session (session.py: the storage lease, the
replicator). Every other process is a member: it writes through SQLite as usual, and the
replicator ships whatever lands in the WAL. After each shipment the replicator publishes what is
durable in `<file>.peewee-s3.state`; a member's sync-mode commit wakes it (a datagram socket)
and waits until that state covers the commit. Members keep trying the host lock, so when the
replicating process dies another takes over within a fraction of a second. Database objects of
one process share one HostSession (`join_session`). The protocol is in docs/HOSTS.md.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import select
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from . import files, helper, scheduler
from .config import Options
from .errors import (ConfigurationError, LeaseHeldError, LeaseLostError, LocalStateError,
                     PeeweeS3Error, SessionClosedError, StorageError)
from .lease import process_running
from .localfile import ASYNC_CHECK_EVERY, file_identity
from .session import Session, open_session
from .wal import WAL_INDEX_NOTE_SIZE, parse_wal_index

log = logging.getLogger("peewee_s3")

LOCK_SUFFIX = ".peewee-s3.lock"        # exclusive: the replicating process holds it
MEMBERS_SUFFIX = ".peewee-s3.members"  # shared: every process with the file open holds it
STATE_SUFFIX = ".peewee-s3.state"      # what is durable, written by the replicating process
TAKEOVER_EVERY = 0.2     # seconds between a member's tries of the host lock
READY_WAIT = 60.0        # seconds a new process waits for the replicating one to be ready
DURABLE_WAIT = 120.0     # seconds a member's sync commit waits for the replicator at most
LEAVE_WAIT = 10.0        # seconds a leaving member waits for its last commits to be shipped
HELPER_EXIT_WAIT = 60.0  # seconds the last process out waits for the helper's end of session
DONE_KEPT = 64           # WAL cycles the state remembers as wholly durable
# What a member's ring asks of the replicating process (one datagram, one byte)
SOON, URGENT, SNAPSHOT = b"a", b"s", b"g"  # ship at the interval / ship now / new generation
PUBLISHED = b"p"  # the answer to an URGENT or SNAPSHOT ring: the state file was just written
REANSWER_AFTER = 0.005  # seconds: a member answered too early rings again at most this often


@dataclass
class HostState:
    """`<file>.peewee-s3.state`: durable are the frames up to `frames` of the WAL cycle `salts`,
    every frame of the cycles in `done`, and every commit made before `snapshot_at` (the last
    snapshot's moment). `ready`: the session is open; `fenced`: it lost the lease."""

    pid: int
    session: str
    ready: bool = False
    salts: Optional[list] = None
    frames: int = 0
    done: list = field(default_factory=list)
    snapshot_at: float = 0.0
    fenced: Optional[str] = None
    generation: Optional[str] = None  # the current generation's id

    def covers(self, salts: Optional[tuple], frame: int, committed_at: float) -> bool:
        if not self.ready:
            return False
        if committed_at < self.snapshot_at:
            return True
        if salts is None:
            return False
        if self.salts is not None and tuple(self.salts) == tuple(salts):
            return self.frames >= frame
        return list(salts) in self.done


def read_state(database_path: str) -> Optional[HostState]:
    try:
        with open(database_path + STATE_SUFFIX, "rb") as f:
            return HostState(**json.load(f))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _write_state(database_path: str, state: HostState) -> None:
    """Replace the state file at once (temp file + rename). A failure is logged, not raised:
    members then wait longer, and nothing stored depends on it."""
    temp = f"{database_path}{STATE_SUFFIX}.{os.getpid()}.tmp"
    try:
        with open(temp, "w") as f:
            f.write(json.dumps(asdict(state)))  # one write; json.dump writes piece by piece
        os.replace(temp, database_path + STATE_SUFFIX)
    except OSError as exc:
        log.warning("could not write %s%s: %s", database_path, STATE_SUFFIX, exc)


def _lock_exclusively(fd: int) -> bool:
    """Take an flock without waiting; False if another open file description holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def wal_end(database_path: str) -> tuple:
    """(salts, last committed frame) of the WAL now, from the wal-index in `-shm`."""
    for _ in range(1000):
        index = parse_wal_index(files.pread(database_path + "-shm", WAL_INDEX_NOTE_SIZE))
        if index is not None:
            return index
        time.sleep(0.0001)  # a writer is updating the header: its two copies disagree
    return None, 0


class _Doorbell:
    """A datagram socket named after the file (Linux's abstract namespace: no file, gone with
    its process): members ring it, the replicating process listens. Elsewhere it is silent and
    the replicator ships at its sync_interval. A member's ring comes from a socket of its own
    (an address the kernel picks), so that the replicating process can answer the members that
    wait (PUBLISHED) as soon as it has written the state file: they need not poll it."""

    def __init__(self, database_path: str) -> None:
        digest = hashlib.sha256(os.path.realpath(database_path).encode()).hexdigest()[:32]
        self.address = b"\0peewee-s3-" + digest.encode()
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        try:
            self._sender.bind(b"")  # Linux: an abstract address of its own, to be answered at
            self._answerable = True
        except OSError:
            self._answerable = False
        self._listener: Optional[socket.socket] = None
        self._waiting: set = set()  # (listening) the members to answer at the next publication

    def ring(self, urgent: bool) -> None:
        self._send(URGENT if urgent else SOON)

    def ask_snapshot(self) -> None:
        self._send(SNAPSHOT)

    def _send(self, what: bytes) -> None:
        try:
            self._sender.sendto(what, self.address)
        except OSError:
            pass  # nobody listens (yet), or its queue is full: it ships at its interval anyway

    def wait_for_answer(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds, less if the replicating process answers (True)."""
        if not self._answerable:
            time.sleep(timeout)
            return False
        if not select.select([self._sender], [], [], timeout)[0]:
            return False
        while True:
            try:
                self._sender.recv(16)
            except (BlockingIOError, OSError):
                return True

    def listen(self, on_ring: Callable[[bytes], None]) -> None:
        """Call `on_ring(what)` for each ring (SOON, URGENT, SNAPSHOT), from the scheduler's one
        thread that waits on every doorbell of the process (scheduler.py): it must not
        block. The senders of URGENT and SNAPSHOT rings are answered by `answer_waiting`."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            listener.bind(self.address)
        except OSError as exc:
            listener.close()
            log.debug("no doorbell for members (%s): they wait for sync_interval", exc)
            return
        self._listener = listener

        def on_data(what: bytes, sender) -> None:
            if sender and (URGENT in what or SNAPSHOT in what):
                self._waiting.add(sender)
            on_ring(what)

        scheduler.get().listen(listener, on_data)

    def answer_waiting(self) -> None:
        """The state file was just written: wake the members waiting for it."""
        listener, waiting, self._waiting = self._listener, self._waiting, set()
        for address in waiting if listener is not None else ():
            try:
                listener.sendto(PUBLISHED, address)
            except OSError:
                pass  # gone, or its queue is full: it reads the state at its next poll

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            scheduler.get().unlisten(listener)
            listener.close()
        self._sender.close()


class Member:
    """A process that writes the file while another one replicates it."""

    role = "member"

    def __init__(self, host: "HostSession") -> None:
        self.host = host
        self.identity = file_identity(host.path)
        self._state_seen: tuple = (None, None)  # (state file's mtime_ns, what it said)
        self._rung_at = 0.0
        self._checked_at = float("-inf")
        self.wrote = False  # whether this process wrote anything as a member

    def _fenced(self) -> Optional[str]:
        """The state's `fenced`, re-read only when the state file changed (a write asks)."""
        try:
            mtime = os.stat(self.host.path + STATE_SUFFIX).st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime != self._state_seen[0]:
            state = read_state(self.host.path)
            self._state_seen = (mtime, state.fenced if state else None)
        return self._state_seen[1]

    def check_file(self) -> None:
        if file_identity(self.host.path) != self.identity:
            raise LocalStateError(
                f"{self.host.path} was deleted or replaced while it was open: what was "
                "committed to it since is not in storage. Call shutdown(), then connect() again")

    def check_writable(self) -> None:
        """The file is still the one replicated and the lease holds (async mode: looked at
        every ASYNC_CHECK_EVERY seconds, not at every write)."""
        self.wrote = True  # before every write statement, wherever its commit happens
        now = time.monotonic()
        if self.host.options.sync_mode != "sync" and now < self._checked_at + ASYNC_CHECK_EVERY:
            return
        self.check_file()
        fenced = self._fenced()
        if fenced:
            raise LeaseLostError(fenced)
        self._checked_at = now

    def committed(self, sync: bool) -> None:
        self.wrote = True
        if sync:
            self.host.wait_durable()
        elif time.monotonic() - self._rung_at >= self.host.options.sync_interval / 2:
            self._rung_at = time.monotonic()   # the replicator ships once per interval anyway
            self.host.doorbell.ring(urgent=False)

    def sync(self) -> None:
        self.host.wait_durable()

    def snapshot(self) -> str:
        """Ask the replicating process for a new generation; return its id once stored (a
        generation whose snapshot was taken after this call)."""
        asked_at = time.time()
        deadline, asked = time.monotonic() + DURABLE_WAIT, float("-inf")
        while True:
            state = read_state(self.host.path)
            if state is not None and state.fenced:
                raise LeaseLostError(state.fenced)
            if state is not None and state.ready and state.snapshot_at >= asked_at \
                    and state.generation:
                return state.generation
            now = time.monotonic()
            if now > deadline:
                raise StorageError(
                    f"the process replicating {self.host.path} stored no new generation within "
                    f"{DURABLE_WAIT:.0f} s of db.snapshot(): check its status() and log")
            if now - asked > 0.5:
                self.host.doorbell.ask_snapshot()
                asked = now
            self.host.doorbell.wait_for_answer(0.01)

    def prune(self) -> list:
        raise self._not_here("db.prune()")

    def _not_here(self, what: str) -> PeeweeS3Error:
        state = read_state(self.host.path)
        return PeeweeS3Error(
            f"{what} runs in the process that replicates {self.host.path} (pid "
            f"{state.pid if state else '?'}), not in this one: call it there, or use the "
            "peewee-s3 command")

    def status(self) -> dict:
        state = read_state(self.host.path)
        return {"role": self.role, "replicator_pid": state.pid if state else None,
                "wal_position_durable": {"salts": state.salts, "frames": state.frames}
                if state else None, "fenced": bool(state and state.fenced)}

    def shutdown(self, hand_over: bool = False) -> None:
        """Nothing left to do: HostSession._leave_as_member has seen this one's commits
        durable (or handed them to the next process) before this is called."""


class HostSession:
    """This process's part in replicating one file: its replicator, or a member."""

    def __init__(self, path: str, options: Options,
                 prepare: Optional[Callable[[sqlite3.Connection], None]] = None, *,
                 lock_fd: Optional[int] = None, member: bool = True) -> None:
        """`lock_fd`, `member=False`: the replication helper's (helper.py) — the host lock
        handed to it, and no share of the members lock (it has the file open for nobody)."""
        self.path, self.options, self.prepare = path, options, prepare
        self.users = 0       # database objects of this process using it (join_session)
        self.closed = False
        self.doorbell = _Doorbell(path)
        self._created = [suffix for suffix in (LOCK_SUFFIX, MEMBERS_SUFFIX)
                         if not os.path.exists(path + suffix)]
        self._lock_fd = lock_fd if lock_fd is not None else _open_lock_file(path)
        self._members_fd = os.open(path + MEMBERS_SUFFIX,
                                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if member:
            fcntl.flock(self._members_fd, fcntl.LOCK_SH)
        self._role = None    # a Session (this process replicates) or a Member
        self._members_rang = False  # when replicating: a member rang since it began
        self._state_written = False
        self._state: Optional[HostState] = None  # what we publish, when we replicate
        self._stop = threading.Event()
        self._watcher: Optional[scheduler.Job] = None  # a member's tries of the host lock
        self._helper = None  # the helper process this one started (replicator="process")

    # -- opening -------------------------------------------------------------------------

    def open(self) -> "HostSession":
        deadline = time.monotonic() + self.options.lock_wait + READY_WAIT
        while True:
            if self._take_host_lock():
                if self.options.replicator != "process":
                    self._replicate()
                    return self
                self._hand_to_helper()
            state = read_state(self.path)
            if state is not None and state.ready and process_running(state.pid):
                self._become(Member(self))
                self._watcher = scheduler.run_every(f"member {self.path}", self._watch,
                                                    first=TAKEOVER_EVERY)
                log.info("%s is replicated by process %d: this one writes as a member",
                         self.path, state.pid)
                return self
            if time.monotonic() > deadline:
                raise LeaseHeldError(
                    f"another process holds the host lock of {self.path} but has not opened "
                    f"its replica session in {READY_WAIT:.0f} s: see its log (it may wait for "
                    "the lease or the storage), or stop it")
            time.sleep(0.05)

    def _take_host_lock(self) -> bool:
        return _lock_exclusively(self._lock_fd)

    def _hand_to_helper(self) -> None:
        """replicator="process": the host lock just taken goes to a new helper process, which
        replicates (helper.py); this process stays a member. Raises what its opening raised."""
        if self._helper is not None:
            self._helper.poll()  # reap one that died
        try:
            self._helper = helper.start(self.path, self.options, self._lock_fd)
        except BaseException:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)  # the helper is gone: the lock is ours
            raise
        # The helper holds the lock through the open file description both share: this
        # process tries it through a description of its own from now on.
        shared, self._lock_fd = self._lock_fd, _open_lock_file(self.path)
        os.close(shared)

    def replicate(self) -> None:
        """The helper's start: the host lock is held; open the replica session."""
        self._replicate()

    def _replicate(self) -> None:
        self._state = HostState(os.getpid(), secrets.token_hex(8))
        try:
            session = open_session(self.path, self.options, self.prepare)
        except BaseException:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            raise
        replicator = session.replicator
        replicator.on_durable = self._publish
        self._state.ready = True
        self._members_rang = False
        replicator.publish_durable()

        def on_ring(what: bytes) -> None:
            self._members_rang = True  # from now on every shipment is published
            if SNAPSHOT in what:
                replicator.request_snapshot()
            elif URGENT in what:
                replicator.request_shipment()
            else:
                replicator.notify()

        self.doorbell.listen(on_ring)
        self._become(session)

    def _publish(self, salts: Optional[tuple], frames: int, snapshot_at: float,
                 generation: Optional[str] = None) -> None:
        """Called by the replicator whenever more is durable (under its I/O lock)."""
        state = self._state
        if state.salts is not None and list(salts or ()) != state.salts:
            state.done = (state.done + [state.salts])[-DONE_KEPT:]
        state.salts = list(salts) if salts else None
        state.frames, state.snapshot_at, state.generation = frames, snapshot_at, generation
        fenced = self._role.replicator.fenced if isinstance(self._role, Session) else None
        state.fenced = str(fenced) if fenced else None
        # Only members read the durable position, and a member rings before it waits for one:
        # a process alone on its file (a tenant's, say) writes the file when it becomes
        # ready, when fenced, and at every shipment only once some member has rung.
        if (self._members_rang or state.fenced or not self._state_written
                or not self.doorbell.listening):
            _write_state(self.path, state)
            self._state_written = True
            self.doorbell.answer_waiting()

    def _watch(self) -> Optional[float]:
        """A member's job (scheduler.py): take over replication as soon as the host lock is
        free; returns when to try again, None once this process replicates."""
        if self._stop.is_set() or not self._take_host_lock():
            return None if self._stop.is_set() else TAKEOVER_EVERY
        try:
            if self.options.replicator == "process":
                self._hand_to_helper()
                log.warning("the process replicating %s is gone: process %d replicates it now",
                            self.path, self._helper.pid)
                return TAKEOVER_EVERY
            self._replicate()
        except (PeeweeS3Error, OSError, sqlite3.Error) as exc:
            log.error("could not take over replicating %s, will retry: %s", self.path, exc)
            return TAKEOVER_EVERY
        log.warning("the process replicating %s is gone: this one (pid %d) replicates it now",
                    self.path, os.getpid())
        return None

    # -- what a database object asks -----------------------------------------------------

    @property
    def role(self):
        return self._role

    def _become(self, role) -> None:
        self._role = role
        # Every write calls these two: bound straight to the role's, not through a method
        # here that calls the role's (the class's methods below say what they are).
        self.check_writable, self.committed = role.check_writable, role.committed

    def check_file(self) -> None:
        self._role.check_file()

    def check_writable(self) -> None:
        self._role.check_writable()

    def committed(self, sync: bool) -> None:
        self._role.committed(sync)

    def sync(self) -> None:
        self._role.sync()

    def snapshot(self) -> str:
        return self._role.snapshot()

    def prune(self) -> list:
        return self._role.prune()

    def status(self) -> dict:
        return self._role.status()

    def wait_durable(self) -> None:
        """Return once everything this process committed so far is durable (published in the
        state by whichever process replicates), or raise."""
        committed_at = time.time()
        salts, frame = wal_end(self.path)
        self.doorbell.ring(urgent=True)
        deadline, rung = time.monotonic() + DURABLE_WAIT, time.monotonic()
        pause, answered = 0.0005, False
        while True:
            state = read_state(self.path)
            if state is not None and state.covers(salts, frame, committed_at):
                return
            if state is not None and state.fenced:
                raise LeaseLostError(state.fenced)
            if self.closed:
                raise SessionClosedError(
                    f"{self.path} was shut down while this commit was made: it stands in the "
                    "local file, and the process that replicates it next ships it")
            now = time.monotonic()
            if now > deadline:
                raise StorageError(
                    f"no process shipped the commit to {self.path} within {DURABLE_WAIT:.0f} "
                    "s: the commit stands in the local file. Check the replicating process "
                    "(its status() and log)")
            # Answered by a publication that did not cover it yet (one under way when it rang):
            # ring again, to be answered by the next one too.
            if (answered and now - rung > REANSWER_AFTER) or now - rung > 0.5:
                self.doorbell.ring(urgent=True)
                rung = now
            answered = self.doorbell.wait_for_answer(pause)
            pause = min(pause * 2, 0.01)

    # -- closing -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Leave: a replicator ships and releases the lease (leaving the WAL and the file to
        the other processes, if any, one of which takes over); a member waits until its
        commits are durable, taking over if nobody replicates any more."""
        if self.closed:
            return
        self._stop.set()
        if self._watcher is not None:
            scheduler.get().cancel(self._watcher)
        role = self._role
        if isinstance(role, Member) and self._leave_as_member():
            role = self._role  # it replicates now, and leaves as a replicator does
        if isinstance(role, Session):
            others = not self._alone()
            try:
                role.shutdown(hand_over=others)
            finally:
                if role.closed:
                    self._state.ready = False
                    _write_state(self.path, self._state)
                    self._close()
            return
        role.shutdown()
        last = self.options.replicator == "process" and self._alone()
        self._close()
        if last and not wait_until_replicated_by_none(self.path, HELPER_EXIT_WAIT,
                                                      self._helper):
            log.warning("the replication helper of %s has not ended its session within %.0f s "
                        "of the last process leaving: it goes on shipping and then releases "
                        "the lease", self.path, HELPER_EXIT_WAIT)

    def _leave_as_member(self) -> bool:
        """A member leaves once what it committed is durable: shipped by the replicating
        process, or — if none is left (it may have handed over to this one, seeing it still
        here) — by this one, which then replicates. True if it took over. (Before, a member
        just left: its last commits could stay only in the local file.) A member that wrote
        nothing leaves at once, and so does one whose file was deleted or replaced: what it
        wrote to the old one ships nowhere."""
        if not self._role.wrote or file_identity(self.path) != self._role.identity:
            return False  # nothing of its own to wait for
        committed_at = time.time()
        salts, frame = wal_end(self.path)
        deadline = time.monotonic() + LEAVE_WAIT
        pause, rung = 0.0005, float("-inf")
        while True:
            if self._take_host_lock():
                try:
                    self._replicate()
                except BaseException:
                    self._close()
                    raise
                log.info("%s: no process replicates it, so this one ships what is left before "
                         "it goes", self.path)
                return True
            state = read_state(self.path)
            if state is not None and (state.covers(salts, frame, committed_at) or state.fenced):
                return False
            if time.monotonic() > deadline:
                log.warning("left %s before the replicating process shipped its last commits "
                            "(they stand in the local file; it, or the next process to open "
                            "the file, ships them)", self.path)
                return False
            if time.monotonic() - rung > 0.5:
                self.doorbell.ring(urgent=True)
                rung = time.monotonic()
            self.doorbell.wait_for_answer(pause)
            pause = min(pause * 2, 0.01)

    def close_broken(self) -> None:
        """The local file is gone: end the session for every object of this process (the
        lease is released; LocalStateError was already told to the caller)."""
        try:
            self.shutdown()
        except (PeeweeS3Error, OSError, sqlite3.Error) as exc:
            log.warning("closed the session of %s: %s", self.path, exc)
        if not self.closed:
            self._close()

    def alone(self) -> bool:
        """The helper's question: has no process the file open any more? (Once True, nobody
        opens it until this session is closed: the members lock is held exclusively.)"""
        return self._alone()

    def _alone(self) -> bool:
        """Whether no other process has the file open (they hold the members lock shared)."""
        return _lock_exclusively(self._members_fd)

    def abandon(self) -> None:
        """Opening failed: close, and if no other process has the file open, remove the host
        files it created — a connect that failed leaves the directory as it found it."""
        if self._take_host_lock() and self._alone():
            for suffix in self._created:
                try:
                    os.unlink(self.path + suffix)
                except FileNotFoundError:
                    pass
        self._close()

    def _close(self) -> None:
        self.closed = True
        self.doorbell.close()
        os.close(self._members_fd)
        os.close(self._lock_fd)


# The host sessions open in this process, by the real path of their file; guarded by
# _shared_lock (held while one opens, so that two objects never both open one).
_shared: dict = {}
_shared_lock = threading.Lock()


def join_session(path: str, options: Options,
                 prepare: Optional[Callable[[sqlite3.Connection], None]] = None) -> HostSession:
    """This process's session on `path`, opened by the first database object to ask; every
    object on the file must name the same storage and database."""
    key = os.path.realpath(path)
    with _shared_lock:
        host = _shared.get(key)
        if host is None or host.closed:
            _check_directory(path)
            host = HostSession(path, options, prepare)
            try:
                host.open()
            except BaseException:
                host.abandon()
                raise
            _shared[key] = host
        elif _where(host.options) != _where(options):
            raise ConfigurationError(
                f"{path} is already replicated by another S3SqliteDatabase of this process as "
                f"{host.options.base_key!r} in another storage or name: a file has one storage "
                "and database_name. Use the same ones, or another file")
        host.users += 1
        return host


def leave_session(host: HostSession) -> None:
    """A database object is done with `host`; the last one out shuts it down (and if that
    fails, stays in, so that it can try again)."""
    with _shared_lock:
        host.users -= 1
        if host.users > 0:
            return
    try:
        host.shutdown()
    except BaseException:
        if not host.closed:
            with _shared_lock:
                host.users += 1
        raise
    finally:
        with _shared_lock:
            key = os.path.realpath(host.path)
            if host.closed and _shared.get(key) is host:
                del _shared[key]


def _open_lock_file(path: str) -> int:
    """A descriptor of the host lock file (not a SQLite file: closing it drops none of SQLite's
    locks)."""
    return os.open(path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def wait_until_replicated_by_none(path: str, timeout: float, child=None) -> bool:
    """Wait until no process holds the file's host lock (after the last app process left, the
    helper's session has then ended and the lease is released); reap `child`, the helper this
    process started, if any. False on timeout."""
    deadline = time.monotonic() + timeout
    fd = _open_lock_file(path)
    try:
        while not _lock_exclusively(fd):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
    finally:
        os.close(fd)
    if child is not None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    return True


def _check_directory(path: str) -> None:
    """The local file's directory must exist (a writer creates the file, not its parents)."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        what = "is a file" if os.path.exists(directory) else "does not exist"
        raise ConfigurationError(
            f"the directory of the local database {path} {what}: create the directory "
            "(or correct the path) and connect again")


def _where(options: Options) -> tuple:
    """What names a replicated database: its storage and key."""
    return (repr(options.storage), options.base_key, options.storage_root, options.endpoint_url,
            options.region)
