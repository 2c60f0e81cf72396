"""merging: merged segments, so that a restore reads a few objects instead of thousands.

A writer ships one small segment per shipment: a day of a trickle at `sync_interval=1` is tens of
thousands of them, and reading each costs a request. As segments are stored, the replicator also
gathers their pages here, in levels: every FANOUT segments (level 1), every FANOUT merged
segments of level 1 (level 2), and so on up to MERGE_SEGMENTS segments, it stores one merged
segment standing for the run: every commit's time and size, and the last image of each page, on
the last commit. Applied in order, it leaves the file exactly as its segments would. A latest
restore then reads at most FANOUT - 1 objects of each level after the last top-level one. A
level merges early once it holds its share of MERGE_BYTES of distinct pages (the top level all
of it, each level below a quarter of the one above); a segment of MERGE_BYTES or more is
merged at no level. The segments themselves stay: a
point-in-time restore inside the range, and a replica following the writer, read them. See
docs/FORMAT.md, "Merged segments".
"""
from __future__ import annotations

from collections import deque
from typing import Optional

from .segments import CommitRecord, Segment

FANOUT = 16           # a merged segment stands for this many objects of the level below
MERGE_SEGMENTS = 4096  # segments the top level's merged segment stands for
MERGE_BYTES = 8 << 20  # of distinct page images the top level holds until it merges


class Merger:
    """The runs being gathered, one per level, in one generation. `add` each stored segment;
    while `due`, `take` a merged segment, store it, and hand it back with `stored`. A run is
    closed the moment it is due, so no merged segment stands for more than its level's span,
    however many segments are added between two stores."""

    def __init__(self) -> None:
        self._levels: list = []
        span, share = MERGE_SEGMENTS, MERGE_BYTES
        while True:
            self._levels.insert(0, _Run(span, share))
            if span <= FANOUT:
                break
            span, share = -(-span // FANOUT), share // 4
        self._ready: deque = deque()  # (level, merged segment, stored bytes it stands for)
        self._taken = 0  # the level of the one `take` gave last

    def reset(self) -> None:
        for run in self._levels:
            run.reset()
        self._ready.clear()

    def add(self, segment: Segment, stored_bytes: int = 0) -> None:
        """A segment just stored (in `stored_bytes`)."""
        self._add(0, segment, stored_bytes)

    def _add(self, level: int, segment: Segment, stored_bytes: int) -> None:
        run = self._levels[level]
        run.add(segment, stored_bytes)
        if run.due:
            replaced = run.stored_bytes
            self._ready.append((level, run.take(), replaced))

    @property
    def due(self) -> bool:
        return bool(self._ready)

    def take(self) -> tuple:
        """(the oldest merged segment due, the stored bytes of the objects it stands for)."""
        self._taken, merged, replaced = self._ready.popleft()
        return merged, replaced

    def stored(self, merged: Segment, stored_bytes: int) -> None:
        """The segment `take` just gave, as a restore now reads it: stored in `stored_bytes`
        (or, if storing it failed, the bytes of what it stands for). It joins the level above."""
        if self._taken + 1 < len(self._levels):
            self._add(self._taken + 1, merged, stored_bytes)


class _Run:
    """The pages of the objects added since this level last merged: it is due at `span`
    segments or `max_bytes` of distinct pages."""

    def __init__(self, span: int, max_bytes: int) -> None:
        self.span, self.max_bytes = span, max_bytes
        self.reset()

    def reset(self) -> None:
        self._first: Optional[Segment] = None
        self._last: Optional[Segment] = None
        self._times: list = []
        self._pages: dict = {}
        self._bytes = 0
        self._top = 0  # the highest page number held
        self.stored_bytes = 0  # of the objects added, as stored

    def add(self, segment: Segment, stored_bytes: int) -> None:
        """One that does not follow the last starts a new run; one holding MERGE_BYTES of
        pages reads as fast alone: no copy of its pages to hold."""
        last = self._last
        if last and (segment.generation, _first_seq(segment)) != (last.generation, last.seq + 1):
            self.reset()
        if segment.page_bytes >= MERGE_BYTES:
            self.reset()
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
        if self._first is None or self._last is self._first:
            return False
        return (self._last.seq - _first_seq(self._first) + 1 >= self.span
                or self._bytes >= self.max_bytes)

    def take(self) -> Segment:
        """The merged segment for everything added since the last one; starts over."""
        first, last = self._first, self._last
        *earlier, (time, db_pages) = self._times
        commits = tuple(CommitRecord(t, n, {}) for t, n in earlier)
        commits += (CommitRecord(time, db_pages, dict(sorted(self._pages.items()))),)
        merged = Segment(last.generation, last.seq, last.epoch, last.page_size, commits,
                         first_seq=_first_seq(first))
        self.reset()
        return merged


def _first_seq(segment) -> int:
    """The first segment it stands for (a FrameSegment, as shipped, stands for itself)."""
    first = getattr(segment, "first_seq", None)
    return segment.seq if first is None else first
