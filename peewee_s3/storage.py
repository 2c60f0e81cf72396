"""storage: bytes in, bytes out, conditional writes; knows nothing of SQLite or peewee.

One `Storage` per root of an fsspec filesystem (S3 through s3fs, a local directory, or any other
fsspec protocol). Every error from fsspec, s3fs, botocore or the OS is turned into a
`peewee_s3.errors` exception by `_translate`, and no message, repr or log line holds a secret.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator, Mapping, Optional, Union
from urllib.parse import urlsplit

import aiohttp
import fsspec
from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError
from botocore.exceptions import ConnectionError as EndpointUnreachable
from fsspec.asyn import sync

from .errors import (
    ConfigurationError,
    LocalWriteError,
    ObjectNotFoundError,
    PeeweeS3Error,
    PreconditionFailedError,
    StorageError,
)
from .ranges import default_streams, download_ranges, worth_it

CHUNK_SIZE = 8 * 2**20  # one part of a streamed transfer; about one part is in memory at a time
STREAM_PIECE = 2**20  # what an S3 download hands to the caller's file at a time
RETRIES = {"mode": "standard", "total_max_attempts": 3}  # botocore's retries; we add none
WORKING_PROTOCOLS = "s3://bucket[/path], file:///dir, memory://name, or another fsspec protocol"
_LOCAL_MARK = ".peewee-s3-"  # in the names of local temp and lock files, which list() hides

Progress = Optional[Callable[[int], object]]
Tag = str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


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
) -> Storage:
    """Open the storage named by an fsspec URL, or by a filesystem instance plus `storage_root`.
    `download_streams`: ranged GETs at once for a large S3 download (None: by endpoint)."""
    store = _open_storage(storage, storage_root, region, endpoint_url, force_path_style,
                          credentials, storage_options)
    if download_streams is not None and isinstance(store, S3Storage):
        store.download_streams = download_streams
    return store


def _open_storage(storage, storage_root, region, endpoint_url, force_path_style, credentials,
                  storage_options) -> Storage:
    s3_options = {
        "region": region,
        "endpoint_url": endpoint_url,
        "force_path_style": force_path_style,
        "credentials": credentials,
    }
    given = [name for name, value in s3_options.items() if value]
    secrets = _secrets(credentials, storage_options)
    if isinstance(storage, fsspec.AbstractFileSystem):
        if given or storage_options:
            raise ConfigurationError(
                f"{', '.join(given or ['storage_options'])} cannot be applied to a filesystem "
                "instance: pass them when you create the filesystem"
            )
        protocols = _protocols(storage)
        root = storage._strip_protocol(storage_root or "").rstrip("/")
        where = f"{protocols[0]}://{root}"
        return _storage_class(protocols)(storage, root, where, secrets=secrets, owns_fs=False)
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
    fs = fsspec.filesystem(protocols[0], **options)
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs retries on top of botocore's (15 requests for one write): no
    root = fs._strip_protocol(storage).rstrip("/")
    where = _safe_url(storage) + (f" (endpoint {endpoint_url})" if endpoint_url else "")
    if "file" in protocols:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(f"cannot create storage directory {root}: {error}") from None
    return _storage_class(protocols)(fs, root, where, secrets=secrets, owns_fs=True)


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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where}>"

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def describe(self) -> str:
        return self._where

    def read(self, key: str) -> bytes:
        return self.read_tagged(key)[0]

    def read_tagged(self, key: str) -> tuple[bytes, Tag]:
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> Tag:
        """Overwrite atomically: readers see the old object or the new one, never a part."""
        return self.upload(key, io.BytesIO(data))

    def create(self, key: str, data: bytes) -> Tag:
        """Create if absent, else raise PreconditionFailedError."""
        try:
            return self.upload(key, io.BytesIO(data), create_only=True)
        except PreconditionFailedError as error:
            return self._landed(key, data, error)

    def replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        """Replace if the object still has `tag`, else raise PreconditionFailedError."""
        try:
            return self._replace(key, data, tag)
        except PreconditionFailedError as error:
            return self._landed(key, data, error)

    def _replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        raise NotImplementedError

    def _landed(self, key: str, data: bytes, error: PreconditionFailedError) -> Tag:
        """A conditional write refused because an earlier attempt of the same request landed:
        botocore retries a PUT whose answer was lost, and the retry meets its own object. The
        object then holds exactly our bytes (ours carry unique ids and times): that is success."""
        try:
            stored, tag = self.read_tagged(key)
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

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, at any depth, sorted by key."""
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
        except (OSError, BotoCoreError, aiohttp.ClientError) as error:
            raise _translate(error, key, self, conditional=conditional) from error


class S3Storage(Storage):
    """S3 and S3-compatible servers through s3fs, with real conditional requests.

    create sends If-None-Match: *, replace and delete_if send If-Match: <ETag>; tags are ETags.
    Known to work on AWS S3, moto and SeaweedFS. A server that ignores these headers (such as
    `rclone serve s3`) silently makes every conditional write succeed: do not use one.
    """

    def __init__(self, fs, root, where, **kwargs):
        super().__init__(fs, root, where, **kwargs)
        self.bucket, _, prefix = root.partition("/")
        if not self.bucket:
            raise ConfigurationError(f"{where} names no bucket: use s3://bucket[/path]")
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        endpoint = getattr(fs, "endpoint_url", None) or fs.client_kwargs.get("endpoint_url")
        self.download_streams = default_streams(endpoint)  # open_storage may set it

    def read_tagged(self, key: str) -> tuple[bytes, Tag]:
        with self._errors(key):
            return sync(self.fs.loop, self._get_object, key)

    def _replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        with self._errors(key, conditional=True):
            return self._call("put_object", key, Body=data, IfMatch=tag)["ETag"]

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._call("delete_object", key)

    def delete_if(self, key: str, tag: Tag) -> None:
        with self._errors(key, conditional=True):
            self._call("delete_object", key, IfMatch=tag)

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._call("head_object", key)
        except ObjectNotFoundError:
            return False
        return True

    def upload(
        self, key: str, fileobj: IO[bytes], *, create_only: bool = False, progress: Progress = None
    ) -> Tag:
        condition = {"IfNoneMatch": "*"} if create_only else {}
        with self._errors(key):
            part, size = _read_part(fileobj, CHUNK_SIZE)
            if size < CHUNK_SIZE:  # small enough for one PUT
                tag = self._call("put_object", key, Body=part, **condition)["ETag"]
                _report(progress, size)
                return tag
            upload_id = self._call("create_multipart_upload", key)["UploadId"]
            try:
                parts = []
                while size:
                    number = len(parts) + 1
                    out = self._call(
                        "upload_part", key, Body=part, UploadId=upload_id, PartNumber=number
                    )
                    checksums = {k: v for k, v in out.items() if k.startswith("Checksum")}
                    parts.append({"PartNumber": number, "ETag": out["ETag"], **checksums})
                    _report(progress, size)
                    del part  # before the next part is read: one part in memory at a time
                    part, size = _read_part(fileobj, CHUNK_SIZE)
                return self._call(
                    "complete_multipart_upload",
                    key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **condition,
                )["ETag"]
            except BaseException:
                with contextlib.suppress(Exception):
                    self._call("abort_multipart_upload", key, UploadId=upload_id)
                raise

    def download(self, key: str, fileobj: IO[bytes], *, progress: Progress = None) -> int:
        """One GET, its body read in small pieces (s3fs's file object would hold 2-3 parts);
        or, for a large object and `download_streams` > 1, that many ranged GETs at once."""
        if self.download_streams > 1:
            with self._errors(key):
                head = self._call("head_object", key)
                size, tag = head["ContentLength"], head["ETag"]
                if worth_it(size, self.download_streams):
                    return download_ranges(functools.partial(self._read_range, key, tag), size,
                                           self.download_streams,
                                           functools.partial(_write_part, fileobj, progress))
        total = 0
        with self._errors(key):
            body = self._call("get_object", key)["Body"]
            try:
                while piece := sync(self.fs.loop, _read_piece, body, STREAM_PIECE):
                    _write_local(fileobj, piece)
                    total += len(piece)
                    _report(progress, len(piece))
            finally:
                body.close()
        return total

    def close(self) -> None:
        creator = getattr(self.fs, "_s3creator", None)
        if self._owns_fs and creator is not None and self.fs._s3 is not None:
            self.fs.close_session(self.fs.loop, creator)
            self.fs._s3 = None

    def _call(self, method: str, key: str, **kwargs) -> dict:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self._prefix + key, **kwargs)

    def _read_range(self, key: str, tag: Tag, first: int, last: int) -> bytes:
        return sync(self.fs.loop, self._get_range, key, first, last, tag)

    async def _get_range(self, key: str, first: int, last: int, tag: Tag) -> bytes:
        response = await self.fs._call_s3("get_object", Bucket=self.bucket,
                                          Key=self._prefix + key, Range=f"bytes={first}-{last}",
                                          IfMatch=tag)  # every part of the same version
        try:
            return await response["Body"].read()
        finally:
            response["Body"].close()

    async def _get_object(self, key: str) -> tuple[bytes, Tag]:
        response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self._prefix + key)
        try:
            return await response["Body"].read(), response["ETag"]
        finally:
            response["Body"].close()


class LocalStorage(Storage):
    """A local directory; conditional writes are atomic between processes on this machine.

    create links a complete, fsynced temp file into place (a link fails if the name exists);
    replace and delete_if compare the tag under an flock on a sibling lock file. Tags are the
    sha256 of the content. Temp and lock files are hidden from `list`.
    """

    def read_tagged(self, key: str) -> tuple[bytes, Tag]:
        with self._errors(key), open(self._path(key), "rb") as f:
            data = f.read()
        return data, hashlib.sha256(data).hexdigest()

    def _replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        path = self._path(key)
        with self._errors(key, conditional=True), self._locked(path):
            self._check_tag(key, path, tag)
            temp, new_tag = self._write_temp(path, io.BytesIO(data), None)
            _move_into_place(temp, path, os.replace)
        return new_tag

    def delete_if(self, key: str, tag: Tag) -> None:
        path = self._path(key)
        with self._errors(key, conditional=True), self._locked(path):
            self._check_tag(key, path, tag)
            os.unlink(path)

    def upload(
        self, key: str, fileobj: IO[bytes], *, create_only: bool = False, progress: Progress = None
    ) -> Tag:
        path = self._path(key)
        with self._errors(key):
            temp, tag = self._write_temp(path, fileobj, progress)
            _move_into_place(temp, path, os.link if create_only else os.replace)
        return tag

    def _listed(self, key: str) -> bool:
        name = key.rpartition("/")[2]
        return not (name.startswith(".") and _LOCAL_MARK in name)

    def _write_temp(self, path: str, fileobj: IO[bytes], progress: Progress) -> tuple[str, Tag]:
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, f".{name}{_LOCAL_MARK}{uuid.uuid4().hex}.tmp")
        digest = hashlib.sha256()
        try:
            with open(temp, "xb") as out:
                while chunk := fileobj.read(CHUNK_SIZE):
                    out.write(chunk)
                    digest.update(chunk)
                    _report(progress, len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return temp, digest.hexdigest()

    @contextlib.contextmanager
    def _locked(self, path: str) -> Iterator[None]:
        folder, name = os.path.split(path)
        with open(os.path.join(folder, f".{name}{_LOCAL_MARK}lock"), "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def _check_tag(self, key: str, path: str, tag: Tag) -> None:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                digest.update(chunk)
        if digest.hexdigest() != tag:
            raise _precondition_failed(key, self)


# Serialises the conditional writes of every FsspecStorage in this process.
_PROCESS_LOCK = threading.Lock()


class FsspecStorage(Storage):
    """Any other fsspec filesystem (memory://, gcs://, ...); tags are the sha256 of the content.

    Conditional writes are atomic only between threads of this process (one lock): NOT safe
    between processes. Use s3:// or file:// for a database that several processes share.
    """

    def read_tagged(self, key: str) -> tuple[bytes, Tag]:
        with self._errors(key):
            data = self.fs.cat_file(self._path(key))
        return data, hashlib.sha256(data).hexdigest()

    def _replace(self, key: str, data: bytes, tag: Tag) -> Tag:
        with _PROCESS_LOCK:
            self._check_tag(key, tag)
            return self.write(key, data)

    def delete_if(self, key: str, tag: Tag) -> None:
        with _PROCESS_LOCK:
            self._check_tag(key, tag)
            self.delete(key)

    def upload(
        self, key: str, fileobj: IO[bytes], *, create_only: bool = False, progress: Progress = None
    ) -> Tag:
        path = self._path(key)
        digest = hashlib.sha256()
        with self._errors(key), _PROCESS_LOCK if create_only else contextlib.nullcontext():
            if create_only and self.fs.exists(path):
                raise _precondition_failed(key, self)
            with self.fs.open(path, "wb") as out:
                while chunk := fileobj.read(CHUNK_SIZE):
                    out.write(chunk)
                    digest.update(chunk)
                    _report(progress, len(chunk))
        return digest.hexdigest()

    def _check_tag(self, key: str, tag: Tag) -> None:
        with self._errors(key, conditional=True):
            current = self.fs.cat_file(self._path(key))
        if hashlib.sha256(current).hexdigest() != tag:
            raise _precondition_failed(key, self)


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
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(
            f"no usable credentials for {storage.describe()}: pass credentials="
            "{'access_key_id': ..., 'secret_access_key': ...} or set the AWS_* variables"
        )
    if isinstance(error, (EndpointUnreachable, aiohttp.ClientConnectionError)):
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


def _s3fs_options(region, endpoint_url, force_path_style, credentials) -> dict:
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


def _secrets(credentials, storage_options) -> list:
    values = list((credentials or {}).values())
    secret_options = ("key", "secret", "token", "password")
    values += [v for k, v in (storage_options or {}).items() if k in secret_options]
    return [v for v in values if isinstance(v, str) and len(v) >= 8]  # shorter: no real secret


def _redact(text: str, secrets) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _safe_url(url: str) -> str:
    """The URL without any user:password@ part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _read_part(fileobj: IO[bytes], size: int) -> tuple[io.BytesIO, int]:
    """Up to `size` bytes of `fileobj` (fewer only at its end), and how many.

    They are read straight into a BytesIO that owns its buffer: given bytes, botocore wraps them
    in a BytesIO that aiohttp copies before sending, which would hold each part twice.
    """
    part = io.BytesIO()
    part.seek(size - 1)
    part.write(b"\0")
    length = 0
    with part.getbuffer() as buffer:
        while length < size:
            with buffer[length:] as rest:
                count = fileobj.readinto(rest)
            if not count:
                break
            length += count
    part.truncate(length)
    part.seek(0)
    return part, length


def _write_part(fileobj: IO[bytes], progress: Progress, part: bytes) -> None:
    _write_local(fileobj, part)
    _report(progress, len(part))


async def _read_piece(body, size: int) -> bytes:
    """Up to `size` bytes of a streamed S3 body (aiohttp hands it out in smaller bits)."""
    bits, length = [], 0
    while length < size and (bit := await body.read(size - length)):
        bits.append(bit)
        length += len(bit)
    return b"".join(bits)


def _report(progress: Progress, nbytes: int) -> None:
    if progress and nbytes:
        progress(nbytes)


def _move_into_place(temp: str, path: str, move: Callable[[str, str], None]) -> None:
    """os.replace or os.link the fsynced temp file to `path`, then make that durable."""
    try:
        move(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    folder = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _write_local(fileobj: IO[bytes], data: bytes) -> None:
    """Write downloaded bytes; a local failure (disk full) is not the storage's fault."""
    try:
        fileobj.write(data)
    except OSError as error:
        raise LocalWriteError(f"writing the downloaded object locally failed: {error}") from error


class _HideSessionTokens(logging.Filter):
    """botocore logs each signed request at DEBUG, session token included: blank it out, so
    that no log of this process shows a credential (the key id and signature are not secret)."""

    TOKEN = re.compile(r"(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^\s'\",}]+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = self.TOKEN.sub(r"\1***", message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


for _name in ("botocore.auth", "botocore.endpoint", "aiobotocore.endpoint"):
    logging.getLogger(_name).addFilter(_HideSessionTokens())
