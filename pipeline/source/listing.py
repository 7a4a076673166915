"""Source: list the videos under a URL and give each a stable id.

`video_id` is derived from the video's URI and its version (the object's ETag on S3, else size and
modification time), so a rerun recognises a video it has seen, and a changed object gets a new id.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy, retry_call
from pipeline.io.storage import full_url, get_fs
from pipeline.source import manifest, shards
from pipeline.source.refs import SourceError, VideoRef, make_video_id, object_version


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
    refs: list[VideoRef] = []
    if manifest.is_manifest_input(url):
        refs = manifest.read_manifest(url, uri_column=manifest_uri_column, endpoint_url=endpoint_url)
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
