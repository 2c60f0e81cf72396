"""storage.s3: S3 and S3-compatible servers through s3fs — conditional requests, multipart
uploads, and downloads streamed in small pieces or as several ranged GETs at once.

It never retries on its own: botocore's retries (set where the filesystem is opened) are the only.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import IO, Optional

from fsspec.asyn import sync

from ..errors import ConfigurationError, ObjectNotFoundError
from ..ranges import default_streams, download_ranges, worth_it
from .base import CHUNK_SIZE, ObjectInfo, Progress, Storage, Tag, _report, _write_local
from .redaction import _safe_url

STREAM_PIECE = 2**20  # what an S3 download hands to the caller's file at a time


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
        self._endpoint = _safe_url(endpoint) if endpoint else None

    def _read_tagged(self, key: str) -> tuple[bytes, Tag]:
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

    def list(self, prefix: str = "", start_after: str = "") -> list[ObjectInfo]:
        """As Storage.list; after `start_after`, by ListObjectsV2's StartAfter: a restore lists
        only the segments after the last merged one, not the thousands before it."""
        if not start_after:
            return super().list(prefix)
        objects, page = [], {"IsTruncated": True}
        with self._errors(prefix or "/"):
            while page.get("IsTruncated"):
                more = ({"ContinuationToken": page["NextContinuationToken"]}
                        if "NextContinuationToken" in page else {})
                page = self.fs.call_s3("list_objects_v2", Bucket=self.bucket,
                                       Prefix=self._prefix + prefix,
                                       StartAfter=self._prefix + start_after, **more)
                objects += [ObjectInfo(o["Key"][len(self._prefix):], o["Size"])
                            for o in page.get("Contents", ()) if not o["Key"].endswith("/")]
        return objects

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


def _read_part(fileobj: IO[bytes], size: int) -> tuple[io.BytesIO, int]:
    """Up to `size` bytes of `fileobj` (fewer only at its end), and how many.

    They are read straight into a BytesIO that owns its buffer: given bytes, botocore wraps them
    in a BytesIO that aiohttp copies before sending, which would hold each part twice.
    """
    left = _left_in(fileobj)
    if left is not None:
        size = min(size, left)  # a small object's part is its size, not a CHUNK_SIZE of zeros
    part = io.BytesIO()
    if size <= 0:
        return part, 0
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


def _left_in(fileobj: IO[bytes]) -> Optional[int]:
    """The bytes left to read in an in-memory file (a segment, lock.json), else None."""
    if not isinstance(fileobj, io.BytesIO):
        return None
    with fileobj.getbuffer() as buffer:
        return max(0, buffer.nbytes - fileobj.tell())


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
