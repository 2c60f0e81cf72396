"""errors: every exception peewee-s3 raises on purpose.

Each message says what happened, to which object, and what to do next. None may contain a
secret: build messages from keys, names and URLs with credentials removed, never from options.
"""


class PeeweeS3Error(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(PeeweeS3Error, ValueError):
    """An option is missing or wrong, or the storage cannot do what the options ask."""


class EncryptionError(ConfigurationError):
    """The database is encrypted and no key, or not the key it was written with, was given;
    or a key was given for a database stored in plain."""


class StorageError(PeeweeS3Error, OSError):
    """The storage could not be read or written (after botocore's retries)."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """An object the caller asked for does not exist in the storage."""


class TornObjectError(ObjectNotFoundError):
    """The object is empty: an upload its writer did not finish. Nothing peewee-s3 stores is
    empty, but a server such as SeaweedFS keeps a zero-length object when the client dies
    after sending a PUT's headers. It reads as absent; `create` may take its place."""

    def __init__(self, message: str, tag: str) -> None:
        super().__init__(message)
        self.tag = tag


class PreconditionFailedError(StorageError):
    """A conditional write or delete lost: the object exists, or changed since it was read."""


class LeaseError(PeeweeS3Error):
    """Base class of the lease errors."""


class LeaseHeldError(LeaseError):
    """Another live writer holds the lease on this database."""


class LeaseLostError(LeaseError):
    """This writer lost its lease (another took it over): it is fenced and may not write."""


class ReplicaCorruptError(PeeweeS3Error):
    """An object in the storage is corrupt, truncated or missing from its chain."""


class LocalStateError(PeeweeS3Error):
    """The local file and the storage disagree in a way that cannot be resolved safely."""


class SessionClosedError(PeeweeS3Error):
    """The replica session was shut down while this operation ran: connect() again."""


class LocalWriteError(PeeweeS3Error, OSError):
    """A local file could not be written (disk full, read-only directory, ...)."""


class NothingToRestoreError(PeeweeS3Error, FileNotFoundError):
    """The storage holds no complete generation of this database."""
