"""metrics: Prometheus metrics of writers and replicas, read from their `status()` at scrape time.

`Collector(db, ...)` is a prometheus_client collector; the caller registers it on a registry.
It never talks to storage (a scrape reads what the database already knows) and never shows a
secret: no storage URL, endpoint or option reaches a label. Needs `pip install peewee-s3[metrics]`.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterator, Optional

from .errors import ConfigurationError

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
    from prometheus_client.registry import Collector as _PrometheusCollector
except ImportError:
    raise ConfigurationError(
        "peewee_s3.metrics needs prometheus_client, which is not installed: "
        "pip install peewee-s3[metrics]") from None

from .replica import S3SqliteReplica

_NAME = ["database_name"]
_REPLICA = ["database_name", "replica"]


class _Source:
    """One database given to the Collector; it may be initialised later (`db.init(...)`)."""

    kind = ""

    def __init__(self, db: Any) -> None:
        self.db = db

    @property
    def name(self) -> Optional[str]:
        return self.db.options.database_name if self.db.options is not None else None

    @property
    def key(self) -> tuple:
        return (self.kind, self.name)


class _Writer(_Source):
    """The metrics of one S3SqliteDatabase (the replicating process, or a member)."""

    kind = "writer"

    def add_to(self, f: "_Families") -> None:
        status, now = self.db.status(), time.time()
        name = [self.name]
        f.open.add_metric(name, 1 if status["open"] else 0)
        if not status["open"]:
            return   # a closed session has no totals: they start again at its next connect
        f.info.add_metric(name + [status["role"], status["sync_mode"]], {})
        f.fenced.add_metric(name, 1 if status["fenced"] else 0)
        if status["role"] != "replicator":
            return   # a member writes, another process ships: only that one has the numbers
        oldest = status["oldest_pending_commit"]
        f.pending_commits.add_metric(name, status["pending_commits"])
        f.pending_bytes.add_metric(name, status["pending_bytes"])
        f.lag.add_metric(name, 0.0 if oldest is None else max(0.0, now - oldest))
        f.uploaded_bytes.add_metric(name, status["bytes_uploaded"])
        f.uploaded_objects.add_metric(name + ["segment"], status["segments_uploaded"])
        f.uploaded_objects.add_metric(name + ["merged_segment"],
                                      status["merged_segments_uploaded"])
        f.uploaded_commits.add_metric(name, status["commits_uploaded"])
        # StorageError is there from the start (at 0), so that increase() sees the first one.
        for kind, count in sorted({"StorageError": 0, **status["errors"]}.items()):
            f.errors.add_metric(name + [kind], count)
        _add_time(f.lease_expiry, name, status["lease"]["expires_at"])
        if status["lease"]["epoch"] is not None:
            f.lease_epoch.add_metric(name, status["lease"]["epoch"])
        _add_time(f.last_snapshot, name, status["last_snapshot"])
        _add_time(f.last_sync, name, status["last_sync"])


class _Replica(_Source):
    """The metrics of one S3SqliteReplica, labelled with its local file as well (a process may
    follow one database with several replicas)."""

    kind = "replica"

    @property
    def key(self) -> tuple:
        return (self.kind, self.name, os.path.abspath(self.db.database))

    def add_to(self, f: "_Families") -> None:
        status = self.db.status()
        labels = [self.name, os.path.abspath(self.db.database)]
        f.replica_open.add_metric(labels, 1 if status["open"] else 0)
        if not status["open"]:
            return
        f.replica_lag.add_metric(labels, status["lag_seconds"])
        f.replica_lag_commits.add_metric(labels, status["lag_commits"])
        f.replica_caught_up.add_metric(labels, 1 if status["caught_up"] else 0)
        f.replica_failing.add_metric(labels, 1 if status["last_error"] else 0)
        f.replica_commits.add_metric(labels, status["commits_applied"])
        f.replica_segments.add_metric(labels, status["segments_applied"])
        f.replica_generations.add_metric(labels, status["generations_installed"])
        _add_time(f.replica_last_check, labels, status["last_check"])
        _add_time(f.replica_last_commit, labels, status["last_commit_time"])


def _add_time(family: GaugeMetricFamily, labels: list, at: Optional[float]) -> None:
    if at is not None:
        family.add_metric(labels, at)


class _Families:
    """One scrape's metric families, empty until the databases add their samples."""

    def __init__(self) -> None:
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        self.open = gauge("peewee_s3_session_open", "1 while the database's replication "
                          "session is open (connected and not shut down)", labels=_NAME)
        self.info = InfoMetricFamily(
            "peewee_s3", "What this process does for the database: role 'replicator' ships "
                         "its commits, 'member' writes while another process ships",
            labels=_NAME + ["role", "sync_mode"])
        self.fenced = gauge("peewee_s3_fenced", "1 once another writer took the lease over: "
                            "this one may no longer write", labels=_NAME)
        self.pending_commits = gauge("peewee_s3_pending_commits", "Commits made and not yet "
                                     "durable in the storage", labels=_NAME)
        self.pending_bytes = gauge("peewee_s3_pending_bytes", "WAL bytes written after the "
                                   "position shipped (an estimate)", labels=_NAME)
        self.lag = gauge("peewee_s3_replication_lag_seconds", "Age of the oldest commit not "
                         "yet durable in the storage (0 when none is pending)", labels=_NAME)
        self.uploaded_bytes = counter("peewee_s3_uploaded_bytes", "Bytes uploaded to the "
                                      "storage: segments, merged segments and snapshots",
                                      labels=_NAME)
        self.uploaded_objects = counter("peewee_s3_uploaded_objects", "Segments uploaded, by "
                                        "kind (segment, merged_segment)",
                                        labels=_NAME + ["kind"])
        self.uploaded_commits = counter("peewee_s3_uploaded_commits", "Commits made durable "
                                        "in the storage", labels=_NAME)
        self.errors = counter("peewee_s3_errors", "Failures of the background replication, by "
                              "exception class (each one retried)", labels=_NAME + ["kind"])
        self.lease_expiry = gauge("peewee_s3_lease_expiry_timestamp_seconds", "When the lease "
                                  "held by this writer expires unless renewed (unix time)",
                                  labels=_NAME)
        self.lease_epoch = gauge("peewee_s3_lease_epoch", "The lease's epoch: it grows at "
                                 "every takeover", labels=_NAME)
        self.last_snapshot = gauge("peewee_s3_last_snapshot_timestamp_seconds", "When the "
                                   "current generation's newest snapshot was taken (unix time)",
                                   labels=_NAME)
        self.last_sync = gauge("peewee_s3_last_sync_timestamp_seconds", "When the replicator "
                               "last made everything durable (unix time)", labels=_NAME)
        self.replica_open = gauge("peewee_s3_replica_open", "1 while the replica follows the "
                                  "storage", labels=_REPLICA)
        self.replica_lag = gauge("peewee_s3_replica_lag_seconds", "How far the replica is "
                                 "behind the writer's durable state, in seconds",
                                 labels=_REPLICA)
        self.replica_lag_commits = gauge("peewee_s3_replica_lag_commits", "Commits fetched "
                                         "and not applied yet", labels=_REPLICA)
        self.replica_caught_up = gauge("peewee_s3_replica_caught_up", "1 when the last poll "
                                       "found nothing newer in the storage", labels=_REPLICA)
        self.replica_failing = gauge("peewee_s3_replica_poll_failing", "1 while the replica's "
                                     "polls of the storage fail", labels=_REPLICA)
        self.replica_commits = counter("peewee_s3_replica_applied_commits", "Commits applied "
                                       "to the replica's copy", labels=_REPLICA)
        self.replica_segments = counter("peewee_s3_replica_applied_segments", "Segments "
                                        "applied to the replica's copy", labels=_REPLICA)
        self.replica_generations = counter("peewee_s3_replica_installed_generations",
                                           "Generations (snapshots) installed, the first "
                                           "restore included", labels=_REPLICA)
        self.replica_last_check = gauge("peewee_s3_replica_last_check_timestamp_seconds",
                                        "When a poll of the storage last succeeded (unix "
                                        "time)", labels=_REPLICA)
        self.replica_last_commit = gauge("peewee_s3_replica_last_commit_timestamp_seconds",
                                         "When the newest commit the replica applied was "
                                         "made (unix time)", labels=_REPLICA)

    def __iter__(self) -> Iterator:
        return iter(vars(self).values())


class Collector(_PrometheusCollector):
    """The metrics of `databases` (S3SqliteDatabase and S3SqliteReplica objects), each
    labelled with its database_name: `REGISTRY.register(Collector(db))`.

    Register one Collector per registry, with every database of the process: two Collectors on
    one registry would expose the same metric names twice, which prometheus_client refuses.
    A database created with `None` and initialised later shows from its `init()` on.
    """

    def __init__(self, *databases: Any) -> None:
        if not databases:
            raise ConfigurationError("Collector() needs at least one database: "
                                     "Collector(db) or Collector(db, replica, ...)")
        self._sources: list = []
        for db in databases:
            if not (hasattr(db, "options") and hasattr(db, "status")):
                raise ConfigurationError(
                    f"Collector() takes S3SqliteDatabase and S3SqliteReplica objects, not "
                    f"{type(db).__name__}")
            source = _Replica(db) if isinstance(db, S3SqliteReplica) else _Writer(db)
            if any(other.db is db or (source.name is not None and other.key == source.key)
                   for other in self._sources):
                raise ConfigurationError(
                    f"two of the databases given to Collector() are {source.kind}s of "
                    f"{source.name!r} and would report the same series: pass each once")
            self._sources.append(source)

    def describe(self) -> Iterator:
        """The families without samples: registering reads no status()."""
        return iter(_Families())

    def collect(self) -> Iterator:
        families, done = _Families(), set()
        for source in self._sources:
            if source.name is not None and source.key not in done:  # initialised, and once
                done.add(source.key)
                source.add_to(families)
        return (family for family in families if family.samples)
