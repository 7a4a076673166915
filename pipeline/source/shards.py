"""Corpora as they are stored: WebDataset tar shards and manifest tables.

WebDataset shards (`00000.tar` holding `key.mp4` + `key.json`) are indexed, not extracted: reading the
512-byte tar headers gives every member's byte offset and size, so each video becomes a ref to a byte
range of its shard, fetched later with one ranged read by the decode stage. The sidecar JSON (caption,
url, ...) is read at listing time and carried into the `videos` table's `source_metadata` column.

Manifests (`.parquet`, `.csv`, `.jsonl`) list URIs in a column (`uri` by default); every other column is
carried into `source_metadata` as JSON.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterable
from typing import Any

from braceexpand import braceexpand

from pipeline.io.secrets import public_uri
from pipeline.io.storage import full_url, get_fs
from pipeline.source.refs import VideoRef, error_ref, make_video_id, object_version

SIDECAR_SUFFIXES = (".json",)


def is_shard_input(url: str) -> bool:
    base = url.split("?", 1)[0]
    return base.endswith(".tar") or ("{" in base and ".tar" in base)


def expand_shards(url: str) -> list[str]:
    """Brace ranges (`{00000..00999}`, `{a,b}`) then globs, in order, without duplicates."""
    out: dict[str, None] = {}
    for pattern in braceexpand(url):
        if any(ch in pattern for ch in "*?["):
            fs, path = get_fs(pattern)
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


def index_shard(
    shard_url: str, *, video_suffixes: Iterable[str], endpoint_url: str | None = None
) -> list[VideoRef]:
    """One ref per video member of a tar shard; unreadable parts become refs with an `error`."""
    suffixes = tuple(s.lower() for s in video_suffixes)
    try:
        fs, path = get_fs(shard_url, endpoint_url)
        info = fs.info(path)
    except Exception as exc:
        return [error_ref(shard_url, "", f"shard unreadable: {type(exc).__name__}: {exc}")]
    version = object_version(info)
    shard_size = int(info.get("size") or 0)
    videos: dict[str, tarfile.TarInfo] = {}
    sidecars: dict[str, tarfile.TarInfo] = {}
    order: list[str] = []
    failure: str | None = None
    # Small blocks: only headers are read while indexing, never the video bytes.
    with fs.open(path, "rb", block_size=1 << 16) as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                while True:
                    try:
                        member = tar.next()
                    except tarfile.ReadError as exc:
                        failure = f"corrupt tar after {len(order)} member(s): {exc}"
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
                        sidecars[key] = member
                sidecar_data = {k: _read_sidecar(tar, m) for k, m in sidecars.items() if k in videos}
        except tarfile.ReadError as exc:
            return [error_ref(shard_url, "", f"not a readable tar: {exc}", version=version)]
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
        data = fh.read(1 << 20)
        return json.loads(data.decode("utf-8"))
    except Exception as exc:  # a bad sidecar must not lose its video
        return {"unreadable_sidecar": f"{type(exc).__name__}: {exc}"[:200]}
