"""sidecar: what a local database file last shipped, kept in `<file>.peewee-s3.json` beside it.

At connect it tells whether the local file is the stored state, an older one, or a stranger's.
Written atomically (temp file + rename); it never touches the database file itself.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

from .errors import LocalStateError

SUFFIX = ".peewee-s3.json"


@dataclass(frozen=True)
class Sidecar:
    """`origin` names the storage and database; `seq` is the last segment shipped in
    `generation`; `wal_salts`/`wal_frames` say how far into the local WAL that was."""

    origin: str
    generation: str
    seq: int
    epoch: int
    wal_salts: Optional[list] = None
    wal_frames: int = 0


def sidecar_path(database_path: str) -> str:
    return database_path + SUFFIX


def read_sidecar(database_path: str) -> Optional[Sidecar]:
    path = sidecar_path(database_path)
    try:
        with open(path, "rb") as f:
            raw = json.load(f)
        return Sidecar(**{k: raw[k] for k in Sidecar.__dataclass_fields__ if k in raw})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise LocalStateError(
            f"{path} is damaged ({exc}): it cannot tell which state {database_path} holds. "
            f"Move {database_path} away to restore from storage, or delete the sidecar and "
            "the storage's generations to start a new lineage from the local file") from None


def write_sidecar(database_path: str, sidecar: Sidecar) -> None:
    path = sidecar_path(database_path)
    temp = path + ".tmp"
    with open(temp, "w") as f:
        json.dump(asdict(sidecar), f)
    os.replace(temp, path)


def remove_sidecar(database_path: str) -> None:
    try:
        os.unlink(sidecar_path(database_path))
    except FileNotFoundError:
        pass
