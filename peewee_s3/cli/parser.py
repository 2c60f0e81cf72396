"""cli.parser: the command line of `peewee-s3`, its commands, flags and help texts.

It maps each command to the function that runs it (`args.run`) and checks the shape of flag
values; what they mean is checked where they are used.
"""
from __future__ import annotations

import argparse
from typing import Callable, Optional

from .. import __version__
from ..retention import ABANDONED_AFTER, KEEP_GENERATIONS, MAX_AGE
from .generations import cmd_generations
from .lease import cmd_lease_release
from .options import ENCRYPTION_KEY_ENV, ENV
from .output import PROG
from .prune import cmd_prune
from .restore import cmd_restore
from .snapshot import LOCK_TTL, cmd_snapshot
from .status import cmd_status
from .verify import cmd_verify

EPILOG = f"""\
The storage options may also come from the environment: {', '.join(ENV.values())}.
S3 credentials come from --access-key-id/--secret-access-key, or else from the AWS chain
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, ~/.aws, instance roles).
An encrypted database's key comes from {ENCRYPTION_KEY_ENV} (base64), or from the variables
that --encryption-key-env names: never from a flag's value, which shell history would keep.
Times are printed in UTC. Exit status: 0 done, 1 failed (one line on stderr), 2 bad usage,
130 interrupted, 141 stdout closed early (as in `peewee-s3 generations --json | head`).

example:
  export PEEWEE_S3_STORAGE=s3://my-bucket PEEWEE_S3_DATABASE_NAME=orders
  {PROG} status
  {PROG} generations
  {PROG} restore -o orders.db --timestamp 2026-11-25T14:02:00Z
  {PROG} restore --match 'tenant-*' -o restored/    (a database per tenant: restored/NAME.db)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Restore, inspect, verify and clean up a database that peewee-s3 replicates\n"
                    "to object storage. Run '%(prog)s COMMAND --help' for each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_storage_options(parser, suppress=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_restore(commands)
    _add_generations(commands)
    _add_status(commands)
    _add_verify(commands)
    _add_snapshot(commands)
    _add_lease(commands)
    _add_prune(commands)
    return parser


def _command(commands, name: str, run: Callable, summary: str, description: str
             ) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=summary, description=f"{summary}. {description}")
    sub.set_defaults(run=run)
    _add_storage_options(sub, suppress=True)
    return sub


def _add_restore(commands) -> None:
    restore = _command(
        commands, "restore", cmd_restore, "Rebuild the database from the storage into a local file",
        "Restores the latest state, the newest state at or before --timestamp, or one "
        "--generation. Every checksum is verified and PRAGMA integrity_check must pass before "
        "the file is put in place. Takes no lease and writes nothing to the storage.")
    restore.add_argument("-o", "--output", required=True, metavar="OUT",
                         help="the database file to write (with --all or --match: a "
                              "directory, which gets one NAME.db per database)")
    _add_many(restore, "restore")
    which = restore.add_mutually_exclusive_group()
    which.add_argument("--timestamp", metavar="T",
                       help="restore the newest state committed at or before T (ISO-8601, "
                            "e.g. 2026-11-25T14:02:00Z; without a zone, UTC)")
    which.add_argument("--generation", metavar="G",
                       help="restore generation G through its last segment (see 'generations')")
    existing = restore.add_mutually_exclusive_group()
    existing.add_argument("--if-not-exists", action="store_true",
                          help="if OUT exists, do nothing and exit 0")
    existing.add_argument("--force", action="store_true",
                          help="if OUT exists, move it aside to OUT.before-restore-<time> "
                               "(with its -wal, -shm and sidecar) and restore; without --force "
                               "an existing OUT is refused")


def _add_generations(commands) -> None:
    generations = _command(
        commands, "generations", cmd_generations, "List the generations in the storage",
        "One row per generation: id, when it was created, snapshot size, number of segments, "
        "first and last commit time (from the first and last segment), whether it is complete "
        "(has snapshot.meta.json; only complete ones are restored) and whether it is current "
        "(the one a restore of the latest state reads).")
    generations.add_argument("--json", action="store_true", help="print JSON instead of a table "
                             "(with --all or --match: one object, database name -> rows)")
    _add_many(generations, "list the generations of")


def _add_many(command: argparse.ArgumentParser, what: str) -> None:
    """--all / --match: a database per tenant keeps many database names in one storage."""
    many = command.add_mutually_exclusive_group()
    many.add_argument("--all", action="store_true",
                      help=f"{what} every database stored under --key-prefix (found by "
                           "listing the storage), instead of --database-name")
    many.add_argument("--match", metavar="GLOB",
                      help=f"{what} every database whose name matches GLOB (e.g. 'tenant-*'; "
                           "quote it from the shell)")


def _add_status(commands) -> None:
    status = _command(
        commands, "status", cmd_status, "Show the lease and how far replication has got",
        "Read from the storage alone: who holds the lease (holder, host, pid, epoch) and for "
        "how long, the current generation, and the last segment shipped and how long ago.")
    status.add_argument("--json", action="store_true", help="print JSON")


def _add_verify(commands) -> None:
    verify = _command(
        commands, "verify", cmd_verify, "Check that the storage restores to a sound database",
        "Restores into a temporary file (in $TMPDIR): checks the snapshot's size and sha256, "
        "every segment's sha256 and chain, and PRAGMA integrity_check, prints what it checked "
        "and exits 1 on any fault.")
    which = verify.add_mutually_exclusive_group()
    which.add_argument("--timestamp", metavar="T",
                       help="verify the state at T instead of the latest (ISO-8601, UTC if no "
                            "zone)")
    which.add_argument("--generation", metavar="G", help="verify generation G")


def _add_snapshot(commands) -> None:
    snapshot = _command(
        commands, "snapshot", cmd_snapshot, "Upload a local database file as a new generation",
        "A running writer takes snapshots by itself (once its segments outweigh the last one, "
        "or after snapshot_interval; db.snapshot() takes one now): this command asks nothing "
        "of it. With --local FILE it takes the "
        "lease, which fails while a writer holds it, copies FILE with SQLite's backup API, "
        "uploads the copy as a new generation, makes it current and releases the lease; the "
        "next writer restores it. Without --local it explains this and exits 1.")
    snapshot.add_argument("--local", metavar="FILE",
                          help="the SQLite database file to upload (only read)")
    snapshot.add_argument("--lock-ttl", type=_seconds, default=LOCK_TTL, metavar="SECONDS",
                          help=f"lease time to live, renewed during the upload "
                               f"(default {LOCK_TTL:.0f})")


def _add_lease(commands) -> None:
    lease = commands.add_parser(
        "lease", help="Manage the writer's lease (lock.json)",
        description="Manage the writer's lease (lock.json).")
    lease_commands = lease.add_subparsers(title="lease commands", metavar="ACTION",
                                          required=True)
    release = lease_commands.add_parser(
        "release", help="End a stale lease so that a new writer can start",
        description="End a stale lease (of a writer that crashed), printing who held it. A "
                    "live lease is refused unless --force; forcing fences that writer: its "
                    "next upload fails with LeaseLostError. The lease is ended with a new "
                    "epoch, never deleted, so the next writer starts a new generation from "
                    "the current one.")
    release.set_defaults(run=cmd_lease_release)
    _add_storage_options(release, suppress=True)
    release.add_argument("--force", action="store_true",
                         help="end the lease even if it is live (the writer holding it is "
                              "fenced)")


def _add_prune(commands) -> None:
    prune = _command(
        commands, "prune", cmd_prune, "Delete old generations by the retention policy",
        "Deletes whole generations only, each one's snapshot.meta.json first. A complete "
        "generation goes when it is not among the newest --keep-generations, the generation "
        "after it was created more than --max-age seconds ago (so every state of the last "
        "--max-age seconds stays restorable), and every older one goes too. An incomplete "
        f"generation (an abandoned upload) goes once it is {ABANDONED_AFTER:.0f} s old. The "
        "current generation and the newest complete one are never deleted.")
    prune.add_argument("--dry-run", action="store_true",
                       help="list what would be deleted, delete nothing")
    prune.add_argument("--keep-generations", type=_positive_int, default=KEEP_GENERATIONS,
                       metavar="N", help=f"keep at least N complete generations "
                                         f"(default {KEEP_GENERATIONS})")
    prune.add_argument("--max-age", type=_max_age, default=MAX_AGE, metavar="SECONDS",
                       help=f"keep every state younger than this (default {MAX_AGE:.0f}, one "
                            "day); 'none' keeps every complete generation")


def _add_storage_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The library's storage options; given after the command they win over those before it."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    flag = {"default": argparse.SUPPRESS} if suppress else {"default": False}
    group = parser.add_argument_group("storage options")
    group.add_argument("--storage", metavar="URL", **default,
                       help=f"fsspec URL of the storage: s3://bucket[/path], file:///dir, ... "
                            f"(env {ENV['storage']})")
    group.add_argument("--database-name", metavar="NAME", **default,
                       help=f"the database's name in that storage (env {ENV['database_name']})")
    group.add_argument("--key-prefix", metavar="PREFIX", **default,
                       help=f"prefix of the database's keys (env {ENV['key_prefix']})")
    group.add_argument("--endpoint-url", metavar="URL", **default,
                       help=f"S3-compatible endpoint, e.g. http://127.0.0.1:9000 "
                            f"(env {ENV['endpoint_url']})")
    group.add_argument("--region", metavar="REGION", **default,
                       help="S3 region (default: the AWS chain's)")
    group.add_argument("--force-path-style", action="store_true", **flag,
                       help="address S3 buckets by path (most S3-compatible servers)")
    group.add_argument("--access-key-id", metavar="ID", **default,
                       help="S3 access key id (default: the AWS chain)")
    group.add_argument("--secret-access-key", metavar="SECRET", **default,
                       help="S3 secret key (prefer AWS_SECRET_ACCESS_KEY: a flag is visible to "
                            "other users of this machine)")
    group.add_argument("--encryption-key-env", action="append", metavar="NAME", **default,
                       help=f"the environment variable holding the database's encryption key "
                            f"(base64 of 32 bytes; default {ENCRYPTION_KEY_ENV} if it is set); "
                            f"repeat for older keys after the newest, which encrypts")
    group.add_argument("--storage-option", action="append", metavar="KEY=VALUE", **default,
                       help="passed to fsspec as-is; VALUE is read as JSON if it parses, "
                            "repeatable")
    group.add_argument("-v", "--verbose", action="store_true", **flag,
                       help="print the peewee_s3 logs (INFO) on stderr, and tracebacks of "
                            "unexpected errors")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
    return int(text)


def _max_age(text: str) -> Optional[float]:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be seconds (0 or more) or 'none'")
    return value
