"""peewee-s3: a peewee SqliteDatabase continuously replicated to object storage."""

__version__ = "0.1.0"

from . import url  # noqa: E402,F401  (registers the s3sqlite:// scheme with playhouse.db_url)
from .aio import AsyncS3SqliteDatabase  # noqa: E402
from .database import S3SqliteDatabase  # noqa: E402
from .errors import (ConfigurationError, EncryptionError, LeaseHeldError,  # noqa: E402
                     LeaseLostError, LocalStateError, NothingToRestoreError, PeeweeS3Error,
                     ReplicaCorruptError, StorageError)
from .replica import ReadOnlyReplicaError, S3SqliteReplica  # noqa: E402
from .restore import restore  # noqa: E402
from .tenants import Tenants  # noqa: E402

__all__ = ["S3SqliteDatabase", "AsyncS3SqliteDatabase", "S3SqliteReplica", "Tenants", "restore",
           "ConfigurationError", "EncryptionError", "LeaseHeldError", "LeaseLostError",
           "LocalStateError", "NothingToRestoreError", "PeeweeS3Error", "ReadOnlyReplicaError",
           "ReplicaCorruptError", "StorageError"]
