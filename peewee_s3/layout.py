"""layout: where each object of a database lives in the storage, and how ids are made.

    [key_prefix/]<database_name>/lock.json
    [key_prefix/]<database_name>/generations/<generation>/snapshot.db
    [key_prefix/]<database_name>/generations/<generation>/snapshot.meta.json
    [key_prefix/]<database_name>/generations/<generation>/wal/<seq:010d>.seg
    [key_prefix/]<database_name>/generations/<generation>/merged/<first:010d>-<last:010d>.seg

Only names: this module reads and writes nothing. See docs/FORMAT.md.
"""
from __future__ import annotations

import re
import secrets
import time

SEGMENT_SUFFIX = ".seg"
_GENERATION = re.compile(r"^\d{8}T\d{6}\d{6}Z-[0-9a-f]{8}$")
_SEGMENT = re.compile(r"^(\d{10})\.seg$")
_MERGED = re.compile(r"^(\d{10})-(\d{10})\.seg$")


def new_generation_id(now: float | None = None) -> str:
    """A generation id that sorts by creation time: `20261125T153000123456Z-1a2b3c4d`."""
    micros = time.time_ns() // 1000 if now is None else int(now * 1_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    return (time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f"{micros:06d}Z-"
            + secrets.token_hex(4))


def is_generation_id(name: str) -> bool:
    return bool(_GENERATION.match(name))


class Layout:
    """The keys of one database, under `base` (`[key_prefix/]database_name`)."""

    def __init__(self, base: str) -> None:
        self.base = base.strip("/")

    @property
    def lock(self) -> str:
        return f"{self.base}/lock.json"

    @property
    def generations(self) -> str:
        return f"{self.base}/generations/"

    def generation(self, generation: str) -> str:
        return f"{self.generations}{generation}/"

    def snapshot(self, generation: str) -> str:
        return f"{self.generation(generation)}snapshot.db"

    def snapshot_meta(self, generation: str) -> str:
        return f"{self.generation(generation)}snapshot.meta.json"

    def segments(self, generation: str) -> str:
        return f"{self.generation(generation)}wal/"

    def segment(self, generation: str, seq: int) -> str:
        return f"{self.segments(generation)}{seq:010d}{SEGMENT_SUFFIX}"

    def merged_segments(self, generation: str) -> str:
        return f"{self.generation(generation)}merged/"

    def merged_segment(self, generation: str, first: int, last: int) -> str:
        return f"{self.merged_segments(generation)}{first:010d}-{last:010d}{SEGMENT_SUFFIX}"

    def generation_of(self, key: str) -> str | None:
        """The generation id a key belongs to, or None if it is not under generations/."""
        if not key.startswith(self.generations):
            return None
        name = key[len(self.generations):].split("/", 1)[0]
        return name if is_generation_id(name) else None

    @staticmethod
    def segment_seq(key: str) -> int | None:
        """The sequence number of a segment key, or None if the key is not a segment."""
        match = _SEGMENT.match(key.rsplit("/", 1)[-1])
        return int(match.group(1)) if match else None

    @staticmethod
    def merged_range(key: str) -> tuple[int, int] | None:
        """(first, last) segment a merged segment key covers, or None if it is not one."""
        match = _MERGED.match(key.rsplit("/", 1)[-1])
        return (int(match.group(1)), int(match.group(2))) if match else None
