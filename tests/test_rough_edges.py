"""Rough edges a new user met on a first afternoon with the README (issue 13), each tried the
way that user tried it: a mistyped storage directory, a command piped into `head`, the storage
named in messages, an endpoint without a scheme, a damaged generation, installing an example.
"""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

import peewee_s3
from peewee_s3 import restore
from peewee_s3.errors import ConfigurationError, NothingToRestoreError
from peewee_s3.storage import open_storage

from .helpers import NAME, Note, make_db

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The command runs the peewee_s3 these tests imported, wherever it was imported from.
SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(peewee_s3.__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
    SOURCE, os.environ.get("PYTHONPATH")]))}


def command(*args, cwd=None, env=None):
    """`peewee-s3 ARGS`, run as a user runs it, with the database name from the environment."""
    full_env = {**ENV, "PEEWEE_S3_DATABASE_NAME": NAME, **(env or {})}
    return subprocess.run([sys.executable, "-m", "peewee_s3", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def error_line(result):
    assert result.returncode == 1, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("peewee-s3: error: "), result.stderr
    return lines[0]


def written(tmp_path, storage, *bodies, **options):
    """A writer that stored `bodies` and shut down cleanly."""
    db = make_db(tmp_path / "a.db", {"storage": storage}, sync_mode="sync", **options)
    db.create_tables([Note])
    for body in bodies:
        Note.create(body=body)
    return db


def test_only_a_writer_creates_the_storage_directory(tmp_path):
    typo = tmp_path / "typo" / "sub"
    url = f"file://{typo}"
    for args in (["status"], ["verify"], ["generations"], ["restore", "-o", "out.db"],
                 ["prune"], ["lease", "release"]):
        line = error_line(command(*args, "--storage", url, cwd=tmp_path))
        assert f"{url} does not exist" in line and "check the storage URL" in line, args
    with pytest.raises(NothingToRestoreError, match=f"{url} does not exist"):
        restore(storage=url, database_name=NAME, target=str(tmp_path / "out.db"))
    assert not (tmp_path / "typo").exists() and not (tmp_path / "out.db").exists()

    written(tmp_path, url, "one").shutdown()
    assert typo.is_dir()
    assert "generation:" in command("status", "--storage", url).stdout


def test_a_file_where_the_storage_directory_should_be_is_named(tmp_path):
    (tmp_path / "store").write_text("not a directory")
    line = error_line(command("status", "--storage", f"file://{tmp_path}/store"))
    assert f"file://{tmp_path}/store is a file, not a directory" in line


def test_a_command_piped_into_head_stops_quietly(tmp_path):
    db = written(tmp_path, f"file://{tmp_path}/store", "one")
    for _ in range(3):
        db.snapshot()
    db.shutdown()
    reader, writer = os.pipe()
    os.close(reader)  # `head` has read its lines and gone before the command writes
    try:
        result = subprocess.run(
            [sys.executable, "-m", "peewee_s3", "generations", "--json",
             "--storage", f"file://{tmp_path}/store", "--database-name", NAME],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60, env=ENV)
    finally:
        os.close(writer)
    assert result.stderr == ""
    assert result.returncode == 141  # 128 + SIGPIPE, as `cat` in `cat big | head` reports


def test_a_file_url_is_named_with_its_three_slashes_however_it_was_spelt(tmp_path):
    written(tmp_path, f"file://{tmp_path}/store", "one").shutdown()
    for spelling in (f"file://{tmp_path}/store/", "file://store"):
        status = command("status", "--storage", spelling, cwd=tmp_path).stdout
        assert f"database:     file://{tmp_path}/store/{NAME}\n" in status, spelling
    with open_storage(f"file://{tmp_path}/store/") as storage:
        assert storage.describe(f"{NAME}/lock.json") == f"file://{tmp_path}/store/{NAME}/lock.json"


def test_an_s3_database_is_named_by_its_path_then_its_endpoint(moto_endpoint, make_bucket):
    bucket = make_bucket(moto_endpoint)
    result = command("status", "--storage", f"s3://{bucket}/some/path/", "--endpoint-url",
                     moto_endpoint, "--force-path-style",
                     env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    assert f"database:     s3://{bucket}/some/path/{NAME} (endpoint {moto_endpoint})\n" \
        in result.stdout, result.stderr


@pytest.mark.parametrize("endpoint", ["127.0.0.1:9000", "localhost:9000"])
def test_an_endpoint_without_a_scheme_says_to_write_http(tmp_path, endpoint):
    db = make_db(tmp_path / "a.db", {"storage": "s3://bucket", "endpoint_url": endpoint})
    with pytest.raises(ConfigurationError, match=f"endpoint_url '{endpoint}' has no scheme.*"
                                                 f"'http://{endpoint}'"):
        db.connect()
    with pytest.raises(ConfigurationError, match=f"'http://{endpoint}'"):
        restore(storage="s3://bucket", database_name=NAME, target=str(tmp_path / "out.db"),
                endpoint_url=endpoint)
    line = error_line(command("status", "--storage", "s3://bucket", "--endpoint-url", endpoint))
    assert f"endpoint_url '{endpoint}' has no scheme" in line and f"http://{endpoint}" in line


def test_an_endpoint_of_another_scheme_is_refused_with_an_example():
    with pytest.raises(ConfigurationError, match="not an http:// or https:// URL.*"
                                                 "'http://127.0.0.1:9000'"):
        open_storage("s3://bucket", endpoint_url="ftp://127.0.0.1:9000")


def generations_table(storage):
    result = command("generations", "--storage", storage)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_generations_table_shows_a_corrupt_segment_and_a_missing_snapshot(tmp_path):
    storage = f"file://{tmp_path}/store"
    db = written(tmp_path, storage, "one", "two")
    older = db.status()["generation"]
    newer = db.snapshot()
    Note.create(body="three")
    db.shutdown()
    with open_storage(storage) as store:
        segment = store.list(f"{NAME}/generations/{older}/wal/")[-1].key  # the last: read
        damaged = bytearray(store.read(segment))
        damaged[60] ^= 0xFF
        store.write(segment, bytes(damaged))
        store.delete(f"{NAME}/generations/{newer}/snapshot.db")

    table = generations_table(storage)
    column = table[0].index("COMPLETE")
    complete = {line.split()[0]: line[column:].split()[0] for line in table[1:]
                if not line.startswith("DAMAGED ")}
    assert complete[older] == complete[newer] == "DAMAGED"
    assert any(line.startswith(f"DAMAGED {older}: segment {segment} is corrupt")
               for line in table)
    assert f"DAMAGED {newer}: its snapshot {NAME}/generations/{newer}/snapshot.db is " \
           "missing: this generation cannot be restored" in table
    shown = {r["generation"]: r["problem"] for r in json.loads(
        command("generations", "--json", "--storage", storage).stdout)}
    assert "is missing" in shown[newer] and "is corrupt" in shown[older]


def test_sound_generations_are_complete_in_the_table(tmp_path):
    storage = f"file://{tmp_path}/store"
    written(tmp_path, storage, "one").shutdown()
    table = generations_table(storage)
    column = table[0].index("COMPLETE")
    assert {line[column:].split()[0] for line in table[1:]} == {"yes"}


@pytest.mark.parametrize("readme", sorted(glob.glob(os.path.join(ROOT, "examples/*/README.md"))),
                         ids=lambda path: os.path.basename(os.path.dirname(path)))
def test_an_examples_install_line_works_before_peewee_s3_is_published(readme):
    with open(readme) as f:
        text = f.read()
    assert "pip install peewee-s3" not in text  # not on the package index yet
    assert re.search(r'pip install -e "?\.', text) and "git+" in text
