"""Options: each bad option raises ConfigurationError naming it and what is allowed."""
import inspect

import pytest

from peewee_s3 import S3SqliteDatabase
from peewee_s3.config import Options
from peewee_s3.errors import ConfigurationError

GOOD = {"storage": "memory://config", "database_name": "app"}


@pytest.mark.parametrize("changes, words", [
    ({"database_name": None}, ["database_name is required"]),
    ({"database_name": ""}, ["database_name is required"]),
    ({"database_name": "../escape"}, ["database_name", "no '..'"]),
    ({"database_name": ".."}, ["database_name", "not allowed"]),
    ({"database_name": "a/b"}, ["database_name", "no '/'"]),
    ({"key_prefix": "a/../b"}, ["key_prefix", "'..'"]),
    ({"key_prefix": "a//b"}, ["key_prefix", "''"]),
    ({"key_prefix": "/"}, ["key_prefix", "non-empty"]),
    ({"sync_mode": "eventually"}, ["sync_mode", "'async'", "'sync'"]),
    ({"sync_interval": 0}, ["sync_interval", "positive"]),
    ({"snapshot_interval": -5}, ["snapshot_interval", "positive"]),
    ({"lock_ttl": 1}, ["lock_ttl", "too short"]),
    ({"lock_ttl": "60"}, ["lock_ttl", "positive"]),
    ({"lock_wait": -1}, ["lock_wait"]),
    ({"storage": None}, ["storage is required"]),
    ({"storage": "my-bucket"}, ["not a URL", "s3://"]),
    ({"storage": 42}, ["fsspec"]),
    ({"credentials": {"access_key_id": "a"}}, ["credentials", "secret_access_key"]),
    ({"credentials": "key:secret"}, ["credentials must be a dict"]),
    ({"checkpoint_frames": 0}, ["checkpoint_frames"]),
])
def test_bad_option_is_refused_with_a_message_that_says_what_to_do(changes, words):
    with pytest.raises(ConfigurationError) as info:
        Options(**{**GOOD, **changes})
    for word in words:
        assert word in str(info.value)


def test_good_options_give_the_key_base():
    assert Options(**GOOD).base_key == "app"
    assert Options(**GOOD, key_prefix="/prod/eu/").base_key == "prod/eu/app"


def test_credentials_stay_out_of_the_repr():
    options = Options(**GOOD, credentials={"access_key_id": "AKIA-SENTINEL",
                                           "secret_access_key": "SECRET-SENTINEL"})
    assert "SENTINEL" not in repr(options)


def test_the_database_refuses_bad_options_at_construction():
    with pytest.raises(ConfigurationError, match="database_name is required"):
        S3SqliteDatabase("app.db", storage="memory://x")
    with pytest.raises(ConfigurationError, match="journal_mode"):
        S3SqliteDatabase("app.db", pragmas={"journal_mode": "delete"}, **GOOD)
    with pytest.raises(ConfigurationError, match="journal_mode"):
        S3SqliteDatabase("app.db", pragmas={"main.journal_mode": "delete"}, **GOOD)
    with pytest.raises(ConfigurationError, match="memory"):
        S3SqliteDatabase(":memory:", **GOOD)


def test_deferred_initialisation_validates_at_init():
    db = S3SqliteDatabase(None)
    with pytest.raises(ConfigurationError, match="sync_mode"):
        db.init("app.db", sync_mode="nope", **GOOD)
    db.init("app.db", **GOOD)
    assert db.options.database_name == "app"


@pytest.mark.parametrize("changes, words", [
    ({"retention_generations": 0}, ["retention_generations", "at least 1"]),
    ({"retention_age": 0}, ["retention_age", "positive"]),
])
def test_bad_retention_is_refused(changes, words):
    with pytest.raises(ConfigurationError) as info:
        Options(**{**GOOD, **changes})
    for word in words:
        assert word in str(info.value)


def test_retention_age_none_keeps_everything():
    assert Options(**GOOD, retention_age=None).retention_age is None


def test_an_option_with_a_typo_is_refused_naming_the_closest_before_anything_is_touched(
        tmp_path):
    with pytest.raises(ConfigurationError, match="did you mean 'sync_interval'"):
        S3SqliteDatabase(str(tmp_path / "a.db"), sync_intervall=5,
                         storage=f"file://{tmp_path}/store", database_name="app")
    assert list(tmp_path.iterdir()) == []
    db = S3SqliteDatabase(None)
    with pytest.raises(ConfigurationError, match="did you mean 'lock_ttl'"):
        db.init(str(tmp_path / "a.db"), lock_tll=5, storage=f"file://{tmp_path}/store",
                database_name="app")


def test_peewees_and_sqlites_own_options_still_pass(tmp_path):
    db = S3SqliteDatabase(str(tmp_path / "a.db"), storage=f"file://{tmp_path}/store",
                          database_name="app", timeout=3, autoconnect=False,
                          detect_types=0, cached_statements=16, regexp_function=True)
    assert db.connect_params["cached_statements"] == 16


def test_the_constructor_spells_out_every_option_for_editors():
    keywords = {name for name, p in inspect.signature(S3SqliteDatabase.__init__).parameters
                .items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords == set(Options.__dataclass_fields__)


def test_journal_mode_wal_the_mode_it_sets_anyway_is_accepted():
    S3SqliteDatabase("app.db", pragmas={"journal_mode": "wal"}, **GOOD)
    S3SqliteDatabase("app.db", pragmas=[("journal_mode", "WAL")], **GOOD)
    with pytest.raises(ConfigurationError, match="wal_autocheckpoint"):
        S3SqliteDatabase("app.db", pragmas={"wal_autocheckpoint": 1000}, **GOOD)
