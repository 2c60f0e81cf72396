"""cli.many: `restore` and `generations` on many databases at once (`--all`, `--match GLOB`) —
a database per tenant keeps one database_name per tenant under one storage and key prefix.

It finds the databases by listing the storage, then runs the one-database command on each;
one database's failure is reported and the others go on. It only reads the storage.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import os
import sqlite3
from dataclasses import replace

from ..errors import ConfigurationError, NothingToRestoreError, PeeweeS3Error
from ..layout import Layout
from .generations import cmd_generations
from .options import StoredDatabase
from .output import say_error

LISTED_NAME = "listing"  # the database name of the options that open the storage for the listing


def wants_many(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "all", False) or getattr(args, "match", None))


def database_names(db: StoredDatabase, pattern: str = "*") -> list:
    """The names of the databases stored under the key prefix whose name matches `pattern`
    (a glob): those with a lease or a complete generation. Lists every key under the prefix."""
    prefix = f"{db.options.key_prefix.strip('/')}/" if db.options.key_prefix else ""
    names = set()
    for info in db.storage.list(prefix):
        name, _, rest = info.key[len(prefix):].partition("/")
        parts = rest.split("/")
        if rest == "lock.json" or (len(parts) == 3 and parts[0] == "generations"
                                   and parts[2] == "snapshot.meta.json"):
            names.add(name)
    return sorted(name for name in names if fnmatch.fnmatchcase(name, pattern))


def check_flags(args: argparse.Namespace) -> None:
    """What cannot apply to many databases at once."""
    if getattr(args, "database_name", None):
        raise ConfigurationError("--all and --match choose the databases by name: drop "
                                 "--database-name")
    if getattr(args, "generation", None):
        raise ConfigurationError("--generation names one database's generation: restore that "
                                 "database alone (--database-name), or use --timestamp")


def cmd_many(args: argparse.Namespace, db: StoredDatabase, hidden: list) -> int:
    """Run args.run on every database the pattern selects; 1 if any failed."""
    names = database_names(db, args.match or "*")
    if not names:
        raise NothingToRestoreError(
            f"{db.storage.describe(db.options.key_prefix or '')} holds no database"
            f"{'' if args.all else f' named like {args.match!r}'}: check --storage and "
            "--key-prefix")
    if args.run is cmd_generations and args.json:
        return _generations_as_json(args, db, names)
    if args.run is not cmd_generations:
        _make_directory(args.output)
    failed = 0
    for name in names:
        one = _one(db, name)
        if args.run is cmd_generations:
            print(f"== {name}")
        try:
            args.run(_args_for(args, name), one)
        except (PeeweeS3Error, OSError, sqlite3.Error) as exc:
            failed += 1
            say_error(f"{name}: {exc}", hidden)
    if failed:
        say_error(f"{failed} of {len(names)} databases failed (see above)", hidden)
    return 1 if failed else 0


def _one(db: StoredDatabase, name: str) -> StoredDatabase:
    options = replace(db.options, database_name=name)
    return StoredDatabase(options, db.storage, Layout(options.base_key))


def _args_for(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """The one-database command's arguments: restore writes OUT/<name>.db."""
    if args.run is cmd_generations:
        return args
    return argparse.Namespace(**{**vars(args), "output": os.path.join(args.output, f"{name}.db")})


def _make_directory(directory: str) -> None:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigurationError(
            f"{directory} is a file: with --all or --match, -o names a directory that gets "
            "one NAME.db per database")
    os.makedirs(directory, exist_ok=True)


def _generations_as_json(args: argparse.Namespace, db: StoredDatabase, names: list) -> int:
    """One JSON object: database name -> its rows (or {"error": message})."""
    result = {}
    for name in names:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                cmd_generations(args, _one(db, name))
            result[name] = json.loads(out.getvalue())
        except (PeeweeS3Error, OSError, sqlite3.Error) as exc:
            result[name] = {"error": str(exc)}
    print(json.dumps(result, indent=1))
    return 1 if any(isinstance(rows, dict) for rows in result.values()) else 0
