"""Ask online: a Ray Serve application answering one video at a time with the batch pipeline's own code.

    export MOLMO_BATCH_SERVE_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    python -m pipeline serve --model allenai/Molmo2-8B --allow-prefix s3://bucket/ --port 8000

`POST /v1/analyze` with `Authorization: Bearer <token>` and either

- JSON `{"uri": "s3://bucket/clip.mp4", "tasks": ["caption", "count:person", "track:person"]}`, or
- multipart/form-data with a `file` part (the video) and a `tasks` field (comma-separated or a JSON list),

returns `{"request_id", "video": {...}, "captions": [...], "counts": [...], "points": [...],
"tracks": [...], "answers": [...], "video_counts": [...], "errors": [...], "timings": {...}}` where every
list holds rows in exactly the shape of the batch tables (`pipeline.schemas`): the request runs the same
`decode_video` -> `Molmo2Engine.answer_windows` (through `Molmo2Host`'s row building) -> `video_tables`.

Safety, in the order checked:
- 401 without the bearer token (compared as SHA-256 digests in constant time; the replicas only ever see
  the digest, so the token is in no Serve config or log). The server refuses to start without a token.
- 403 for a URI that is not s3://, http:// or https:// (never file://, local paths or other schemes), that
  is not under one of the configured `--allow-prefix` prefixes (scheme, host and port exact, path by
  prefix, no `..` segments, no credentials in the URI), or whose host resolves to a loopback, link-local,
  private, multicast or reserved address. The address check is made again when connecting (a resolver
  that only returns vetted addresses), and redirects are not followed.
- 413 for a request body or video over `max_upload_bytes`, or a video longer than `max_duration_s`.
- 415 for a body that is neither JSON nor multipart; 422 for bad JSON, unknown tasks, too many tasks, a
  missing URI or file, or a file that is not a readable video.

One replica per GPU (`num_gpus=1`) when the cluster has GPUs, else one CPU replica; a replica answers one
request's model work at a time (a lock) and decodes the next request meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

from pipeline.infer import PASSTHROUGH, HostSettings, Molmo2Engine, Molmo2Host
from pipeline.tasks import Task, build_tasks

log = logging.getLogger("pipeline.serve")

TOKEN_ENV = "MOLMO_BATCH_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16
URI_SCHEMES = ("s3", "https", "http")
JSON_BODY_LIMIT = 64 * 1024
MULTIPART_SLACK = 64 * 1024  # form boundaries and fields around the file


class HTTPError(Exception):
    """An error answer: status, a short machine-readable code and a human-readable detail."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


@dataclass(frozen=True)
class ServeSettings:
    """What a replica needs (small and picklable; holds the token's digest, never the token)."""

    model: str
    token_sha256: str
    allow_prefixes: tuple[str, ...] = ()
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    max_new_tokens: int = 256
    frame_size: int = 378
    sampling_mode: str = "native"
    num_frames: int = 64
    max_fps: float = 2.0
    window_s: float = 60.0
    overlap_s: float = 5.0
    batch_size: int = 4
    decoder: str = "pyav"
    max_upload_bytes: int = 512 * 1024**2
    max_duration_s: float = 600.0
    max_tasks: int = 8
    fetch_timeout_s: float = 120.0
    endpoint_url: str | None = None
    cache_dir: str | None = None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -------------------------------------------------------------------------------------------------
# Checks (pure: unit-tested without Serve)


def check_token(authorization: str | None, token_sha256: str) -> None:
    """Raise 401 unless the header is `Bearer <token>` with the configured token."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'",
                        {"WWW-Authenticate": 'Bearer realm="molmo-batch"'})
    if not hmac.compare_digest(token_digest(given.strip()), token_sha256):
        raise HTTPError(401, "unauthorized", "invalid token",
                        {"WWW-Authenticate": 'Bearer realm="molmo-batch", error="invalid_token"'})


def parse_tasks(value: Any, max_tasks: int) -> list[Task]:
    """Tasks from a JSON list or a comma-separated string; 422 with a fix-it message otherwise."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise HTTPError(422, "invalid_tasks", "tasks: not a valid JSON list") from None
        else:
            value = [t for t in (s.strip() for s in text.split(",")) if t]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value) or not value:
        raise HTTPError(422, "invalid_tasks", "tasks: give a non-empty list like [\"caption\", \"count:person\"]")
    try:
        tasks = build_tasks(value)
    except ValueError as exc:
        raise HTTPError(422, "invalid_tasks", f"tasks: {exc}") from None
    if len(tasks) > max_tasks:
        raise HTTPError(422, "invalid_tasks", f"tasks: {len(tasks)} given, at most {max_tasks} per request")
    return tasks


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


# -------------------------------------------------------------------------------------------------
# Fetching


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


class _TooLarge(Exception):
    pass


def _too_large(what: str, limit: int) -> HTTPError:
    return HTTPError(413, "too_large", f"{what} is over the limit of {limit} bytes")


def _fetch_s3(uri: str, dest: str, settings: ServeSettings) -> Fetched:
    from pipeline.source import make_video_id, object_version
    from pipeline.storage import get_fs

    fs, path = get_fs(uri, settings.endpoint_url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise HTTPError(422, "not_found", f"uri: {uri} does not exist") from None
    except Exception as exc:
        raise HTTPError(422, "fetch_failed", f"uri: cannot read {uri}: {type(exc).__name__}") from None
    size = int(info.get("size") or 0)
    if size > settings.max_upload_bytes:
        raise _too_large(f"the video ({size} bytes)", settings.max_upload_bytes)
    fs.get_file(path, dest)
    # Same id as the batch pipeline gives this object, so online and batch rows can be joined.
    return Fetched(dest, uri, make_video_id(uri, object_version(info)), size)


async def _fetch_http(uri: str, dest: str, settings: ServeSettings) -> Fetched:
    import aiohttp
    from aiohttp.abc import AbstractResolver

    from pipeline.source import make_video_id

    class PublicOnlyResolver(AbstractResolver):
        """Resolves like the OS, then refuses non-public addresses at connect time (no DNS rebinding)."""

        def __init__(self) -> None:
            self._inner = aiohttp.ThreadedResolver()

        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
            infos = await self._inner.resolve(host, port, family)
            for info in infos:
                problem = address_problem(str(info["host"]))
                if problem:
                    raise HTTPError(403, "uri_forbidden", f"uri: {host} resolves to a {problem} address")
            return infos

        async def close(self) -> None:
            await self._inner.close()

    timeout = aiohttp.ClientTimeout(total=settings.fetch_timeout_s)
    connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver())
    size = 0
    h = hashlib.sha256()
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False) as session, \
                session.get(uri, allow_redirects=False) as resp:
            if 300 <= resp.status < 400:
                raise HTTPError(422, "fetch_failed", f"uri: the server answered {resp.status} (redirects are not followed)")
            if resp.status != 200:
                raise HTTPError(422, "fetch_failed", f"uri: the server answered {resp.status}")
            if resp.content_length and resp.content_length > settings.max_upload_bytes:
                raise _too_large(f"the video ({resp.content_length} bytes)", settings.max_upload_bytes)
            with open(dest, "wb") as fh:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        raise _too_large("the video", settings.max_upload_bytes)
                    h.update(chunk)
                    fh.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise HTTPError(422, "fetch_failed", f"uri: cannot fetch: {type(exc).__name__}") from None
    return Fetched(dest, uri, make_video_id(uri, "sha256:" + h.hexdigest()), size)


# -------------------------------------------------------------------------------------------------
# The deployment


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _error_response(exc: HTTPError) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers)


RESULT_TABLES = ("captions", "counts", "points", "tracks", "answers", "video_counts", "errors")


class AnalyzeService:
    """The Serve deployment class: one Molmo2Engine per replica."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.host_settings = HostSettings(
            model=settings.model, tasks=(), revision=settings.revision, device=settings.device, dtype=settings.dtype,
            attn_implementation=settings.attn_implementation, max_new_tokens=settings.max_new_tokens,
            cache_dir=settings.cache_dir, endpoint_url=settings.endpoint_url,
        )
        self.engine = Molmo2Engine(self.host_settings)
        self._model_lock = threading.Lock()

    # -- HTTP ----------------------------------------------------------------------------------

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        try:
            path = request.url.path.rstrip("/") or "/"
            if path == "/healthz":
                return JSONResponse({"status": "ok"})
            check_token(request.headers.get("authorization"), self.settings.token_sha256)
            if path != "/v1/analyze":
                raise HTTPError(404, "not_found", "no such endpoint; POST /v1/analyze")
            if request.method != "POST":
                raise HTTPError(405, "method_not_allowed", "use POST", {"Allow": "POST"})
            result = await self._analyze_request(request)
            return Response(json.dumps(_jsonable(result)), media_type="application/json")
        except HTTPError as exc:
            return _error_response(exc)
        except Exception as exc:  # a bug or a model failure: say so without internals
            log.exception("analyze failed")
            return _error_response(HTTPError(500, "internal_error", f"{type(exc).__name__} (see the replica's log)"))

    async def _analyze_request(self, request: Any) -> dict[str, Any]:
        s = self.settings
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        length = request.headers.get("content-length")
        with tempfile.TemporaryDirectory(prefix="molmo-serve-") as tmp:
            started = time.perf_counter()
            if ctype == "multipart/form-data":
                if length and length.isdigit() and int(length) > s.max_upload_bytes + MULTIPART_SLACK:
                    raise _too_large(f"the request body ({length} bytes)", s.max_upload_bytes)
                fetched, tasks = await self._read_upload(request, tmp)
            elif ctype == "application/json":
                if length and length.isdigit() and int(length) > JSON_BODY_LIMIT:
                    raise _too_large("a JSON body", JSON_BODY_LIMIT)
                body = await self._read_json(request)
                tasks = parse_tasks(body.get("tasks"), s.max_tasks)
                uri = check_uri(body.get("uri"), s.allow_prefixes)
                dest = os.path.join(tmp, "video")
                if uri.lower().startswith("s3://"):
                    fetched = await asyncio.to_thread(_fetch_s3, uri, dest, s)
                else:
                    fetched = await _fetch_http(uri, dest, s)
            else:
                raise HTTPError(415, "unsupported_media_type",
                                "send application/json {uri, tasks} or multipart/form-data with file and tasks")
            fetched.fetch_s = time.perf_counter() - started
            return await asyncio.to_thread(self.analyze_file, fetched, tasks)

    async def _read_json(self, request: Any) -> dict[str, Any]:
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > JSON_BODY_LIMIT:
                raise _too_large("a JSON body", JSON_BODY_LIMIT)
        try:
            body = json.loads(data or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPError(422, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(422, "invalid_json", 'the body must be a JSON object {"uri": ..., "tasks": [...]}')
        return body

    async def _read_upload(self, request: Any, tmp: str) -> tuple[Fetched, list[Task]]:
        from starlette.requests import Request

        from pipeline.source import make_video_id

        limit = self.settings.max_upload_bytes + MULTIPART_SLACK
        seen = 0
        receive = request.receive

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            form = await Request(request.scope, limited_receive).form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        except _TooLarge:
            raise _too_large("the upload", self.settings.max_upload_bytes) from None
        except Exception as exc:  # malformed multipart (starlette raises its own HTTP exceptions)
            raise HTTPError(422, "invalid_form", f"multipart body: {getattr(exc, 'detail', None) or exc}") from None
        try:
            tasks = parse_tasks(form.get("tasks"), self.settings.max_tasks)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPError(422, "missing_file", "multipart body: no 'file' part holding the video")
            dest = os.path.join(tmp, "upload")
            size = 0
            h = hashlib.sha256()
            with open(dest, "wb") as fh:
                while chunk := await upload.read(1 << 20):
                    size += len(chunk)
                    if size > self.settings.max_upload_bytes:
                        raise _too_large("the upload", self.settings.max_upload_bytes)
                    h.update(chunk)
                    fh.write(chunk)
            if size == 0:
                raise HTTPError(422, "invalid_video", "the uploaded file is empty")
            name = os.path.basename(upload.filename or "video")
            uri = f"upload:{name}"
            return Fetched(dest, uri, make_video_id(uri, "sha256:" + h.hexdigest()), size), tasks
        finally:
            await form.close()

    # -- the work (blocking: runs in a worker thread) -----------------------------------------

    def analyze_file(self, fetched: Fetched, tasks: Sequence[Task]) -> dict[str, Any]:
        """Decode, answer and build table rows for one local video file."""
        from pipeline.collect import RowContext, VideoCollector, video_tables
        from pipeline.decode import DecodeError, DecodeSettings, decode_video, probe_video
        from pipeline.sampling import FrameSampler
        from pipeline.schemas import to_table

        s = self.settings
        t0 = time.perf_counter()
        try:
            probe = probe_video(fetched.path)
        except DecodeError as exc:
            raise HTTPError(422, "invalid_video", f"not a readable video: {exc}") from None
        if probe.duration_s > s.max_duration_s:
            raise HTTPError(413, "too_long", f"the video is {probe.duration_s:.1f} s long, over the limit of "
                            f"{s.max_duration_s:g} s")
        decode_settings = DecodeSettings(
            frame_size=s.frame_size,
            sampler=FrameSampler(s.sampling_mode, s.num_frames, s.max_fps),  # type: ignore[arg-type]
            window_s=s.window_s, overlap_s=s.overlap_s, decoder=s.decoder, max_video_bytes=s.max_upload_bytes,
        )
        ref = {"video_id": fetched.video_id, "uri": fetched.path, "size_bytes": fetched.size_bytes}
        rows = list(decode_video(ref, decode_settings))
        for r in rows:
            r["uri"] = fetched.uri  # the caller's URI, not the temporary file
        windows = [r for r in rows if int(r["window_index"]) >= 0]
        if not windows:
            err = rows[-1] if rows else {}
            raise HTTPError(422, "invalid_video", f"cannot decode the video: {err.get('error_type')}: "
                            f"{err.get('error_message')}")
        decode_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        model_rows = self._answer(rows, tasks)
        model_s = time.perf_counter() - t1

        request_id = uuid.uuid4().hex[:12]
        ctx = RowContext(run_id=f"serve-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{request_id}", model_id=s.model,
                         max_new_tokens=s.max_new_tokens, sampling_mode=s.sampling_mode, num_frames=s.num_frames,
                         max_fps=s.max_fps)
        collector = VideoCollector(num_tasks=len(tasks))
        finished = None
        for r in model_rows:
            finished = collector.add(r) or finished
        if finished is None:  # cannot happen: every window was answered
            raise RuntimeError("incomplete answers for the video")
        tables = video_tables(finished, tasks, ctx)
        out: dict[str, Any] = {"request_id": request_id, "video": to_table("videos", tables["videos"]).to_pylist()[0]}
        for name in RESULT_TABLES:
            out[name] = to_table(name, tables.get(name, [])).to_pylist()
        out["timings"] = {"fetch_s": fetched.fetch_s, "decode_s": decode_s, "model_s": model_s}
        return out

    def _answer(self, rows: list[dict[str, Any]], tasks: Sequence[Task]) -> list[dict[str, Any]]:
        """Model-stage rows for decoded window rows: `Molmo2Host`'s own row building, in batches."""
        host = _RequestHost(replace(self.host_settings, tasks=tuple(tasks)), self.engine)
        out_rows: list[dict[str, Any]] = []
        size = max(1, self.settings.batch_size)
        keys = sorted({*PASSTHROUGH, "frames"})
        for i in range(0, len(rows), size):
            chunk = rows[i : i + size]
            batch = {k: [r.get(k) for r in chunk] for k in keys}
            with self._model_lock:
                out = host(batch)  # type: ignore[arg-type]
            n = len(out["video_id"])
            out_rows.extend({k: v[j] for k, v in out.items()} for j in range(n))
        return out_rows


class _RequestHost(Molmo2Host):
    """`Molmo2Host` for one request: the replica's loaded engine with this request's tasks."""

    def __init__(self, settings: HostSettings, engine: Molmo2Engine) -> None:  # no model load: reuse the engine
        self.settings = settings
        self.engine = engine


def build_app(settings: ServeSettings, *, num_replicas: int | None = None, gpus: float | None = None) -> Any:
    """The Serve application: one replica per GPU (or `num_replicas`), a CPU replica without GPUs."""
    import ray
    from ray import serve

    if gpus is None:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus >= 1:
        actor_options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        replicas = num_replicas or int(gpus)
    else:
        actor_options = {"num_cpus": 1}
        replicas = num_replicas or 1
    deployment: Any = serve.deployment(
        AnalyzeService,
        name="molmo2-analyze",
        num_replicas=replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=4,
    )
    return deployment.bind(settings)


# -------------------------------------------------------------------------------------------------
# Command line (`python -m pipeline serve`)


def settings_from_args(args: Any, token: str) -> ServeSettings:
    from pipeline.run import check_model_reachable, model_frame_size

    prefixes = check_prefixes(args.allow_prefix or [])
    check_model_reachable(args.model, args.s3_endpoint_url)
    frame_size = args.frame_size or model_frame_size(args.model, args.s3_endpoint_url)
    return ServeSettings(
        model=args.model, token_sha256=token_digest(token), allow_prefixes=tuple(prefixes), revision=args.revision,
        device=args.device, max_new_tokens=args.max_new_tokens, frame_size=frame_size, num_frames=args.num_frames,
        max_fps=args.max_fps, window_s=args.window_s, overlap_s=args.overlap_s,
        max_upload_bytes=args.max_upload_mb * 1024**2, max_duration_s=args.max_duration_s, max_tasks=args.max_tasks,
        endpoint_url=args.s3_endpoint_url,
    )


def command(args: Any) -> int:
    from pipeline.config import ConfigError

    token = os.environ.get(TOKEN_ENV, "")
    if len(token.strip()) < MIN_TOKEN_CHARS:
        print(f"serve: refusing to start without a token: set {TOKEN_ENV} to a secret of at least "
              f"{MIN_TOKEN_CHARS} characters, e.g. export {TOKEN_ENV}=$(python -c "
              "'import secrets; print(secrets.token_urlsafe(32))')", file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(args, token.strip())
    except (ValueError, ConfigError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    if not settings.allow_prefixes:
        print("serve: no --allow-prefix given: only uploads are accepted, every URI is refused (403)", file=sys.stderr)

    import ray
    from ray import serve

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(settings, num_replicas=args.replicas), name="molmo-batch", route_prefix="/")
    print(f"serving {args.model} at http://{args.host}:{args.port}/v1/analyze (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
