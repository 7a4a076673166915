"""Serve's guards: bearer token (only its digest reaches replicas), URI allow-list, no private addresses."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import MolmoBatchError

log = logging.getLogger("pipeline.tools.serve.app")


TOKEN_ENV = "MOLMO_BATCH_SERVE_TOKEN"


MIN_TOKEN_CHARS = 16


URI_SCHEMES = ("s3", "https", "http")


class HTTPError(MolmoBatchError):
    """An error answer: status, a short machine-readable code and a human-readable detail."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token(authorization: str | None, token_sha256: str) -> None:
    """Raise 401 unless the header is `Bearer <token>` with the configured token."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'",
                        {"WWW-Authenticate": 'Bearer realm="molmo-batch"'})
    if not hmac.compare_digest(token_digest(given.strip()), token_sha256):
        raise HTTPError(401, "unauthorized", "invalid token",
                        {"WWW-Authenticate": 'Bearer realm="molmo-batch", error="invalid_token"'})


def address_problem(ip_text: str) -> str | None:
    """Why an address must not be fetched from (None for a public unicast address)."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip_text.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, bad in checks if bad), None)


def _resolve(host: str, port: int) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


@dataclass(frozen=True)
class _Parts:
    scheme: str
    host: str
    port: int | None
    path: str


def _parts(uri: str) -> _Parts:
    p = urllib.parse.urlsplit(uri)
    scheme = p.scheme.lower()
    try:
        port = p.port
    except ValueError:
        raise HTTPError(422, "invalid_uri", "uri: invalid port") from None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return _Parts(scheme, (p.hostname or "").lower(), port, p.path or "/")


def check_uri(uri: Any, allow_prefixes: Sequence[str], *, resolve: Callable[[str, int], list[str]] = _resolve) -> str:
    """Return `uri` if the service may fetch it; raise 403 (not allowed) or 422 (malformed)."""
    if not isinstance(uri, str) or not uri.strip():
        raise HTTPError(422, "invalid_uri", "uri: give the video's s3:// or https:// URI as a string")
    uri = uri.strip()
    if len(uri) > 2048 or any(c in uri for c in "\\\x00\r\n\t "):
        raise HTTPError(422, "invalid_uri", "uri: too long, or contains spaces, backslashes or control characters")
    p = urllib.parse.urlsplit(uri)
    scheme = p.scheme.lower()
    if scheme not in URI_SCHEMES:
        raise HTTPError(403, "uri_forbidden", f"uri: scheme {scheme + '://' if scheme else '(none)'} is not accepted; "
                        "only s3://, https:// and http:// under the allowed prefixes (never file:// or local paths)")
    if p.username is not None or p.password is not None:
        raise HTTPError(403, "uri_forbidden", "uri: credentials inside the URI are not accepted")
    parts = _parts(uri)
    if not parts.host:
        raise HTTPError(422, "invalid_uri", "uri: no host or bucket")
    segments = urllib.parse.unquote(parts.path).split("/")
    if any(s in (".", "..") for s in segments):
        raise HTTPError(403, "uri_forbidden", "uri: '.' and '..' path segments are not accepted")
    if not any(_under(parts, _parts(prefix)) for prefix in allow_prefixes):
        allowed = ", ".join(allow_prefixes) or "none (only uploads are accepted)"
        raise HTTPError(403, "uri_forbidden", f"uri: not under an allowed prefix; allowed: {allowed}")
    if scheme in ("http", "https"):
        try:
            addresses = resolve(parts.host, parts.port or 0)
        except OSError as exc:
            raise HTTPError(422, "invalid_uri", f"uri: cannot resolve {parts.host}: {exc}") from None
        for addr in addresses or ["(none)"]:
            problem = address_problem(addr)
            if problem:
                raise HTTPError(403, "uri_forbidden", f"uri: {parts.host} resolves to {addr}, a {problem} address; "
                                "loopback, link-local, private and reserved addresses are never fetched")
    return uri


def _under(uri: _Parts, prefix: _Parts) -> bool:
    return (uri.scheme, uri.host, uri.port) == (prefix.scheme, prefix.host, prefix.port) and uri.path.startswith(
        prefix.path
    )


def check_prefixes(prefixes: Sequence[str]) -> list[str]:
    """Validate `--allow-prefix` values at start-up; raise ValueError with a fix-it message."""
    out = []
    for prefix in prefixes:
        p = urllib.parse.urlsplit(prefix)
        if p.scheme.lower() not in URI_SCHEMES or not p.hostname:
            raise ValueError(f"--allow-prefix {prefix!r}: use s3://BUCKET/PREFIX/ or https://HOST/PATH/ "
                             "(file:// and local paths are never served)")
        if p.username or p.password:
            raise ValueError(f"--allow-prefix {prefix!r}: no credentials in the prefix")
        out.append(prefix)
    return out
