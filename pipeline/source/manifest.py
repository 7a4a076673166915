"""Manifests: a Parquet/CSV/JSONL table of video URIs (and optional columns) as the input.

A manifest is read as data (`pipeline.source.stream` reads it with Ray Data's readers); the driver only
checks its columns. A row's version (what its `video_id` hashes with the URI) comes from the row when it
says so, so such a manifest costs no request per row until a video is fetched:

- a `version` (or `version_id`) column: any string that changes when the object does;
- an `etag` column, with or without `size` / `mtime` (`size_bytes`, `last_modified`): the same version
  string a listing of the object would give (an ETag is the same video_id as listing the prefix);
- otherwise one HEAD per row, in the Ray tasks that read the manifest (never on the driver), many at a
  time. A row whose object is missing or unreadable is not an error here: the decode stage's fetch
  makes it an error row (`ObjectMissing`, `AccessDenied`) and the run goes on.

Every column but the URI is carried into the `videos` table's `source_metadata` as JSON. A manifest
often lists presigned URLs: each video is read from its signed URL (`VideoRef.source_url`) and stored
under its public URI (signature removed, `pipeline.io.secrets.public_uri`); the other columns are
redacted the same way.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy, retry_call
from pipeline.io.secrets import public_uri, redact, redact_data
from pipeline.io.storage import get_fs
from pipeline.source.refs import SourceError, VideoRef, object_version, signed_ref

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")
VERSION_COLUMNS = ("version", "version_id")
ETAG_COLUMNS = ("etag", "e_tag")
SIZE_COLUMNS = ("size", "size_bytes")
MTIME_COLUMNS = ("mtime", "last_modified")
HEAD_THREADS = 16  # HEADs in flight per manifest task for rows that carry no version
UNKNOWN_VERSION = "unknown"  # the object could not be looked up: its fetch says why, as an error row


def _path_part(url: str) -> str:
    """The path of `url` without a query or fragment (a presigned manifest URL ends in its signature)."""
    if "://" in url and not url.lower().startswith("file://"):
        return url.split("#", 1)[0].split("?", 1)[0]
    return url


def is_manifest_input(url: str) -> bool:
    return _path_part(url).lower().endswith(MANIFEST_SUFFIXES)


def is_signed(url: str) -> bool:
    """A URL whose query is part of what reads it (a presigned manifest): not a plain path for Ray's readers."""
    return _path_part(url) != url


def manifest_format(url: str) -> str:
    """'parquet', 'csv' or 'json' (JSON lines)."""
    lower = _path_part(url).lower()
    return "parquet" if lower.endswith(".parquet") else "csv" if lower.endswith(".csv") else "json"


def check_manifest(url: str, *, uri_column: str, endpoint_url: str | None = None) -> list[str]:
    """The manifest's columns, read from its head only (a Parquet footer, a CSV header, one JSON line).

    Raises:
        SourceError: the manifest is missing or unreadable, or has no `uri_column`.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = get_fs(url, endpoint_url)
    kind = manifest_format(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    small_reads = {} if protocol in ("file", "local") else {"block_size": 1 << 18}  # the head, not 50 MiB of rows
    try:
        with fs.open(path, "rb", **small_reads) as fh:
            if kind == "parquet":
                columns = list(pq.read_schema(fh).names)
            elif kind == "csv":
                columns = list(pacsv.open_csv(fh).schema.names)
            else:
                line = fh.readline()
                columns = list(json.loads(line)) if line.strip() else []
    except FileNotFoundError:
        raise SourceError(f"manifest {public_uri(url)} does not exist") from None
    except Exception as exc:
        raise SourceError(redact(f"cannot read manifest {url}: {type(exc).__name__}: {exc}")) from None
    if uri_column not in columns:
        raise SourceError(
            f"manifest {public_uri(url)} has no column {uri_column!r} (columns: {', '.join(columns)}); "
            "set --manifest-uri-column"
        )
    return columns


def _pick(row: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for key, value in row.items():
        if key.lower() in names and value is not None and value != "":
            return value
    return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def row_version(row: Mapping[str, Any]) -> tuple[str, int] | None:
    """(version, size) that the row itself gives, or None when only the object can tell."""
    version = _pick(row, VERSION_COLUMNS)
    etag = _pick(row, ETAG_COLUMNS)
    size = _pick(row, SIZE_COLUMNS)
    try:
        size_bytes = int(size) if size is not None else 0
    except (TypeError, ValueError):  # a "size" column that is not a byte count is metadata only
        size, size_bytes = None, 0
    if version is not None:
        return f"version:{version}", size_bytes
    if etag is None and size is None:
        return None
    mtime = _pick(row, MTIME_COLUMNS)
    return object_version({"ETag": etag, "size": size_bytes, "mtime": _timestamp(mtime) if mtime is not None else None}), size_bytes


def _look_up(url: str, endpoint_url: str | None, retry: RetryPolicy) -> tuple[str, int]:
    try:
        fs, path = get_fs(url, endpoint_url)
        info = retry_call(lambda: fs.info(path), f"look up {public_uri(url)}", retry)
        return object_version(info), int(info.get("size") or 0)
    except Exception:  # missing, denied, unreachable: the fetch makes it an error row that says which
        return UNKNOWN_VERSION, 0


def refs_from_rows(
    rows: list[dict[str, Any]],
    *,
    uri_column: str,
    endpoint_url: str | None = None,
    retry: RetryPolicy = DEFAULT_POLICY,
    threads: int = HEAD_THREADS,
) -> list[VideoRef]:
    """Refs for manifest rows: the version from the row's columns, else one HEAD per row (in threads).
    A presigned URL is looked up and read through its signature, and stored without it."""
    uris = [str(row.get(uri_column) or "") for row in rows]  # possibly presigned: read from, never stored
    versions: list[tuple[str, int] | None] = [row_version(row) for row in rows]
    missing = [i for i, v in enumerate(versions) if v is None and uris[i]]
    if missing:
        with ThreadPoolExecutor(min(threads, len(missing))) as pool:
            looked_up = pool.map(lambda i: _look_up(uris[i], endpoint_url, retry), missing)
            for i, answer in zip(missing, looked_up, strict=True):
                versions[i] = answer
    refs = []
    for row, uri, found in zip(rows, uris, versions, strict=True):
        version, size = found or (UNKNOWN_VERSION, 0)
        meta = json.dumps(redact_data({k: v for k, v in row.items() if k != uri_column}), sort_keys=True, default=str)
        error = "" if uri else f"manifest row has no {uri_column!r}"
        refs.append(signed_ref(uri, version, size, source_metadata=meta, source_error=error))
    return refs


def read_table(url: str, *, endpoint_url: str | None = None) -> Any:
    """The whole manifest as an Arrow table, read through fsspec in this process."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    fs, path = get_fs(url, endpoint_url)
    kind = manifest_format(url)
    try:
        with fs.open(path, "rb") as fh:
            return pq.read_table(fh) if kind == "parquet" else pacsv.read_csv(fh) if kind == "csv" else pajson.read_json(fh)
    except Exception as exc:
        raise SourceError(redact(f"cannot read manifest {url}: {type(exc).__name__}: {exc}")) from None


def read_manifest(
    url: str,
    *,
    uri_column: str = "uri",
    endpoint_url: str | None = None,
    max_rows: int | None = None,
    retry: RetryPolicy = DEFAULT_POLICY,
) -> list[VideoRef]:
    """Refs for the manifest's rows (the first `max_rows`), read in this process (small manifests, tools)."""
    check_manifest(url, uri_column=uri_column, endpoint_url=endpoint_url)
    table = read_table(url, endpoint_url=endpoint_url)
    if max_rows is not None:
        table = table.slice(0, max_rows)
    return refs_from_rows(table.to_pylist(), uri_column=uri_column, endpoint_url=endpoint_url, retry=retry)
