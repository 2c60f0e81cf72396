"""replica: `S3SqliteReplica`, a read-only SqliteDatabase that follows a writer through storage.

It restores the current state on first connect, then a job per replica on the process's
scheduler (scheduler.py) polls storage and applies new commits to the local copy. It takes no lease and never writes to storage.

How every read sees one committed state. The local copy is the replica's own file, kept in
rollback-journal mode, and the app reads it through read-only connections. The follower writes
new pages into the file with plain file I/O while its own SQLite connection holds an EXCLUSIVE
lock (`BEGIN EXCLUSIVE`): SQLite grants that lock only once no read transaction is open, and
holds new ones off (they wait, up to their busy timeout) until it is released; so a read runs
wholly before or wholly after an update, never during one. Before releasing the lock, the
follower rewrites the database header on page 1: rollback-journal mode (a segment's page 1 says
WAL), a new file change counter (which is what makes other connections drop their page caches),
the size in pages, and a new schema cookie whenever the writer's schema changed. A new
generation is restored into a temporary file with no lock held, then copied into the local
copy under the same lock. If writing the file fails halfway, the lock stays held (readers wait
or time out, they never see a half-written file) until the next poll has copied a fresh restore
in.

Only the current lineage. A segment is applied once it is proved part of it: `lock.json`, read
after it, still shows its epoch (it landed before any takeover, so a new holder continues from
it), or another segment, a fence (fence.py) or a torn key follows it in its generation. A
fence or torn key ends the generation: nothing after it is read, and `lock.json` is read at
every poll until it names the new holder's generation. A stray that landed without a fence
(an older writer's, or one sent in several requests to a server that ignores If-None-Match on
the last) proves nothing: it waits, and goes when `lock.json` names the new holder's
generation, which ends the old one before it. A restore of the current state leaves out a
last segment that is not proved.

What a poll costs. With nothing new, one GET: the next segment of the current generation,
which is absent; never a LIST. `lock.json`, which names the writer's current generation, is
read as well on the `LEASE_READ_EVERY` polls after segments stop coming (that is when a new
generation shows), and otherwise on every `LEASE_READ_EVERY`-th poll. A poll that finds
segments (or holds one back) reads `lock.json` once more, after them. A new generation costs a
restore, plus a LIST and a GET to check its last segment.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import re
import secrets
import sqlite3
import struct
import threading
import time
from typing import Any, Iterator, Optional
from urllib.parse import quote

from peewee import OperationalError, SqliteDatabase

from . import files, scheduler
from .config import STORAGE_OPTIONS, Options, log_verbosely
from .errors import (
    ConfigurationError, ObjectNotFoundError, PeeweeS3Error, ReplicaCorruptError, TornObjectError,
)
from .fence import Fence, lineage_end
from .layout import Layout
from .lease import LeaseRecord, read_lease
from .restore import current_generation, remove_database_files, restore_to, segment_sizes
from .segments import CommitRecord, Segment
from .sidecar import SUFFIX as SIDECAR_SUFFIX
from .snapshots import read_meta
from .storage import release_storage, share_storage

__all__ = ["S3SqliteReplica", "ReadOnlyReplicaError"]

log = logging.getLogger("peewee_s3")

WRITER_OPTIONS = tuple(sorted(set(Options.__dataclass_fields__) - set(STORAGE_OPTIONS)))
LEASE_READ_EVERY = 5      # idle polls between two reads of lock.json
MAX_FETCH = 64            # segments fetched in one poll before they are applied
APPLY_WAIT = 1.0          # seconds an update waits for open reads before trying again later
LOCK_SUFFIX = ".peewee-s3-replica.lock"
_READS = {"SELECT", "WITH", "VALUES", "EXPLAIN", "PRAGMA", "BEGIN", "COMMIT", "END",
          "ROLLBACK", "SAVEPOINT", "RELEASE"}
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")
_OUR_PRAGMAS = {"journal_mode", "locking_mode"}
_U32 = struct.Struct(">I")
_COPY_CHUNK = 2**20


class ReadOnlyReplicaError(PeeweeS3Error):
    """A write was sent to a read replica."""


class LocalCopy:
    """The replica's database file: put in place whole at start, then changed only while
    `_conn` holds SQLite's EXCLUSIVE lock on it. Used by the follower only (under its `_io`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.damaged = False
        self.page_size = 0
        self._lock_file = _claim(path)
        self._file = None
        self._conn: Optional[sqlite3.Connection] = None
        self._locked = False
        self._counter = 0          # the file change counter this copy last wrote
        self._cookie = 0           # the schema cookie this copy last wrote
        self._writer_cookie: Optional[bytes] = None  # the writer's, from its last page 1

    def place(self, restored: str) -> None:
        """Put a restored file where the local copy goes, before any reader has opened it."""
        remove_database_files(self.path)
        os.rename(restored, self.path)
        # Through files.py: closing a descriptor of the copy would drop the locks that this
        # process's readers of it hold (a new follower could then write under them).
        self._file = os.fdopen(files.descriptor(self.path, writable=True), "r+b", buffering=0,
                               closefd=False)
        header = os.pread(self._file.fileno(), 100, 0)
        (self._counter,) = _U32.unpack_from(header, 24)
        (self._cookie,) = _U32.unpack_from(header, 40)
        self.page_size = _page_size(header)
        self._stamp(os.fstat(self._file.fileno()).st_size // self.page_size, schema_changed=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=APPLY_WAIT)

    def apply(self, commits: list) -> None:
        """Apply commits in order; readers see the state before them or after the last one."""
        schema_changed = False
        with self._exclusive():
            for commit in commits:
                commit.apply_to(self._file, self.page_size)
                schema_changed |= self._writer_schema_changed(commit)
            self._stamp(commits[-1].db_pages, schema_changed)

    def install(self, restored: str) -> None:
        """Make the local copy a byte copy of another database file (a new generation)."""
        with self._exclusive(), open(restored, "rb") as source:
            size = 0
            while chunk := source.read(_COPY_CHUNK):
                os.pwrite(self._file.fileno(), chunk, size)
                size += len(chunk)
            self._file.truncate(size)
            self.page_size = _page_size(os.pread(self._file.fileno(), 100, 0))
            self._writer_cookie = None
            self._stamp(size // self.page_size, schema_changed=True)
        self.damaged = False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # also releases a lock kept because the copy is damaged
        if self._file is not None:
            self._file.close()  # the object only: files.py keeps the descriptor …
            files.release(self.path)  # … until no connection of this process has the copy open
        self._lock_file.close()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if not self._locked:
            self._conn.execute("BEGIN EXCLUSIVE")  # waits APPLY_WAIT for readers, else raises
            self._locked = True
        try:
            yield
        except BaseException:
            self.damaged = True  # keep the lock: no reader may see a half-written file
            raise
        self._conn.execute("COMMIT")  # nothing was written through SQLite: this only unlocks
        self._locked = False

    def _writer_schema_changed(self, commit: CommitRecord) -> bool:
        page = commit.pages.get(1)
        if page is None or page[40:44] == self._writer_cookie:
            return False
        self._writer_cookie = page[40:44]
        return True

    def _stamp(self, db_pages: int, schema_changed: bool) -> None:
        """Rewrite page 1's header so that readers take the file for what it now is."""
        fd = self._file.fileno()
        header = bytearray(os.pread(fd, 100, 0))
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        if schema_changed:
            self._cookie = (self._cookie + 1) & 0xFFFFFFFF
        header[18] = header[19] = 1                     # rollback journal, not WAL
        _U32.pack_into(header, 24, self._counter)       # file change counter
        _U32.pack_into(header, 28, db_pages)            # size in pages...
        _U32.pack_into(header, 92, self._counter)       # ...valid for this change counter
        _U32.pack_into(header, 40, self._cookie)        # schema cookie
        os.pwrite(fd, bytes(header), 0)


class Follower:
    """Keeps a LocalCopy in step with storage: the first restore, then a job polling."""

    def __init__(self, path: str, options: Options, poll_interval: float) -> None:
        self.path, self.options, self.poll_interval = path, options, poll_interval
        self.layout = Layout(options.base_key)
        self.storage = share_storage(options.storage, **options.storage_kwargs())
        # `_io` serialises polls (the thread's and refresh()'s): it guards the storage, the
        # local copy and the fields below that only polls write.
        self._io = threading.Lock()
        self._fetched: list = []      # segments read but not applied yet
        self._quiet_polls = 0         # polls since one last found a segment
        self._polls_since_lease = 0   # polls since lock.json was last read
        self._fenced = False          # the last fetch found a fence after `_fetched`: the end
        # `_state` guards what status() reads; polls replace it under this lock.
        self._state = threading.Lock()
        self.generation: Optional[str] = None
        self.seq = 0
        self.last_commit_time: Optional[float] = None
        self.pending_commits = 0      # commits in `_fetched`
        self.caught_up = False
        self.checked_at: Optional[float] = None
        self.last_error: Optional[Exception] = None
        self.commits_applied = 0
        self.segments_applied = 0
        self.generations_installed = 0
        self._job: Optional[scheduler.Job] = None  # its polls on the process's scheduler
        try:
            self.copy = LocalCopy(path)
        except BaseException:
            release_storage(self.storage)
            raise

    def open(self) -> None:
        """Restore the current state into the local copy and start following storage."""
        try:
            with self._io:
                restored, generation, seq, last_time = self._restore()
                self.copy.place(restored)
                self._moved_to(generation, seq, last_time)
        except BaseException:
            self.close()
            raise
        # The restore has just caught up: the first poll is one poll_interval away.
        self._job = scheduler.run_every(f"replica {self.layout.base}", self._run,
                                        first=self.poll_interval)

    def close(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            scheduler.get().cancel(job)
        with self._io:
            self.copy.close()
            release_storage(self.storage)

    # -- polling -----------------------------------------------------------------------------

    def _run(self) -> float:
        """One poll (a job on the process's scheduler); returns when to poll next: at once
        while more is waiting, else poll_interval after this one began."""
        began = time.monotonic()
        try:
            if not self.poll():
                return 0.0  # more is waiting: fetch it at once
        except Exception as exc:  # noqa: BLE001 - following must outlive any one failure
            log.warning("replica of %s could not catch up, will retry: %s",
                        self.layout.base, exc, exc_info=not isinstance(exc, PeeweeS3Error))
        return max(0.0, began + self.poll_interval - time.monotonic())

    def poll(self, read_lease: bool = False) -> bool:
        """Fetch and apply what storage holds beyond the local copy. Returns False when there
        may be more to fetch right away."""
        with self._io:
            try:
                at_end = self._poll(read_lease)
            except Exception as exc:
                with self._state:
                    self.last_error = exc
                raise
            with self._state:
                self.caught_up, self.checked_at, self.last_error = at_end, time.time(), None
            return at_end

    def _poll(self, read_lease: bool) -> bool:
        if self.copy.damaged:
            self._reinstall()
        self._polls_since_lease += 1
        if read_lease or self._polls_since_lease > LEASE_READ_EVERY:
            self._follow(self._read_lease())
        try:
            at_end = self._fetch()
        finally:  # what was fetched before a failure is applied all the same, once proved
            applied = self._apply_proved() if self._fetched else 0
        self._quiet_polls = 0 if applied else self._quiet_polls + 1
        if at_end and (self._fenced or 0 < self._quiet_polls <= LEASE_READ_EVERY) \
                and self._polls_since_lease:
            self._follow(self._read_lease())  # segments stopped: the writer may be on a new one
        return at_end

    def _fetch(self) -> bool:
        """Read the segments after the copy's position; True once the next one is absent or
        a fence."""
        self._fenced = False
        while len(self._fetched) < MAX_FETCH:
            seq = self.seq + len(self._fetched) + 1
            key = self.layout.segment(self.generation, seq)
            try:
                data = self.storage.read(key)
            except TornObjectError:           # its writer died there: an end, as a fence is
                self._fenced = True
                return True
            except ObjectNotFoundError:
                return True
            if Fence.decode(data, key) is not None:
                self._fenced = True
                return True
            segment = Segment.decode(data, key)
            if (segment.generation, segment.seq) != (self.generation, seq):
                raise ReplicaCorruptError(f"segment {key} says it is {segment.generation}/"
                                          f"{segment.seq}: it was put in the wrong place")
            if segment.page_size != self.copy.page_size:
                raise ReplicaCorruptError(f"segment {key} has {segment.page_size}-byte pages, "
                                          f"its generation {self.copy.page_size}-byte ones")
            self._fetched.append(segment)
            with self._state:
                self.pending_commits += len(segment.commits)
        return False

    def _apply_proved(self) -> int:
        """Apply the fetched segments proved to be in the current lineage and keep the last one
        for a later poll if it is not; switch generation instead if lock.json names a new one.
        Returns how many segments were applied."""
        lease = self._read_lease()  # read after the segments: what proves the last one
        if self._follow(lease):
            return 0
        proved = len(self._fetched)  # each one but the last is proved by the one after it
        if not self._fenced and not _lease_proves(lease, self._fetched[-1]):
            proved -= 1
        if proved:
            self._apply(self._fetched[:proved])
        return proved

    def _apply(self, segments: list) -> None:
        commits = [commit for segment in segments for commit in segment.commits]
        self.copy.apply(commits)
        with self._state:
            self.seq = segments[-1].seq
            self.last_commit_time = commits[-1].time
            self.commits_applied += len(commits)
            self.segments_applied += len(segments)
            self.pending_commits -= len(commits)
        self._fetched = self._fetched[len(segments):]

    def _read_lease(self) -> Optional[LeaseRecord]:
        self._polls_since_lease = 0
        return read_lease(self.storage, self.layout.lock)

    def _follow(self, lease: Optional[LeaseRecord]) -> bool:
        """Switch to the generation lock.json names, once it is complete; True if it did."""
        if lease is None or not lease.generation or lease.generation == self.generation:
            return False
        try:
            read_meta(self.storage, self.layout, lease.generation)
        except ObjectNotFoundError:
            return False  # not complete yet
        log.info("replica of %s: the writer started generation %s", self.layout.base,
                 lease.generation)
        self._reinstall()
        return True

    def _reinstall(self) -> None:
        restored, generation, seq, last_time = self._restore()
        try:
            self.copy.install(restored)
        finally:
            remove_database_files(restored)
        self._fetched = []
        self._fenced = False
        self._moved_to(generation, seq, last_time)

    def _restore(self) -> tuple:
        """Restore the current state into a temporary file beside the copy (no lock held)."""
        temp = f"{self.path}.restoring-{secrets.token_hex(4)}"
        try:
            state = restore_to(self.storage, self.layout, temp, until_seq=self._proved_end())
            last_time = state.last_commit_time
            if last_time is None:
                last_time = read_meta(self.storage, self.layout, state.generation).created_at
        except BaseException:
            remove_database_files(temp)
            raise
        return temp, state.generation, state.seq, last_time

    def _proved_end(self) -> int:
        """How far a restore of the current generation may go: through its last segment only
        if lock.json, read after it, proves it (see _lease_proves); the ones before it are
        proved by the segment that follows them, the last before a fence by the fence."""
        generation = current_generation(self.storage, self.layout).generation
        listed = segment_sizes(self.storage, self.layout, generation)
        end = lineage_end(self.storage, self.layout, generation, listed)
        if not end or end < listed[-1][0]:
            return end
        key = self.layout.segment(generation, end)
        last = Segment.decode(self.storage.read(key), key)
        lease = read_lease(self.storage, self.layout.lock)
        return end if _lease_proves(lease, last) else end - 1

    def _moved_to(self, generation: str, seq: int, last_time: float) -> None:
        """The copy now holds a fresh restore: everything storage held moments ago."""
        with self._state:
            self.generation, self.seq, self.last_commit_time = generation, seq, last_time
            self.generations_installed += 1
            self.pending_commits = 0
            self.caught_up, self.checked_at, self.last_error = True, time.time(), None
        self._quiet_polls = LEASE_READ_EVERY  # quiet: the restore read everything there was

    # -- reporting ---------------------------------------------------------------------------

    def status(self) -> dict:
        seconds, commits = self.lag()
        with self._state:
            return {
                "generation": self.generation,
                "position": {"generation": self.generation, "seq": self.seq},
                "last_commit_time": self.last_commit_time,
                "lag_seconds": seconds,
                "lag_commits": commits,
                "caught_up": self.caught_up and not commits,
                "last_check": self.checked_at,
                "seconds_since_check": time.time() - self.checked_at,
                "commits_applied": self.commits_applied,
                "segments_applied": self.segments_applied,
                "generations_installed": self.generations_installed,
                "last_error": str(self.last_error) if self.last_error else None,
            }

    def lag(self) -> tuple:
        """(seconds, commits) behind storage, as far as the last poll could tell."""
        now = time.time()
        with self._state:
            commits = self.pending_commits
            if self.caught_up and not commits:
                if self.last_error is None:
                    return 0.0, 0
                return max(0.0, now - self.checked_at), 0
            return max(0.0, now - (self.last_commit_time or now)), commits


class S3SqliteReplica(SqliteDatabase):
    """A read-only SqliteDatabase that follows a database replicated by S3SqliteDatabase.

    Takes the storage options of S3SqliteDatabase (storage, database_name, key_prefix,
    endpoint_url, credentials, …) and `poll_interval` (seconds, default 1). Its local file is
    its own: replaced by a fresh restore at the first connect. See docs/REPLICAS.md.
    """

    def init(self, database: Optional[str], poll_interval: float = 1.0, **kwargs: Any) -> None:
        writer_only = sorted(set(WRITER_OPTIONS) & set(kwargs))
        if writer_only:
            raise ConfigurationError(
                f"{', '.join(writer_only)} only apply to the writer (S3SqliteDatabase): a "
                "replica writes nothing. Remove them from the replica's options")
        options = {name: kwargs.pop(name) for name in STORAGE_OPTIONS if name in kwargs}
        _check_pragmas(kwargs.get("pragmas", getattr(self, "_pragmas", None)))
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)) \
                or not poll_interval > 0:
            raise ConfigurationError(f"poll_interval={poll_interval!r} must be a positive "
                                     "number of seconds")
        if database == ":memory:" or (database and database.startswith("file:")):
            raise ConfigurationError("S3SqliteReplica needs a path to a file of its own on disk")
        self.options = Options(**options) if database else None
        self.poll_interval = float(poll_interval)
        self._follower: Optional[Follower] = None
        self._follower_lock = threading.Lock()
        super().init(database, **kwargs)
        if self.options and self.options.verbose:
            log_verbosely()

    # -- following ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self._open_follower()
        uri = f"file:{quote(os.path.abspath(self.database))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=self._timeout, isolation_level=None,
                               **self.connect_params)
        try:
            self._add_conn_hooks(conn)
        except Exception:
            conn.close()
            raise
        return conn

    def _open_follower(self) -> Follower:
        with self._follower_lock:
            if self._follower is None:
                if self.options is None:
                    raise ConfigurationError("this replica was not initialised: call "
                                             "init(path, storage=..., database_name=...)")
                follower = Follower(os.path.abspath(self.database), self.options,
                                    self.poll_interval)
                follower.open()
                self._follower = follower
                atexit.register(self.shutdown)
            return self._follower

    def refresh(self) -> dict:
        """Poll storage now and apply everything it holds; returns status(). Call it outside a
        read transaction of this thread (the update waits for open reads to end)."""
        follower = self._open_follower()
        read_lease = True
        while not follower.poll(read_lease=read_lease):
            read_lease = False
        return self.status()

    def shutdown(self) -> None:
        """Stop following storage (the local copy stays as it is). Harmless twice."""
        with self._follower_lock:
            follower, self._follower = self._follower, None
        if follower is None:
            return
        atexit.unregister(self.shutdown)
        if not self.is_closed() and not self.in_transaction():
            self.close()
        follower.close()

    # -- refusing writes ---------------------------------------------------------------------

    def execute_sql(self, sql, params=None, *args, **kwargs):
        word = _FIRST_WORD.match(sql)
        if word is None or word.group(1).upper() not in _READS:
            raise self._read_only(word.group(1).upper() if word else sql[:20])
        try:
            return super().execute_sql(sql, params, *args, **kwargs)
        except OperationalError as exc:
            if "readonly database" in str(exc):
                raise self._read_only(word.group(1).upper()) from exc
            raise

    def _read_only(self, what: str) -> ReadOnlyReplicaError:
        name = self.options.database_name if self.options else None
        return ReadOnlyReplicaError(
            f"{self.database} is a read replica of {name!r} and cannot run {what}: send writes "
            "to the S3SqliteDatabase that holds the lease")

    # -- reporting ---------------------------------------------------------------------------

    def lag(self) -> float:
        """Seconds behind storage: 0 when the last poll found nothing newer, else now minus the
        time of the last commit applied (while polls fail: since the last one that worked)."""
        follower = self._follower
        return follower.lag()[0] if follower else 0.0

    def status(self) -> dict:
        """Where the replica stands. Holds no secret."""
        follower = self._follower
        if follower is None:
            return {"database_name": self.options.database_name if self.options else None,
                    "open": False}
        return {"open": True, "database_name": self.options.database_name,
                "storage": follower.storage.describe(), "poll_interval": self.poll_interval,
                **follower.status()}

    def __repr__(self) -> str:
        name = self.options.database_name if self.options else None
        return f"<S3SqliteReplica {self.database!r} database_name={name!r}>"


def _check_pragmas(pragmas: Any) -> None:
    items = pragmas.items() if isinstance(pragmas, dict) else (pragmas or ())
    clash = _OUR_PRAGMAS & {name.lower() for name, _ in items}
    if clash:
        raise ConfigurationError(f"pragmas {sorted(clash)} are set by S3SqliteReplica (a "
                                 "rollback journal, normal locking): remove them")


def _claim(path: str):
    """Hold an flock beside the local copy: two replicas must never share one file."""
    if os.path.exists(path + SIDECAR_SUFFIX):
        raise ConfigurationError(
            f"{path} is a writer's local file (it has {os.path.basename(path + SIDECAR_SUFFIX)}):"
            " a replica replaces its file at every start; give it a path of its own")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigurationError(f"the directory of the replica's file, {directory}, does "
                                 "not exist: create it first")
    lock_file = open(path + LOCK_SUFFIX, "ab")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise ConfigurationError(f"{path} is the local file of another running replica: give "
                                 "each replica a path of its own") from None
    return lock_file


def _lease_proves(lease: Optional[LeaseRecord], segment: Segment) -> bool:
    """Whether `lock.json`, read after `segment` was, proves the segment part of the lineage.

    It does if it still shows the segment's epoch: the segment landed before anyone took the
    lease over, so a new holder found it and its generation continues from it. A segment of an
    older epoch may be a fenced writer's stray, which the next generation does not contain."""
    return lease is not None and lease.epoch == segment.epoch


def _page_size(header: bytes) -> int:
    size = struct.unpack_from(">H", header, 16)[0]
    return 65536 if size == 1 else size

