"""aio: `AsyncS3SqliteDatabase`, S3SqliteDatabase for asyncio apps (playhouse.pwasyncio).

S3SqliteDatabase's options, session and commit capture over pwasyncio's pool of aiosqlite
connections. Whatever waits for the storage (opening the session, a sync-mode commit, shutdown)
waits in a thread: it never blocks the event loop. Without peewee 4.5+, greenlet or aiosqlite
the module still imports (peewee 3.x has no pwasyncio), and the class refuses to be built.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Optional

import peewee
from peewee import InterfaceError

from .database import S3SqliteDatabase, _is_read
from .errors import ConfigurationError
from .host import HostSession

try:
    if tuple(int(part) for part in peewee.__version__.split(".")[:2]) < (4, 5):
        # 3.x has no pwasyncio; 4.0's lacks much that this class and apps use (AsyncModel).
        raise ImportError(f"peewee {peewee.__version__} is older than 4.5")
    import aiosqlite  # noqa: F401  (pwasyncio imports it lazily; needed all the same)
    from playhouse.pwasyncio import AsyncSqliteDatabase, await_
except ImportError as exc:
    _UNAVAILABLE: Optional[ImportError] = exc
    AsyncSqliteDatabase = object  # type: ignore[misc,assignment]  (init() refuses)
else:
    _UNAVAILABLE = None


class AsyncS3SqliteDatabase(S3SqliteDatabase, AsyncSqliteDatabase):
    """An `AsyncSqliteDatabase` (playhouse.pwasyncio) whose file is continuously replicated
    to object storage: every option of S3SqliteDatabase, and pwasyncio's own (`pool_size`,
    `acquire_timeout`, …). Query as pwasyncio does: `await Model.acreate(...)`,
    `async with db.atomic():`, `await db.run(fn)`. In sync mode an awaited write resumes once
    it is durable, and the event loop serves other tasks meanwhile.

    The first query opens the session (lease, restore, replicator); `await db.ashutdown()`
    ends it. sync(), snapshot() and prune() block: `await asyncio.to_thread(db.snapshot)`.
    """

    def init(self, database: Optional[str], **kwargs: Any) -> None:
        if _UNAVAILABLE is not None:
            raise ConfigurationError(
                "AsyncS3SqliteDatabase needs playhouse.pwasyncio of peewee 4.5 or later, greenlet "
                f"and aiosqlite, which cannot be imported here ({_UNAVAILABLE}): "
                "pip install 'peewee-s3[async]', or use S3SqliteDatabase")
        super().init(database, **kwargs)
        # Sync-mode commits wait here: each holds a pooled connection, so pool_size threads
        # never make one wait for another (nor for the loop's default executor).
        self._durable_waits = _waiting_threads(self._pool_size)

    # -- session -----------------------------------------------------------------------------

    async def _acquire_conn_async(self):
        if self._pool is None:
            # Before the pool's connections open the file (opening the session may restore
            # it), and outside acquire_timeout: the lease and a restore take what they take.
            await asyncio.to_thread(self._open_session)
        return await super()._acquire_conn_async()

    async def _add_conn_hooks(self, conn) -> None:
        await AsyncSqliteDatabase._add_conn_hooks(self, conn)  # not S3SqliteDatabase's sync one
        await conn.execute("PRAGMA wal_autocheckpoint=0")

    async def ashutdown(self) -> None:
        """shutdown() for asyncio: close the pool's connections, then ship what is pending
        and release the lease in a thread. OperationalError inside a transaction; after any
        other failure the session stays open, and ashutdown() can be awaited again. The next
        query opens a new session."""
        await self.aclose()
        await self.close_pool()
        await asyncio.to_thread(self.shutdown)
        self._durable_waits.shutdown(wait=False)
        self._durable_waits = _waiting_threads(self._pool_size)

    def shutdown(self) -> None:
        """Refused where an event loop runs (it would block it): `await db.ashutdown()`."""
        if _event_loop_runs_here():
            raise InterfaceError("shutdown() would block the event loop on the storage: "
                                 "await db.ashutdown() instead")
        super().shutdown()

    # -- capturing commits: S3SqliteDatabase's execute_sql() and commit(), run by pwasyncio ---

    def _sqlite_in_transaction(self) -> bool:
        return self._state.conn.conn.in_transaction  # pwasyncio's wrapper of aiosqlite's

    def _committed(self, session: Optional[HostSession]) -> None:
        if session is not None and self.options.sync_mode == "sync":
            # In pwasyncio's greenlet: await_ hands the loop back until the wait is over.
            loop = asyncio.get_running_loop()
            await_(loop.run_in_executor(self._durable_waits, super()._committed, session))
        else:
            super()._committed(session)

    async def iterate(self, query, buffer_size: Optional[int] = None) -> AsyncIterator:
        """pwasyncio's streaming iterate(); a write (… RETURNING) goes through execute_sql,
        where its commit is captured, and its rows are buffered."""
        query.bind(self)
        if _is_read(query.sql()[0]):
            async for row in super().iterate(query, buffer_size):
                yield row
        else:
            for row in await self.list(query):
                yield row


def _event_loop_runs_here() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _waiting_threads(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(count, thread_name_prefix="peewee-s3 durable wait")
