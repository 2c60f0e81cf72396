"""cli.lease: `peewee-s3 lease release`, ending the lease of a writer that is gone.

The lease is ended with a new holder and epoch by a conditional write, never deleted, and its
generation with a fence (fence.py), so a writer that still holds it is fenced. A live lease is
ended only with --force.
"""
from __future__ import annotations

import argparse
import os
import secrets
import socket
import time

from ..errors import LeaseHeldError, ObjectNotFoundError, PreconditionFailedError
from ..fence import fence_generation
from ..lease import LeaseRecord
from ..restore import segment_sizes
from .options import StoredDatabase
from .output import duration


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
            f"{duration(held.expires_at - now)} more. Stop that writer (its shutdown() "
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
    state = (f"live, {duration(held.expires_at - now)} left" if live
             else f"expired {duration(now - held.expires_at)} ago")
    print(f"released the lease on {db.describe()} held by {held.describe()} ({state})")
    if held.generation:  # a writer stopped past its lease may still run: end its generation
        end = fence_generation(storage, db.layout, held.generation,
                               segment_sizes(storage, db.layout, held.generation),
                               epoch=ended.epoch, holder_id=ended.holder_id)
        print(f"generation {held.generation} is fenced after segment {end}")
    if live:
        print("that writer is fenced: its next upload and its writes fail")
    return 0
