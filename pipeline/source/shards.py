"""WebDataset tar shards as the input: each video member a ref to a byte range of its shard.

Shards (`00000.tar` holding `key.mp4` + `key.json`) are indexed, not extracted: reading the 512-byte tar
headers gives every member's byte offset and size, so each video becomes a ref to a byte range of its
shard, fetched later with one ranged read by the decode stage. A shard is indexed in one forward pass:
one HEAD (its size and ETag), then its headers read front to back through 1 MiB read-ahead blocks (one
ranged GET each; members smaller than a block cost no request of their own), the sidecar JSON (caption,
url, ...) read inline as the pass meets it and carried into the `videos` table's `source_metadata`.
`pipeline.source.stream` indexes the shards in parallel Ray tasks, one shard each.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterable, Sequence
from typing import Any

from braceexpand import braceexpand
from fsspec.spec import AbstractBufferedFile

from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy, retry_call
from pipeline.io.secrets import public_uri
from pipeline.io.storage import full_url, get_fs
from pipeline.source.refs import VideoRef, error_ref, make_video_id, object_version

SIDECAR_SUFFIXES = (".json",)
SIDECAR_MAX_BYTES = 1 << 20
READ_BLOCK_BYTES = 1 << 20  # one ranged GET brings this much: every header (and sidecar) inside is free


def is_shard_input(url: str) -> bool:
    base = url.split("?", 1)[0]
    return base.endswith(".tar") or ("{" in base and ".tar" in base)


def video_suffixes(include: Sequence[str]) -> list[str]:
    """The member suffixes that are videos: the `*.ext` patterns of --include."""
    return [p.lstrip("*") for p in include if p.startswith("*.")]


def expand_shards(url: str, endpoint_url: str | None = None) -> list[str]:
    """Brace ranges (`{00000..00999}`, `{a,b}`) then globs, in order, without duplicates."""
    out: dict[str, None] = {}
    for pattern in braceexpand(url):
        if any(ch in pattern for ch in "*?["):
            fs, path = get_fs(pattern, endpoint_url)
            for p in sorted(fs.glob(path)):
                out.setdefault(full_url(fs, p), None)
        else:
            out.setdefault(pattern, None)
    return list(out)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the member path up to the first dot of its base name."""
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(directory, stem) if directory else stem
    return key, (dot + ext).lower()


def _open_forward(fs: Any, path: str, info: dict[str, Any]) -> Any:
    """The shard opened for one forward pass: read-ahead blocks, and no second HEAD (the file is given
    the HEAD's answer; s3fs then reads with If-Match on that ETag, so a shard rewritten mid-pass fails)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return fs.open(path, "rb")
    fh = fs.open(path, "rb", block_size=READ_BLOCK_BYTES, cache_type="readahead", size=int(info.get("size") or 0))
    if isinstance(fh, AbstractBufferedFile):  # (not hasattr: reading `details` is the HEAD it spares)
        fh.details = info
    return fh


def index_shard(
    shard_url: str,
    *,
    video_suffixes: Iterable[str],
    endpoint_url: str | None = None,
    retry: RetryPolicy = DEFAULT_POLICY,
) -> list[VideoRef]:
    """One ref per video member of a tar shard; unreadable parts become refs with an `error`."""
    suffixes = tuple(s.lower() for s in video_suffixes)
    try:
        fs, path = get_fs(shard_url, endpoint_url)
        info = retry_call(lambda: fs.info(path), f"look up {shard_url}", retry)
    except Exception as exc:
        return [error_ref(shard_url, "", f"shard unreadable: {type(exc).__name__}: {exc}")]
    version = object_version(info)
    shard_size = int(info.get("size") or 0)
    videos: dict[str, tarfile.TarInfo] = {}
    sidecar_data: dict[str, Any] = {}
    order: list[str] = []
    failure: str | None = None
    try:
        with _open_forward(fs, path, info) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.ReadError as exc:
                    failure = f"corrupt tar after {len(order)} member(s): {exc}"
                    break
                except Exception as exc:  # the store failed mid-pass: what was indexed stands
                    failure = f"shard unreadable after {len(order)} member(s): {type(exc).__name__}: {exc}"
                    break
                if member is None:
                    break
                if not member.isfile():
                    continue
                key, ext = _split_key(member.name)
                if ext.endswith(suffixes) or any(member.name.lower().endswith(s) for s in suffixes):
                    videos[key] = member
                    order.append(key)
                elif ext.endswith(SIDECAR_SUFFIXES):
                    # Read now, while the pass is here (its bytes follow its header): never a second pass.
                    sidecar_data[key] = _read_sidecar(tar, member)
    except tarfile.ReadError as exc:
        return [error_ref(shard_url, "", f"not a readable tar: {exc}", version=version)]
    except Exception as exc:
        return [error_ref(shard_url, "", f"shard unreadable: {type(exc).__name__}: {exc}", version=version)]
    refs: list[VideoRef] = []
    shown = public_uri(shard_url)  # a presigned shard URL is read from, never stored (pipeline.source.refs)
    for key in order:
        member = videos[key]
        uri = f"{shown}#{member.name}"
        meta = {"shard": shown, "key": key, **({"sidecar": sidecar_data[key]} if key in sidecar_data else {})}
        available = max(0, shard_size - member.offset_data)
        truncated = available < member.size
        refs.append(
            VideoRef(
                video_id=make_video_id(uri, version),
                uri=uri,
                size_bytes=int(member.size),
                version=version,
                source_url=shard_url,
                byte_offset=int(member.offset_data),
                # A truncated shard: the member's bytes stop at the end of the object; decode reports it.
                byte_length=int(min(member.size, max(0, shard_size - member.offset_data))),
                source_metadata=json.dumps(meta, sort_keys=True, default=str),
                source_error=(
                    f"truncated shard: member has {available} of its {member.size} bytes" if truncated else ""
                ),
            )
        )
    last_truncated = bool(order) and videos[order[-1]].offset_data + videos[order[-1]].size > shard_size
    # A shard cut inside its last member already fails that member; anything else unreadable after the
    # listed members gets one row for the shard's remainder.
    if failure and not last_truncated:
        refs.append(error_ref(shard_url, f"#after-{len(order)}", failure, version=version))
    return refs


def _read_sidecar(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    try:
        fh = tar.extractfile(member)
        if fh is None:
            return None
        data = fh.read(SIDECAR_MAX_BYTES)
        return json.loads(data.decode("utf-8"))
    except Exception as exc:  # a bad sidecar must not lose its video
        return {"unreadable_sidecar": f"{type(exc).__name__}: {exc}"[:200]}
