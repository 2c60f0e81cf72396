"""storage.sealed: the storage a database is read and written through — every object but the
lease (`lock.json`) sealed by `envelope` on its way in and opened on its way out.

It wraps any backend and adds nothing else: tags, listings and conditional writes are the
backend's. With an empty keyring it writes in plain and refuses to read a sealed object.
"""
from __future__ import annotations

from typing import IO, Optional

from ..envelope import Keyring, SealingReader, UnsealingWriter, is_sealed, plain_size
from ..errors import EncryptionError
from .base import ObjectInfo, Progress, Storage, Tag, _report

PLAIN_NAMES = ("lock.json",)  # stored in plain: the lease, which holds nothing secret


class SealedStorage(Storage):
    """A backend whose objects are sealed with the first key of `keyring` and opened with any.

    Sizes in listings are those of the plaintext, so that they compare with what a snapshot's
    meta says. Objects whose name is in PLAIN_NAMES pass through untouched.
    """

    def __init__(self, inner: Storage, keyring: Keyring) -> None:
        super().__init__(inner.fs, inner.root, inner._where, secrets=inner._secrets,
                         owns_fs=False)
        self.inner, self.keyring = inner, keyring
        self._endpoint = inner._endpoint

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.inner!r} {self.keyring!r}>"

    def describe(self, key: Optional[str] = None) -> str:
        return self.inner.describe(key)

    def read_tagged(self, key: str) -> tuple[bytes, Tag]:
        stored, tag = self.inner.read_tagged(key)
        return self._open(key, stored), tag

    def write(self, key: str, data: bytes) -> Tag:
        return self.inner.write(key, self._seal(key, data))

    def create(self, key: str, data: bytes) -> Tag:
        return self.inner.create(key, self._seal(key, data))

    def replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        return self.inner.replace(key, self._seal(key, data), tag)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_if(self, key: str, tag: Tag) -> None:
        self.inner.delete_if(key, tag)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "", start_after: str = "") -> list[ObjectInfo]:
        listed = self.inner.list(prefix, start_after)
        if not self.keyring:
            return listed
        return [ObjectInfo(o.key, plain_size(o.size)) if self._sealed(o.key) else o
                for o in listed]

    def upload(self, key: str, fileobj: IO[bytes], *, create_only: bool = False,
               progress: Progress = None) -> Tag:
        if not (self.keyring and self._sealed(key)):
            return self.inner.upload(key, fileobj, create_only=create_only, progress=progress)
        sealing = SealingReader(self.keyring, key, fileobj, progress)
        return self.inner.upload(key, sealing, create_only=create_only)

    def download(self, key: str, fileobj: IO[bytes], *, progress: Progress = None) -> int:
        if not self._sealed(key):
            return self.inner.download(key, fileobj, progress=progress)
        if not self.keyring:
            checking = _RefusingSealed(key, fileobj, progress)
            self.inner.download(key, checking)
            return checking.size
        opening = UnsealingWriter(self.keyring, key, fileobj, progress)
        self.inner.download(key, opening)
        return opening.finish()

    def close(self) -> None:
        self.inner.close()

    def _sealed(self, key: str) -> bool:
        return key.rpartition("/")[2] not in PLAIN_NAMES

    def _seal(self, key: str, data: bytes) -> bytes:
        return self.keyring.seal(key, data) if self.keyring and self._sealed(key) else data

    def _open(self, key: str, stored: bytes) -> bytes:
        if not self._sealed(key):
            return stored
        if self.keyring:
            return self.keyring.open(key, stored)
        if is_sealed(stored):
            raise _encrypted(key)
        return stored


class _RefusingSealed:
    """Passes a download through to `target`, unless it starts as a sealed object does."""

    def __init__(self, key: str, target: IO[bytes], progress: Progress) -> None:
        self._key, self._target, self._progress = key, target, progress
        self._head = b""  # the first bytes, until there are enough to tell
        self.size = 0

    def write(self, data: bytes) -> int:
        if self.size < 8:
            self._head += bytes(data[:8])
            if is_sealed(self._head):
                raise _encrypted(self._key)
        self._target.write(data)
        self.size += len(data)
        _report(self._progress, len(data))
        return len(data)


def _encrypted(key: str) -> EncryptionError:
    return EncryptionError(
        f"{key} is encrypted: this database was replicated with encryption_key. Pass the same "
        "encryption_key (or encryption_keys=[...]) to read it; the command line tool reads it "
        "from the environment variable PEEWEE_S3_ENCRYPTION_KEY (or --encryption-key-env NAME)")

