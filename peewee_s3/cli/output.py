"""cli.output: how the command writes times, sizes, counts, tables and its one-line errors.

Formatting only: it reads no storage and decides nothing. A failed command's one line goes
through `say_error`, which blanks the secrets it is given.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, Sequence

PROG = "peewee-s3"
EXIT_STDOUT_CLOSED = 128 + 13  # 128 + SIGPIPE: what a shell reports for `cat` in `cat | head`


def when(t: Optional[float]) -> str:
    """A time in UTC to the millisecond, or '-' for none."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def counted(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def byte_size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def print_table(header: list, rows: list) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def redact(text: str, hidden: Sequence[str]) -> str:
    for value in hidden:
        text = text.replace(value, "***")
    return text


def say_error(message: str, hidden: Sequence[str]) -> None:
    """The one line on stderr that a failed command prints."""
    line = " ".join(redact(message, hidden).split())
    print(f"{PROG}: error: {line}", file=sys.stderr)


def stdout_closed() -> int:
    """The reader of stdout went away (`| head`): print nothing, point stdout at /dev/null so
    that Python's flush at exit stays quiet too (the Python docs' note on SIGPIPE), and return
    the status of a command stopped by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a descriptor (set by a program): leave it
        pass
    return EXIT_STDOUT_CLOSED
