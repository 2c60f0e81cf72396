"""peewee-s3: a peewee SqliteDatabase continuously replicated to object storage."""

__version__ = "0.1.0"

from .database import S3SqliteDatabase  # noqa: E402
from .errors import (ConfigurationError, LeaseHeldError, LeaseLostError,  # noqa: E402
                     LocalStateError, NothingToRestoreError, PeeweeS3Error,
                     ReplicaCorruptError, StorageError)
from .restore import restore  # noqa: E402

__all__ = ["S3SqliteDatabase", "restore", "ConfigurationError", "LeaseHeldError",
           "LeaseLostError", "LocalStateError", "NothingToRestoreError", "PeeweeS3Error",
           "ReplicaCorruptError", "StorageError"]
