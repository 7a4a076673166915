"""Source: list the videos under a URL and give each a stable id.

`video_id` is derived from the video's URI and its version (the object's ETag on S3, else size and
modification time), so a rerun recognises a video it has seen, and a changed object gets a new id.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.retry import DEFAULT_POLICY, RetryPolicy, retry_call
from pipeline.storage import full_url, get_fs


class SourceError(RuntimeError):
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


def _matches(rel_path: str, include: list[str], exclude: list[str]) -> bool:
    name = rel_path.rsplit("/", 1)[-1]

    def hit(patterns: list[str]) -> bool:
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel_path, p) for p in patterns)

    return hit(include) and not hit(exclude)


def _list_root(fs: Any, root: str, url: str) -> tuple[dict[str, Any], str]:
    """Object infos under `root` (or of `root` itself when it is one object), and the base for relative paths."""
    if fs.isfile(root):
        return {root: fs.info(root)}, root.rsplit("/", 1)[0]
    if fs.isdir(root):
        return fs.find(root, detail=True, withdirs=False), root
    raise SourceError(f"input {url} does not exist: check the path/bucket and your credentials")


def list_videos(
    url: str,
    *,
    include: list[str],
    exclude: list[str] | None = None,
    endpoint_url: str | None = None,
    max_videos: int | None = None,
    manifest_uri_column: str = "uri",
    retry: RetryPolicy = DEFAULT_POLICY,
) -> list[VideoRef]:
    """List videos under `url`: a folder/prefix or one object (sorted by URI), WebDataset tar shards
    (brace ranges and globs: `.../{00000..00099}.tar`), or a manifest (.parquet/.csv/.jsonl)."""
    exclude = exclude or []
    from pipeline import shards

    refs: list[VideoRef] = []
    if shards.is_manifest_input(url):
        refs = shards.read_manifest(url, uri_column=manifest_uri_column, endpoint_url=endpoint_url)
        return refs[:max_videos] if max_videos else refs
    if shards.is_shard_input(url):
        suffixes = [p.lstrip("*") for p in include if p.startswith("*.")]
        for shard in shards.expand_shards(url):
            refs.extend(shards.index_shard(shard, video_suffixes=suffixes, endpoint_url=endpoint_url))
            if max_videos and len(refs) >= max_videos:
                return refs[:max_videos]
        if not refs:
            raise SourceError(f"no shards match {url}")
        return refs
    try:
        fs, root = get_fs(url, endpoint_url)
        root = root.rstrip("/")
        # A store that blips at start (connection refused, 5xx, throttling) is retried like any read:
        # a nightly job should not fail for a few seconds of outage before it has listed anything.
        infos, base = retry_call(lambda: _list_root(fs, root, url), f"list {url}", retry)
    except SourceError:
        raise
    except Exception as exc:  # permission, DNS, bad endpoint: say so at start, not per video
        raise SourceError(f"cannot list input {url}: {type(exc).__name__}: {exc}") from None

    for path in sorted(infos):
        info = infos[path]
        if info.get("type") == "directory":
            continue
        rel = path[len(base) :].lstrip("/") if path.startswith(base) else path
        if not _matches(rel, include, exclude):
            continue
        uri = full_url(fs, path)
        version = object_version(info)
        refs.append(VideoRef(make_video_id(uri, version), uri, int(info.get("size") or 0), version))
        if max_videos is not None and len(refs) >= max_videos:
            break
    return refs
