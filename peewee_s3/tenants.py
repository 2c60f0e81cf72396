"""tenants: `Tenants`, a database per tenant — `<directory>/<name>.db` replicated as
`database_name=name`, made on first use, shut down when idle.

It only builds and tracks S3SqliteDatabase objects; what they share (the scheduler's threads,
one storage client per storage) is shared by every database of the process, made here or not.
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Optional

from .database import S3SqliteDatabase
from .errors import ConfigurationError

# A tenant's name becomes a file name and a database_name: what config allows for the latter
# (letters, digits, '.', '_' and '-', starting with a letter or digit), at most 128 long.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Tenants:
    """The databases of many tenants in one directory and one storage.

    `database(name)` returns the S3SqliteDatabase of `<directory>/<name>.db`, replicated as
    `database_name=name` (with `key_prefix` and every other option given here); its session
    opens — the file restored from storage if it is missing — at its first connect().
    `close_idle(seconds)` shuts down the ones nobody asked for in that long, `shutdown()` all.
    """

    def __init__(self, directory: str, *, storage: Any, **options: Any) -> None:
        if "database_name" in options:
            raise ConfigurationError(
                "Tenants names each database after its tenant: drop database_name (use "
                "key_prefix to keep the tenants apart from other databases in the storage)")
        if options.get("replicator", "thread") != "thread":
            raise ConfigurationError(
                "Tenants replicate every database on this process's scheduler (a few threads "
                "for all of them); replicator='process' would start a helper process per "
                "tenant database: drop it")
        self.directory = os.path.abspath(directory)
        if not os.path.isdir(self.directory):
            what = "is a file" if os.path.exists(self.directory) else "does not exist"
            raise ConfigurationError(
                f"the tenants' directory {self.directory} {what}: create it (or correct the "
                "path)")
        self.storage, self.options = storage, options
        S3SqliteDatabase(None).init(os.path.join(self.directory, "check.db"),
                                    storage=storage, database_name="check", **options)
        # `_lock` guards `_databases` (name -> database) and `_used` (name -> monotonic time
        # of the last database(name)).
        self._lock = threading.Lock()
        self._databases: dict = {}
        self._used: dict = {}

    def database(self, name: str) -> S3SqliteDatabase:
        """The tenant's database (the same object every time until it is shut down)."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigurationError(
                f"tenant name {name!r} cannot name a file and a database: use 1-128 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit")
        with self._lock:
            db = self._databases.get(name)
            if db is None:
                db = self._databases[name] = S3SqliteDatabase(
                    os.path.join(self.directory, f"{name}.db"), storage=self.storage,
                    database_name=name, **self.options)
            self._used[name] = time.monotonic()
            return db

    def names(self) -> list:
        """The tenants whose database is open here, sorted."""
        with self._lock:
            return sorted(self._databases)

    def __len__(self) -> int:
        with self._lock:
            return len(self._databases)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._databases

    def close_idle(self, seconds: float) -> list:
        """Shut down the databases not asked for (`database(name)`) in `seconds`; returns their
        names. A request still running on one keeps its connection, but its session ends:
        choose `seconds` well above the longest request. The next database(name) opens anew."""
        return self._shut(time.monotonic() - seconds)

    def shutdown(self) -> None:
        """Shut down every tenant's database (each also shuts down at interpreter exit)."""
        self._shut(None)

    def _shut(self, cutoff: Optional[float]) -> list:
        """Shut down the databases last asked for at or before `cutoff` (None: all). Each is
        forgotten first, so that a database(name) meanwhile makes a new object (which joins
        the file's session or opens the next one, host.py); one that fails to shut down is
        kept, and the first failure is raised once the others are done."""
        with self._lock:
            names = [name for name, used in self._used.items()
                     if cutoff is None or used <= cutoff]
            taken = [(name, self._databases.pop(name), self._used.pop(name)) for name in names]
        closed, failure = [], None
        for name, db, used in taken:
            try:
                db.shutdown()
            except Exception as exc:  # noqa: BLE001 - the others are shut down first
                failure = failure or exc
                with self._lock:
                    if name not in self._databases:
                        self._databases[name], self._used[name] = db, used
                continue
            closed.append(name)
        if failure is not None:
            raise failure
        return sorted(closed)

    def __repr__(self) -> str:
        return f"<Tenants {self.directory} ({len(self)} open)>"
