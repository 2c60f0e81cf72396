"""storage: bytes in, bytes out, conditional writes; knows nothing of SQLite or peewee.

One `Storage` per root of an fsspec filesystem: `s3` (S3 through s3fs), `local` (a local
directory) or `other` (any other fsspec protocol), opened by `opening.open_storage`. Every error
from fsspec, s3fs, botocore or the OS is turned into a `peewee_s3.errors` exception by
`translation`, and `redaction` keeps every message, repr and log line free of secrets.
A database's objects pass through `sealed` (encryption at rest, see `peewee_s3.envelope`).
"""

from .base import CHUNK_SIZE, ObjectInfo, Progress, Storage, Tag
from .local import LocalStorage
from .opening import RETRIES, WORKING_PROTOCOLS, open_storage, release_storage, share_storage
from .other import FsspecStorage
from .s3 import STREAM_PIECE, S3Storage
from .sealed import SealedStorage

__all__ = [
    "CHUNK_SIZE",
    "RETRIES",
    "STREAM_PIECE",
    "WORKING_PROTOCOLS",
    "FsspecStorage",
    "LocalStorage",
    "ObjectInfo",
    "Progress",
    "S3Storage",
    "SealedStorage",
    "Storage",
    "Tag",
    "open_storage",
    "release_storage",
    "share_storage",
]
