"""envelope: encryption at rest — an object sealed with AES-256-GCM in 64 KiB chunks, under a
per-object key derived from the database key and a random salt, with its storage key bound in.

Bytes in, bytes out, whole or streamed; it knows nothing of SQLite, segments or backends, and
never logs, shows or stores a key: `Keyring` names its keys by id only. See docs/FORMAT.md,
"Encryption at rest".
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
from typing import IO, Callable, Iterator, Optional, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import EncryptionError, ReplicaCorruptError

MAGIC = b"PWS3ENC1"
KEY_SIZE = 32
KEY_ID_SIZE = 8
SALT_SIZE = 32
HEADER_SIZE = len(MAGIC) + KEY_ID_SIZE + SALT_SIZE
CHUNK = 64 * 1024       # plaintext bytes per chunk (the last one may be shorter, even empty)
TAG_SIZE = 16           # AES-GCM's tag, after each chunk's ciphertext
_KEY_ID_CONTEXT = b"peewee-s3 key id\x00"
_HKDF_INFO = b"peewee-s3 envelope 1"
_CHUNK_AD = struct.Struct(">QB")     # chunk index, last-chunk flag
_NAME_LENGTH = struct.Struct(">I")

Progress = Optional[Callable[[int], object]]


def key_id(key: bytes) -> bytes:
    """What an object's header says of the key that sealed it: the first 8 bytes of
    SHA-256("peewee-s3 key id\\0" + key). It tells keys apart and reveals nothing of them."""
    return hashlib.sha256(_KEY_ID_CONTEXT + key).digest()[:KEY_ID_SIZE]


class Keyring:
    """The keys of one database: the first seals new objects, any of them opens old ones.

    Empty, it seals nothing and refuses to open a sealed object (the database must be
    plain). Its repr shows the ids of its keys, never a key."""

    def __init__(self, keys: Sequence[bytes] = ()) -> None:
        self._keys: dict = {}
        for key in keys:
            self._keys.setdefault(key_id(key), bytes(key))
        self._sealing = key_id(keys[0]) if keys else None

    def __bool__(self) -> bool:
        return self._sealing is not None

    def __repr__(self) -> str:
        return f"<Keyring key ids {', '.join(self.ids) or 'none'}>"

    @property
    def ids(self) -> list:
        """The hex ids of the keys, the sealing one first."""
        return [i.hex() for i in self._keys]

    def seal(self, name: str, data: bytes) -> bytes:
        """`data` sealed for storage at key `name`, with the first key."""
        chunks = self._sealer(name)
        return chunks.header + b"".join(_sealed(chunks, io.BytesIO(data), None))

    def open(self, name: str, stored: bytes) -> bytes:
        """The plaintext of the object stored at `name`; EncryptionError if no key of the ring
        sealed it, ReplicaCorruptError if it fails authentication."""
        out = io.BytesIO()
        opener = UnsealingWriter(self, name, out)
        opener.write(stored)
        opener.finish()
        return out.getvalue()

    def _sealer(self, name: str) -> _Chunks:
        """A new object's header (a fresh salt) and the AEAD of its chunks."""
        if self._sealing is None:
            raise EncryptionError("no encryption key to seal with")  # a caller's bug
        salt = os.urandom(SALT_SIZE)
        return _Chunks(self._keys[self._sealing], MAGIC + self._sealing + salt, name)

    def _opener(self, name: str, header: bytes) -> _Chunks:
        """The AEAD of a stored object's chunks, from its header: the key its id names."""
        if not is_sealed(header):
            raise _not_sealed(name)
        stored_id = header[len(MAGIC):len(MAGIC) + KEY_ID_SIZE]
        key = self._keys.get(stored_id)
        if key is None:
            raise EncryptionError(
                f"{name} is encrypted with another key (key id {stored_id.hex()}; the keys "
                f"given have ids {', '.join(self.ids)}): pass the key it was written with "
                "(encryption_keys=[new, old, ...] reads with any of them)")
        return _Chunks(key, header, name)


def is_sealed(prefix: bytes) -> bool:
    """Whether stored bytes that start with `prefix` (8 bytes or more) are a sealed object."""
    return bytes(prefix[:len(MAGIC)]) == MAGIC


def plain_size(stored_size: int) -> int:
    """The plaintext length of a sealed object of `stored_size` bytes (the stored size itself
    if no sealed object has that length: reading it will say what is wrong)."""
    body = stored_size - HEADER_SIZE
    chunks = max(1, -(-body // (CHUNK + TAG_SIZE)))
    size = body - chunks * TAG_SIZE
    return size if size >= 0 else stored_size


class _Chunks:
    """The chunks of one object: its own AES-256-GCM key (HKDF-SHA256 of the database key and
    the header's salt), and the associated data each chunk binds — the header, the object's
    storage key, the chunk's index and whether it is the last."""

    def __init__(self, key: bytes, header: bytes, name: str) -> None:
        salt = header[len(MAGIC) + KEY_ID_SIZE:HEADER_SIZE]
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=_HKDF_INFO)
        self._cipher = AESGCM(hkdf.derive(key))
        encoded = name.encode()
        self.header = header
        self._ad_prefix = header + _NAME_LENGTH.pack(len(encoded)) + encoded
        self._index = 0

    def seal(self, plaintext: bytes, last: bool) -> bytes:
        nonce, ad = self._next(last)
        return self._cipher.encrypt(nonce, plaintext, ad)

    def open(self, sealed: bytes | memoryview, last: bool) -> bytes:
        nonce, ad = self._next(last)
        return self._cipher.decrypt(nonce, sealed, ad)

    def _next(self, last: bool) -> tuple:
        """The nonce (the chunk's index: each object has a key of its own, so no nonce is used
        twice with a key) and the associated data of the next chunk."""
        index, self._index = self._index, self._index + 1
        return index.to_bytes(12, "big"), self._ad_prefix + _CHUNK_AD.pack(index, last)


def _sealed(chunks: _Chunks, source: IO[bytes], progress: Progress) -> Iterator[bytes]:
    """Each chunk of `source` sealed, in order; one chunk read ahead tells the last."""
    plaintext = _read_chunk(source, progress)
    while True:
        following = _read_chunk(source, progress)
        yield chunks.seal(plaintext, last=not following)
        if not following:
            return
        plaintext = following


def _read_chunk(source: IO[bytes], progress: Progress) -> bytes:
    parts, size = [], 0
    while size < CHUNK:
        part = source.read(CHUNK - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    if progress and size:
        progress(size)
    return b"".join(parts)


class SealingReader(io.RawIOBase):
    """Reads as the sealed form of everything `source` holds, for a streamed upload: header,
    then each chunk's ciphertext and tag. Holds about two chunks at a time; `progress` gets
    the plaintext bytes consumed."""

    def __init__(self, keyring: Keyring, name: str, source: IO[bytes],
                 progress: Progress = None) -> None:
        super().__init__()
        chunks = keyring._sealer(name)
        self._pieces = _sealed(chunks, source, progress)
        self._out = memoryview(chunks.header)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with memoryview(buffer).cast("B") as target:
            filled = 0
            while filled < len(target):
                if not self._out:
                    piece = next(self._pieces, None)
                    if piece is None:
                        break
                    self._out = memoryview(piece)
                count = min(len(target) - filled, len(self._out))
                target[filled:filled + count] = self._out[:count]
                self._out = self._out[count:]
                filled += count
            return filled


class UnsealingWriter:
    """Takes a sealed object's bytes in order, as they arrive, and writes its plaintext to
    `target` one authenticated chunk at a time: nothing that failed its check is ever written.
    `finish()` opens the last chunk; an object cut short, reordered or renamed fails there or
    before. `progress` gets the plaintext bytes written."""

    def __init__(self, keyring: Keyring, name: str, target: IO[bytes],
                 progress: Progress = None) -> None:
        self._keyring, self._name = keyring, name
        self._target, self._progress = target, progress
        self._buffer = bytearray()
        self._chunks: Optional[_Chunks] = None
        self.size = 0  # plaintext bytes written

    def write(self, data: bytes) -> int:
        view, sealed = memoryview(data).cast("B"), CHUNK + TAG_SIZE
        if self._chunks is None:
            taken = HEADER_SIZE - len(self._buffer)
            self._buffer += view[:taken]
            view = view[taken:]
            if len(self._buffer) < HEADER_SIZE:
                return len(data)
            self._chunks = self._keyring._opener(self._name, bytes(self._buffer))
            self._buffer = bytearray()
        if self._buffer:  # complete the chunk begun by an earlier write
            taken = sealed - len(self._buffer)
            self._buffer += view[:taken]
            view = view[taken:]
            if not view:  # it may be the last chunk: only what follows will tell
                return len(data)
            self._emit(bytes(self._buffer), last=False)
            self._buffer = bytearray()
        while len(view) > sealed:  # a chunk is not the last while more bytes follow it
            self._emit(view[:sealed], last=False)
            view = view[sealed:]
        self._buffer += view
        return len(data)

    def finish(self) -> int:
        """Open the last chunk; returns the plaintext length of the object."""
        if self._chunks is None:
            if not is_sealed(self._buffer):
                raise _not_sealed(self._name)
            raise _corrupt(self._name, "it is shorter than its header")
        if len(self._buffer) < TAG_SIZE:
            raise _corrupt(self._name, "it was cut short")
        self._emit(bytes(self._buffer), last=True)
        self._buffer = bytearray()
        return self.size

    def _emit(self, sealed: bytes | memoryview, last: bool) -> None:
        try:
            plaintext = self._chunks.open(sealed, last)
        except InvalidTag:
            raise _corrupt(self._name, "it fails authentication: it was damaged, cut short or "
                           "reordered, or was stored under another name") from None
        self._target.write(plaintext)
        self.size += len(plaintext)
        if self._progress and plaintext:
            self._progress(len(plaintext))


def _not_sealed(name: str) -> EncryptionError:
    return EncryptionError(
        f"{name} is not encrypted, but encryption keys were given: this database was replicated "
        "without encryption_key (or the object was replaced by someone who cannot encrypt). "
        "Read it without the key; to encrypt an existing database, restore it and replicate "
        "the restored file under a new database_name with encryption_key")


def _corrupt(name: str, why: str) -> ReplicaCorruptError:
    return ReplicaCorruptError(
        f"encrypted object {name} is corrupt: {why}. Restore to an earlier time or another "
        "generation (peewee-s3 generations lists them)")
