"""merging: merged segments, so that a restore reads a few objects instead of thousands.

A writer ships one small segment per shipment: a day of a trickle at `sync_interval=1` is tens of
thousands of them, and reading each costs a request. As segments are stored, the replicator also
gathers their pages here; every MERGE_SEGMENTS segments (or MERGE_BYTES of distinct pages) it
stores one merged segment standing for all of them: every commit's time and size, and the last
image of each page, on the last commit. Applied in order, it leaves the file exactly as its
segments would. The segments themselves stay: a point-in-time restore inside the range, and a
replica following the writer, read them. See docs/FORMAT.md.
"""
from __future__ import annotations

from typing import Optional

from .segments import CommitRecord, Segment

MERGE_SEGMENTS = 256
MERGE_BYTES = 8 << 20  # of distinct page images held in memory until they are merged


class Merger:
    """The pages of the segments stored since the last merged one, in one generation."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._first: Optional[Segment] = None
        self._last: Optional[Segment] = None
        self._times: list = []
        self._pages: dict = {}
        self._bytes = 0
        self._top = 0  # the highest page number held
        self.stored_bytes = 0  # of the segments added, as stored

    def add(self, segment: Segment, stored_bytes: int = 0) -> None:
        """A segment just stored (in `stored_bytes`). One that does not follow the last starts
        a new run."""
        last = self._last
        if last and (segment.generation, segment.seq) != (last.generation, last.seq + 1):
            self.reset()
        if segment.page_bytes >= MERGE_BYTES:
            self.reset()  # a large segment reads as fast alone: no copy of its pages to hold
            return
        if self._first is None:
            self._first = segment
        self._last = segment
        self.stored_bytes += stored_bytes
        for commit in segment.commits:
            if commit.db_pages < self._top:
                self._cut(commit.db_pages)
            for pgno, data in commit.pages.items():
                self._bytes += len(data) - len(self._pages.get(pgno, b""))
                self._pages[pgno] = data
                self._top = max(self._top, pgno)
            self._times.append((commit.time, commit.db_pages))

    def _cut(self, db_pages: int) -> None:
        """A commit shrank the database: pages past its end are gone."""
        for pgno in [p for p in self._pages if p > db_pages]:
            self._bytes -= len(self._pages.pop(pgno))
        self._top = db_pages

    @property
    def due(self) -> bool:
        if self._first is None or self._last.seq == self._first.seq:
            return False
        return (self._last.seq - self._first.seq + 1 >= MERGE_SEGMENTS
                or self._bytes >= MERGE_BYTES)

    def take(self) -> Segment:
        """The merged segment for everything added since the last one; starts over."""
        first, last = self._first, self._last
        *earlier, (time, db_pages) = self._times
        commits = tuple(CommitRecord(t, n, {}) for t, n in earlier)
        commits += (CommitRecord(time, db_pages, dict(sorted(self._pages.items()))),)
        merged = Segment(last.generation, last.seq, last.epoch, last.page_size, commits,
                         first_seq=first.seq)
        self.reset()
        return merged
