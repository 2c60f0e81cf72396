"""cli.logs: where the library's log records go while a command runs.

Run as a command, with no logging configured, they print on stderr as 'peewee-s3: LEVEL: ...'
(WARNING and up; INFO too with --verbose). In a program that configured logging they go to
its handlers: this never stops propagation, and it leaves the logger as it found it.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

from .output import PROG


@contextlib.contextmanager
def library_logs(verbose: bool) -> Iterator[None]:
    logger = logging.getLogger("peewee_s3")
    level = logger.level
    handler = None
    if not logger.hasHandlers():  # nobody logs: print them as the command's own lines
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
    if verbose and logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
        logger.setLevel(level)
