"""What a source yields: `VideoRef`, one video to process, and its stable id.

`video_id` is derived from the video's URI and its version (the object's ETag on S3, else size and
modification time), so a rerun recognises a video it has seen, and a changed object gets a new id.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import MolmoBatchError


class SourceError(MolmoBatchError, RuntimeError):
    """The input cannot be listed at all (missing prefix, no permission): a start-up failure."""


@dataclass(frozen=True)
class VideoRef:
    """One video to process."""

    video_id: str
    uri: str  # what users see: the object's URL, or `shard.tar#member.mp4` for a shard member
    size_bytes: int
    version: str
    source_url: str = ""  # the object to read (the shard for a member); "" means `uri`
    byte_offset: int = 0  # where the video's bytes start in `source_url`
    byte_length: int = -1  # how many bytes to read (-1: the whole object)
    source_metadata: str = ""  # JSON: a shard's sidecar, a manifest row's other columns
    source_error: str = ""  # the source already knows this video cannot be read (an error row)
    task_ids: tuple[int, ...] = ()  # the run's tasks still to do for this video (empty: all of them)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def make_video_id(uri: str, version: str) -> str:
    """Stable id: 20 hex chars of sha256(uri + NUL + version)."""
    return hashlib.sha256(f"{uri}\0{version}".encode()).hexdigest()[:20]


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
    full = uri + suffix
    return VideoRef(make_video_id(full, version), full, 0, version, source_error=message[:2000])
