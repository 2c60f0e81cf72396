"""database: `S3SqliteDatabase`, peewee's SqliteDatabase with every commit replicated.

Small overrides only: `init` takes the options, `_connect` opens the session (lease, restore,
replicator) on the first connection, `execute_sql` and `commit` report each commit to the
replicator (to the session that was open when the write began, so that a commit racing
`shutdown()` is shipped or raises). It never talks to storage itself.
"""
from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  (its exit hook is registered before ours)
import inspect
import logging
import os
import threading
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from peewee import Database, InterfaceError, SqliteDatabase

from .config import SQLITE_CONNECT_OPTIONS, Options, log_verbosely, reject_unknown
from .errors import ConfigurationError, LocalStateError
from .host import HostSession, join_session, leave_session

log = logging.getLogger("peewee_s3")

_OUR_PRAGMAS = {"journal_mode", "wal_autocheckpoint"}
_OPTION_NAMES = [name for name in Options.__dataclass_fields__]
# Everything else init() may be given: peewee's own options, then sqlite3.connect()'s.
_PEEWEE_NAMES = {name for method in (SqliteDatabase.__init__, SqliteDatabase.init,
                                     Database.__init__, Database.init)
                 for name in inspect.signature(method).parameters} | set(SQLITE_CONNECT_OPTIONS)
_UNSET: Any = object()


def _is_read(sql: str) -> bool:
    """Statements that cannot commit a change; anything else is treated as a write."""
    head = sql[:6]
    if head == "SELECT":   # peewee's own statements, the usual case, cheaply
        return True
    if head == "INSERT" or head == "UPDATE" or head == "DELETE":
        return False
    return sql.lstrip()[:6].upper() == "SELECT"


def local_path(database: str, uri: bool) -> str:
    """The file a database name stands for: the path itself, or with `uri=True` the path of a
    `file:` URI (whose query may not make the file read-only or in memory)."""
    if not (uri and database.startswith("file:")):
        return os.path.abspath(database)
    parts = urlsplit(database)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if query.get("mode") in ("ro", "memory") or query.get("immutable") == "1" or \
            parts.path in ("", ":memory:"):
        raise ConfigurationError(
            f"{database!r} opens the database read-only or in memory: S3SqliteDatabase "
            "replicates a file it writes. Drop mode=ro/memory and immutable=1, or use "
            "peewee_s3.S3SqliteReplica for a read-only copy")
    return os.path.abspath(unquote(parts.path))


class _BufferedCursor:
    """The rows of a finished statement, for a cursor that must not stay open (sync mode
    waits for durability after the statement, and an open one holds SQLite's write lock)."""

    def __init__(self, cursor) -> None:
        self.description, self.rowcount = cursor.description, cursor.rowcount
        self.lastrowid = cursor.lastrowid
        self._rows = iter(cursor.fetchall())

    def fetchone(self):
        return next(self._rows, None)

    def fetchmany(self, size: int = 1) -> list:
        return [row for _, row in zip(range(size), self._rows)]

    def fetchall(self) -> list:
        return list(self._rows)

    def __iter__(self):
        return self._rows

    def close(self) -> None:
        self._rows = iter(())


# Databases whose session is open, oldest first: _shut_down_at_exit shuts them down.
_open_databases: dict = {}


def _shut_down_at_exit() -> None:
    """Shut down every open database, newest first, when the interpreter exits: among
    threading's exit hooks, before concurrent.futures stops its worker threads (those run
    before atexit's). fsspec's S3 client hands work to them (asyncio.to_thread): run by
    atexit, a shutdown could no longer reach S3 and left the lease unreleased (seen under
    gunicorn, whose workers end by sys.exit)."""
    for db in reversed(list(_open_databases)):
        try:
            db.shutdown()
        except Exception as exc:  # noqa: BLE001 - one failure must not keep the others open
            log.error("shutting down %s at exit failed: %s", db._path, exc)


try:
    threading._register_atexit(_shut_down_at_exit)  # type: ignore[attr-defined]  (3.9+)
except (AttributeError, RuntimeError):  # another Python, or imported while exiting
    atexit.register(_shut_down_at_exit)


class S3SqliteDatabase(SqliteDatabase):
    """A SqliteDatabase whose file is continuously replicated to object storage.

    Takes every option of SqliteDatabase plus those of `peewee_s3.config.Options`
    (storage, database_name, sync_mode, …). See the README for the whole table.
    """

    def __init__(
            self, database: Optional[str], *, storage: Any = _UNSET,
            database_name: Optional[str] = _UNSET, storage_root: Optional[str] = _UNSET,
            key_prefix: Optional[str] = _UNSET, region: Optional[str] = _UNSET,
            endpoint_url: Optional[str] = _UNSET, force_path_style: bool = _UNSET,
            credentials: Optional[Mapping[str, str]] = _UNSET,
            storage_options: Optional[Mapping[str, Any]] = _UNSET,
            encryption_key: Any = _UNSET, encryption_keys: Optional[Sequence[Any]] = _UNSET,
            sync_mode: str = _UNSET,
            sync_interval: float = _UNSET, snapshot_interval: float = _UNSET,
            snapshot_on_shutdown: bool = _UNSET,
            lock_ttl: float = _UNSET, lock_wait: float = _UNSET, force_lock: bool = _UNSET,
            checkpoint_frames: int = _UNSET, retention_generations: int = _UNSET,
            retention_age: Optional[float] = _UNSET, unsafe_storage: bool = _UNSET,
            download_streams: Optional[int] = _UNSET, replicator: str = _UNSET,
            verbose: bool = _UNSET,
            **kwargs: Any) -> None:
        """The options of `peewee_s3.config.Options` (README, Options), spelt out for editors;
        the defaults are Options'. Anything else goes to peewee's SqliteDatabase."""
        given = {name: value for name, value in locals().items()
                 if name in _OPTION_NAMES and value is not _UNSET}
        super().__init__(database, **given, **kwargs)

    def init(self, database: Optional[str], **kwargs: Any) -> None:
        reject_unknown(kwargs, [*_OPTION_NAMES, *_PEEWEE_NAMES])
        options = {name: kwargs.pop(name) for name in _OPTION_NAMES if name in kwargs}
        self._check_pragmas(kwargs.get("pragmas", getattr(self, "_pragmas", None)))
        if database == ":memory:" or (database and database.startswith("file::memory")):
            raise ConfigurationError("S3SqliteDatabase needs a file on disk, not ':memory:'")
        self.options = Options(**options) if database else None
        self._path = local_path(database, kwargs.get("uri", False)) if database else None
        self._session: Optional[HostSession] = None
        self._session_lock = threading.Lock()   # guards _session and _shut_down
        self._shutdown_lock = threading.Lock()  # one shutdown at a time
        self._shut_down = False
        super().init(database, **kwargs)
        if self.options and self.options.verbose:
            log_verbosely()

    @staticmethod
    def _check_pragmas(pragmas: Any) -> None:
        items = pragmas.items() if isinstance(pragmas, dict) else (pragmas or ())
        clash = {name for name, value in ((n.lower().rsplit(".", 1)[-1], v) for n, v in items)
                 if name in _OUR_PRAGMAS
                 and not (name == "journal_mode" and str(value).lower() == "wal")}
        if clash:
            raise ConfigurationError(
                f"pragmas {sorted(clash)} are set by S3SqliteDatabase (WAL mode, automatic "
                "checkpoints off so that no page is checkpointed before it is shipped): "
                "remove them (journal_mode='wal' may stay)")

    # -- session -----------------------------------------------------------------------------

    def _connect(self):
        self._open_session()
        return super()._connect()

    def _add_conn_hooks(self, conn) -> None:
        super()._add_conn_hooks(conn)
        conn.execute("PRAGMA wal_autocheckpoint=0")

    def _open_session(self) -> HostSession:
        with self._session_lock:
            if self._session is None or self._session.closed:
                self._session = join_session(self._path, self.options, self._prepare_check)
                self._shut_down = False
                _open_databases[self] = None
            session = self._session
        # A new connection to a file deleted or replaced under the session would create or
        # open another file, whose writes would never be shipped: the session ends (what it
        # shipped stays the stored state), and the next connect() starts anew from storage.
        try:
            session.check_file()
        except LocalStateError:
            session.close_broken()
            raise
        return session

    def _prepare_check(self, conn) -> None:
        """The app's own functions, aggregates and collations (`@db.func()`, …), registered
        on the connection that checks a restored file: its schema may use them. That is a
        sqlite3 connection whatever a subclass connects with: SqliteDatabase's loaders."""
        SqliteDatabase._load_aggregates(self, conn)
        SqliteDatabase._load_collations(self, conn)
        SqliteDatabase._load_functions(self, conn)
        if getattr(self, "server_version", (0,)) >= (3, 25, 0):
            SqliteDatabase._load_window_functions(self, conn)

    def shutdown(self) -> None:
        """Ship what is pending, take the final snapshot and release the lease — or, while
        another database object of this process still uses the file, leave that to it.

        Harmless twice, and on a fenced database (it then releases nothing). Also runs at exit,
        before Python joins the non-daemon threads: join a thread that still writes first.
        If it raises (another connection holds a write transaction, the storage is down), the
        session stays open and shutdown() can be called again.
        """
        with self._shutdown_lock:
            session = self._session
            if session is None:
                return
            if not self.is_closed() and not self.in_transaction():
                self.close()
            left = False
            try:
                leave_session(session)
                left = True
            finally:
                if left or session.closed:
                    with self._session_lock:
                        self._session, self._shut_down = None, True
                    _open_databases.pop(self, None)

    # -- capturing commits -------------------------------------------------------------------

    def execute_sql(self, sql, params=None, *args, **kwargs):
        writes = not _is_read(sql)
        session = self._check_writable() if writes else None
        cursor = super().execute_sql(sql, params, *args, **kwargs)
        # No connection of this thread: the statement ran elsewhere (SqliteQueueDatabase's
        # writer thread), and the replicator sees its commit in the WAL.
        if writes and self._state.conn is not None and not self._sqlite_in_transaction():
            session = session or self._session   # opened by this statement (autoconnect)
            if session is not None and self.options.sync_mode == "sync":
                # A statement is finished only once stepped to its end (RETURNING rows,
                # PRAGMA incremental_vacuum), and holds the write lock until then: finish it
                # before waiting for the replicator, which needs that lock.
                if cursor.description is None:
                    cursor.fetchall()
                else:
                    cursor = _BufferedCursor(cursor)
            self._committed(session)
        return cursor

    def commit(self, *args, **kwargs):
        session = self._check_writable()
        result = super().commit(*args, **kwargs)
        self._committed(session or self._session)
        return result

    def rollback(self, *args, **kwargs):
        # After a COMMIT whose shipment failed (sync mode), peewee rolls back: nothing is open.
        if self.is_closed() or self._sqlite_in_transaction():
            return super().rollback(*args, **kwargs)
        return None

    def _sqlite_in_transaction(self) -> bool:
        """Whether SQLite holds a transaction open on this connection (peewee may not know)."""
        return self._state.conn.in_transaction

    def _check_writable(self) -> Optional[HostSession]:
        """Before a write: the session it belongs to (None before the first connection)."""
        session = self._session
        if session is not None:
            session.check_writable()
        elif self._shut_down and not self.is_closed():
            raise InterfaceError("this database was shut down: close() this connection and "
                                 "connect() again to open a new session")
        return session

    def _committed(self, session: Optional[HostSession]) -> None:
        if session is not None:
            session.committed(self.options.sync_mode == "sync")

    # -- operations --------------------------------------------------------------------------

    def sync(self) -> None:
        """Ship everything committed so far; returns once it is durable in storage."""
        self._open_session().sync()

    def snapshot(self) -> str:
        """Start a new generation with a snapshot of the database now; returns its id."""
        return self._open_session().snapshot()

    def prune(self) -> list:
        """Apply the retention policy now; returns the generations deleted."""
        return self._open_session().prune()

    def status(self) -> dict:
        """Where replication stands. Holds no secret."""
        session = self._session
        if session is None:
            return {"database_name": self.options.database_name if self.options else None,
                    "open": False}
        return {"open": True, "database_name": self.options.database_name,
                "sync_mode": self.options.sync_mode, **session.status()}

    def __repr__(self) -> str:
        name = self.options.database_name if self.options else None
        return f"<S3SqliteDatabase {self.database!r} database_name={name!r}>"
