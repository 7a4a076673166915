"""Ask online: a Ray Serve application answering one video at a time with the batch pipeline's own code.

    export MOLMO_BATCH_SERVE_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    python -m pipeline serve --model allenai/Molmo2-8B --allow-prefix s3://bucket/ --port 8000

`POST /v1/analyze` with `Authorization: Bearer <token>` and either

- JSON `{"uri": "s3://bucket/clip.mp4", "tasks": ["caption", "count:person", "track:person"]}`, or
- multipart/form-data with a `file` part (the video) and a `tasks` field (comma-separated or a JSON list),

returns `{"request_id", "video": {...}, "captions": [...], "counts": [...], "points": [...],
"tracks": [...], "answers": [...], "video_counts": [...], "errors": [...], "timings": {...}}` where every
list holds rows in exactly the shape of the batch tables (`pipeline.tables.schemas`): the request runs the same
`decode_video` -> `Molmo2Engine.answer_windows` (through `Molmo2Host`'s row building) -> `video_tables`.

Safety, in the order checked:
- 401 without the bearer token (compared as SHA-256 digests in constant time; the replicas only ever see
  the digest, so the token is in no Serve config or log). The server refuses to start without a token,
  and takes it out of its own environment before Ray starts (`take_token`), so no Ray process it starts
  (GCS, raylet, Serve controller, proxy, replica) inherits it.
- 403 for a URI that is not s3://, http:// or https:// (never file://, local paths or other schemes), that
  is not under one of the configured `--allow-prefix` prefixes (scheme, host and port exact, path by
  prefix, no `..` segments, no credentials in the URI), or whose host resolves to a loopback, link-local,
  private, multicast or reserved address. The address check is made again when connecting (a resolver
  that only returns vetted addresses), and redirects are not followed.
- 413 for a request body or video over `max_upload_bytes`, or a video longer than `max_duration_s`.
- 415 for a body that is neither JSON nor multipart; 422 for bad JSON, unknown tasks, too many tasks, a
  missing URI or file, a URI that names a folder or a missing object, or a file that is not a readable
  video. A client error's message never names a server path (`without_server_paths`); a 500 is a bug
  or a model failure and says only the exception type.

Ray Serve's proxy answers two routes of its own before the app sees a request, without the token:
`/-/healthz` and `/-/routes` (the route prefix and app name). Both are documented as exposed
(docs/serving.md); neither carries data or settings.

One replica per GPU (`num_gpus=1`) when the cluster has GPUs, else one CPU replica; a replica answers one
request's model work at a time (a lock) and decodes the next request meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import MutableMapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from pipeline.config import ConfigError, RunConfig, build_section, config_from_flags, flag_values
from pipeline.io.secrets import public_uri
from pipeline.model.engine import PASSTHROUGH, HostSettings, Molmo2Engine
from pipeline.model.host import Molmo2Host
from pipeline.model.store import check_model_reachable
from pipeline.results.collect import VideoCollector, video_tables
from pipeline.results.tasks import Task, build_tasks
from pipeline.run.settings import decode_settings, frame_size_of, host_settings, row_context
from pipeline.source.refs import make_video_id
from pipeline.tables.schemas import to_table
from pipeline.tools.serve.fetch import Fetched, TooLarge, fetch_s3, too_large
from pipeline.tools.serve.security import (
    MIN_TOKEN_CHARS,
    TOKEN_ENV,
    HTTPError,
    address_problem,
    check_prefixes,
    check_token,
    check_uri,
    token_digest,
)
from pipeline.tools.serve.settings import ServeOptions, ServeSettings
from pipeline.video.decode import decode_video
from pipeline.video.errors import DecodeError
from pipeline.video.probe import probe_video

log = logging.getLogger("pipeline.tools.serve.app")


JSON_BODY_LIMIT = 64 * 1024


MULTIPART_SLACK = 64 * 1024  # form boundaries and fields around the file




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


async def _fetch_http(uri: str, dest: str, settings: ServeSettings) -> Fetched:
    import aiohttp
    from aiohttp.abc import AbstractResolver


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
                raise too_large(f"the video ({resp.content_length} bytes)", settings.max_upload_bytes)
            with open(dest, "wb") as fh:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        raise too_large("the video", settings.max_upload_bytes)
                    h.update(chunk)
                    fh.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise HTTPError(422, "fetch_failed", f"uri: cannot fetch: {type(exc).__name__}") from None
    return Fetched(dest, public_uri(uri), make_video_id(uri, "sha256:" + h.hexdigest()), size)


def without_server_paths(detail: str, folder: str) -> str:
    """`detail` with every path under the request's temporary `folder` replaced by `<video>`: a client
    error names what the client sent, never where the server keeps it."""
    for root in sorted({folder, os.path.realpath(folder)}, key=len, reverse=True):
        detail = re.sub(re.escape(root) + r"(?:/[^\s'\"),;]*)?", "<video>", detail)
    return detail


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
        self.engine = Molmo2Engine(settings.host)
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
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        length = request.headers.get("content-length")
        with tempfile.TemporaryDirectory(prefix="molmo-serve-") as tmp:
            try:
                return await self._analyze_in(request, tmp, ctype, length)
            except HTTPError as exc:
                exc.detail = without_server_paths(exc.detail, tmp)
                raise

    async def _analyze_in(self, request: Any, tmp: str, ctype: str, length: str | None) -> dict[str, Any]:
        """Fetch or receive the video into the temporary folder `tmp`, then analyze it."""
        s = self.settings
        started = time.perf_counter()
        if ctype == "multipart/form-data":
            if length and length.isdigit() and int(length) > s.max_upload_bytes + MULTIPART_SLACK:
                raise too_large(f"the request body ({length} bytes)", s.max_upload_bytes)
            fetched, tasks = await self._read_upload(request, tmp)
        elif ctype == "application/json":
            if length and length.isdigit() and int(length) > JSON_BODY_LIMIT:
                raise too_large("a JSON body", JSON_BODY_LIMIT)
            body = await self._read_json(request)
            tasks = parse_tasks(body.get("tasks"), s.max_tasks)
            uri = check_uri(body.get("uri"), s.allow_prefixes)
            dest = os.path.join(tmp, "video")
            if uri.lower().startswith("s3://"):
                fetched = await asyncio.to_thread(fetch_s3, uri, dest, s)
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
                raise too_large("a JSON body", JSON_BODY_LIMIT)
        try:
            body = json.loads(data or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPError(422, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(422, "invalid_json", 'the body must be a JSON object {"uri": ..., "tasks": [...]}')
        return body

    async def _read_upload(self, request: Any, tmp: str) -> tuple[Fetched, list[Task]]:
        from starlette.requests import Request


        limit = self.settings.max_upload_bytes + MULTIPART_SLACK
        seen = 0
        receive = request.receive

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge()
            return message

        try:
            form = await Request(request.scope, limited_receive).form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        except TooLarge:
            raise too_large("the upload", self.settings.max_upload_bytes) from None
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
                        raise too_large("the upload", self.settings.max_upload_bytes)
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

        s = self.settings
        t0 = time.perf_counter()
        try:
            probe = probe_video(fetched.path)
        except DecodeError as exc:
            raise HTTPError(422, "invalid_video", f"not a readable video: {exc}") from None
        if probe.duration_s > s.max_duration_s:
            raise HTTPError(413, "too_long", f"the video is {probe.duration_s:.1f} s long, over the limit of "
                            f"{s.max_duration_s:g} s")
        ref = {"video_id": fetched.video_id, "uri": fetched.path, "size_bytes": fetched.size_bytes}
        rows = list(decode_video(ref, s.decode))
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
        ctx = replace(s.row, run_id=f"serve-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{request_id}")
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
        host = _RequestHost(replace(self.settings.host, tasks=tuple(tasks)), self.engine)
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


def serve_settings(
    config: RunConfig,
    frame_size: int,
    *,
    token_sha256: str,
    allow_prefixes: Sequence[str],
    max_upload_bytes: int,
    max_duration_s: float,
    max_tasks: int,
) -> ServeSettings:
    """A replica's settings: the model, decode and row settings built from `config` as for a batch run."""
    decode = decode_settings(config, frame_size)
    # One request at a time per replica: the decoder picks its own thread count (decode_threads sizes the
    # batch run's decode tasks), and the upload limit bounds what is decoded.
    decode = replace(decode, threads=0, max_video_bytes=max_upload_bytes)
    return ServeSettings(
        host=host_settings(config, tasks=()),
        decode=decode,
        row=row_context(config, run_id=""),  # replaced per request
        batch_size=config.model.batch_size,
        token_sha256=token_sha256,
        allow_prefixes=tuple(allow_prefixes),
        max_duration_s=max_duration_s,
        max_tasks=max_tasks,
    )


def settings_from_options(config: RunConfig, options: ServeOptions, token: str) -> ServeSettings:
    """Check the prefixes and the model, read the frame size, and build the replicas' settings."""
    prefixes = check_prefixes(options.allow_prefix)
    check_model_reachable(config.model.model, config.source.s3_endpoint_url, revision=config.model.revision)
    return serve_settings(
        config, frame_size_of(config), token_sha256=token_digest(token), allow_prefixes=prefixes,
        max_upload_bytes=options.max_upload_mb * 1024**2, max_duration_s=options.max_duration_s,
        max_tasks=options.max_tasks,
    )


def take_token(environ: MutableMapping[str, str]) -> str:
    """The serve token, removed from `environ`: every process Ray starts from here (raylet, GCS, the Serve
    controller, proxies and replicas) inherits this process's environment, and must not hold the token.
    Only its SHA-256 digest travels, inside the replicas' settings."""
    return environ.pop(TOKEN_ENV, "").strip()


def command(args: Any) -> int:
    token = take_token(os.environ)
    if len(token) < MIN_TOKEN_CHARS:
        print(f"serve: refusing to start without a token: set {TOKEN_ENV} to a secret of at least "
              f"{MIN_TOKEN_CHARS} characters, e.g. export {TOKEN_ENV}=$(python -c "
              "'import secrets; print(secrets.token_urlsafe(32))')", file=sys.stderr)
        return 2
    flags = vars(args)
    try:
        config = config_from_flags(flags)
        options = build_section("serve", ServeOptions, flag_values(flags, "serve"))
        settings = settings_from_options(config, options, token)
    except (ValueError, ConfigError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    if not settings.allow_prefixes:
        print("serve: no --allow-prefix given: only uploads are accepted, every URI is refused (403)", file=sys.stderr)

    import ray
    from ray import serve

    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", include_dashboard=False)
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(build_app(settings, num_replicas=options.replicas), name="molmo-batch", route_prefix="/")
    print(f"serving {config.model.model} at http://{options.host}:{options.port}/v1/analyze (Ctrl-C stops)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
