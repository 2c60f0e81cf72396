"""database: `S3SqliteDatabase`, peewee's SqliteDatabase with every commit replicated.

Small overrides only: `init` takes the options, `_connect` opens the session (lease, restore,
replicator) on the first connection, `execute_sql` and `commit` report each commit to the
replicator. It never talks to storage itself.
"""
from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any, Optional

from peewee import InterfaceError, SqliteDatabase

from .config import Options, log_verbosely
from .errors import ConfigurationError
from .session import Session, open_session

_OUR_PRAGMAS = {"journal_mode", "wal_autocheckpoint"}
_OPTION_NAMES = [name for name in Options.__dataclass_fields__]


def _is_read(sql: str) -> bool:
    """Statements that cannot commit a change; anything else is treated as a write."""
    return sql.lstrip()[:6].upper() == "SELECT"


class S3SqliteDatabase(SqliteDatabase):
    """A SqliteDatabase whose file is continuously replicated to object storage.

    Takes every option of SqliteDatabase plus those of `peewee_s3.config.Options`
    (storage, database_name, sync_mode, …). See the README for the whole table.
    """

    def init(self, database: Optional[str], **kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in _OPTION_NAMES if name in kwargs}
        self._check_pragmas(kwargs.get("pragmas", getattr(self, "_pragmas", None)))
        if database == ":memory:" or (database and database.startswith("file::memory")):
            raise ConfigurationError("S3SqliteDatabase needs a file on disk, not ':memory:'")
        self.options = Options(**options) if database else None
        self._session: Optional[Session] = None
        self._session_lock = threading.Lock()
        self._shut_down = False
        super().init(database, **kwargs)
        if self.options and self.options.verbose:
            log_verbosely()

    @staticmethod
    def _check_pragmas(pragmas: Any) -> None:
        items = pragmas.items() if isinstance(pragmas, dict) else (pragmas or ())
        clash = _OUR_PRAGMAS & {name.lower() for name, _ in items}
        if clash:
            raise ConfigurationError(
                f"pragmas {sorted(clash)} are set by S3SqliteDatabase (WAL mode, automatic "
                "checkpoints off so that no page is checkpointed before it is shipped): "
                "remove them")

    # -- session -----------------------------------------------------------------------------

    def _connect(self):
        self._open_session()
        return super()._connect()

    def _add_conn_hooks(self, conn) -> None:
        super()._add_conn_hooks(conn)
        conn.execute("PRAGMA wal_autocheckpoint=0")

    def _open_session(self) -> Session:
        with self._session_lock:
            if self._session is None:
                self._session = open_session(os.path.abspath(self.database), self.options)
                self._shut_down = False
                atexit.register(self.shutdown)
            return self._session

    def shutdown(self) -> None:
        """Ship what is pending, take the final snapshot and release the lease.

        Harmless twice, and on a fenced database (it then releases nothing). Also runs at exit.
        """
        with self._session_lock:
            session, self._session = self._session, None
            self._shut_down = True
        if session is None:
            return
        atexit.unregister(self.shutdown)
        if not self.is_closed() and not self.in_transaction():
            self.close()
        session.shutdown()

    # -- capturing commits -------------------------------------------------------------------

    def execute_sql(self, sql, params=None, *args, **kwargs):
        writes = not _is_read(sql)
        if writes:
            self._check_writable()
        cursor = super().execute_sql(sql, params, *args, **kwargs)
        if writes and not self._state.conn.in_transaction:
            self._committed()
        return cursor

    def commit(self, *args, **kwargs):
        self._check_writable()
        result = super().commit(*args, **kwargs)
        self._committed()
        return result

    def rollback(self, *args, **kwargs):
        # After a COMMIT whose shipment failed (sync mode), peewee rolls back: nothing is open.
        if self.is_closed() or self._state.conn.in_transaction:
            return super().rollback(*args, **kwargs)
        return None

    def _check_writable(self) -> None:
        if self._session is not None:
            self._session.replicator.check_fenced()
        elif self._shut_down and not self.is_closed():
            raise InterfaceError("this database was shut down: close() this connection and "
                                 "connect() again to open a new session")

    def _committed(self) -> None:
        session = self._session
        if session is None:
            return
        replicator = session.replicator
        replicator.clock.note()
        ticket = replicator.tickets.issue()
        if self.options.sync_mode == "sync":
            replicator.wait_durable(ticket)
        else:
            replicator.notify()

    # -- operations --------------------------------------------------------------------------

    def sync(self) -> None:
        """Ship everything committed so far; returns once it is durable in storage."""
        self._open_session().replicator.sync()

    def snapshot(self) -> str:
        """Start a new generation with a snapshot of the database now; returns its id."""
        return self._open_session().replicator.start_generation()

    def prune(self) -> list:
        """Apply the retention policy now; returns the generations deleted."""
        return self._open_session().replicator.prune()

    def status(self) -> dict:
        """Where replication stands. Holds no secret."""
        session = self._session
        if session is None:
            return {"database_name": self.options.database_name if self.options else None,
                    "open": False}
        r, lease = session.replicator, session.lease
        s = r.shipped
        return {
            "open": True,
            "database_name": self.options.database_name,
            "storage": session.storage.describe(),
            "sync_mode": self.options.sync_mode,
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
        }

    def __repr__(self) -> str:
        name = self.options.database_name if self.options else None
        return f"<S3SqliteDatabase {self.database!r} database_name={name!r}>"
