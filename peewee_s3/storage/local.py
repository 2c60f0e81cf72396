"""storage.local: a local directory as storage, with conditional writes that are atomic between
processes on this machine (link-based create, flock around replace and delete_if).

It writes nothing in place: every object arrives as a complete, fsynced temp file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import uuid
from typing import IO, Callable, Iterator

from .base import CHUNK_SIZE, Progress, Storage, Tag, _report
from .translation import _precondition_failed

_LOCAL_MARK = ".peewee-s3-"  # in the names of local temp and lock files, which list() hides


class LocalStorage(Storage):
    """A local directory; conditional writes are atomic between processes on this machine.

    create links a complete, fsynced temp file into place (a link fails if the name exists);
    replace and delete_if compare the tag under an flock on a sibling lock file. Tags are the
    sha256 of the content. Temp and lock files are hidden from `list`.
    """

    def _read_tagged(self, key: str) -> tuple[bytes, Tag]:
        with self._errors(key), open(self._path(key), "rb") as f:
            data = f.read()
        return data, hashlib.sha256(data).hexdigest()

    def _replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        path = self._path(key)
        with self._errors(key, conditional=True), self._locked(path):
            self._check_tag(key, path, tag)
            temp, new_tag = self._write_temp(path, io.BytesIO(data), None)
            _move_into_place(temp, path, os.replace)
        return new_tag

    def delete_if(self, key: str, tag: Tag) -> None:
        path = self._path(key)
        with self._errors(key, conditional=True), self._locked(path):
            self._check_tag(key, path, tag)
            os.unlink(path)

    def upload(
        self, key: str, fileobj: IO[bytes], *, create_only: bool = False, progress: Progress = None
    ) -> Tag:
        path = self._path(key)
        with self._errors(key):
            temp, tag = self._write_temp(path, fileobj, progress)
            _move_into_place(temp, path, os.link if create_only else os.replace)
        return tag

    def _listed(self, key: str) -> bool:
        name = key.rpartition("/")[2]
        return not (name.startswith(".") and _LOCAL_MARK in name)

    def _write_temp(self, path: str, fileobj: IO[bytes], progress: Progress) -> tuple[str, Tag]:
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, f".{name}{_LOCAL_MARK}{uuid.uuid4().hex}.tmp")
        digest = hashlib.sha256()
        try:
            with open(temp, "xb") as out:
                while chunk := fileobj.read(CHUNK_SIZE):
                    out.write(chunk)
                    digest.update(chunk)
                    _report(progress, len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return temp, digest.hexdigest()

    @contextlib.contextmanager
    def _locked(self, path: str) -> Iterator[None]:
        folder, name = os.path.split(path)
        with open(os.path.join(folder, f".{name}{_LOCAL_MARK}lock"), "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def _check_tag(self, key: str, path: str, tag: Tag) -> None:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                digest.update(chunk)
        if digest.hexdigest() != tag:
            raise _precondition_failed(key, self)


def _move_into_place(temp: str, path: str, move: Callable[[str, str], None]) -> None:
    """os.replace or os.link the fsynced temp file to `path`, then make that durable."""
    try:
        move(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    folder = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
