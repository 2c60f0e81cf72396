"""cli: the `peewee-s3` command — restore, inspect, verify, snapshot, release and prune.

It builds the library's `Options` from flags and PEEWEE_S3_* variables and calls restore,
retention, lease and snapshots: no replication logic lives here. Expected errors print one line
on stderr and exit 1; no secret is ever printed. Progress bars appear on a terminal only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pathlib
import secrets
import socket
import sqlite3
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from tqdm import tqdm

from . import __version__
from .config import Options
from .errors import (ConfigurationError, LeaseHeldError, LocalStateError, NothingToRestoreError,
                     ObjectNotFoundError, PeeweeS3Error, PreconditionFailedError,
                     ReplicaCorruptError)
from .layout import Layout, new_generation_id
from .lease import Lease, LeaseRecord, read_lease
from .restore import (RestoredState, current_generation, move_aside, parse_time,
                      remove_database_files, restore_to,
                      segment_seqs)
from .retention import (ABANDONED_AFTER, KEEP_GENERATIONS, MAX_AGE, StoredGeneration, prune,
                        stored_generations)
from .segments import Segment
from .snapshots import copy_database, read_meta, upload_snapshot
from .storage import Storage, open_storage

log = logging.getLogger("peewee_s3")

PROG = "peewee-s3"
ENV = {"storage": "PEEWEE_S3_STORAGE", "database_name": "PEEWEE_S3_DATABASE_NAME",
       "key_prefix": "PEEWEE_S3_KEY_PREFIX", "endpoint_url": "PEEWEE_S3_ENDPOINT_URL"}
LOCK_TTL = 60.0
_SECRET_OPTIONS = ("key", "secret", "token", "password", "secret_access_key", "session_token")

EPILOG = f"""\
The storage options may also come from the environment: {', '.join(ENV.values())}.
S3 credentials come from --access-key-id/--secret-access-key, or else from the AWS chain
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, ~/.aws, instance roles).
Times are printed in UTC. Exit status: 0 done, 1 failed (one line on stderr), 2 bad usage.

example:
  export PEEWEE_S3_STORAGE=s3://my-bucket PEEWEE_S3_DATABASE_NAME=orders
  {PROG} status
  {PROG} generations
  {PROG} restore -o orders.db --timestamp 2026-11-25T14:02:00Z
"""


# -- the command line --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Restore, inspect, verify and clean up a database that peewee-s3 replicates\n"
                    "to object storage. Run '%(prog)s COMMAND --help' for each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_storage_options(parser, suppress=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run: Callable, summary: str, description: str):
        sub = commands.add_parser(name, help=summary, description=f"{summary}. {description}")
        sub.set_defaults(run=run)
        _add_storage_options(sub, suppress=True)
        return sub

    restore = command(
        "restore", cmd_restore, "Rebuild the database from the storage into a local file",
        "Restores the latest state, the newest state at or before --timestamp, or one "
        "--generation. Every checksum is verified and PRAGMA integrity_check must pass before "
        "the file is put in place. Takes no lease and writes nothing to the storage.")
    restore.add_argument("-o", "--output", required=True, metavar="OUT",
                         help="the database file to write")
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

    generations = command(
        "generations", cmd_generations, "List the generations in the storage",
        "One row per generation: id, when it was created, snapshot size, number of segments, "
        "first and last commit time (from the first and last segment), whether it is complete "
        "(has snapshot.meta.json; only complete ones are restored) and whether it is current "
        "(the one a restore of the latest state reads).")
    generations.add_argument("--json", action="store_true", help="print JSON instead of a table")

    status = command(
        "status", cmd_status, "Show the lease and how far replication has got",
        "Read from the storage alone: who holds the lease (holder, host, pid, epoch) and for "
        "how long, the current generation, and the last segment shipped and how long ago.")
    status.add_argument("--json", action="store_true", help="print JSON")

    verify = command(
        "verify", cmd_verify, "Check that the storage restores to a sound database",
        "Restores into a temporary file (in $TMPDIR): checks the snapshot's size and sha256, "
        "every segment's sha256 and chain, and PRAGMA integrity_check, prints what it checked "
        "and exits 1 on any fault.")
    which = verify.add_mutually_exclusive_group()
    which.add_argument("--timestamp", metavar="T",
                       help="verify the state at T instead of the latest (ISO-8601, UTC if no "
                            "zone)")
    which.add_argument("--generation", metavar="G", help="verify generation G")

    snapshot = command(
        "snapshot", cmd_snapshot, "Upload a local database file as a new generation",
        "A running writer takes snapshots by itself (every snapshot_interval; db.snapshot() "
        "takes one now): this command asks nothing of it. With --local FILE it takes the "
        "lease, which fails while a writer holds it, copies FILE with SQLite's backup API, "
        "uploads the copy as a new generation, makes it current and releases the lease; the "
        "next writer restores it. Without --local it explains this and exits 1.")
    snapshot.add_argument("--local", metavar="FILE",
                          help="the SQLite database file to upload (only read)")
    snapshot.add_argument("--lock-ttl", type=_seconds, default=LOCK_TTL, metavar="SECONDS",
                          help=f"lease time to live, renewed during the upload "
                               f"(default {LOCK_TTL:.0f})")

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

    prune_ = command(
        "prune", cmd_prune, "Delete old generations by the retention policy",
        "Deletes whole generations only, each one's snapshot.meta.json first. A complete "
        "generation goes when it is not among the newest --keep-generations, the generation "
        "after it was created more than --max-age seconds ago (so every state of the last "
        "--max-age seconds stays restorable), and every older one goes too. An incomplete "
        f"generation (an abandoned upload) goes once it is {ABANDONED_AFTER:.0f} s old. The "
        "current generation and the newest complete one are never deleted.")
    prune_.add_argument("--dry-run", action="store_true",
                        help="list what would be deleted, delete nothing")
    prune_.add_argument("--keep-generations", type=_positive_int, default=KEEP_GENERATIONS,
                        metavar="N", help=f"keep at least N complete generations "
                                          f"(default {KEEP_GENERATIONS})")
    prune_.add_argument("--max-age", type=_max_age, default=MAX_AGE, metavar="SECONDS",
                        help=f"keep every state younger than this (default {MAX_AGE:.0f}, one "
                             "day); 'none' keeps every complete generation")
    return parser


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


# -- running a command -------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredDatabase:
    """The database the command works on: its options, opened storage and key layout."""

    options: Options
    storage: Storage
    layout: Layout

    def describe(self) -> str:
        return f"{self.storage.describe()}/{self.layout.base}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr(args.verbose)
    hidden = _secret_values(args)
    if args.run is cmd_snapshot and not args.local:
        return explain_snapshot()
    try:
        options = build_options(args)
        with open_storage(options.storage, **options.storage_kwargs()) as storage:
            return args.run(args, StoredDatabase(options, storage, Layout(options.base_key)))
    except KeyboardInterrupt:
        _say_error("interrupted", hidden)
        return 130
    except (PeeweeS3Error, OSError, sqlite3.Error) as exc:
        _say_error(str(exc) or type(exc).__name__, hidden)
        return 1
    except Exception as exc:  # a bug: say so in one line; --verbose shows where
        if args.verbose:
            print(_redact(traceback.format_exc(), hidden), file=sys.stderr, end="")
        _say_error(f"unexpected {type(exc).__name__}: {exc} (this is a bug in peewee-s3"
                   f"{'' if args.verbose else '; run with --verbose for the traceback'})",
                   hidden)
        return 1


def build_options(args: argparse.Namespace) -> Options:
    """The library's Options from flags, then PEEWEE_S3_* variables; validated there."""
    given = {name: getattr(args, name, None) or os.environ.get(variable) or None
             for name, variable in ENV.items()}
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
        verbose=args.verbose)


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


def _secret_values(args: argparse.Namespace) -> list:
    values = [getattr(args, "secret_access_key", None)]
    for pair in getattr(args, "storage_option", None) or []:
        key, _, value = pair.partition("=")
        if key.lower() in _SECRET_OPTIONS:
            values.append(value)
    return [v for v in values if v]


def _redact(text: str, hidden: list) -> str:
    for value in hidden:
        text = text.replace(value, "***")
    return text


def _say_error(message: str, hidden: list) -> None:
    line = " ".join(_redact(message, hidden).split())
    print(f"{PROG}: error: {line}", file=sys.stderr)


def _log_to_stderr(verbose: bool) -> None:
    for old in [h for h in log.handlers if getattr(h, "peewee_s3_cli", False)]:
        log.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    handler.peewee_s3_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False


# -- progress ----------------------------------------------------------------------------------

def progress_bar(total: Optional[int], description: str) -> tqdm:
    """Bytes, rate and ETA on stderr when it is a terminal; silent otherwise."""
    return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=not sys.stderr.isatty(), leave=False,
                dynamic_ncols=True)


class _ShowingDownloads:
    """A Storage whose snapshot downloads draw a progress bar: `restore_to` takes no callback,
    so this wraps the storage it is given. Everything else passes straight through."""

    def __init__(self, storage: Storage, layout: Layout) -> None:
        self._storage, self._layout = storage, layout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def download(self, key: str, fileobj, *, progress=None) -> int:
        total = None
        generation = self._layout.generation_of(key)
        if sys.stderr.isatty() and generation and key == self._layout.snapshot(generation):
            total = read_meta(self._storage, self._layout, generation).size
        with progress_bar(total, key.rsplit("/", 1)[-1]) as bar:
            def report(nbytes: int) -> None:
                bar.update(nbytes)
                if progress:
                    progress(nbytes)
            return self._storage.download(key, fileobj, progress=report)


# -- restore -----------------------------------------------------------------------------------

def cmd_restore(args: argparse.Namespace, db: StoredDatabase) -> int:
    out = args.output
    exists = os.path.exists(out) and os.path.getsize(out) > 0
    if exists and args.if_not_exists:
        print(f"{out} exists: nothing restored (--if-not-exists)")
        return 0
    if exists and not args.force:
        raise LocalStateError(f"{out} exists: restore refuses to overwrite it. Pass --force to "
                              "move it aside and restore, or choose another -o")
    at = parse_time(args.timestamp) if args.timestamp else None
    _check_generation(db, args.generation)
    staging = out + ".restoring"
    remove_database_files(staging)
    state = restore_to(_ShowingDownloads(db.storage, db.layout), db.layout,
                       staging, at=at, generation=args.generation)
    try:
        aside = move_aside(out) if os.path.exists(out) else None
        os.rename(staging, out)
    except BaseException:
        remove_database_files(staging)
        raise
    _fsync_directory(out)
    print(f"restored {db.describe()} to {out}: {_describe_state(state)}")
    if aside:
        print(f"kept the previous {out} as {aside}")
    return 0


def _check_generation(db: StoredDatabase, generation: Optional[str]) -> None:
    if generation and not db.storage.exists(db.layout.snapshot_meta(generation)):
        raise NothingToRestoreError(
            f"{db.describe()} holds no complete generation {generation!r}: list the "
            f"generations with '{PROG} generations'")


def _describe_state(state: RestoredState) -> str:
    last = f", last commit {_when(state.last_commit_time)}" if state.last_commit_time else ""
    through = f"segments 1-{state.seq}" if state.seq else "no segment"
    return (f"generation {state.generation}, snapshot and {through} "
            f"({_count(state.commits, 'commit')}{last})")


def _fsync_directory(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- generations and status --------------------------------------------------------------------

def cmd_generations(args: argparse.Namespace, db: StoredDatabase) -> int:
    stored = stored_generations(db.storage, db.layout)
    if not stored:
        raise NothingToRestoreError(_nothing_stored(db))
    current = _current_id(db)
    rows = [_generation_row(db, g, current) for g in stored]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    _print_table(["GENERATION", "CREATED", "SNAPSHOT", "SEGMENTS", "FIRST COMMIT",
                  "LAST COMMIT", "COMPLETE", "CURRENT"],
                 [[r["generation"], _when(r["created_at"]),
                   _size(r["snapshot_size"]) if r["snapshot_size"] is not None else "-",
                   str(r["segments"]) + (" (gap)" if r["gap"] else ""),
                   _when(r["first_commit"]), _when(r["last_commit"]),
                   "yes" if r["complete"] else ("META UNREADABLE" if r["problem"] else "no"),
                   "*" if r["current"] else ""] for r in rows])
    return 0


def _generation_row(db: StoredDatabase, generation: StoredGeneration, current: Optional[str]
                    ) -> dict:
    seqs = generation.segment_seqs
    first = last = None
    problem = generation.problem
    if seqs:
        try:
            first = _read_segment(db, generation.id, seqs[0]).first_time
            last = _read_segment(db, generation.id, seqs[-1]).last_time
        except (ReplicaCorruptError, ObjectNotFoundError) as exc:
            problem = str(exc)
    snapshot_key = db.layout.snapshot(generation.id)
    snapshot_size = (generation.meta.size if generation.meta else
                     next((o.size for o in generation.objects if o.key == snapshot_key), None))
    return {"generation": generation.id, "created_at": generation.created_at,
            "snapshot_size": snapshot_size, "segments": len(seqs),
            "gap": seqs != list(range(1, len(seqs) + 1)), "first_commit": first,
            "last_commit": last, "complete": generation.complete,
            "current": generation.id == current, "size": generation.size, "problem": problem}


def _read_segment(db: StoredDatabase, generation: str, seq: int) -> Segment:
    key = db.layout.segment(generation, seq)
    return Segment.decode(db.storage.read(key), key)


def _current_id(db: StoredDatabase) -> Optional[str]:
    """The generation a restore of the latest state reads, or None if nothing is complete."""
    try:
        return current_generation(db.storage, db.layout).generation
    except (NothingToRestoreError, ObjectNotFoundError, ReplicaCorruptError):
        return None  # `generations` shows what is wrong


def cmd_status(args: argparse.Namespace, db: StoredDatabase) -> int:
    now = time.time()
    lease = read_lease(db.storage, db.layout.lock)
    stored = stored_generations(db.storage, db.layout)
    complete = [g for g in stored if g.complete]
    current = _current_id(db)
    last_segment = None
    if current:
        seqs = segment_seqs(db.storage, db.layout, current)
        if seqs:
            segment = _read_segment(db, current, seqs[-1])
            last_segment = {"generation": current, "seq": seqs[-1],
                            "commits": len(segment.commits), "last_commit": segment.last_time,
                            "seconds_ago": now - segment.last_time}
    current_meta = next((g.meta for g in complete if g.id == current), None)
    status = {
        "database": db.describe(),
        "lease": _lease_status(lease, now),
        "current_generation": current,
        "current_generation_created_at": current_meta.created_at if current_meta else None,
        "complete_generations": len(complete),
        "incomplete_generations": len(stored) - len(complete),
        "oldest_state": complete[0].created_at if complete else None,
        "last_segment": last_segment,
    }
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print(f"database:     {status['database']}")
    print(f"lease:        {_describe_lease(status['lease'])}")
    if not current:
        print("generation:   none complete: nothing to restore yet")
        return 0
    extra = (f", {status['incomplete_generations']} incomplete"
             if status["incomplete_generations"] else "")
    print(f"generation:   {current} (created {_when(status['current_generation_created_at'])}; "
          f"{len(complete)} complete{extra}, oldest state {_when(status['oldest_state'])})")
    if last_segment:
        print(f"last shipped: segment {last_segment['seq']} "
              f"({_count(last_segment['commits'], 'commit')}), "
              f"last commit {_when(last_segment['last_commit'])} "
              f"({_duration(last_segment['seconds_ago'])} ago)")
    else:
        created = status["current_generation_created_at"]
        print(f"last shipped: the snapshot only, no segment yet "
              f"({_duration(now - created)} ago)")
    return 0


def _lease_status(lease: Optional[LeaseRecord], now: float) -> Optional[dict]:
    if lease is None:
        return None
    state = "released" if lease.released else ("live" if lease.is_live(now) else "expired")
    return {"state": state, "holder": lease.describe(), "holder_id": lease.holder_id,
            "host": lease.host, "pid": lease.pid, "epoch": lease.epoch,
            "generation": lease.generation, "acquired_at": lease.acquired_at,
            "expires_at": lease.expires_at, "expires_in": lease.expires_at - now}


def _describe_lease(lease: Optional[dict]) -> str:
    if lease is None:
        return "none (no writer has run here)"
    if lease["state"] == "live":
        return f"held by {lease['holder']}, expires in {_duration(lease['expires_in'])}"
    if lease["state"] == "released":
        return (f"released by {lease['holder']} {_duration(-lease['expires_in'])} ago "
                "(no writer)")
    return (f"EXPIRED {_duration(-lease['expires_in'])} ago, held by {lease['holder']} (the "
            f"writer stopped without releasing it; the next one takes it over)")


# -- verify ------------------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace, db: StoredDatabase) -> int:
    at = parse_time(args.timestamp) if args.timestamp else None
    _check_generation(db, args.generation)
    with tempfile.TemporaryDirectory(prefix="peewee-s3-verify-") as directory:
        target = os.path.join(directory, "verify.db")
        try:
            state = restore_to(_ShowingDownloads(db.storage, db.layout),
                               db.layout, target, at=at, generation=args.generation)
        except (ReplicaCorruptError, ObjectNotFoundError) as exc:
            raise ReplicaCorruptError(f"verify FAILED for {db.describe()}: {exc}") from None
        meta = read_meta(db.storage, db.layout, state.generation)
        stored = segment_seqs(db.storage, db.layout, state.generation)
        conn = sqlite3.connect(f"{pathlib.Path(target).as_uri()}?mode=ro", uri=True)
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'"
                                  ).fetchone()[0]
        finally:
            conn.close()
    what = f"the state at {_when(at)}" if at is not None else (
        f"generation {args.generation}" if args.generation else "the latest state")
    print(f"verified {what} of {db.describe()}:")
    print(f"  generation  {state.generation}")
    print(f"  snapshot    {_size(meta.size)}, size and sha256 match its meta "
          f"({meta.sha256[:16]}…)")
    if state.seq:
        print(f"  segments    1-{state.seq} of {len(stored)} stored: each one's sha256, "
              f"generation and sequence number checked; {_count(state.commits, 'commit')} "
              f"applied, "
              f"the last at {_when(state.last_commit_time)}")
    else:
        print(f"  segments    none applied ({len(stored)} stored)")
    print(f"  database    PRAGMA integrity_check: ok ({pages} pages of {meta.page_size} bytes, "
          f"{_count(tables, 'table')})")
    print("OK")
    return 0


# -- snapshot ----------------------------------------------------------------------------------

def explain_snapshot() -> int:
    print(f"{PROG}: nothing done: a running writer takes a snapshot by itself every "
          "snapshot_interval, and db.snapshot() in the writer takes one now. To upload a "
          f"database file as a new generation, stop the writer and run '{PROG} snapshot "
          "--local FILE'", file=sys.stderr)
    return 1


def cmd_snapshot(args: argparse.Namespace, db: StoredDatabase) -> int:
    path = args.local
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise LocalStateError(f"{path} is not a database file (missing or empty): nothing to "
                              "upload")
    with tempfile.TemporaryDirectory(prefix="peewee-s3-snapshot-") as directory:
        copy = os.path.join(directory, "snapshot.db")
        page_size = _copy_database_file(path, copy)
        lease = Lease(db.storage, db.layout.lock, args.lock_ttl)
        lease.acquire()
        try:
            generation = new_generation_id()
            with progress_bar(os.path.getsize(copy), "snapshot.db") as bar:
                keeper = _LeaseKeeper(lease, bar.update)
                meta = upload_snapshot(db.storage, db.layout, generation, copy,
                                       epoch=lease.epoch, page_size=page_size, parent=None,
                                       progress=keeper)
            lease.renew(generation=generation)
        except BaseException:
            # After a takeover, the previous holder may be alive and uploading into the current
            # generation: a clean release would tell the next writer to carry on in it, so
            # ours is left to expire. (A lost lease cannot be released: say why it failed.)
            if lease.previous is None or lease.previous.released:
                with contextlib.suppress(PeeweeS3Error):
                    lease.release()
            raise
        lease.release()
    print(f"uploaded {path} to {db.describe()} as generation {generation} "
          f"({_size(meta.size)}), now the current one; the next writer restores it")
    return 0


def _copy_database_file(path: str, copy: str) -> int:
    """Copy a database file (read-only) with SQLite's backup API, in WAL mode like a writer's
    snapshots, and check it; returns the page size."""
    source = sqlite3.connect(f"{pathlib.Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        page_size = copy_database(source, copy)
    except sqlite3.DatabaseError as exc:
        raise LocalStateError(f"{path} cannot be read as an SQLite database ({exc})") from None
    finally:
        source.close()
    conn = sqlite3.connect(copy)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    if result != ["ok"]:
        raise LocalStateError(f"{path} fails PRAGMA integrity_check ({'; '.join(result[:3])}): "
                              "not uploaded")
    return page_size


class _LeaseKeeper:
    """An upload's progress callback that also renews the lease every ttl / 3 seconds."""

    def __init__(self, lease: Lease, progress: Callable[[int], object]) -> None:
        self._lease, self._progress = lease, progress
        self._renewed = time.monotonic()

    def __call__(self, nbytes: int) -> None:
        self._progress(nbytes)
        if time.monotonic() - self._renewed >= self._lease.ttl / 3:
            self._lease.renew()
            self._renewed = time.monotonic()


# -- lease release -----------------------------------------------------------------------------

def cmd_lease_release(args: argparse.Namespace, db: StoredDatabase) -> int:
    key, storage, now = db.layout.lock, db.storage, time.time()
    try:
        data, tag = storage.read_tagged(key)
    except ObjectNotFoundError:
        print(f"no lease on {db.describe()}: nothing to release")
        return 0
    held = LeaseRecord.from_bytes(data, key)
    if held.released:
        print(f"the lease on {db.describe()} is already released (last held by "
              f"{held.describe()})")
        return 0
    live = held.is_live(now)
    if live and not args.force:
        raise LeaseHeldError(
            f"the lease on {db.describe()} is live: held by {held.describe()} for "
            f"{_duration(held.expires_at - now)} more. Stop that writer (its shutdown() "
            "releases the lease) or wait for it to expire; --force ends it anyway and fences "
            "that writer")
    # A new holder id and epoch that expires at once: the old holder is fenced at its next
    # check, and the next writer takes over (not a clean handover: it starts a new generation,
    # since the old holder might still be uploading into the current one).
    ended = LeaseRecord(secrets.token_hex(8), socket.gethostname(), os.getpid(), held.epoch + 1,
                        held.generation, now, now)
    try:
        storage.replace(key, ended.to_bytes(), tag)
    except (PreconditionFailedError, ObjectNotFoundError):
        raise PreconditionFailedError(f"{key} changed while it was being released (a writer "
                                      "renewed or took the lease): run the command again"
                                      ) from None
    state = (f"live, {_duration(held.expires_at - now)} left" if live
             else f"expired {_duration(now - held.expires_at)} ago")
    print(f"released the lease on {db.describe()} held by {held.describe()} ({state})")
    if live:
        print("that writer is fenced: its next upload and its writes fail")
    return 0


# -- prune -------------------------------------------------------------------------------------

def cmd_prune(args: argparse.Namespace, db: StoredDatabase) -> int:
    pruned = prune(db.storage, db.layout, keep_generations=args.keep_generations,
                   max_age=args.max_age, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for g in pruned:
        print(f"{verb} {g.generation}  created {_when(g.created_at)}  "
              f"{_count(g.objects, 'object')}, "
              f"{_size(g.size)}  ({g.reason})")
    gone = {g.generation for g in pruned}
    kept = [g for g in stored_generations(db.storage, db.layout) if g.id not in gone]
    summary = (f"{_count(len(pruned), 'generation')} "
               f"{'would be deleted' if args.dry_run else 'deleted'}" if pruned
               else "nothing to prune")
    current = _current_id(db)
    print(f"{summary}; {len(kept)} kept" + (f" (current {current})" if current else ""))
    return 0


# -- formatting --------------------------------------------------------------------------------

def _when(t: Optional[float]) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _print_table(header: list, rows: list) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _nothing_stored(db: StoredDatabase) -> str:
    return (f"{db.describe()} holds no generation: check --storage, --key-prefix and "
            "--database-name")
