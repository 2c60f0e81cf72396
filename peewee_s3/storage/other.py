"""storage.other: any other fsspec filesystem (memory://, gcs://, ...), tags being the sha256
of the content.

Its conditional writes are atomic only between threads of this process: never rely on them
between processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import IO

from .base import CHUNK_SIZE, Progress, Storage, Tag, _report
from .translation import _precondition_failed

# Serialises the conditional writes of every FsspecStorage in this process.
_PROCESS_LOCK = threading.Lock()


class FsspecStorage(Storage):
    """Any other fsspec filesystem (memory://, gcs://, ...); tags are the sha256 of the content.

    Conditional writes are atomic only between threads of this process (one lock): NOT safe
    between processes. Use s3:// or file:// for a database that several processes share.
    """

    def _read_tagged(self, key: str) -> tuple[bytes, Tag]:
        with self._errors(key):
            data = self.fs.cat_file(self._path(key))
        return data, hashlib.sha256(data).hexdigest()

    def _replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        with _PROCESS_LOCK:
            self._check_tag(key, tag)
            return self.write(key, data)

    def delete_if(self, key: str, tag: Tag) -> None:
        with _PROCESS_LOCK:
            self._check_tag(key, tag)
            self.delete(key)

    def upload(
        self, key: str, fileobj: IO[bytes], *, create_only: bool = False, progress: Progress = None
    ) -> Tag:
        path = self._path(key)
        digest = hashlib.sha256()
        with self._errors(key), _PROCESS_LOCK if create_only else contextlib.nullcontext():
            if create_only and self.fs.exists(path):
                raise _precondition_failed(key, self)
            with self.fs.open(path, "wb") as out:
                while chunk := fileobj.read(CHUNK_SIZE):
                    out.write(chunk)
                    digest.update(chunk)
                    _report(progress, len(chunk))
        return digest.hexdigest()

    def _check_tag(self, key: str, tag: Tag) -> None:
        with self._errors(key, conditional=True):
            current = self.fs.cat_file(self._path(key))
        if hashlib.sha256(current).hexdigest() != tag:
            raise _precondition_failed(key, self)
