"""storage.opening: `open_storage` — checks the caller's options, builds the fsspec filesystem
(with botocore's retries and s3fs's options for s3://) and picks the backend for its protocol.

Every option is validated here, once; the backends receive a ready filesystem and never read
the caller's options.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping, Optional, Union
from urllib.parse import urlsplit

import fsspec

from ..envelope import Keyring
from ..errors import ConfigurationError, NothingToRestoreError
from .base import CHUNK_SIZE, Storage
from .local import LocalStorage
from .other import FsspecStorage
from .redaction import _safe_url, _secrets
from .s3 import S3Storage
from .sealed import SealedStorage

RETRIES = {"mode": "standard", "total_max_attempts": 3}  # botocore's retries; we add none
WORKING_PROTOCOLS = "s3://bucket[/path], file:///dir, memory://name, or another fsspec protocol"


def open_storage(
    storage: Union[str, fsspec.AbstractFileSystem],
    *,
    storage_root: Optional[str] = None,
    region: Optional[str] = None,
    endpoint_url: Optional[str] = None,
    force_path_style: bool = False,
    credentials: Optional[Mapping[str, str]] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
    download_streams: Optional[int] = None,
    create_root: bool = True,
    encryption: Optional[Keyring] = None,
) -> Storage:
    """Open the storage named by an fsspec URL, or by a filesystem instance plus `storage_root`.
    `download_streams`: ranged GETs at once for a large S3 download (None: by endpoint).
    `create_root`: a writer's storage makes a missing local directory; a reader's
    (`create_root=False`) refuses it with NothingToRestoreError, so a typo leaves nothing behind.
    `encryption`: the database's keys; given (even empty), objects pass through a SealedStorage
    that seals them (an empty keyring: refuses to read sealed ones). None: the backend itself.
    """
    store = _open_storage(storage, storage_root, region, endpoint_url, force_path_style,
                          credentials, storage_options, create_root)
    if download_streams is not None and isinstance(store, S3Storage):
        store.download_streams = download_streams
    return store if encryption is None else SealedStorage(store, encryption)


# Storages shared by the sessions of this process (`share_storage`): one filesystem, and so one
# S3 client and its connection pool, per storage however many databases use it. `_shared_lock`
# guards `_shared`: what the storage was opened with -> [Storage, users].
_shared: dict = {}
_shared_lock = threading.Lock()


def share_storage(storage: Union[str, fsspec.AbstractFileSystem], **options: Any) -> Storage:
    """`open_storage(storage, **options)`, or the one already open with the very same
    arguments in this process; give it back with `release_storage`. A Storage keeps no state
    of one database (keys are passed in), so the sessions of many databases share it."""
    key = (storage if isinstance(storage, str) else id(storage),
           repr(sorted(options.items())))
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            entry = _shared[key] = [open_storage(storage, **options), 0]
        entry[1] += 1
        return entry[0]


def release_storage(store: Storage) -> None:
    """One user of a `share_storage` storage is done; the last one closes it."""
    with _shared_lock:
        for key, entry in _shared.items():
            if entry[0] is store:
                entry[1] -= 1
                if entry[1] > 0:
                    return
                del _shared[key]
                break
    store.close()


def _open_storage(storage, storage_root, region, endpoint_url, force_path_style, credentials,
                  storage_options, create_root) -> Storage:
    s3_options = {
        "region": region,
        "endpoint_url": endpoint_url,
        "force_path_style": force_path_style,
        "credentials": credentials,
    }
    given = [name for name, value in s3_options.items() if value]
    secrets = _secrets(credentials, storage_options)
    if isinstance(storage, fsspec.AbstractFileSystem):
        return _open_filesystem(storage, storage_root, given, storage_options, secrets)
    if not isinstance(storage, str):
        raise ConfigurationError(
            f"storage must be an fsspec URL ({WORKING_PROTOCOLS}) or an fsspec filesystem, "
            f"not {type(storage).__name__}"
        )
    if storage_root is not None:
        raise ConfigurationError(
            "storage_root goes with a filesystem instance; with a URL, put the path in the URL"
        )
    protocols = _protocols(_filesystem_class(storage))
    options: dict = {"skip_instance_cache": True, "use_listings_cache": False}
    if "s3" in protocols:
        options.update(_s3fs_options(region, endpoint_url, force_path_style, credentials))
    elif given:
        raise ConfigurationError(
            f"{', '.join(given)} only apply to s3:// storage, not to {_safe_url(storage)}"
        )
    for name, value in (storage_options or {}).items():  # the caller's options win, dicts merged
        options[name] = {**options[name], **value} if isinstance(options.get(name), dict) else value
    return _open_url(storage, protocols, options, secrets, create_root)


def _open_filesystem(fs, storage_root, given, storage_options, secrets) -> Storage:
    if given or storage_options:
        raise ConfigurationError(
            f"{', '.join(given or ['storage_options'])} cannot be applied to a filesystem "
            "instance: pass them when you create the filesystem"
        )
    protocols = _protocols(fs)
    root = fs._strip_protocol(storage_root or "").rstrip("/")
    where = f"{protocols[0]}://{root}"
    return _storage_class(protocols)(fs, root, where, secrets=secrets, owns_fs=False)


def _open_url(url, protocols, options, secrets, create_root) -> Storage:
    fs = fsspec.filesystem(protocols[0], **options)
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs retries on top of botocore's (15 requests for one write): no
    root = fs._strip_protocol(url).rstrip("/")
    if "file" in protocols:
        where = f"file://{root}"  # root is absolute: file:///srv/x, however the URL spelt it
        _local_root(root, where, create_root)
    else:
        where = _safe_url(url).rstrip("/")
    return _storage_class(protocols)(fs, root, where, secrets=secrets, owns_fs=True)


def _local_root(root: str, where: str, create: bool) -> None:
    """A writer makes the directory; a reader only checks that it is there."""
    if create:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(f"cannot create storage directory {root}: {error}") from None
    elif os.path.exists(root) and not os.path.isdir(root):
        raise ConfigurationError(f"{where} is a file, not a directory: check the storage URL")
    elif not os.path.isdir(root):
        raise NothingToRestoreError(
            f"{where} does not exist, so nothing was ever replicated there: check the storage "
            "URL; a writer creates the directory when it first connects")


def _check_endpoint(endpoint_url: Any) -> None:
    """botocore takes only http(s) URLs and answers anything else with a bare ValueError."""
    text = str(endpoint_url)
    if "://" not in text:
        suggested = _safe_url(f"http://{text}")
        raise ConfigurationError(
            f"endpoint_url {suggested[len('http://'):]!r} has no scheme: write "
            f"endpoint_url='{suggested}' (or https:// if the server speaks TLS)")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"endpoint_url {_safe_url(text)!r} is not an http:// or https:// URL: write it as "
            "'http://host:port', e.g. endpoint_url='http://127.0.0.1:9000'")


def _s3fs_options(region, endpoint_url, force_path_style, credentials) -> dict:
    if endpoint_url:
        _check_endpoint(endpoint_url)
    client_kwargs = {"endpoint_url": endpoint_url, "region_name": region}
    # Checksums only where S3 requires them: fewer copies of each part in memory, and servers
    # that reject the newer default checksum headers keep working.
    config_kwargs: dict = {
        "retries": dict(RETRIES),
        "request_checksum_calculation": "when_required",
    }
    if force_path_style:
        config_kwargs["s3"] = {"addressing_style": "path"}
    options = {
        "client_kwargs": {k: v for k, v in client_kwargs.items() if v},
        "config_kwargs": config_kwargs,
        "default_block_size": CHUNK_SIZE,
        "max_concurrency": 1,
    }
    if credentials is not None:
        fields = {"access_key_id": "key", "secret_access_key": "secret", "session_token": "token"}
        unknown = sorted(set(credentials) - set(fields))
        missing = [f for f in ("access_key_id", "secret_access_key") if not credentials.get(f)]
        if unknown or missing:
            raise ConfigurationError(
                f"credentials need access_key_id and secret_access_key (optional session_token); "
                f"missing: {missing or 'none'}, unknown: {unknown or 'none'}"
            )
        options.update({fields[name]: value for name, value in credentials.items() if value})
    return options


def _filesystem_class(url: str) -> type:
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as error:
        raise ConfigurationError(
            f"storage protocol {protocol!r} needs a package that is not installed: {error}"
        ) from None
    except ValueError:
        raise ConfigurationError(
            f"unknown storage protocol {protocol!r} in {_safe_url(url)}: use {WORKING_PROTOCOLS}"
        ) from None


def _protocols(fs: Union[type, fsspec.AbstractFileSystem]) -> tuple:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _storage_class(protocols: tuple) -> type:
    if "s3" in protocols:
        return S3Storage
    if "file" in protocols:
        return LocalStorage
    return FsspecStorage
