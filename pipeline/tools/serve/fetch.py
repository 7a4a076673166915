"""Serve: fetch a requested object to a temporary file, bounded in size."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from pipeline.io.secrets import public_uri
from pipeline.io.storage import get_fs
from pipeline.source.refs import make_video_id, object_version
from pipeline.tools.serve.security import HTTPError
from pipeline.tools.serve.settings import ServeSettings

log = logging.getLogger("pipeline.tools.serve.app")


@dataclass
class Fetched:
    path: str  # local file holding the video
    uri: str  # what the caller sent, without a signature (`public_uri`), or upload:<file name>
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
    """Copy the object at `uri` to `dest`; every failure the caller can fix is a 4xx (never a 500)."""
    shown = public_uri(uri)
    fs, path = get_fs(uri, settings.endpoint_url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise HTTPError(422, "not_found", f"uri: {shown} does not exist") from None
    except Exception as exc:
        raise HTTPError(422, "fetch_failed", f"uri: cannot read {shown}: {type(exc).__name__}") from None
    if info.get("type") not in (None, "file"):
        raise HTTPError(422, "not_a_file", f"uri: {shown} names a folder (a prefix), not a video object; "
                        "give the URI of one video")
    size = int(info.get("size") or 0)
    if size > settings.max_upload_bytes:
        raise too_large(f"the video ({size} bytes)", settings.max_upload_bytes)
    try:
        fs.get_file(path, dest)
    except FileNotFoundError:
        raise HTTPError(422, "not_found", f"uri: {shown} does not exist (deleted while being read?)") from None
    except Exception as exc:
        raise HTTPError(422, "fetch_failed", f"uri: cannot read {shown}: {type(exc).__name__}") from None
    # Same id as the batch pipeline gives this object, so online and batch rows can be joined.
    return Fetched(dest, shown, make_video_id(uri, object_version(info)), size)
