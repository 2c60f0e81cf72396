"""config: every option of S3SqliteDatabase, built and validated in one place.

`Options` is frozen; the rest of the package receives it and never re-checks an option.
Credentials and encryption keys are kept out of its repr; a key named by an environment
variable is read from it once, here.
"""
from __future__ import annotations

import base64
import binascii
import difflib
import logging
import os
import re
from collections import abc
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

from .envelope import KEY_SIZE, Keyring
from .errors import ConfigurationError

SYNC_MODES = ("async", "sync")
REPLICATORS = ("thread", "process")  # where replication runs: docs/HOSTS.md
# The options that say where a database is stored (and how loudly to log): what a reader of
# the storage — a replica, the CLI, restore() — takes. Every other option is the writer's.
STORAGE_OPTIONS = ("storage", "database_name", "storage_root", "key_prefix", "region",
                   "endpoint_url", "force_path_style", "credentials", "storage_options",
                   "encryption_key", "encryption_keys", "verbose")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CREDENTIAL_KEYS = {"access_key_id", "secret_access_key", "session_token"}
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHOWN_NAME = 40  # longer "names" are not shown in messages: one may be a key given by mistake
NEW_KEY_HINT = ("python -c \"import base64, os; print(base64.b64encode(os.urandom(32)).decode())\"")


@dataclass(frozen=True)
class Options:
    """The replication options of one database (peewee's own options are not here)."""

    storage: Any = None
    database_name: str = None  # type: ignore[assignment]  (validated: required)
    storage_root: Optional[str] = None
    key_prefix: Optional[str] = None
    region: Optional[str] = None
    endpoint_url: Optional[str] = None
    force_path_style: bool = False
    credentials: Optional[Mapping[str, str]] = field(default=None, repr=False)
    storage_options: Optional[Mapping[str, Any]] = field(default=None, repr=False)
    encryption_key: Any = field(default=None, repr=False)  # 32 bytes, or an env variable's name
    encryption_keys: Optional[Sequence[Any]] = field(default=None, repr=False)  # [new, old, …]
    sync_mode: str = "async"
    sync_interval: float = 1.0
    snapshot_interval: float = 7 * 86400.0  # at the latest: see replicator.SEGMENTS_SHARE_*
    snapshot_on_shutdown: bool = False  # True: the seed's final snapshot at every shutdown
    lock_ttl: float = 60.0
    lock_wait: float = 0.0
    force_lock: bool = False
    checkpoint_frames: int = 1000
    retention_generations: int = 2
    retention_age: Optional[float] = 86400.0
    unsafe_storage: bool = False
    download_streams: Optional[int] = None
    replicator: str = "thread"
    verbose: bool = False

    def __post_init__(self) -> None:
        _check_storage(self.storage, self.storage_root)
        _check_name(self.database_name)
        _check_prefix(self.key_prefix)
        if self.sync_mode not in SYNC_MODES:
            raise ConfigurationError(
                f"sync_mode={self.sync_mode!r} is not known: use 'async' (shipped in the "
                "background) or 'sync' (a commit returns once it is durable)")
        if self.replicator not in REPLICATORS:
            raise ConfigurationError(
                f"replicator={self.replicator!r} is not known: use 'thread' (replication runs in "
                "the first process to open the file) or 'process' (in a helper process of its "
                "own, beside the app's processes)")
        if self.replicator == "process" and _in_memory(self.storage):
            raise ConfigurationError(
                "replicator='process' with an in-memory storage: memory:// lives inside one "
                "process, so the helper's would not be the app's. Use a file:// or S3 storage, "
                "or replicator='thread'")
        for name in ("sync_interval", "snapshot_interval", "lock_ttl"):
            _check_positive(name, getattr(self, name))
        if (isinstance(self.lock_wait, bool) or not isinstance(self.lock_wait, (int, float))
                or not self.lock_wait >= 0):
            raise ConfigurationError(f"lock_wait={self.lock_wait!r} must be 0 (fail at once) "
                                     "or a number of seconds to wait for the lease")
        if self.lock_ttl < 3:
            raise ConfigurationError(
                f"lock_ttl={self.lock_ttl!r} is too short to renew the lease in time: "
                "use at least 3 seconds (the lease is renewed every lock_ttl / 3)")
        if not isinstance(self.checkpoint_frames, int) or self.checkpoint_frames < 1:
            raise ConfigurationError(
                f"checkpoint_frames={self.checkpoint_frames!r} must be a positive integer")
        if (not isinstance(self.retention_generations, int)
                or isinstance(self.retention_generations, bool) or self.retention_generations < 1):
            raise ConfigurationError(
                f"retention_generations={self.retention_generations!r} must be an integer of at "
                "least 1 (the current generation is always kept)")
        if self.retention_age is not None:
            _check_positive("retention_age", self.retention_age)
        if self.download_streams is not None and (
                not isinstance(self.download_streams, int) or isinstance(self.download_streams, bool)
                or not 1 <= self.download_streams <= 64):
            raise ConfigurationError(
                f"download_streams={self.download_streams!r} must be an integer from 1 to 64 "
                "(ranged GETs at once when downloading a snapshot from S3), or None to choose "
                "by endpoint")
        _check_credentials(self.credentials)
        object.__setattr__(self, "_keyring",
                           Keyring(_encryption_keys(self.encryption_key, self.encryption_keys)))

    @property
    def keyring(self) -> Keyring:
        """The encryption keys, resolved: the first seals, any opens (empty: a plain database)."""
        return self._keyring  # type: ignore[attr-defined]  (set by __post_init__)

    @property
    def base_key(self) -> str:
        """The key under which everything of this database lives: `[key_prefix/]database_name`."""
        if self.key_prefix:
            return f"{self.key_prefix.strip('/')}/{self.database_name}"
        return self.database_name

    @property
    def renew_every(self) -> float:
        return self.lock_ttl / 3

    def storage_kwargs(self) -> dict:
        """The keyword arguments of `storage.open_storage` taken from these options."""
        return dict(storage_root=self.storage_root, region=self.region,
                    endpoint_url=self.endpoint_url, force_path_style=self.force_path_style,
                    credentials=self.credentials, storage_options=self.storage_options,
                    download_streams=self.download_streams, encryption=self.keyring)


# What sqlite3.connect() takes besides the file name (peewee passes unknown options to it).
SQLITE_CONNECT_OPTIONS = ("timeout", "detect_types", "isolation_level", "check_same_thread",
                          "factory", "cached_statements", "uri", "autocommit")


def reject_unknown(names: Iterable[str], known: Iterable[str]) -> None:
    """ConfigurationError for the first of `names` that is not in `known`, naming the closest
    known one (a typo must not reach sqlite3.connect after the lease is taken)."""
    known = sorted(set(known))
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigurationError(
                f"{name!r} is not an option of S3SqliteDatabase: {hint}The options are "
                "listed in the README (Options), besides peewee's own")


def log_verbosely() -> None:
    """verbose=True: INFO on the peewee_s3 logger, printed to stderr unless the app logs."""
    logger = logging.getLogger("peewee_s3")
    logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s peewee_s3 %(message)s"))
        logger.addHandler(handler)


def _check_storage(storage: Any, storage_root: Optional[str]) -> None:
    if storage is None or storage == "":
        raise ConfigurationError(
            "storage is required: an fsspec URL such as 's3://bucket/path', 'file:///var/backups' "
            "or 'memory://name', or an fsspec filesystem with storage_root='bucket/path'")
    if isinstance(storage, str):
        if "://" not in storage:
            raise ConfigurationError(
                f"storage={storage!r} is not a URL: write it as 's3://bucket', 'file:///dir' "
                "or 'memory://name'")
        if storage_root is not None:
            raise ConfigurationError("storage_root is only for an fsspec filesystem instance; "
                                     "with a URL, put the path in the URL")
    elif not hasattr(storage, "protocol"):
        raise ConfigurationError(
            f"storage must be an fsspec URL or an fsspec filesystem, not {type(storage).__name__}")


def _in_memory(storage: Any) -> bool:
    protocol = storage.split("://", 1)[0] if isinstance(storage, str) else \
        getattr(storage, "protocol", None)
    protocols = protocol if isinstance(protocol, (tuple, list)) else (protocol,)
    return "memory" in protocols


def _check_name(name: Any) -> None:
    if not name or not isinstance(name, str):
        raise ConfigurationError(
            "database_name is required: a unique name for this database in the storage, "
            "e.g. database_name='orders' (letters, digits, '.', '_', '-')")
    if name in (".", "..") or not _NAME.match(name):
        raise ConfigurationError(
            f"database_name={name!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no '/', no '..')")


def _check_prefix(prefix: Any) -> None:
    if prefix is None:
        return
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise ConfigurationError(f"key_prefix={prefix!r} must be a non-empty path such as "
                                 "'apps/prod', or None")
    for part in prefix.strip("/").split("/"):
        if part in ("", ".", "..") or not _NAME.match(part):
            raise ConfigurationError(
                f"key_prefix={prefix!r} has the part {part!r}, which is not allowed: parts are "
                "separated by single '/', use letters, digits, '.', '_', '-', and no '..'")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name}={value!r} must be a positive number of seconds")


def _check_credentials(credentials: Any) -> None:
    if credentials is None:
        return
    if not isinstance(credentials, Mapping):
        raise ConfigurationError("credentials must be a dict with 'access_key_id' and "
                                 "'secret_access_key' (and optionally 'session_token')")
    unknown = set(credentials) - _CREDENTIAL_KEYS
    missing = {"access_key_id", "secret_access_key"} - set(credentials)
    if unknown or missing:
        raise ConfigurationError(
            f"credentials has unknown keys {sorted(unknown)} or lacks {sorted(missing)}: "
            "give 'access_key_id' and 'secret_access_key' (and optionally 'session_token')")


def _encryption_keys(key: Any, keys: Any) -> list:
    """The keys as bytes, sealing one first, from `encryption_key` or `encryption_keys`. Never
    puts a key, nor anything that may be one, in a message."""
    if key is not None and keys is not None:
        raise ConfigurationError("give encryption_key (one key) or encryption_keys=[new, old, "
                                 "...] (rotation), not both")
    if key is not None:
        return [_encryption_key("encryption_key", key)]
    if keys is None:
        return []
    if isinstance(keys, (str, bytes, bytearray, memoryview)) or not isinstance(keys, abc.Sequence) \
            or not keys:
        raise ConfigurationError(
            "encryption_keys must be a non-empty list [new, old, ...] of keys (32 bytes each, or "
            "the name of an environment variable holding one in base64): the first encrypts, "
            "any of them decrypts")
    return [_encryption_key(f"encryption_keys[{i}]", k) for i, k in enumerate(keys)]


def _encryption_key(option: str, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) != KEY_SIZE:
            raise ConfigurationError(
                f"{option} must be {KEY_SIZE} bytes (AES-256), not {len(value)}: make one with "
                f"os.urandom({KEY_SIZE}), or store it base64-encoded in an environment variable "
                "and pass that variable's name")
        return bytes(value)
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{option} must be {KEY_SIZE} bytes, or the name of an environment variable holding "
            f"the key in base64, not {type(value).__name__}")
    if len(value) > _SHOWN_NAME or not _VARIABLE.match(value):
        raise ConfigurationError(
            f"{option} is a string, so it names an environment variable, but this one "
            f"({len(value)} characters) is no variable name — is it the key itself? Put the "
            f"key, base64-encoded, in an environment variable and pass its name, or pass the "
            f"{KEY_SIZE} bytes")
    text = os.environ.get(value)
    if not text:
        raise ConfigurationError(
            f"{option} names the environment variable {value}, which is not set: set it to "
            f"the database's key, base64-encoded (a new one: {NEW_KEY_HINT})")
    try:
        decoded = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != KEY_SIZE:
        raise ConfigurationError(
            f"the environment variable {value} ({option}) does not hold a {KEY_SIZE}-byte key "
            f"in base64 (a new one: {NEW_KEY_HINT})")
    return decoded
