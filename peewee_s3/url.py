"""url: the `s3sqlite` schemes of playhouse.db_url, so that a DATABASE_URL can name a database.

    s3sqlite:///app.db?storage=s3://bucket&database_name=app&sync_mode=sync     (relative path)
    s3sqlite:////var/lib/app.db?storage=file:///backups&database_name=app      (absolute path)
    s3sqlite+replica:///replica.db?storage=s3://bucket&database_name=app        (a read replica)

Registered with `playhouse.db_url` on `import peewee_s3`. It turns query values into options
and refuses unknown ones; it never connects. See docs/REPLICAS.md, "Database URLs".
"""
from __future__ import annotations

from typing import Any

from playhouse import db_url

from .config import Options
from .database import S3SqliteDatabase
from .errors import ConfigurationError
from .config import STORAGE_OPTIONS
from .replica import WRITER_OPTIONS, S3SqliteReplica

__all__ = ["SCHEME", "REPLICA_SCHEME", "database_from_url_params", "replica_from_url_params"]

SCHEME = "s3sqlite"
REPLICA_SCHEME = "s3sqlite+replica"
PRAGMA_PREFIX = "pragma_"
_CREDENTIALS = ("access_key_id", "secret_access_key", "session_token")
_PEEWEE = ("timeout", "autoconnect", "thread_safe", "pragmas")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _kind(annotation: str) -> str:
    """How a URL value becomes an option, from the option's type hint in config.Options."""
    base = annotation[len("Optional["):-1] if annotation.startswith("Optional[") else annotation
    return {"bool": "flag", "int": "integer", "float": "seconds", "str": "text",
            "Any": "text"}.get(base, "object")


_KINDS = {name: _kind(str(f.type)) for name, f in Options.__dataclass_fields__.items()}
_KINDS.update(poll_interval="seconds", timeout="seconds", autoconnect="flag",
              thread_safe="flag", pragmas="object", **{name: "text" for name in _CREDENTIALS})
_OBJECTS = {name for name, kind in _KINDS.items() if kind == "object"}  # keywords, not URL


def database_from_url_params(database: str, **params: Any) -> S3SqliteDatabase:
    """The S3SqliteDatabase that playhouse.db_url's parsed URL describes."""
    accepted = (*STORAGE_OPTIONS, *WRITER_OPTIONS)
    return S3SqliteDatabase(database, **_options(SCHEME, params, accepted))


def replica_from_url_params(database: str, **params: Any) -> S3SqliteReplica:
    """The S3SqliteReplica that playhouse.db_url's parsed URL describes."""
    accepted = (*STORAGE_OPTIONS, "poll_interval")
    return S3SqliteReplica(database, **_options(REPLICA_SCHEME, params, accepted))


def _options(scheme: str, params: dict, accepted: tuple) -> dict:
    """Keyword arguments from the values db_url parsed (it turns 'true', '5' and '0.5' into
    bool, int and float, 'null' and 'none' into None) and those passed to connect()."""
    if params.keys() & {"host", "port", "user", "password"}:
        raise ConfigurationError(
            f"{scheme} URLs name a local file, not a host: write {scheme}:///relative/app.db "
            f"or {scheme}:////absolute/app.db (three or four slashes), and put the storage in "
            "?storage=s3://bucket")
    names = {*accepted, *_CREDENTIALS, *_PEEWEE} - {"storage_root"}
    unknown = sorted(name for name in params
                     if name not in names and not name.startswith(PRAGMA_PREFIX))
    if unknown:
        shown = sorted(names - _OBJECTS) + [f"{PRAGMA_PREFIX}<name>"]
        raise ConfigurationError(
            f"{scheme} URL: unknown parameter(s) {', '.join(unknown)}. Accepted: "
            f"{', '.join(shown)} (and credentials, storage_options, pragmas as keyword "
            "arguments of db_url.connect)")
    options: dict = {}
    pragmas = dict(params.pop("pragmas", None) or {})
    credentials = {name: _text(name, params.pop(name)) for name in _CREDENTIALS if name in params}
    for name, value in params.items():
        if name.startswith(PRAGMA_PREFIX):
            pragmas[name[len(PRAGMA_PREFIX):]] = value
        else:
            options[name] = _convert(name, value)
    if credentials:
        if "credentials" in options:
            raise ConfigurationError(f"give credentials either as URL parameters "
                                     f"({', '.join(_CREDENTIALS)}) or as credentials=, not both")
        options["credentials"] = credentials
    if pragmas:
        options["pragmas"] = pragmas
    return options


def _convert(name: str, value: Any) -> Any:
    if value is None:
        return None  # db_url's reading of 'null' and 'none'; the options check it
    return _CONVERTERS[_KINDS[name]](name, value)


def _text(name: str, value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)  # db_url read '2024' as 2024: the option is text
    return value


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigurationError(f"{name}={value!r} must be a number of seconds")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r} must be a number of seconds, "
                                 f"e.g. {name}=0.5") from None


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigurationError(f"{name}={value!r} must be a whole number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r} must be a whole number") from None


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigurationError(f"{name}={value!r} must be true or false")


def _as_given(name: str, value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        raise ConfigurationError(
            f"{name} cannot be written in a URL: pass it as a keyword argument, "
            f"db_url.connect(url, {name}=...)")
    return value


_CONVERTERS = {"text": _text, "seconds": _seconds, "integer": _integer, "flag": _flag,
               "object": _as_given}

db_url.register_database(database_from_url_params, SCHEME)
db_url.register_database(replica_from_url_params, REPLICA_SCHEME)
