"""The `peewee-s3` command, run as a user runs it: a subprocess, on file:// and moto's server."""
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import pty
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field

import pytest

from peewee_s3 import restore
from peewee_s3.cli import main
from peewee_s3.errors import LeaseLostError
from peewee_s3.lease import LeaseRecord
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, make_db, rows_in_file, stored_keys

SCRIPT = os.path.join(os.path.dirname(sys.executable), "peewee-s3")
LONG_SECRET = "a-secret-that-must-never-be-printed-0123456789"


@dataclass
class Backend:
    """A storage, as the library (`kwargs`) and the command line (`args`, `env`) name it."""

    kwargs: dict
    args: list
    env: dict = field(default_factory=dict)


@pytest.fixture(params=["file", "moto"])
def backend(request, tmp_path, make_bucket, s3_kwargs):
    if request.param == "file":
        url = f"file://{tmp_path}/store"
        return Backend({"storage": url}, ["--storage", url])
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = make_bucket(endpoint)
    # Credentials from the AWS chain (the environment), the rest as flags.
    return Backend(s3_kwargs(endpoint, bucket),
                   ["--storage", f"s3://{bucket}", "--endpoint-url", endpoint,
                    "--force-path-style", "--region", "us-east-1"],
                   {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})


def run(backend, *command, script=False, env=None, cwd=None):
    """Run the command with the storage options after it; the database name from the env."""
    program = [SCRIPT] if script else [sys.executable, "-m", "peewee_s3"]
    full_env = {**os.environ, "PEEWEE_S3_DATABASE_NAME": NAME, **backend.env, **(env or {})}
    return subprocess.run([*program, *command, *backend.args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def succeeded(result):
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar, log or warning when not on a terminal
    return result.stdout


def failed_with_one_line(result):
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("peewee-s3: "), result.stderr
    return lines[0]


def iso(t):
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()


def write_rows(db, *bodies):
    for body in bodies:
        Note.create(body=body)


def test_restore_gives_the_rows_and_keeps_an_existing_file_aside_only_with_force(
        tmp_path, backend):
    db = make_db(tmp_path / "a.db", backend.kwargs, sync_mode="sync")
    db.create_tables([Note])
    write_rows(db, "early")
    moment = time.time()
    time.sleep(0.05)
    write_rows(db, "late")
    first = db.status()["generation"]
    db.snapshot()
    write_rows(db, "latest")
    db.shutdown()

    out = succeeded(run(backend, "restore", "-o", "latest.db", cwd=tmp_path))
    assert "restored" in out and rows_in_file(tmp_path / "latest.db") == ["early", "late",
                                                                          "latest"]
    succeeded(run(backend, "restore", "-o", "then.db", "--timestamp", iso(moment),
                  cwd=tmp_path))
    assert rows_in_file(tmp_path / "then.db") == ["early"]

    before = (tmp_path / "latest.db").read_bytes()
    refused = failed_with_one_line(run(backend, "restore", "-o", "latest.db", cwd=tmp_path))
    assert "latest.db exists" in refused and "--force" in refused
    assert (tmp_path / "latest.db").read_bytes() == before
    assert "nothing restored" in succeeded(
        run(backend, "restore", "-o", "latest.db", "--if-not-exists", cwd=tmp_path))

    out = succeeded(run(backend, "restore", "-o", "latest.db", "--force", "--generation", first,
                        script=True, cwd=tmp_path))
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("latest.db.before-restore-")]
    assert [p.read_bytes() for p in aside] == [before] and aside[0].name in out
    assert rows_in_file(tmp_path / "latest.db") == ["early", "late"]


def test_generations_status_and_verify_print_what_is_true(tmp_path, backend):
    db = make_db(tmp_path / "a.db", backend.kwargs, sync_mode="sync")
    started = time.time()
    db.create_tables([Note])
    write_rows(db, "one", "two")
    older = db.status()["generation"]
    current = db.snapshot()
    write_rows(db, "three")
    lease = db.status()["lease"]

    rows = json.loads(succeeded(run(backend, "generations", "--json")))
    assert [(r["generation"], r["complete"], r["current"], r["segments"]) for r in rows] == [
        (older, True, False, 3), (current, True, True, 1)]
    assert started <= rows[0]["first_commit"] <= rows[0]["last_commit"] \
        <= rows[1]["created_at"] <= rows[1]["first_commit"] <= time.time()
    table = succeeded(run(backend, "generations", script=True)).splitlines()
    assert table[0].split()[:3] == ["GENERATION", "CREATED", "SNAPSHOT"]
    assert table[1].startswith(older) and not table[1].endswith("*")
    assert table[2].startswith(current) and table[2].endswith("*")

    status = succeeded(run(backend, "status"))
    assert f"held by {lease['holder']}, expires in" in status
    assert f"generation:   {current}" in status and "2 complete" in status
    assert "last shipped: segment 1 (1 commit)" in status

    verified = succeeded(run(backend, "verify"))
    assert current in verified and "size and sha256 match its meta" in verified
    assert "segments    1-1 of 1 stored" in verified and "integrity_check: ok" in verified
    assert verified.rstrip().endswith("OK")
    db.shutdown()


def test_verify_fails_clearly_on_one_corrupted_segment(tmp_path, backend):
    db = make_db(tmp_path / "a.db", backend.kwargs, sync_mode="sync")
    db.create_tables([Note])
    write_rows(db, "one", "two")
    key = f"{NAME}/generations/{db.status()['generation']}/wal/0000000002.seg"
    with open_storage(**backend.kwargs) as storage:
        data = bytearray(storage.read(key))
        data[60] ^= 0xFF
        storage.write(key, bytes(data))

    message = failed_with_one_line(run(backend, "verify"))
    assert "verify FAILED" in message and f"segment {key} is corrupt" in message
    assert "is corrupt" in failed_with_one_line(run(backend, "restore", "-o", "r.db",
                                                    cwd=tmp_path))
    assert not (tmp_path / "r.db").exists()
    db.shutdown()


def test_prune_deletes_old_generations_and_keeps_the_current_and_its_predecessor(
        tmp_path, backend):
    db = make_db(tmp_path / "a.db", backend.kwargs, sync_mode="sync")
    db.create_tables([Note])
    generations = [db.status()["generation"]]
    for body in ("one", "two", "three"):
        write_rows(db, body)
        generations.append(db.snapshot())
    db.shutdown()   # the writer prunes by itself in the background: keep it out of this test
    abandoned = "20200101T000000000000Z-deadbeef"
    with open_storage(**backend.kwargs) as storage:
        storage.write(f"{NAME}/generations/{abandoned}/snapshot.db", b"half an upload")
    stored = stored_keys(backend.kwargs)

    planned = succeeded(run(backend, "prune", "--dry-run", "--max-age", "0"))
    doomed = [abandoned, *generations[:2]]
    assert [line.split()[2] for line in planned.splitlines()[:-1]] == doomed
    assert "would delete" in planned and stored_keys(backend.kwargs) == stored

    pruned = succeeded(run(backend, "prune", "--max-age", "0"))
    assert "3 generations deleted; 2 kept" in pruned
    left = {key.split("/")[2] for key in stored_keys(backend.kwargs) if "/generations/" in key}
    assert left == set(generations[2:])

    message = failed_with_one_line(run(backend, "restore", "-o", "old.db", "--timestamp",
                                       "2001-01-01T00:00:00Z", cwd=tmp_path))
    assert "the oldest available is" in message
    assert "1 generation deleted" not in succeeded(run(backend, "prune"))  # default: one day


def test_lease_release_refuses_a_live_lease_and_with_force_fences_its_writer(
        tmp_path, backend):
    db = make_db(tmp_path / "a.db", backend.kwargs, sync_mode="sync")
    db.create_tables([Note])
    holder = db.status()["lease"]["holder"]

    refused = failed_with_one_line(run(backend, "lease", "release"))
    assert holder in refused and "--force" in refused
    db.sync()  # the writer still holds it

    out = succeeded(run(backend, "lease", "release", "--force"))
    assert f"held by {holder} (live" in out and "fenced" in out
    with pytest.raises(LeaseLostError):
        write_rows(db, "after the release")
    stale = succeeded(run(backend, "lease", "release"))  # the ended lease: expired, no --force
    assert "expired" in stale

    successor = make_db(tmp_path / "b.db", backend.kwargs, sync_mode="sync")
    write_rows(successor, "from the next writer")
    assert successor.status()["lease"]["epoch"] == 4  # writer, forced release, stale release, it
    successor.shutdown()
    db.shutdown()


def test_snapshot_uploads_a_local_file_only_when_it_can_take_the_lease(tmp_path, backend):
    db = make_db(tmp_path / "a.db", backend.kwargs)
    db.create_tables([Note])
    local = tmp_path / "local.db"
    conn = sqlite3.connect(local)
    conn.execute("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    conn.execute("INSERT INTO note (body) VALUES ('from the local file')")
    conn.commit()
    conn.close()

    assert "held by" in failed_with_one_line(run(backend, "snapshot", "--local", str(local)))
    db.shutdown()
    out = succeeded(run(backend, "snapshot", "--local", str(local)))
    generation = out.split("as generation ")[1].split()[0]

    state = restore(target=str(tmp_path / "r.db"), database_name=NAME, **backend.kwargs)
    assert state.generation == generation
    assert rows_in_file(tmp_path / "r.db") == ["from the local file"]
    explained = run(backend, "snapshot")
    assert explained.returncode == 1 and "db.snapshot()" in explained.stderr


def test_a_snapshot_over_an_expired_lease_fences_the_writer_that_held_it(tmp_path, backend):
    """The holder may only be paused past its lease: its next commit must fail, not land in a
    generation that is no longer current."""
    db = make_db(tmp_path / "a.db", backend.kwargs, sync_mode="sync")
    db.create_tables([Note])
    write_rows(db, "before")
    with open_storage(**backend.kwargs) as storage:
        held = LeaseRecord.from_bytes(storage.read(f"{NAME}/lock.json"), "lock.json")
        storage.write(f"{NAME}/lock.json",
                      dataclasses.replace(held, expires_at=time.time() - 1).to_bytes())
    local = tmp_path / "local.db"
    conn = sqlite3.connect(local)
    conn.execute("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    conn.commit()
    conn.close()
    succeeded(run(backend, "snapshot", "--local", str(local)))
    with pytest.raises(LeaseLostError):
        write_rows(db, "after the snapshot")
    db.shutdown()


def test_errors_are_one_line_without_a_traceback_or_a_secret(tmp_path, moto_endpoint):
    nowhere = Backend({}, [])
    assert "--storage" in failed_with_one_line(run(nowhere, "status"))
    (tmp_path / "empty").mkdir()
    empty = Backend({}, ["--storage", f"file://{tmp_path}/empty"])
    assert "holds no generation" in failed_with_one_line(run(empty, "generations"))

    missing_bucket = Backend({}, ["--storage", "s3://no-such-bucket", "--endpoint-url",
                                  moto_endpoint, "--force-path-style", "--access-key-id",
                                  "testing", "--secret-access-key", LONG_SECRET, "--verbose"])
    result = run(missing_bucket, "status")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "bucket 'no-such-bucket' does not exist" in result.stderr.splitlines()[-1]
    assert LONG_SECRET not in result.stderr + result.stdout


def test_help_describes_every_command(capsys):
    top = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0
    for command in ("restore", "generations", "status", "verify", "snapshot", "lease", "prune"):
        assert command in top.stdout
    expected = {
        ("restore",): ["--output", "--timestamp", "--generation", "--if-not-exists", "--force"],
        ("generations",): ["--json", "first and last commit"],
        ("status",): ["--json", "holder"],
        ("verify",): ["--timestamp", "integrity_check"],
        ("snapshot",): ["--local", "--lock-ttl", "db.snapshot()"],
        ("lease", "release"): ["--force", "fences"],
        ("prune",): ["--dry-run", "--keep-generations", "--max-age"],
    }
    for command, words in expected.items():
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for word in [*words, "--storage", "--database-name", "--endpoint-url"]:
            assert word in text, (command, word)


def test_in_a_program_the_librarys_logs_reach_its_handlers_and_are_not_printed_again(
        tmp_path, caplog, capsys):
    storage = f"file://{tmp_path}/store"
    db = make_db(tmp_path / "a.db", {"storage": storage})
    db.create_tables([Note])
    db.shutdown()
    caplog.set_level(logging.INFO, logger="peewee_s3")
    caplog.clear()

    assert main(["restore", "-o", str(tmp_path / "r.db"), "--storage", storage,
                 "--database-name", NAME]) == 0
    assert any(r.name == "peewee_s3" and r.getMessage().startswith("restored ")
               for r in caplog.records)
    assert "peewee-s3: INFO" not in capsys.readouterr().err
    assert logging.getLogger("peewee_s3").propagate


def test_a_download_shows_a_progress_bar_on_a_terminal(tmp_path):
    storage = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage)
    db.create_tables([Note])
    db.shutdown()
    terminal, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, cols
    process = subprocess.Popen(
        [sys.executable, "-m", "peewee_s3", "restore", "-o", str(tmp_path / "r.db"),
         "--storage", storage["storage"], "--database-name", NAME],
        stdout=subprocess.PIPE, stderr=child_end)
    os.close(child_end)
    shown = b""
    while True:
        ready, _, _ = select.select([terminal], [], [], 30)
        try:
            chunk = os.read(terminal, 4096) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    assert process.wait(timeout=30) == 0 and b"restored" in process.stdout.read()
    assert b"snapshot.db" in shown and b"B/s" in shown
