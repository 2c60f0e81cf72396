"""peewee_s3.metrics: what a Prometheus scrape shows follows what the database did — rows written,
synced and uploaded, the storage failing, a replica following, a member writing — read from
status() alone (no request to the storage) and with no secret in it."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from peewee_s3 import S3SqliteDatabase, S3SqliteReplica
from peewee_s3.errors import ConfigurationError
from peewee_s3.metrics import Collector

from .faultproxy import FaultProxy
from .helpers import NAME, Note, make_db, stored_keys
from .test_secrets import CREDENTIALS, SENTINEL

HOST_WORKER = os.path.join(os.path.dirname(__file__), "host_worker.py")
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
WAIT = 30.0


class Exposition:
    """The samples of one scrape, in the text format a Prometheus server reads."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [sample for family in text_string_to_metric_families(text)
                        for sample in family.samples]

    def matching(self, name, **labels):
        return [s for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name, **labels):
        found = self.matching(name, **labels)
        assert len(found) == 1, f"{len(found)} samples of {name} {labels} in:\n{self.text}"
        return found[0].value

    def total(self, name, **labels):
        return sum(s.value for s in self.matching(name, **labels))

    def names(self):
        return {s.name for s in self.samples}


def scrape(*databases) -> Exposition:
    registry = CollectorRegistry()
    registry.register(Collector(*databases))
    return Exposition(generate_latest(registry).decode())


def wait_until(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"no scrape showed {what} within {WAIT} s")
        time.sleep(0.02)


WRITER_TOTALS = ["peewee_s3_pending_commits", "peewee_s3_replication_lag_seconds",
                 "peewee_s3_uploaded_bytes_total", "peewee_s3_uploaded_objects_total",
                 "peewee_s3_uploaded_commits_total", "peewee_s3_errors_total",
                 "peewee_s3_lease_expiry_timestamp_seconds",
                 "peewee_s3_last_snapshot_timestamp_seconds"]


@pytest.fixture(params=["file", "moto"])
def backend(request, tmp_path):
    if request.param == "file":
        return {"storage": f"file://{tmp_path}/store"}
    endpoint = request.getfixturevalue("moto_endpoint")
    return request.getfixturevalue("s3_kwargs")(
        endpoint, request.getfixturevalue("make_bucket")(endpoint))


@pytest.fixture
def proxied(moto_endpoint, make_bucket, s3_kwargs):
    """moto behind a fault proxy, and the keyword arguments that reach it through the proxy."""
    with FaultProxy(moto_endpoint) as proxy:
        yield proxy, s3_kwargs(proxy.url, make_bucket(moto_endpoint))


def test_the_metrics_follow_rows_written_synced_and_uploaded(tmp_path, backend):
    opened_at = time.time()
    db = make_db(tmp_path / "a.db", backend, sync_interval=30)  # only db.sync() ships here
    db.create_tables([Note])
    db.sync()
    time.sleep(0.5)   # the replicator's first round (at once after connect) is over: it idles
    before, keys_before = scrape(db), stored_keys(backend)
    assert before.value("peewee_s3_session_open", database_name=NAME) == 1
    assert before.value("peewee_s3_info", database_name=NAME, role="replicator",
                        sync_mode="async") == 1
    assert before.value("peewee_s3_fenced", database_name=NAME) == 0
    assert before.value("peewee_s3_pending_commits", database_name=NAME) == 0
    assert before.value("peewee_s3_replication_lag_seconds", database_name=NAME) == 0
    assert before.value("peewee_s3_errors_total", database_name=NAME, kind="StorageError") == 0
    expiry = before.value("peewee_s3_lease_expiry_timestamp_seconds", database_name=NAME)
    assert time.time() < expiry <= time.time() + db.options.lock_ttl
    snapshot = before.value("peewee_s3_last_snapshot_timestamp_seconds", database_name=NAME)
    assert opened_at - 1 <= snapshot <= time.time()

    written_at = time.time()
    for n in range(5):
        Note.create(body=f"row {n}")
    time.sleep(0.3)
    pending = scrape(db)
    assert pending.value("peewee_s3_pending_commits", database_name=NAME) == 5
    lag = pending.value("peewee_s3_replication_lag_seconds", database_name=NAME)
    assert 0.3 <= lag <= time.time() - written_at
    assert pending.value("peewee_s3_uploaded_commits_total", database_name=NAME) == \
        before.value("peewee_s3_uploaded_commits_total", database_name=NAME)

    synced_at = time.time()
    db.sync()
    after = scrape(db)
    assert after.value("peewee_s3_pending_commits", database_name=NAME) == 0
    assert after.value("peewee_s3_replication_lag_seconds", database_name=NAME) == 0
    assert after.value("peewee_s3_uploaded_commits_total", database_name=NAME) == \
        before.value("peewee_s3_uploaded_commits_total", database_name=NAME) + 5
    new_objects = {key: size for key, size in stored_keys(backend).items()
                   if key not in keys_before}
    assert new_objects
    assert after.value("peewee_s3_uploaded_bytes_total", database_name=NAME) == \
        before.value("peewee_s3_uploaded_bytes_total", database_name=NAME) + \
        sum(new_objects.values())
    assert after.total("peewee_s3_uploaded_objects_total", database_name=NAME) == \
        before.total("peewee_s3_uploaded_objects_total", database_name=NAME) + len(new_objects)
    assert after.value("peewee_s3_last_sync_timestamp_seconds", database_name=NAME) >= synced_at

    db.shutdown()
    closed = scrape(db)
    assert closed.value("peewee_s3_session_open", database_name=NAME) == 0
    assert not closed.names() & set(WRITER_TOTALS)


def test_errors_are_counted_while_the_storage_is_down(tmp_path, proxied):
    proxy, kwargs = proxied
    db = make_db(tmp_path / "a.db", kwargs, sync_interval=0.05)
    db.create_tables([Note])
    db.sync()
    proxy.set_faults(1.0, ["500"])
    Note.create(body="not shipped while the storage is down")

    wait_until(lambda: scrape(db).total("peewee_s3_errors_total", database_name=NAME) >= 2,
               "two failed attempts")
    down = scrape(db)
    assert down.value("peewee_s3_errors_total", database_name=NAME, kind="StorageError") >= 2
    assert down.value("peewee_s3_pending_commits", database_name=NAME) == 1
    assert down.value("peewee_s3_replication_lag_seconds", database_name=NAME) > 0

    proxy.clear()
    db.sync()
    # A commit read by a failed attempt is counted pending until the next round marks it.
    wait_until(lambda: scrape(db).value("peewee_s3_pending_commits", database_name=NAME) == 0,
               "nothing pending")
    back = scrape(db)
    assert back.value("peewee_s3_replication_lag_seconds", database_name=NAME) == 0
    assert back.total("peewee_s3_errors_total", database_name=NAME) >= \
        down.total("peewee_s3_errors_total", database_name=NAME)   # a counter: never less
    db.shutdown()


def _settled(proxy, quiet=0.5, timeout=10.0) -> int:
    """The proxy's request count once no request came for `quiet` seconds (a background job
    of the replicator may still be finishing its requests)."""
    deadline = time.monotonic() + timeout
    count = proxy.counts["requests"]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        if proxy.counts["requests"] == count:
            return count
        count = proxy.counts["requests"]
    return count


def test_a_scrape_sends_no_request_to_the_storage(tmp_path, proxied):
    proxy, kwargs = proxied
    db = make_db(tmp_path / "a.db", kwargs, sync_interval=30)   # idle: renews in 20 s
    db.create_tables([Note])
    Note.create(body="one")
    db.sync()
    db.prune()   # the prune due after the first generation: now, not during the scrapes
    requests = _settled(proxy)
    for _ in range(20):
        scrape(db)
    assert proxy.counts["requests"] == requests
    proxy.set_faults(1.0, ["slow"], delay=5)   # a storage that hangs is not asked either
    requests = proxy.counts["requests"]
    assert scrape(db).matching("peewee_s3_pending_commits", database_name=NAME)
    assert proxy.counts["requests"] == requests
    proxy.clear()
    db.shutdown()


def test_no_secret_and_no_storage_address_shows_in_the_metrics(tmp_path, moto_endpoint,
                                                               make_bucket, s3_kwargs):
    bucket = make_bucket(moto_endpoint)
    kwargs = {**s3_kwargs(moto_endpoint, bucket), "credentials": CREDENTIALS}
    db = make_db(tmp_path / "a.db", kwargs, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="one")
    replica = S3SqliteReplica(str(tmp_path / "replica.db"), database_name=NAME,
                              poll_interval=0.1, **kwargs)
    replica.connect()
    try:
        text = scrape(db, replica).text
    finally:
        replica.shutdown()
        db.shutdown()
    assert "peewee_s3_uploaded_bytes_total" in text and "peewee_s3_replica_lag_seconds" in text
    for shown in (SENTINEL, CREDENTIALS["access_key_id"], bucket, moto_endpoint,
                  moto_endpoint.split("//")[1], "s3://"):
        assert shown not in text, f"{shown!r} shows in the metrics:\n{text}"


def test_a_replica_reports_how_far_it_is_behind_the_writer(tmp_path, proxied):
    proxy, kwargs = proxied
    db = make_db(tmp_path / "a.db", kwargs, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="one")
    replica = S3SqliteReplica(str(tmp_path / "replica.db"), database_name=NAME,
                              poll_interval=0.05, **kwargs)
    replica.connect()
    labels = {"database_name": NAME, "replica": str(tmp_path / "replica.db")}
    try:
        wait_until(lambda: scrape(replica).value("peewee_s3_replica_caught_up", **labels) == 1,
                   "the replica caught up")
        caught_up = scrape(replica)
        assert caught_up.value("peewee_s3_replica_open", **labels) == 1
        assert caught_up.value("peewee_s3_replica_lag_seconds", **labels) == 0
        assert caught_up.value("peewee_s3_replica_poll_failing", **labels) == 0
        applied = caught_up.value("peewee_s3_replica_applied_commits_total", **labels)

        for n in range(3):
            Note.create(body=f"row {n}")
        wait_until(lambda: scrape(replica).value("peewee_s3_replica_applied_commits_total",
                                                 **labels) == applied + 3,
                   "three more commits applied")
        assert scrape(replica).value("peewee_s3_replica_lag_seconds", **labels) == 0

        proxy.set_faults(1.0, ["500"])             # the replica can no longer reach the storage
        wait_until(lambda: scrape(replica).value("peewee_s3_replica_poll_failing",
                                                 **labels) == 1, "the polls failing")
        time.sleep(0.3)
        assert scrape(replica).value("peewee_s3_replica_lag_seconds", **labels) >= 0.3
        proxy.clear()
        wait_until(lambda: scrape(replica).value("peewee_s3_replica_lag_seconds", **labels) == 0,
                   "the replica back at lag 0")
    finally:
        proxy.clear()
        replica.shutdown()
        db.shutdown()
    assert scrape(replica).value("peewee_s3_replica_open", **labels) == 0


def test_a_member_shows_what_it_knows_and_no_totals(tmp_path):
    storage = {"storage": f"file://{tmp_path}/store"}
    path, stop = tmp_path / "app.db", tmp_path / "stop"
    replicator = subprocess.Popen([sys.executable, HOST_WORKER, str(path), "sync",
                                   json.dumps(storage), str(stop)],
                                  stdout=subprocess.PIPE, text=True)
    try:
        assert replicator.stdout.readline().split() == ["ready", "replicator"]
        member = S3SqliteDatabase(str(path), database_name="hosts", sync_mode="sync", **storage)
        member.connect()
        try:
            shown = scrape(member)
        finally:
            member.close()
            member.shutdown()
        stop.touch()
        assert replicator.wait(timeout=60) == 0
    finally:
        if replicator.poll() is None:
            replicator.kill()
            replicator.wait()
    assert shown.value("peewee_s3_info", database_name="hosts", role="member",
                       sync_mode="sync") == 1
    assert shown.value("peewee_s3_session_open", database_name="hosts") == 1
    assert shown.value("peewee_s3_fenced", database_name="hosts") == 0
    assert not shown.names() & set(WRITER_TOTALS)


def test_one_collector_takes_each_database_once(tmp_path):
    storage = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage)
    with pytest.raises(ConfigurationError, match="pass each once"):
        Collector(db, db)
    with pytest.raises(ConfigurationError, match="pass each once"):
        Collector(db, make_db(tmp_path / "b.db", storage))   # the same database_name
    with pytest.raises(ConfigurationError, match="at least one database"):
        Collector()
    with pytest.raises(ConfigurationError, match="not str"):
        Collector("s3://bucket")


def test_a_database_initialised_later_shows_from_its_init_on(tmp_path):
    db = S3SqliteDatabase(None)
    registry = CollectorRegistry()
    registry.register(Collector(db))            # at import time, before the app's set-up
    assert Exposition(generate_latest(registry).decode()).samples == []
    db.init(str(tmp_path / "a.db"), storage=f"file://{tmp_path}/store", database_name=NAME)
    shown = Exposition(generate_latest(registry).decode())
    assert shown.value("peewee_s3_session_open", database_name=NAME) == 0
    db.connect()
    try:
        shown = Exposition(generate_latest(registry).decode())
    finally:
        db.close()
        db.shutdown()
    assert shown.value("peewee_s3_session_open", database_name=NAME) == 1
    assert shown.value("peewee_s3_pending_commits", database_name=NAME) == 0


def test_importing_peewee_s3_needs_no_prometheus_client():
    script = (
        "import sys\n"
        "import peewee_s3\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "sys.modules['prometheus_client'] = None\n"   # as if it were not installed
        "try:\n"
        "    import peewee_s3.metrics\n"
        "except peewee_s3.ConfigurationError as exc:\n"
        "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr
    assert "pip install peewee-s3[metrics]" in done.stdout


def test_the_dashboard_and_the_docs_name_only_metrics_that_exist(tmp_path):
    db = make_db(tmp_path / "a.db", {"storage": f"file://{tmp_path}/store"})
    suffix = {"counter": "_total", "info": "_info"}
    exposed = {family.name + suffix.get(family.type, "") for family in Collector(db).describe()}
    with open(os.path.join(DOCS, "grafana.json")) as f:
        dashboard = json.load(f)
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    with open(os.path.join(DOCS, "METRICS.md")) as f:
        docs = f.read()
    in_dashboard = set(re.findall(r"peewee_s3_[a-z_]+", " ".join(queries)))
    assert in_dashboard and in_dashboard <= exposed
    assert set(re.findall(r"peewee_s3_[a-z_]+", docs)) <= exposed
    assert exposed <= set(re.findall(r"peewee_s3_[a-z_]+", docs)), "a metric is not documented"
