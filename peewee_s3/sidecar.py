"""sidecar: what a local database file last shipped, kept in `<file>.peewee-s3.json` beside it.

At connect it tells whether the local file is the stored state, an older one, or a stranger's.
At the end of a session it also describes the database file (size, modification time, inode),
so that edits made while no session is open are noticed. Written atomically (temp file +
rename); it never opens the database file itself (stat only).
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
    `generation`; `wal_salts`/`wal_frames` say how far into the local WAL that was. `file`,
    written only once a session ended with an empty WAL and everything shipped, describes the
    database file as it was then (`describe_file`); without it the file is not trusted to be
    the stored state."""

    origin: str
    generation: str
    seq: int
    epoch: int
    wal_salts: Optional[list] = None
    wal_frames: int = 0
    file: Optional[dict] = None

    def describes(self, database_path: str) -> bool:
        """Whether the database file is still exactly the one this sidecar describes."""
        return self.file is not None and self.file == describe_file(database_path)


def describe_file(database_path: str) -> Optional[dict]:
    """What tells one state of the file from another without reading it: size, modification
    time (ns) and inode. Any write by SQLite to the file changes the first two."""
    try:
        st = os.stat(database_path)
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


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
        f.write(json.dumps(asdict(sidecar)))  # one write; json.dump writes piece by piece
    os.replace(temp, path)


def remove_sidecar(database_path: str) -> None:
    try:
        os.unlink(sidecar_path(database_path))
    except FileNotFoundError:
        pass
