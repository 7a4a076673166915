"""Serve: fetch a requested object to a temporary file, bounded in size."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from pipeline.io.storage import get_fs
from pipeline.source.refs import make_video_id, object_version
from pipeline.tools.serve.security import HTTPError
from pipeline.tools.serve.settings import ServeSettings

log = logging.getLogger("pipeline.tools.serve.app")


@dataclass
class Fetched:
    path: str  # local file holding the video
    uri: str  # what the caller sent (or upload:<file name>)
    video_id: str
    size_bytes: int
    fetch_s: float = 0.0


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TooLarge(Exception):
    pass


def too_large(what: str, limit: int) -> HTTPError:
    return HTTPError(413, "too_large", f"{what} is over the limit of {limit} bytes")


def fetch_s3(uri: str, dest: str, settings: ServeSettings) -> Fetched:

    fs, path = get_fs(uri, settings.endpoint_url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise HTTPError(422, "not_found", f"uri: {uri} does not exist") from None
    except Exception as exc:
        raise HTTPError(422, "fetch_failed", f"uri: cannot read {uri}: {type(exc).__name__}") from None
    size = int(info.get("size") or 0)
    if size > settings.max_upload_bytes:
        raise too_large(f"the video ({size} bytes)", settings.max_upload_bytes)
    fs.get_file(path, dest)
    # Same id as the batch pipeline gives this object, so online and batch rows can be joined.
    return Fetched(dest, uri, make_video_id(uri, object_version(info)), size)
