"""Manifests: a Parquet/CSV/JSONL table of video URIs (and optional columns) as the input."""

from __future__ import annotations

import json

from pipeline.io.storage import get_fs
from pipeline.source.refs import SourceError, VideoRef, make_video_id, object_version

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")


def is_manifest_input(url: str) -> bool:
    return url.lower().endswith(MANIFEST_SUFFIXES)


def read_manifest(url: str, *, uri_column: str = "uri", endpoint_url: str | None = None) -> list[VideoRef]:
    """Refs for every row of a manifest table; other columns are kept as source metadata."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq


    fs, path = get_fs(url, endpoint_url)
    lower = path.lower()
    try:
        with fs.open(path, "rb") as fh:
            if lower.endswith(".parquet"):
                table = pq.read_table(fh)
            elif lower.endswith(".csv"):
                table = pacsv.read_csv(fh)
            else:
                table = pajson.read_json(fh)
    except FileNotFoundError:
        raise SourceError(f"manifest {url} does not exist") from None
    except Exception as exc:
        raise SourceError(f"cannot read manifest {url}: {type(exc).__name__}: {exc}") from None
    if uri_column not in table.column_names:
        raise SourceError(
            f"manifest {url} has no column {uri_column!r} (columns: {', '.join(table.column_names)}); "
            "set --manifest-uri-column"
        )
    refs: list[VideoRef] = []
    for row in table.to_pylist():
        uri = str(row.pop(uri_column) or "")
        meta = json.dumps(row, sort_keys=True, default=str)
        try:
            vfs, vpath = get_fs(uri, endpoint_url)
            info = vfs.info(vpath)
            version = object_version(info)
            refs.append(VideoRef(make_video_id(uri, version), uri, int(info.get("size") or 0), version,
                                 source_metadata=meta))
        except Exception as exc:  # missing or unreachable: an error row for this video, the run goes on
            refs.append(
                VideoRef(make_video_id(uri, "missing"), uri, 0, "missing", source_metadata=meta,
                         source_error=f"listed in manifest but unreadable: {type(exc).__name__}: {exc}"[:2000])
            )
    return refs
