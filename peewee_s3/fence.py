"""fence: the object that ends a generation's lineage when its writer's lease is taken over.

A new holder that did not get the lease by a clean release creates a fence, with
create-if-absent, at the first free segment key of the generation it continues from; the old
writer's next create of that key fails, so it is fenced without reading `lock.json` per commit,
and every segment before the fence is part of the lineage. Readers stop at the first fence,
and at a torn segment key (empty: an upload whose writer died, see TornObjectError), which
nobody wrote after: its writer lands segments one at a time, and the next create of that key
takes its place.
Format and protocol: docs/FORMAT.md, "Fences". It knows keys and bytes, never SQLite.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Optional

from .errors import ObjectNotFoundError, PreconditionFailedError, ReplicaCorruptError, StorageError
from .layout import Layout
from .storage import Storage

MAGIC = b"PWS3FNC1"
FORMAT = 1
_DIGEST = 32
# A fence is a few hundred bytes; a listed object this large cannot be one (whatever a storage
# wrapper adds), so readers need not fetch it to tell.
MAX_STORED_SIZE = 64 << 10
# Keys found taken in a row before fencing gives up: an old writer lands at most one segment
# per round trip of ours, so this many means something else holds the keys.
MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class Fence:
    """What a fence object says: which key it holds, and who put it there."""

    generation: str
    seq: int
    epoch: int       # the lease epoch of the holder that fenced
    holder_id: str
    created_at: float
    format: int = FORMAT

    def encode(self) -> bytes:
        payload = MAGIC + json.dumps(asdict(self), separators=(",", ":")).encode()
        return payload + hashlib.sha256(payload).digest()

    @classmethod
    def decode(cls, data: bytes, key: str) -> Optional["Fence"]:
        """The fence stored at `key`, or None if the object is not a fence (a segment)."""
        if not data.startswith(MAGIC):
            return None
        payload, digest = data[:-_DIGEST], data[-_DIGEST:]
        try:
            if hashlib.sha256(payload).digest() != digest:
                raise ValueError("its sha256 checksum does not match its content")
            raw = json.loads(payload[len(MAGIC):])
            if raw.get("format") != FORMAT:
                raise ValueError(f"it has format {raw.get('format')!r}, this version reads "
                                 f"{FORMAT}: upgrade peewee-s3")
            fence = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (ValueError, TypeError, AttributeError) as exc:
            raise ReplicaCorruptError(
                f"fence {key} is corrupt: {exc}. Restore another generation (peewee-s3 "
                "generations lists them)") from None
        if Layout.segment_seq(key) != fence.seq or f"/{fence.generation}/" not in key:
            raise ReplicaCorruptError(f"fence {key} says it is {fence.generation}/{fence.seq}: "
                                      "it was put in the wrong place")
        return fence


def read_fence(storage: Storage, key: str) -> Optional[Fence]:
    """The fence at `key`; None if the object there is a segment or there is none."""
    try:
        return Fence.decode(storage.read(key), key)
    except ObjectNotFoundError:
        return None


def lineage_end(storage: Storage, layout: Layout, generation: str,
                listed: list, floor: int = 0) -> int:
    """The last segment of `generation` in its lineage: the one before its first fence or
    torn key, or the last one stored. `listed` is (seq, size) of its wal/ keys in order (a
    checked chain), or of those after `floor`, a segment known to be in the lineage; only
    small objects at its end are fetched to tell a fence (none at all, usually one)."""
    return _tail(storage, layout, generation, listed, floor)[0]


def _tail(storage: Storage, layout: Layout, generation: str, listed: list,
          floor: int = 0) -> tuple:
    """(the lineage's last segment, whether a fence follows it), as in `lineage_end`."""
    end, fenced = len(listed), False
    while end and listed[end - 1][1] < MAX_STORED_SIZE:
        key = layout.segment(generation, listed[end - 1][0])
        if listed[end - 1][1] == 0:
            end -= 1                      # torn
        elif read_fence(storage, key):
            end, fenced = end - 1, True
        else:
            break
    return (listed[end - 1][0] if end else floor), fenced


def fence_generation(storage: Storage, layout: Layout, generation: str, listed: list, *,
                     epoch: int, holder_id: str) -> int:
    """End `generation` where its writer stands now: create a fence at its first free segment
    key (the next one while the old writer keeps landing segments). Returns the last segment
    of the lineage, the one before the first fence. `listed` as in `lineage_end`: taken
    before this call, it may lag behind the old writer.

    Called by a new lease holder (or `peewee-s3 lease release`) after its write of lock.json
    and before it reads where the generation ends."""
    end, fenced = _tail(storage, layout, generation, listed)
    if fenced:
        return end                        # fenced already, by an earlier holder
    ours, taken = end + 1, []             # a torn key after `end` is free to create
    while True:
        fence = Fence(generation, ours, epoch, holder_id, time.time())
        try:
            storage.create(layout.segment(generation, ours), fence.encode())
            break
        except PreconditionFailedError:
            taken.append(ours)            # the old writer's segment, or another's fence
            ours += 1
            if len(taken) >= MAX_ATTEMPTS:
                raise StorageError(
                    f"could not fence generation {generation} in {storage.describe()}: "
                    f"{MAX_ATTEMPTS} segment keys in a row were taken as they were tried "
                    f"(from {taken[0]}). Stop the writer that is still uploading into it, "
                    "then connect again") from None
    # Asked only now, so that a writer that keeps committing is caught up with at one request
    # a key. After another holder's fence, every key is a fence: the first one ends it.
    for seq in taken:
        if read_fence(storage, layout.segment(generation, seq)):
            return seq - 1
    return ours - 1
