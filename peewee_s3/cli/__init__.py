"""cli: the `peewee-s3` command — restore, inspect, verify, snapshot, release and prune.

It builds the library's `Options` from flags and PEEWEE_S3_* variables and calls restore,
retention, lease and snapshots: no replication logic lives here. Expected errors print one line
on stderr and exit 1; no secret is ever printed. Progress bars appear on a terminal only.
"""
from __future__ import annotations

import gc
import sqlite3
import sys
import traceback
from typing import Optional, Sequence

from ..errors import PeeweeS3Error
from .logs import library_logs
from .many import LISTED_NAME, check_flags, cmd_many, wants_many
from .options import build_options, open_database, secret_values
from .output import redact, say_error, stdout_closed
from .parser import build_parser
from .snapshot import cmd_snapshot, explain_snapshot

__all__ = ["build_parser", "main", "run"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (0 done, 1 failed, 130 interrupted, 141 its
    output closed early)."""
    args = build_parser().parse_args(argv)
    hidden = secret_values(args)
    if args.run is cmd_snapshot and not args.local:
        return explain_snapshot()
    with library_logs(args.verbose):
        try:
            many = wants_many(args)
            if many:
                check_flags(args)
            options = build_options(args, LISTED_NAME if many else None)
            with open_database(options, writes=args.run is cmd_snapshot) as db:
                status = cmd_many(args, db, hidden) if many else args.run(args, db)
            sys.stdout.flush()  # what a pipe still buffers: a reader gone shows here, not at exit
            return status
        except BrokenPipeError:  # `| head` has read enough: stop quietly, as `cat` would
            return stdout_closed()
        except KeyboardInterrupt:
            say_error("interrupted", hidden)
            return 130
        except (PeeweeS3Error, OSError, sqlite3.Error) as exc:
            say_error(str(exc) or type(exc).__name__, hidden)
            return 1
        except Exception as exc:  # a bug: say so in one line; --verbose shows where
            if args.verbose:
                print(redact(traceback.format_exc(), hidden), file=sys.stderr, end="")
            say_error(f"unexpected {type(exc).__name__}: {exc} (this is a bug in peewee-s3"
                      f"{'' if args.verbose else '; run with --verbose for the traceback'})",
                      hidden)
            return 1


def run() -> None:
    """The `peewee-s3` script and `python -m peewee_s3`: `main()`, then exit.

    Before the interpreter's teardown the collector is frozen: it would otherwise walk and free
    botocore's service model object by object, a fifth of a second of a restore's run from the
    shell. Nothing is left to clean up by then: `main()` has closed the database and storage.
    """
    status = main()
    gc.disable()
    gc.freeze()
    sys.exit(status)
