"""probe: asks the storage, once per session, whether it really refuses a second create-if-absent.

The lease is only as atomic as the storage's conditional writes; some S3 servers (`rclone serve
s3`, for one) accept If-None-Match and ignore it. The probe writes and deletes one object of
its own under the database's base key; it never touches lock.json or a generation.
"""
from __future__ import annotations

import logging
import secrets

from .errors import PreconditionFailedError, StorageError
from .storage import Storage

log = logging.getLogger("peewee_s3")

PROBE_NAME = "conditional-write-probe"


def probe_key(base_key: str) -> str:
    """A key no one else uses: `<base>/conditional-write-probe-<16 hex digits>`."""
    return f"{base_key.strip('/')}/{PROBE_NAME}-{secrets.token_hex(8)}"


def probe_conditional_writes(storage: Storage, base_key: str) -> bool:
    """Create a probe object twice with create-if-absent, then delete it.

    True when the storage refused the second create (it honours conditional writes); False when
    it accepted it. Errors of the storage itself (unreachable, access denied) are raised as
    StorageError, as for any other request.
    """
    key = probe_key(base_key)
    storage.create(key, b"first")
    try:
        storage.create(key, b"second")  # other bytes: it cannot pass for a retry of the first
    except PreconditionFailedError:
        return True
    finally:
        try:
            storage.delete(key)
        except StorageError as exc:
            log.warning("could not delete the probe object %s (%s): delete it by hand", key, exc)
    log.debug("%s accepted a second create of %s: it ignores conditional writes",
              storage.describe(), key)
    return False
