"""What a source yields: `VideoRef`, one video to process, and its stable id.

`video_id` is derived from the video's URI and its version (the object's ETag on S3, else size and
modification time), so a rerun recognises a video it has seen, and a changed object gets a new id.

A presigned URL (AWS, GCS, Azure SAS, token query parameters) is two things here: `uri`, what is
stored and shown, is the URL without its signature (`pipeline.io.secrets.public_uri`), and
`source_url`, what decode reads, is the signed URL. `source_url` never leaves the driver and the decode
tasks: no table has a column for it. The id is derived from the public URI, so the same object signed
again (new expiry, new signature) keeps its id and a rerun skips it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any

from pipeline.errors import MolmoBatchError
from pipeline.io.secrets import public_uri, redact


class SourceError(MolmoBatchError, RuntimeError):
    """The input cannot be listed at all (missing prefix, no permission): a start-up failure."""


@dataclass(frozen=True)
class VideoRef:
    """One video to process."""

    video_id: str
    uri: str  # what users see and tables store: the object's URL without signature, or `shard.tar#member.mp4`
    size_bytes: int
    version: str
    source_url: str = ""  # the object to read (the shard for a member; a signed URL); "" means `uri`; never stored
    byte_offset: int = 0  # where the video's bytes start in `source_url`
    byte_length: int = -1  # how many bytes to read (-1: the whole object)
    source_metadata: str = ""  # JSON: a shard's sidecar, a manifest row's other columns
    source_error: str = ""  # the source already knows this video cannot be read (an error row)
    task_ids: tuple[int, ...] = ()  # the run's tasks still to do for this video (empty: all of them)

    def as_row(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its recursive copy was 8 of a listed object's ~26 us of listing CPU.
        return {name: getattr(self, name) for name in _REF_FIELDS}


_REF_FIELDS = tuple(f.name for f in fields(VideoRef))


def make_video_id(uri: str, version: str) -> str:
    """Stable id: 20 hex chars of sha256(public URI + NUL + version); the public URI is `uri` without
    its signature parameters, so re-signing a URL does not change the id."""
    return hashlib.sha256(f"{public_uri(uri)}\0{version}".encode()).hexdigest()[:20]


def signed_ref(url: str, version: str, size_bytes: int, **fields: Any) -> VideoRef:
    """A ref to the object at `url` (possibly presigned): stored as its public URI, read from `url`."""
    uri = public_uri(url)
    return VideoRef(make_video_id(uri, version), uri, size_bytes, version,
                    source_url=url if url != uri else "", **fields)


def object_version(info: dict[str, Any]) -> str:
    """The object's version string from an fsspec `info` dict: ETag when the store gives one."""
    etag = info.get("ETag") or info.get("etag") or info.get("e_tag")
    if etag:
        return "etag:" + str(etag).strip('"')
    size = int(info.get("size") or 0)
    mtime: Any = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if mtime is not None and hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"size:{size}:mtime:{float(mtime or 0):.6f}"


def error_ref(uri: str, suffix: str, message: str, *, version: str = "unknown") -> VideoRef:
    """A ref that is already an error row (the source could not read it); `uri` may be signed."""
    full = public_uri(uri) + suffix
    return VideoRef(make_video_id(full, version), full, 0, version, source_error=redact(message)[:2000])
