"""Object storage through fsspec: one place that turns a URL into a filesystem.

Credentials are never handled here: s3fs/botocore read them from the standard AWS chain (environment,
shared config/credentials files, instance or pod roles). Only the endpoint may be overridden, for
S3-compatible stores.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.core import url_to_fs


def storage_options(url: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options for `url`; the endpoint comes from config or AWS_ENDPOINT_URL (no secrets here)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("s3", "s3a"):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        opts: dict[str, Any] = {}
        if endpoint:
            opts["endpoint_url"] = endpoint
        return opts
    return {}


def get_fs(url: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and protocol-less path for `url` (a plain path means the local filesystem)."""
    fs, path = url_to_fs(url, **storage_options(url, endpoint_url))
    return fs, path


def join_url(base: str, *parts: str) -> str:
    """Join URL/path parts with '/' without doubling separators."""
    out = base.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL a user would write for `path` on `fs` (s3://bucket/key, or an absolute local path)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"
