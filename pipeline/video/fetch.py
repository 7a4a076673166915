"""Fetch a video's bytes from any fsspec store to a local file (a shard member by ranged reads of its own bytes only:
one per 8 MiB chunk, nothing before or after it).

One request per video when the listing knew its size (a prefix listing, a manifest with a size column,
a shard's index): the size check uses it and the object is read with one GET (ranged GETs of its own bytes for a shard member). A video listed without a size (a manifest row without one) costs a HEAD first. An object that
is gone when read (deleted after listing, or a manifest row naming nothing) is an `ObjectMissing` error
row of the fetch stage; the run goes on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from fsspec.spec import AbstractBufferedFile

from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy, StorageUnavailable, retry_call
from pipeline.io.storage import get_fs
from pipeline.video.errors import AccessDenied, Deadline, EmptyVideo, ObjectMissing, VideoTooLarge


def _fetch_error(exc: BaseException, uri: str) -> BaseException:
    if isinstance(exc, FileNotFoundError):
        return ObjectMissing(f"object not found when read (deleted or replaced after listing?): {uri}")
    if isinstance(exc, PermissionError):
        return AccessDenied(f"access denied reading {uri}: the credentials may not read this object")
    return exc


def _copy_range(fs: Any, path: str, dest: str, offset: int, length: int, chunk: int = 8 * 1024**2) -> int:
    """Copy `length` bytes (-1: to the end) of `path` from `offset` into the local file `dest`."""
    copied = 0
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    # A known range needs no HEAD for the object's size: the read stops at the range's end anyway.
    known = length >= 0 and protocol not in ("file", "local")
    # No read-ahead cache: each read below is one ranged GET of exactly the bytes asked for. With the
    # default cache (s3fs: 50 MiB read-ahead blocks) a member's read also fetched the shard past it.
    opts: dict[str, Any] = {"cache_type": "none", **({"size": offset + length} if known else {})}
    with fs.open(path, "rb", **opts) as src, open(dest, "wb") as out:
        if known and isinstance(src, AbstractBufferedFile):  # (not hasattr: reading `details` is a HEAD)
            src.details = {"name": path, "size": offset + length}  # else the first read asks for them (a HEAD)
        src.seek(offset)
        while length < 0 or copied < length:
            data = src.read(chunk if length < 0 else min(chunk, length - copied))
            if not data:
                break
            out.write(data)
            copied += len(data)
    return copied


@contextlib.contextmanager
def local_copy(
    uri: str,
    *,
    endpoint_url: str | None,
    max_bytes: int,
    policy: RetryPolicy = DEFAULT_POLICY,
    deadline: Deadline | None = None,
    byte_offset: int = 0,
    byte_length: int = -1,
    size_hint: int = 0,
) -> Iterator[str]:
    """Yield a local path holding the object's bytes (downloaded if remote, removed afterwards).

    With `byte_offset`/`byte_length` (a video inside a tar shard) only that range is fetched, with one
    ranged read per 8 MiB chunk, into a local file. `size_hint` (> 0): the object's size as listed, trusted for the
    size checks instead of asking the store.
    """
    deadline = deadline or Deadline(float("inf"))
    fs, path = get_fs(uri, endpoint_url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    ranged = byte_offset > 0 or byte_length >= 0
    if ranged and byte_length >= 0:
        size = byte_length
    elif size_hint > 0 and byte_offset == 0:
        size = size_hint
    else:
        try:
            size = int(retry_call(lambda: fs.size(path), f"size of {uri}", policy, deadline=deadline.at) or 0)
        except (FileNotFoundError, PermissionError) as exc:
            raise _fetch_error(exc, uri) from None
        size = max(0, size - byte_offset)
    if size > max_bytes:
        raise VideoTooLarge(f"video is {size} bytes, over max_video_bytes={max_bytes}")
    if size == 0:
        raise EmptyVideo("video file is empty (0 bytes)")
    if protocol in ("file", "local") and not ranged:
        try:
            with open(path, "rb") as fh:  # readable by us? (a 000 file, another user's file)
                fh.read(1)
        except (FileNotFoundError, PermissionError) as exc:
            raise _fetch_error(exc, uri) from None
        yield path
        return
    tmpdir = tempfile.mkdtemp(prefix="molmo-batch-")
    try:
        # The object's name without a query (a presigned URL's signature would make it too long for a
        # file name), keeping its suffix for the decoders.
        local = os.path.join(tmpdir, os.path.basename(path.split("?", 1)[0])[-200:] or "video")
        try:
            if ranged:
                retry_call(
                    lambda: _copy_range(fs, path, local, byte_offset, byte_length), f"read {uri}", policy, deadline=deadline.at
                )
            else:
                retry_call(lambda: fs.get_file(path, local), f"download {uri}", policy, deadline=deadline.at)
        except (FileNotFoundError, PermissionError) as exc:
            raise _fetch_error(exc, uri) from None
        except StorageUnavailable:
            deadline.check("downloading")
            raise
        deadline.check("downloading")
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
