"""cli.options: the library's `Options` from flags and PEEWEE_S3_* variables, and the storage
they open. An encryption key comes only from the environment (never a flag's value, which
shell history keeps).

Validation stays in `peewee_s3.config`; this only gathers what was given and says which
values are secrets, so that no error line shows them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
from dataclasses import dataclass
from typing import Iterator, Optional

from ..config import Options
from ..errors import ConfigurationError
from ..layout import Layout
from ..storage import Storage, open_storage

ENV = {"storage": "PEEWEE_S3_STORAGE", "database_name": "PEEWEE_S3_DATABASE_NAME",
       "key_prefix": "PEEWEE_S3_KEY_PREFIX", "endpoint_url": "PEEWEE_S3_ENDPOINT_URL"}
ENCRYPTION_KEY_ENV = "PEEWEE_S3_ENCRYPTION_KEY"
_SECRET_OPTIONS = ("key", "secret", "token", "password", "secret_access_key", "session_token")


@dataclass(frozen=True)
class StoredDatabase:
    """The database the command works on: its options, opened storage and key layout."""

    options: Options
    storage: Storage
    layout: Layout

    def describe(self) -> str:
        return self.storage.describe(self.layout.base)


@contextlib.contextmanager
def open_database(options: Options, *, writes: bool = False) -> Iterator[StoredDatabase]:
    """Only a command that `writes` a new database may create a missing local storage
    directory; the others refuse it (a typo in --storage must leave nothing behind)."""
    with open_storage(options.storage, **options.storage_kwargs(),
                      create_root=writes) as storage:
        yield StoredDatabase(options, storage, Layout(options.base_key))


def build_options(args: argparse.Namespace, database_name: Optional[str] = None) -> Options:
    """The library's Options from flags, then PEEWEE_S3_* variables; validated there.
    `database_name`, if given, is used whatever the flags and variables say."""
    given = {name: getattr(args, name, None) or os.environ.get(variable) or None
             for name, variable in ENV.items()}
    given["database_name"] = database_name or given["database_name"]
    if not given["storage"]:
        raise ConfigurationError(f"no storage given: pass --storage URL (s3://bucket, "
                                 f"file:///dir, ...) or set {ENV['storage']}")
    if not given["database_name"]:
        raise ConfigurationError(f"no database name given: pass --database-name NAME or set "
                                 f"{ENV['database_name']}")
    key_id, secret = getattr(args, "access_key_id", None), getattr(args, "secret_access_key", None)
    if bool(key_id) != bool(secret):
        raise ConfigurationError("give both --access-key-id and --secret-access-key, or neither "
                                 "(to use the AWS chain: AWS_ACCESS_KEY_ID, ~/.aws, ...)")
    return Options(
        **given, region=getattr(args, "region", None), force_path_style=args.force_path_style,
        credentials={"access_key_id": key_id, "secret_access_key": secret} if key_id else None,
        storage_options=_storage_options(getattr(args, "storage_option", None) or []),
        encryption_keys=_encryption_key_variables(args), verbose=args.verbose)


def _encryption_key_variables(args: argparse.Namespace) -> Optional[list]:
    """The names of the variables holding the keys (Options reads them): those given with
    --encryption-key-env, newest first, else PEEWEE_S3_ENCRYPTION_KEY if it is set."""
    names = getattr(args, "encryption_key_env", None)
    if names:
        return list(names)
    return [ENCRYPTION_KEY_ENV] if os.environ.get(ENCRYPTION_KEY_ENV) else None


def _storage_options(pairs: list) -> Optional[dict]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--storage-option {key!r}… must be KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options or None


def secret_values(args: argparse.Namespace) -> list:
    """The secrets given on the command line, to blank out of anything printed."""
    values = [getattr(args, "secret_access_key", None)]
    names = getattr(args, "encryption_key_env", None) or [ENCRYPTION_KEY_ENV]
    values += [text for text in (os.environ.get(name, "").strip() for name in names)
               if len(text) >= 8]  # shorter: no key, and blanking it would garble the line
    for pair in getattr(args, "storage_option", None) or []:
        key, _, value = pair.partition("=")
        if key.lower() in _SECRET_OPTIONS:
            values.append(value)
    return [v for v in values if v]
