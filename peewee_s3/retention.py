"""retention: which whole generations may be deleted, and deleting them.

`plan_prune` is the policy, pure: it sees metas and times and touches nothing. `prune` lists the
storage, applies it, and deletes generations whole, `snapshot.meta.json` first. It never deletes
the current generation (lock.json's), the newest complete one, or part of a generation.
"""
from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from .errors import ConfigurationError, ObjectNotFoundError, ReplicaCorruptError
from .layout import Layout
from .lease import read_lease
from .snapshots import SnapshotMeta, read_meta
from .storage import Storage

KEEP_GENERATIONS = 2
MAX_AGE = 86400.0  # seconds: every state of the last day stays restorable
ABANDONED_AFTER = 3600.0  # seconds: an incomplete generation this old is an abandoned upload


@dataclass(frozen=True)
class StoredGeneration:
    """One generation as the storage holds it. `meta` is None while it is incomplete (or when
    its meta cannot be read: `problem` then says why)."""

    id: str
    meta: Optional[SnapshotMeta]
    objects: tuple
    problem: Optional[str] = None

    @property
    def complete(self) -> bool:
        return self.meta is not None

    @property
    def created_at(self) -> float:
        """The meta's `created_at`; for an incomplete generation, the time in its id."""
        return self.meta.created_at if self.meta else generation_time(self.id)

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def segment_seqs(self) -> list[int]:
        return [seq for seq, _ in self.segment_sizes]

    @property
    def segment_sizes(self) -> list[tuple]:
        """(seq, size) of the objects at its segment keys (a fence among them), in order."""
        return sorted((seq, o.size) for seq, o in ((Layout.segment_seq(o.key), o)
                                                   for o in self.objects if "/wal/" in o.key)
                      if seq)


@dataclass(frozen=True)
class PrunedGeneration:
    """A generation `prune` deleted (or, in a dry run, would delete), and why."""

    generation: str
    complete: bool
    created_at: float
    objects: int
    size: int
    reason: str


def generation_time(generation: str) -> float:
    """The creation time a generation id records (`20261125T153000123456Z-…`), unix seconds."""
    stamp = time.strptime(generation[:15], "%Y%m%dT%H%M%S")
    return calendar.timegm(stamp) + int(generation[15:21]) / 1_000_000


def stored_generations(storage: Storage, layout: Layout) -> list[StoredGeneration]:
    """Every generation in the storage, complete or not, oldest first (one listing)."""
    objects: dict = {}
    for info in storage.list(layout.generations):
        generation = layout.generation_of(info.key)
        if generation:
            objects.setdefault(generation, []).append(info)
    found = []
    for generation, infos in objects.items():
        meta, problem = None, None
        if any(o.key == layout.snapshot_meta(generation) for o in infos):
            try:
                meta = read_meta(storage, layout, generation)
            except ObjectNotFoundError:  # deleted since the listing: incomplete now
                pass
            except ReplicaCorruptError as exc:
                problem = str(exc)
        found.append(StoredGeneration(generation, meta, tuple(infos), problem))
    return sorted(found, key=lambda g: (g.created_at, g.id))


def check_policy(keep_generations: int, max_age: Optional[float]) -> None:
    if isinstance(keep_generations, bool) or not isinstance(keep_generations, int) \
            or keep_generations < 1:
        raise ConfigurationError(
            f"keep_generations={keep_generations!r} must be a whole number of at least 1 "
            "(the newest complete generation is always kept)")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, (int, float))
                                or max_age < 0):
        raise ConfigurationError(f"max_age={max_age!r} must be a number of seconds (0 or more), "
                                 "or None to keep every complete generation")


def plan_prune(metas: Sequence[SnapshotMeta], current_generation: Optional[str], *,
               incomplete: Sequence[str] = (), keep_generations: int = KEEP_GENERATIONS,
               max_age: Optional[float] = MAX_AGE, abandoned_after: float = ABANDONED_AFTER,
               now: float) -> list[str]:
    """The ids of the generations to delete, oldest first.

    A complete generation holds the states from its `created_at` until the next one's; it is
    deleted only when all of them are older than `max_age` (the next generation was created
    `max_age` seconds ago or earlier), it is not among the newest `keep_generations`, and every
    older generation goes too — so a restore to any time after the oldest kept `created_at`
    finds what it needs. `max_age=None` keeps every complete generation. An incomplete one (no
    meta) is deleted once its id is `abandoned_after` seconds old. The current generation
    never is.
    """
    check_policy(keep_generations, max_age)
    ordered = sorted(metas, key=lambda m: (m.created_at, m.generation))
    doomed = []
    if max_age is not None:
        deletable = max(0, len(ordered) - keep_generations)
        for meta, successor in zip(ordered[:deletable], ordered[1:]):
            if meta.generation == current_generation or successor.created_at > now - max_age:
                break
            doomed.append(meta.generation)
    abandoned = [g for g in incomplete
                 if g != current_generation and generation_time(g) <= now - abandoned_after]
    return sorted(doomed + abandoned)  # ids sort by creation time


def prune(storage: Storage, layout: Layout, *, keep_generations: int = KEEP_GENERATIONS,
          max_age: Optional[float] = MAX_AGE, abandoned_after: float = ABANDONED_AFTER,
          dry_run: bool = False, now: Optional[float] = None) -> list[PrunedGeneration]:
    """Apply `plan_prune` to what the storage holds; return what was (or would be) deleted."""
    check_policy(keep_generations, max_age)
    now = time.time() if now is None else now
    stored = stored_generations(storage, layout)
    lease = read_lease(storage, layout.lock)
    doomed = set(plan_prune(
        [g.meta for g in stored if g.meta], lease.generation if lease else None,
        incomplete=[g.id for g in stored if not g.meta and not g.problem],
        keep_generations=keep_generations, max_age=max_age, abandoned_after=abandoned_after,
        now=now))
    pruned = []
    for generation in stored:
        if generation.id not in doomed:
            continue
        if not dry_run:
            delete_generation(storage, layout, generation.id)
        reason = ("older than the retention policy" if generation.complete else
                  f"incomplete (an abandoned upload) for {now - generation.created_at:.0f} s")
        pruned.append(PrunedGeneration(generation.id, generation.complete, generation.created_at,
                                       len(generation.objects), generation.size, reason))
    return pruned


def delete_generation(storage: Storage, layout: Layout, generation: str) -> None:
    """Delete every object of a generation, its meta first: if this stops half-way, what is
    left is an incomplete generation, which no restore reads and the next prune removes."""
    storage.delete(layout.snapshot_meta(generation))
    for info in storage.list(layout.generation(generation)):
        storage.delete(info.key)
