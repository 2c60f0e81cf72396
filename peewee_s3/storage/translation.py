"""storage.translation: the one place that turns fsspec, s3fs, botocore and OS errors into
`peewee_s3.errors` exceptions, with a message that says what to do next and holds no secret.

Callers never look at error codes: they catch what this module returns. botocore and aiohttp are
looked up, never imported: an error of a library that was never imported cannot have been raised,
and importing aiohttp costs a quarter of a second that a `file://` user or the CLI should not pay.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional

from ..errors import ObjectNotFoundError, PreconditionFailedError, StorageError
from .redaction import _redact

if TYPE_CHECKING:
    from .base import Storage


def _is_backend_error(error: BaseException) -> bool:
    """Whether `error` came from the OS, fsspec, s3fs, botocore or aiohttp (and so is ours to
    translate)."""
    return isinstance(error, (OSError, *_loaded("botocore.exceptions", "BotoCoreError"),
                              *_loaded("aiohttp", "ClientError")))


def _loaded(module: str, *names: str) -> tuple[type, ...]:
    """The classes `names` of `module` if it is imported, else none."""
    found = sys.modules.get(module)
    return tuple(getattr(found, name) for name in names) if found else ()


def _translate(
    error: BaseException, key: str, storage: Storage, *, conditional: bool = False
) -> StorageError:
    """The one place that turns fsspec, s3fs, botocore and OS errors into ours."""
    code = _s3_error_code(error)
    target = f"{key!r} in {storage.describe()}"
    if isinstance(error, FileExistsError) or code in (
        "PreconditionFailed",
        "412",
        "ConditionalRequestConflict",
        "409",
    ):
        return _precondition_failed(key, storage)
    if code == "NoSuchBucket":
        bucket = getattr(storage, "bucket", "")
        return StorageError(
            f"bucket {bucket!r} does not exist ({storage.describe()}): create it "
            f"(for example `aws s3 mb s3://{bucket}`) or fix the storage URL"
        )
    if isinstance(error, FileNotFoundError):
        if conditional:
            return _precondition_failed(key, storage)
        return ObjectNotFoundError(f"no object {target}")
    if code is not None and (isinstance(error, PermissionError) or code == "403"):
        return StorageError(
            f"access to {target} was denied ({code}): check the credentials (access key id, "
            "secret access key, session token) and that they may read and write this bucket"
        )
    if isinstance(error, _loaded("botocore.exceptions", "NoCredentialsError",
                                 "PartialCredentialsError")):
        return StorageError(
            f"no usable credentials for {storage.describe()}: pass credentials="
            "{'access_key_id': ..., 'secret_access_key': ...} or set the AWS_* variables"
        )
    if isinstance(error, (*_loaded("botocore.exceptions", "ConnectionError"),
                          *_loaded("aiohttp", "ClientConnectionError"))):
        return StorageError(
            f"cannot reach the endpoint of {storage.describe()}: check endpoint_url and that the "
            f"server is running ({_redact(str(error), storage._secrets)})"
        )
    detail = _redact(f"{type(error).__name__}: {error}", storage._secrets)
    return StorageError(f"storage operation on {target} failed: {detail}")


def _precondition_failed(key: str, storage: Storage) -> PreconditionFailedError:
    return PreconditionFailedError(
        f"conditional write of {key!r} in {storage.describe()} lost: the object exists, "
        "was changed or was deleted since it was read; read it again and retry"
    )


def _s3_error_code(error: BaseException) -> Optional[str]:
    """The S3 error code behind an s3fs exception (s3fs keeps the botocore error as the cause)."""
    while error is not None:
        response = getattr(error, "response", None)
        if isinstance(response, dict) and "Error" in response:
            return str(response["Error"].get("Code"))
        error = error.__cause__
    return None
