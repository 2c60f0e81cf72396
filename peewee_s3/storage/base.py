"""storage.base: what every backend shares — the `Storage` interface, keys, listing, a streamed
download, and the one place where backend errors enter `translation`.

It never sends a conditional request itself: the subclasses provide the writes.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import IO, Callable, Iterator, Optional

import fsspec

from ..errors import (
    LocalWriteError, ObjectNotFoundError, PeeweeS3Error, PreconditionFailedError, TornObjectError,
)
from .translation import _is_backend_error, _translate

CHUNK_SIZE = 8 * 2**20  # one part of a streamed transfer; about one part is in memory at a time

Progress = Optional[Callable[[int], object]]
Tag = str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Storage:
    """Objects under one root of an fsspec filesystem, addressed by '/'-separated keys.

    Tags identify one version of an object: `replace` and `delete_if` succeed only while the
    object still has the tag the caller read. The subclasses provide the writes.
    """

    def __init__(
        self, fs: fsspec.AbstractFileSystem, root: str, where: str, *, secrets=(), owns_fs=True
    ):
        self.fs = fs
        self.root = root
        self._where = where
        self._secrets = tuple(secrets)
        self._owns_fs = owns_fs
        self._endpoint: Optional[str] = None  # a non-default server, named in `describe`

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where}>"

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def describe(self, key: Optional[str] = None) -> str:
        """Where the storage, or its object `key`, is, as a user writes it: `file:///srv/x/key`,
        `s3://bucket/path/key (endpoint http://…)`; never a secret."""
        where = f"{self._where}/{key}" if key else self._where
        return f"{where} (endpoint {self._endpoint})" if self._endpoint else where

    def read(self, key: str) -> bytes:
        return self.read_tagged(key)[0]

    def read_tagged(self, key: str) -> tuple[bytes, Tag]:
        """The object's bytes and tag; TornObjectError if it is empty (an unfinished upload)."""
        data, tag = self._read_tagged(key)
        if not data:
            raise TornObjectError(
                f"{self.describe(key)} is empty: an upload whose writer died before it sent "
                "the body (the server kept the object). It is read as absent", tag)
        return data, tag

    def _read_tagged(self, key: str) -> tuple[bytes, Tag]:
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> Tag:
        """Overwrite atomically: readers see the old object or the new one, never a part."""
        return self.upload(key, io.BytesIO(data))

    def create(self, key: str, data: bytes) -> Tag:
        """Create if absent, else raise PreconditionFailedError."""
        try:
            return self.upload(key, io.BytesIO(data), create_only=True)
        except PreconditionFailedError as error:
            return self._landed(key, data, error, over_torn=True)

    def replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        """Replace if the object still has `tag`, else raise PreconditionFailedError."""
        try:
            return self._replace(key, data, tag)
        except PreconditionFailedError as error:
            return self._landed(key, data, error)

    def _replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        raise NotImplementedError

    def _landed(self, key: str, data: bytes, error: PreconditionFailedError, *,
                over_torn: bool = False) -> Tag:
        """A conditional write refused because an earlier attempt of the same request landed:
        botocore retries a PUT whose answer was lost, and the retry meets its own object. The
        object then holds exactly our bytes (ours carry unique ids and times): that is success.
        A create refused by a torn object (empty: see TornObjectError) replaces it, on its tag,
        as if the key were free: that upload never finished, so it said nothing."""
        try:
            stored, tag = self.read_tagged(key)
        except TornObjectError as torn:
            if over_torn:
                return self.replace(key, data, torn.tag)
            raise error from None
        except ObjectNotFoundError:
            raise error from None
        if stored != data:
            raise error
        return tag

    def delete(self, key: str) -> None:
        with self._errors(key), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def delete_if(self, key: str, tag: Tag) -> None:
        """Delete if the object still has `tag`, else raise PreconditionFailedError."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        with self._errors(key):
            return self.fs.isfile(self._path(key))

    def list(self, prefix: str = "", start_after: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, at any depth, sorted by key; only
        those after the key `start_after`, if given (S3 lists from there)."""
        if start_after:
            return [o for o in self.list(prefix) if o.key > start_after]
        folder = prefix.rpartition("/")[0]
        with self._errors(prefix or "/"):
            found = self.fs.find(self._path(folder) if folder else self.root, detail=True)
        start = len(self.root) + 1 if self.root else 0
        objects = [
            ObjectInfo(name[start:], int(info.get("size") or 0))
            for name, info in found.items()
            if info.get("type") == "file" and not name.endswith("/")
        ]
        return sorted(
            (o for o in objects if o.key.startswith(prefix) and self._listed(o.key)),
            key=lambda o: o.key,
        )

    def upload(
        self, key: str, fileobj: IO[bytes], *, create_only: bool = False, progress: Progress = None
    ) -> Tag:
        """Store everything `fileobj` holds, streamed; `create_only` as in `create`."""
        raise NotImplementedError

    def download(self, key: str, fileobj: IO[bytes], *, progress: Progress = None) -> int:
        """Stream the object into `fileobj`; return the number of bytes written."""
        total = 0
        with self._errors(key), self.fs.open(
            self._path(key), "rb", block_size=CHUNK_SIZE, cache_type="none"
        ) as source:
            while chunk := source.read(CHUNK_SIZE):
                _write_local(fileobj, chunk)
                total += len(chunk)
                _report(progress, len(chunk))
                del chunk  # before the next part is read: one part in memory at a time
        return total

    def close(self) -> None:
        """Release connections; the storage may not be used afterwards."""

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid storage key {key!r}")
        return f"{self.root}/{key}" if self.root else key

    def _listed(self, key: str) -> bool:
        return True

    @contextlib.contextmanager
    def _errors(self, key: str, *, conditional: bool = False) -> Iterator[None]:
        try:
            yield
        except PeeweeS3Error:
            raise
        except Exception as error:
            if not _is_backend_error(error):
                raise
            raise _translate(error, key, self, conditional=conditional) from error


def _report(progress: Progress, nbytes: int) -> None:
    if progress and nbytes:
        progress(nbytes)


def _write_local(fileobj: IO[bytes], data: bytes) -> None:
    """Write downloaded bytes; a local failure (disk full) is not the storage's fault."""
    try:
        fileobj.write(data)
    except OSError as error:
        raise LocalWriteError(f"writing the downloaded object locally failed: {error}") from error
