"""Manifests: a Parquet/CSV/JSONL table of video URIs (and optional columns) as the input.

A manifest often lists presigned URLs: each video is read from its signed URL (`VideoRef.source_url`)
and stored under its public URI (signature removed, `pipeline.io.secrets.public_uri`); the other
columns, carried into `videos.source_metadata`, are redacted the same way.
"""

from __future__ import annotations

import json

from pipeline.io.secrets import public_uri, redact, redact_data
from pipeline.io.storage import get_fs
from pipeline.source.refs import SourceError, VideoRef, object_version, signed_ref

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")


def _path_part(url: str) -> str:
    """The path of `url` without a query or fragment (a presigned manifest URL ends in its signature)."""
    if "://" in url and not url.lower().startswith("file://"):
        return url.split("#", 1)[0].split("?", 1)[0]
    return url


def is_manifest_input(url: str) -> bool:
    return _path_part(url).lower().endswith(MANIFEST_SUFFIXES)


def read_manifest(url: str, *, uri_column: str = "uri", endpoint_url: str | None = None) -> list[VideoRef]:
    """Refs for every row of a manifest table; other columns are kept as source metadata."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq


    fs, path = get_fs(url, endpoint_url)
    lower = _path_part(url).lower()
    try:
        with fs.open(path, "rb") as fh:
            if lower.endswith(".parquet"):
                table = pq.read_table(fh)
            elif lower.endswith(".csv"):
                table = pacsv.read_csv(fh)
            else:
                table = pajson.read_json(fh)
    except FileNotFoundError:
        raise SourceError(f"manifest {public_uri(url)} does not exist") from None
    except Exception as exc:
        raise SourceError(redact(f"cannot read manifest {url}: {type(exc).__name__}: {exc}")) from None
    if uri_column not in table.column_names:
        raise SourceError(
            f"manifest {public_uri(url)} has no column {uri_column!r} (columns: {', '.join(table.column_names)}); "
            "set --manifest-uri-column"
        )
    refs: list[VideoRef] = []
    for row in table.to_pylist():
        url = str(row.pop(uri_column) or "")  # possibly presigned: read from, never stored
        meta = json.dumps(redact_data(row), sort_keys=True, default=str)
        try:
            vfs, vpath = get_fs(url, endpoint_url)
            info = vfs.info(vpath)
            version = object_version(info)
            refs.append(signed_ref(url, version, int(info.get("size") or 0), source_metadata=meta))
        except Exception as exc:  # missing or unreachable: an error row for this video, the run goes on
            message = redact(f"listed in manifest but unreadable: {type(exc).__name__}: {exc}")[:2000]
            refs.append(signed_ref(url, "missing", 0, source_metadata=meta, source_error=message))
    return refs
