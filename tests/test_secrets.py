"""Credentials never show: not in logs at any level (any logger), repr(db), status(), the
message or traceback of any error we can provoke, nor the output of the command line tool.

A sentinel secret stands in for the credentials; every text a user could see is scanned for it.
"""
import base64
import logging
import os
import subprocess
import sys
import traceback

import pytest
from playhouse import db_url

from peewee_s3 import S3SqliteDatabase, restore
from peewee_s3.errors import PeeweeS3Error

from .conftest import _free_ports
from .faultproxy import FaultProxy
from .helpers import NAME, Note, make_db

SECRET = "SENTINEL-secret-7f3a9c1e5b2d"
TOKEN = "SENTINEL-token-4e6a8c0b1d3f"
SENTINEL = "SENTINEL-"          # both share it: any piece of either is found
CREDENTIALS = {"access_key_id": "sentinelkeyid", "secret_access_key": SECRET,
               "session_token": TOKEN}
LOGGERS = ["", "peewee_s3", "botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "aiohttp",
           "peewee", "asyncio"]


class Capture(logging.Handler):
    """Every record of every logger, formatted with its traceback, at DEBUG."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.texts = []
        self._seen = set()

    def emit(self, record):
        if id(record) not in self._seen:       # attached to several loggers: count once
            self._seen.add(id(record))
            self.texts.append(self.format(record))


@pytest.fixture
def logs():
    """Capture at DEBUG on the root logger and on those that may not propagate to it."""
    capture = Capture()
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(capture)
    try:
        yield capture
    finally:
        for logger, level in saved:
            logger.removeHandler(capture)
            logger.setLevel(level)


def assert_clean(*texts):
    for text in texts:
        assert SENTINEL not in str(text), f"a secret shows in: {str(text)[:2000]}"


def error_texts(exc):
    """What a user may see of an error: its message, repr and the whole traceback chain."""
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


@pytest.fixture
def moto_kwargs(moto_endpoint, make_bucket, s3_kwargs):
    """moto accepts any credentials: the sentinel ones work there."""
    return {**s3_kwargs(moto_endpoint, make_bucket(moto_endpoint)), "credentials": CREDENTIALS}


def test_a_whole_session_logs_and_shows_no_secret(tmp_path, moto_kwargs, logs):
    db = make_db(tmp_path / "a.db", moto_kwargs, sync_mode="sync", verbose=True)
    db.create_tables([Note])
    Note.create(body="one")
    db.sync()
    db.snapshot()
    shown = [repr(db), db.status(), repr(db.options), repr(db._session.role.storage)]
    db.shutdown()
    shown.append(db.status())
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **moto_kwargs)
    assert len(logs.texts) > 10                   # botocore alone logs plenty at DEBUG
    assert_clean(*shown, *logs.texts)


def test_replication_failures_show_no_secret(tmp_path, moto_endpoint, make_bucket, s3_kwargs,
                                             logs):
    with FaultProxy(moto_endpoint) as proxy:
        kwargs = {**s3_kwargs(proxy.url, make_bucket(moto_endpoint)), "credentials": CREDENTIALS}
        db = make_db(tmp_path / "a.db", kwargs, sync_interval=0.05)
        db.create_tables([Note])
        proxy.set_faults(1.0, ["500"])
        Note.create(body="not shipped")
        with pytest.raises(PeeweeS3Error) as raised:
            db.sync()
        status = db.status()
        proxy.clear()
        db.shutdown()
    assert status["last_error"] or raised.value
    assert_clean(status, *error_texts(raised.value), *logs.texts)


def provoke(kind, tmp_path, request):
    """Make a failure of `kind` happen with the sentinel credentials; return the error."""
    s3 = request.getfixturevalue("s3_kwargs")
    if kind == "wrong_endpoint":
        kwargs = {**s3(f"http://127.0.0.1:{_free_ports(1)[0]}", "bucket"),
                  "credentials": CREDENTIALS}
    elif kind == "wrong_credentials":
        endpoint = request.getfixturevalue("seaweed_endpoint")
        kwargs = {**s3(endpoint, request.getfixturevalue("make_bucket")(endpoint)),
                  "credentials": CREDENTIALS}
    elif kind == "missing_bucket":
        kwargs = {**s3(request.getfixturevalue("moto_endpoint"), "no-such-bucket-here"),
                  "credentials": CREDENTIALS}
    elif kind == "secret_in_storage_options":
        kwargs = {**s3(f"http://127.0.0.1:{_free_ports(1)[0]}", "bucket"), "credentials": None,
                  "storage_options": {"key": "sentinelkeyid", "secret": SECRET}}
    elif kind == "incomplete_credentials":
        kwargs = {**s3("http://127.0.0.1:9", "bucket"),
                  "credentials": {"access_key_id": SECRET, "session_token": TOKEN}}
    elif kind == "unknown_credential_field":
        kwargs = {**s3("http://127.0.0.1:9", "bucket"),
                  "credentials": {**CREDENTIALS, "password": SECRET}}
    elif kind == "restore_with_wrong_credentials":
        endpoint = request.getfixturevalue("seaweed_endpoint")
        kwargs = {**s3(endpoint, request.getfixturevalue("make_bucket")(endpoint)),
                  "credentials": CREDENTIALS}
        try:
            restore(target=str(tmp_path / "r.db"), database_name=NAME, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any error: it is what we scan
            return exc
        raise AssertionError("restore with wrong credentials succeeded")
    elif kind == "database_url":
        pytest.importorskip("peewee_s3.url", reason="peewee_s3/url.py (DATABASE_URL) not there")
        url = (f"s3sqlite:///{tmp_path}/a.db?storage=s3://bucket&database_name={NAME}"
               f"&access_key_id=sentinelkeyid&secret_access_key={SECRET}&no_such_option=1")
        try:
            db_url.connect(url)
        except Exception as exc:  # noqa: BLE001
            return exc
        raise AssertionError("a database URL with an unknown option was accepted")
    else:
        raise ValueError(kind)
    try:
        db = S3SqliteDatabase(str(tmp_path / "a.db"), database_name=NAME, **kwargs)
        shown = repr(db)
        db.connect()
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError(f"{kind}: connect succeeded ({shown})")


@pytest.mark.parametrize("kind", [
    "wrong_endpoint", "wrong_credentials", "missing_bucket", "secret_in_storage_options",
    "incomplete_credentials", "unknown_credential_field", "restore_with_wrong_credentials",
    "database_url",
])
def test_errors_show_no_secret(tmp_path, request, logs, kind):
    exc = provoke(kind, tmp_path, request)
    assert isinstance(exc, PeeweeS3Error), f"{type(exc).__name__}: {exc}"
    assert_clean(*error_texts(exc), *logs.texts)


# -- the command line tool ---------------------------------------------------------------------

def run_cli(*args, env=None):
    done = subprocess.run([sys.executable, "-m", "peewee_s3", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def cli_storage(tmp_path, moto_kwargs):
    """A database with two rows in moto, and the CLI flags that reach it."""
    db = make_db(tmp_path / "a.db", moto_kwargs, sync_mode="sync")
    db.create_tables([Note])
    Note.create(body="one")
    db.shutdown()
    return ["--storage", moto_kwargs["storage"], "--database-name", NAME, "--endpoint-url",
            moto_kwargs["endpoint_url"], "--region", "us-east-1", "--force-path-style",
            "--access-key-id", "sentinelkeyid", "--secret-access-key", SECRET, "--verbose"]


@pytest.mark.parametrize("command", [
    ["status"], ["status", "--json"], ["generations"], ["verify"], ["restore", "-o", "{out}"],
])
def test_the_cli_shows_no_secret(tmp_path, cli_storage, command):
    command = [part.format(out=tmp_path / "out.db") for part in command]
    code, output = run_cli(*cli_storage, *command)
    assert code == 0, output
    assert_clean(output)


@pytest.mark.parametrize("where", ["wrong_endpoint", "wrong_credentials", "secret_in_env"])
def test_the_cli_fails_without_showing_a_secret(request, where):
    endpoint = {"wrong_endpoint": lambda: f"http://127.0.0.1:{_free_ports(1)[0]}",
                "wrong_credentials": lambda: request.getfixturevalue("seaweed_endpoint"),
                "secret_in_env": lambda: request.getfixturevalue("moto_endpoint")}[where]()
    flags = ["--storage", "s3://no-such-bucket-here", "--database-name", NAME,
             "--endpoint-url", endpoint, "--region", "us-east-1", "--force-path-style",
             "--verbose"]
    env = None
    if where == "secret_in_env":
        env = {"AWS_ACCESS_KEY_ID": "sentinelkeyid", "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_SESSION_TOKEN": TOKEN}
    else:
        flags += ["--access-key-id", "sentinelkeyid", "--secret-access-key", SECRET]
    commands = [["status"]] if where == "wrong_endpoint" else [
        ["status"], ["restore", "-o", "/nonexistent/out.db"]]
    for command in commands:
        code, output = run_cli(*flags, *command, env=env)
        assert code == 1, output
        assert_clean(output)


# -- encryption keys ---------------------------------------------------------------------------

KEY_TEXT = "SENTINELencryptionKey" + "A" * 22 + "="   # base64 of the 32-byte key below
KEY = base64.b64decode(KEY_TEXT)
OTHER_KEY = bytes(range(32))


def assert_no_key(*texts):
    """Neither the key as the environment holds it (base64) nor its bytes, raw or in hex."""
    for text in map(str, texts):
        for shown in (KEY_TEXT[:16], KEY.hex()[:16], repr(KEY)[2:18]):
            assert shown not in text, f"the encryption key shows in: {text[:2000]}"


def test_an_encrypted_session_logs_and_shows_no_key(tmp_path, moto_kwargs, logs, monkeypatch):
    monkeypatch.setenv("APP_DB_KEY", KEY_TEXT)
    db = make_db(tmp_path / "a.db", moto_kwargs, sync_mode="sync", verbose=True,
                 encryption_keys=["APP_DB_KEY", OTHER_KEY])
    db.create_tables([Note])
    Note.create(body="one")
    db.snapshot()
    shown = [repr(db), db.status(), repr(db.options), repr(db._session.role.storage),
             repr(db.options.keyring)]
    db.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, encryption_key=KEY,
            **moto_kwargs)
    assert_no_key(*shown, *logs.texts)
    assert_clean(*shown, *logs.texts)


@pytest.mark.parametrize("kind", ["without_key", "wrong_key", "plain_read_with_key",
                                  "key_as_variable_name", "key_in_a_url"])
def test_encryption_errors_show_no_key(tmp_path, logs, monkeypatch, kind):
    store = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", store, sync_mode="sync",
                 **({} if kind == "plain_read_with_key" else {"encryption_key": KEY}))
    db.create_tables([Note])
    db.shutdown()
    given = {"without_key": {}, "wrong_key": {"encryption_key": OTHER_KEY},
             "plain_read_with_key": {"encryption_key": KEY},
             "key_as_variable_name": {"encryption_key": KEY_TEXT}}.get(kind)
    with pytest.raises(PeeweeS3Error) as raised:
        if kind == "key_in_a_url":
            db_url.connect(f"s3sqlite:///{tmp_path}/b.db?storage=file://{tmp_path}/store"
                           f"&database_name={NAME}&encryption_key={KEY_TEXT}")
        else:
            restore(target=str(tmp_path / "r.db"), database_name=NAME, **given, **store)
    assert_no_key(*error_texts(raised.value), *logs.texts)


@pytest.fixture
def encrypted_cli_storage(tmp_path, moto_kwargs, cli_storage):
    """cli_storage's flags, for a database encrypted with KEY (an empty one: cli_storage's
    own stays plain, under another name)."""
    db = make_db(tmp_path / "e.db", moto_kwargs, sync_mode="sync", database_name="encrypted",
                 encryption_key=KEY)
    db.create_tables([Note])
    Note.create(body="one")
    db.shutdown()
    flags = list(cli_storage)
    flags[flags.index("--database-name") + 1] = "encrypted"
    return flags


@pytest.mark.parametrize("command", [
    ["status"], ["generations"], ["verify"], ["restore", "-o", "{out}"],
])
def test_the_cli_shows_no_key(tmp_path, encrypted_cli_storage, command):
    command = [part.format(out=tmp_path / "out.db") for part in command]
    code, output = run_cli(*encrypted_cli_storage, *command,
                           env={"PEEWEE_S3_ENCRYPTION_KEY": KEY_TEXT})
    assert code == 0, output
    assert_no_key(output)
    assert_clean(output)


def test_the_cli_fails_on_a_wrong_key_without_showing_either(tmp_path, encrypted_cli_storage):
    wrong = base64.b64encode(OTHER_KEY).decode()
    code, output = run_cli(*encrypted_cli_storage, "restore", "-o", str(tmp_path / "out.db"),
                           env={"PEEWEE_S3_ENCRYPTION_KEY": wrong})
    assert code == 1 and "another key" in output, output
    assert wrong not in output
    assert_no_key(output)
