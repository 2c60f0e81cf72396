"""db_url: `s3sqlite://` URLs give a working S3SqliteDatabase (or replica), options typed."""
import pytest
from playhouse import db_url

import peewee_s3.url  # noqa: F401 - registers the schemes (peewee_s3 imports it too)
from peewee_s3 import S3SqliteDatabase
from peewee_s3.errors import ConfigurationError
from peewee_s3.replica import S3SqliteReplica

from .helpers import Note, bodies


def test_a_url_gives_a_working_database(tmp_path):
    url = (f"s3sqlite:///{tmp_path}/app.db?storage=file://{tmp_path}/store"
           "&database_name=app&sync_mode=sync")
    db = db_url.connect(url)
    assert isinstance(db, S3SqliteDatabase)
    assert db.database == f"{tmp_path}/app.db"  # three slashes, then an absolute path
    db.bind([Note])
    db.create_tables([Note])
    Note.create(body="via a url")
    assert bodies(db) == ["via a url"] and db.status()["position"]["seq"] >= 1
    db.shutdown()

    replica = db_url.connect(f"s3sqlite+replica:///{tmp_path}/replica.db?storage=file://"
                             f"{tmp_path}/store&database_name=app&poll_interval=0.5")
    assert isinstance(replica, S3SqliteReplica) and replica.poll_interval == 0.5
    assert replica.execute_sql("SELECT body FROM note").fetchall() == [("via a url",)]
    replica.shutdown()


def test_values_are_converted_to_the_options_types(tmp_path):
    db = db_url.connect(
        "s3sqlite:///app.db?storage=s3://bucket/some/path&database_name=2024"
        "&endpoint_url=http://127.0.0.1:9000&force_path_style=true&sync_interval=.5"
        "&lock_ttl=30&checkpoint_frames=500&verbose=0&access_key_id=AKIA"
        "&secret_access_key=se%2Bcret/key&timeout=2.5&pragma_foreign_keys=1")
    o = db.options
    assert db.database == "app.db"  # relative to the working directory
    assert (o.storage, o.database_name, o.endpoint_url) == (
        "s3://bucket/some/path", "2024", "http://127.0.0.1:9000")
    assert (o.force_path_style, o.verbose, o.sync_interval, o.lock_ttl) == (True, False, 0.5, 30.0)
    assert o.checkpoint_frames == 500 and isinstance(o.lock_ttl, float)
    assert dict(o.credentials) == {"access_key_id": "AKIA", "secret_access_key": "se+cret/key"}
    assert db._timeout == 2.5 and dict(db._pragmas) == {"foreign_keys": 1}


def test_keyword_arguments_of_connect_pass_as_given(tmp_path):
    credentials = {"access_key_id": "a", "secret_access_key": "b"}
    db = db_url.connect("s3sqlite:///app.db?storage=s3://bucket", database_name="007",
                        credentials=credentials, storage_options={"anon": False})
    assert db.options.database_name == "007" and dict(db.options.credentials) == credentials


def test_unknown_parameters_are_refused_with_the_accepted_ones():
    with pytest.raises(ConfigurationError) as error:
        db_url.connect("s3sqlite:///app.db?storage=s3://b&database_name=x&sync_intervall=2")
    message = str(error.value)
    assert "sync_intervall" in message
    for accepted in ("storage", "database_name", "sync_interval", "endpoint_url", "pragma_<name>"):
        assert accepted in message
    with pytest.raises(ConfigurationError, match="unknown parameter.*sync_mode.*poll_interval"):
        db_url.connect("s3sqlite+replica:///r.db?storage=s3://b&database_name=x&sync_mode=sync")


@pytest.mark.parametrize("url, message", [
    ("s3sqlite://host/app.db?storage=s3://b&database_name=x", "not a host"),
    ("s3sqlite:///app.db?storage=s3://b&database_name=x&sync_interval=soon", "number of seconds"),
    ("s3sqlite:///app.db?storage=s3://b&database_name=x&force_lock=maybe", "true or false"),
    ("s3sqlite:///app.db?storage=s3://b&database_name=x&credentials=k", "keyword argument"),
    ("s3sqlite:///app.db?storage=s3://b&database_name=x&sync_mode=eventually", "sync_mode"),
])
def test_bad_values_are_refused_clearly(url, message):
    with pytest.raises(ConfigurationError, match=message):
        db_url.connect(url)
