"""`serve`: the checks as pure functions, then one real Ray Serve on loopback with the tiny Molmo2, driven by
a real HTTP client (auth, URI rules, size/duration limits, bad input, and a full analyze of an upload)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import build_config
from pipeline.devtools.samples import SampleSpec, write_video
from pipeline.devtools.seaweed import SeaweedServer
from pipeline.tables.schemas import TABLES
from pipeline.tools.serve.app import parse_tasks, serve_settings
from pipeline.tools.serve.security import (
    HTTPError,
    address_problem,
    check_prefixes,
    check_token,
    check_uri,
    token_digest,
)

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"


def _status(fn, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(HTTPError) as info:
        fn(*args, **kwargs)
    return info.value.status


def test_checks_without_a_server() -> None:
    digest = token_digest(TOKEN)
    check_token(f"Bearer {TOKEN}", digest)
    check_token(f"bearer {TOKEN}", digest)
    for header in (None, "", "Bearer", f"Basic {TOKEN}", "Bearer wrong", f"Bearer {TOKEN}x"):
        assert _status(check_token, header, digest) == 401

    assert [t.name for t in parse_tasks("caption, count:person", 4)] == ["caption", "count:person"]
    assert [t.name for t in parse_tasks('["track:car"]', 4)] == ["track:car"]
    for bad in ([], "", "dance:x", ["count:"], [1], "[", ["caption", "count:a", "count:b"]):
        assert _status(parse_tasks, bad, 2) == 422

    for ip, why in (("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"),
                    ("fe80::1", "link-local"), ("10.0.0.5", "private"), ("192.168.1.1", "private"),
                    ("172.16.0.1", "private"), ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"),
                    ("224.0.0.1", "multicast"), ("100.64.0.1", "not globally routable")):
        assert address_problem(ip) == why, ip
    assert address_problem("93.184.215.14") is None and address_problem("2606:4700::1111") is None

    allowed = ("s3://bucket/videos/", "https://cdn.example.com/media/")
    public = {"cdn.example.com": ["93.184.215.14"], "evil.example.com": ["10.1.1.1"]}

    def resolve(host: str, port: int) -> list[str]:  # no DNS traffic in tests
        return public[host]

    assert check_uri("s3://bucket/videos/a.mp4", allowed, resolve=resolve) == "s3://bucket/videos/a.mp4"
    assert check_uri("https://cdn.example.com/media/a.mp4?sig=1", allowed, resolve=resolve)
    for uri in ("file:///etc/passwd", "/etc/passwd", "gs://bucket/videos/a.mp4", "s3://bucket/other/a.mp4",
                "s3://bucket-2/videos/a.mp4", "s3://bucket/videos/../secrets/a.mp4", "s3://bucket/videos/%2e%2e/x",
                "https://cdn.example.com.evil.com/media/a.mp4", "https://cdn.example.com@evil.example.com/media/a",
                "http://cdn.example.com/media/a.mp4", "https://cdn.example.com:8443/media/a.mp4"):
        assert _status(check_uri, uri, allowed, resolve=resolve) == 403, uri
    # An operator-allowed prefix still never reaches an internal address.
    assert _status(check_uri, "https://evil.example.com/x.mp4", ("https://evil.example.com/",), resolve=resolve) == 403
    for uri in (None, "", 7, "s3://bucket/videos/a b.mp4", "s3:///videos"):
        assert _status(check_uri, uri, allowed, resolve=resolve) == 422, uri
    assert check_prefixes(["s3://b/p/"]) == ["s3://b/p/"]
    for bad in ("file:///data/", "/data", "s3://", "https://u:p@h/"):
        with pytest.raises(ValueError):
            check_prefixes([bad])


def test_serve_flags_are_the_run_configs() -> None:
    from pipeline.cli import build_parser
    from pipeline.config import build_section, config_from_flags, flag_values
    from pipeline.run.settings import sampler_of
    from pipeline.tools.serve.settings import ServeOptions

    args = build_parser().parse_args(["serve", "--model", "m", "--num-frames", "8", "--window-s", "20",
                                      "--allow-prefix", "s3://a/", "--allow-prefix", "s3://b/",
                                      "--max-upload-mb", "2", "--port", "9000", "--address", "ray://h:1"])
    flags = vars(args)
    config = config_from_flags(flags)
    options = build_section("serve", ServeOptions, flag_values(flags, "serve"))
    assert (config.model.model, config.sampling.num_frames, config.window.window_s) == ("m", 8, 20.0)
    assert config.ray.address == "ray://h:1"
    assert config == build_config({"model": {"model": "m"}, "sampling": {"num_frames": 8},
                                   "window": {"window_s": 20}, "ray": {"address": "ray://h:1"}})
    assert (options.allow_prefix, options.port, options.host) == (["s3://a/", "s3://b/"], 9000, "127.0.0.1")
    assert options == ServeOptions(allow_prefix=["s3://a/", "s3://b/"], max_upload_mb=2, port=9000)

    settings = serve_settings(config, 112, token_sha256=token_digest(TOKEN), allow_prefixes=options.allow_prefix,
                              max_upload_bytes=options.max_upload_mb * 1024**2,
                              max_duration_s=options.max_duration_s, max_tasks=options.max_tasks)
    assert (settings.host.model, settings.host.tasks, settings.host.max_new_tokens) == ("m", (), 256)
    assert settings.decode.sampler == sampler_of(config) and settings.decode.frame_size == 112
    assert (settings.decode.window_s, settings.decode.overlap_s) == (20.0, 5.0)
    assert settings.max_upload_bytes == settings.decode.max_video_bytes == 2 * 1024**2
    assert (settings.row.model_id, settings.row.num_frames, settings.batch_size) == ("m", 8, 4)
    assert settings.allow_prefixes == ("s3://a/", "s3://b/") and settings.token_sha256 != TOKEN
    with pytest.raises(SystemExit):  # --model is required
        build_parser().parse_args(["serve"])


def test_serve_refuses_to_start_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MOLMO_BATCH_SERVE_TOKEN"}
    for token in (None, "short"):
        if token:
            env["MOLMO_BATCH_SERVE_TOKEN"] = token
        res = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--model", "x", "--allow-prefix", "s3://b/"],
                             capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
        assert res.returncode == 2 and "MOLMO_BATCH_SERVE_TOKEN" in res.stderr and "refusing to start" in res.stderr


def test_the_token_leaves_the_environment_and_only_its_digest_is_deployed(tmp_path: Path) -> None:
    from ray import cloudpickle

    from pipeline.tools.serve.app import build_app, take_token

    env = {"MOLMO_BATCH_SERVE_TOKEN": f"  {TOKEN}\n", "PATH": "/bin"}
    assert take_token(env) == TOKEN and env == {"PATH": "/bin"}
    assert take_token(env) == ""
    config = build_config({"model": {"model": "m"}})
    settings = serve_settings(config, 112, token_sha256=token_digest(TOKEN), allow_prefixes=(), max_upload_bytes=1,
                              max_duration_s=1.0, max_tasks=1)
    deployed = cloudpickle.dumps(build_app(settings, gpus=0))  # everything Serve ships to the replicas
    assert token_digest(TOKEN).encode() in deployed and TOKEN.encode() not in deployed


def test_client_error_messages_name_no_server_path() -> None:
    from pipeline.tools.serve.app import without_server_paths

    tmp = "/tmp/molmo-serve-abc123"
    detail = f"not a readable video: a text file, not a video (InvalidDataError: Invalid data: '{tmp}/upload')"
    assert without_server_paths(detail, tmp) == \
        "not a readable video: a text file, not a video (InvalidDataError: Invalid data: '<video>')"
    assert without_server_paths(f"cannot open {tmp}, {tmp}/video; done", tmp) == "cannot open <video>, <video>; done"


def test_s3_uris_that_name_no_object_are_4xx(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """A prefix ("a folder") and a missing key are the client's mistakes: 422 with the URI, never a 500."""
    import s3fs

    from pipeline.tools.serve.fetch import fetch_s3

    for name, value in (("AWS_ACCESS_KEY_ID", seaweed.access_key), ("AWS_SECRET_ACCESS_KEY", seaweed.secret_key),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # filesystems made earlier may hold other keys
    bucket = seaweed.make_bucket()
    seaweed.filesystem().pipe_file(f"{bucket}/videos/a.mp4", b"a" * 10)
    config = build_config({"model": {"model": "m"}, "source": {"s3_endpoint_url": seaweed.endpoint}})
    settings = serve_settings(config, 112, token_sha256=token_digest(TOKEN), allow_prefixes=(f"s3://{bucket}/",),
                              max_upload_bytes=1000, max_duration_s=10.0, max_tasks=2)
    dest = str(tmp_path / "video")
    for uri, code in ((f"s3://{bucket}/videos", "not_a_file"), (f"s3://{bucket}/videos/", "not_a_file"),
                      (f"s3://{bucket}/videos/missing.mp4", "not_found")):
        with pytest.raises(HTTPError) as info:
            fetch_s3(uri, dest, settings)
        assert (info.value.status, info.value.code) == (422, code), (uri, info.value.detail)
        assert uri.rstrip("/") in info.value.detail and str(tmp_path) not in info.value.detail
    fetched = fetch_s3(f"s3://{bucket}/videos/a.mp4", dest, settings)
    assert (fetched.uri, fetched.size_bytes, Path(dest).read_bytes()) == (f"s3://{bucket}/videos/a.mp4", 10, b"a" * 10)


@pytest.mark.integration
def test_no_ray_process_of_serve_holds_the_token(tiny_model_dir: Path) -> None:
    """`pipeline serve` as a user starts it: every process of its Ray (GCS, raylet, Serve controller, proxy,
    replica) is a descendant of the command; none may have the token in its environment."""
    import psutil
    import requests

    port = _free_port()
    env = {**os.environ, "MOLMO_BATCH_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model", str(tiny_model_dir), "--port", str(port),
         "--num-frames", "4", "--max-new-tokens", "4"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    descendants: list[psutil.Process] = []
    try:
        output = []
        assert proc.stdout is not None
        for line in proc.stdout:  # until the app is deployed (or the command ends)
            output.append(line)
            if line.startswith("serving "):
                break
        assert proc.poll() is None, "".join(output)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        holders, names = [], []
        for child in descendants:
            try:
                environ, cmdline = child.environ(), " ".join(child.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            names.append(cmdline)
            if any(TOKEN in value for value in environ.values()):
                holders.append(cmdline)
        for role in ("ServeReplica", "ServeController", "ProxyActor", "raylet", "gcs_server"):
            assert any(role in name for name in names), (role, names)
        assert holders == []
        base = f"http://127.0.0.1:{port}"
        assert requests.post(base + "/v1/analyze", json={}, timeout=30).status_code == 401
        r = requests.post(base + "/v1/analyze", json={}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert r.status_code == 422  # the token still opens the door: the replicas compare digests
    finally:
        proc.send_signal(signal.SIGINT)  # the command shuts Serve and its Ray down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        for child in descendants:  # only the processes this test started
            if child.is_running():
                child.kill()


# -------------------------------------------------------------------------------------------------
# One Serve for the rest of the module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(ray_local: None, tiny_model_dir: Path) -> Iterator[str]:
    from ray import serve

    from pipeline.tools.serve.app import build_app

    port = _free_port()
    config = build_config({
        "model": {"model": str(tiny_model_dir), "max_new_tokens": 12},
        "sampling": {"num_frames": 6, "max_fps": 2.0},
        "window": {"window_s": 10.0, "overlap_s": 2.0},
        "decode": {"decoder": "pyav"},
    })
    settings = serve_settings(
        config, 112, token_sha256=token_digest(TOKEN),
        # Internal addresses allowed on purpose: the address check must refuse them anyway.
        allow_prefixes=("s3://allowed/videos/", f"http://127.0.0.1:{port}/", "http://169.254.169.254/",
                        "http://10.20.30.40/"),
        max_upload_bytes=512 * 1024, max_duration_s=20.0, max_tasks=4,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings, gpus=0), name="molmo-batch-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.integration
def test_auth_and_routes(server: str) -> None:
    import requests

    url = server + "/v1/analyze"
    assert requests.get(server + "/healthz", timeout=30).json() == {"status": "ok"}
    r = requests.post(url, json={"uri": "s3://allowed/videos/a.mp4", "tasks": ["caption"]}, timeout=30)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.post(url, json={"uri": "s3://allowed/videos/a.mp4", "tasks": ["caption"]},
                      headers={"Authorization": "Bearer not-the-token"}, timeout=30)
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    assert requests.get(url, headers=AUTH, timeout=30).status_code == 405
    assert requests.post(server + "/v1/other", headers=AUTH, timeout=30).status_code == 404
    r = requests.post(url, data="hello", headers={**AUTH, "Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 415
    # Ray Serve's proxy answers its own two routes without the token (documented in docs/serving.md):
    # the route table names only the app, the health check says only that the proxy is up.
    assert requests.get(server + "/-/routes", timeout=30).json() == {"/": "molmo-batch-test"}
    assert requests.get(server + "/-/healthz", timeout=30).status_code == 200
    assert requests.get(server + "/-/anything-else", timeout=30).status_code == 401  # the app's auth


@pytest.mark.integration
def test_uri_rules(server: str) -> None:
    import requests

    url = server + "/v1/analyze"
    port = server.rsplit(":", 1)[1]

    def post(uri: str, tasks: object = ("caption",)) -> requests.Response:
        return requests.post(url, json={"uri": uri, "tasks": list(tasks)}, headers=AUTH, timeout=30)  # type: ignore[call-overload]

    cases = {
        "file:///etc/passwd": "scheme file://",
        "/etc/passwd": "scheme (none)",
        f"http://127.0.0.1:{port}/healthz": "loopback",
        "http://169.254.169.254/latest/meta-data/": "link-local",
        "http://10.20.30.40/video.mp4": "private",
        "s3://other-bucket/videos/a.mp4": "not under an allowed prefix",
        "s3://allowed/videos/../private/a.mp4": "'..'",
        f"http://user:pw@127.0.0.1:{port}/a.mp4": "credentials",
    }
    for uri, why in cases.items():
        r = post(uri)
        assert r.status_code == 403, (uri, r.text)
        assert r.json()["error"] == "uri_forbidden" and why in r.json()["detail"], (uri, r.json())
    # Bad tasks are refused before any URI is looked at.
    for tasks in ([], ["dance:x"], ["count:"], ["caption", "count:a", "count:b", "count:c", "count:d"]):
        r = post("s3://allowed/videos/a.mp4", tasks)
        assert r.status_code == 422 and r.json()["error"] == "invalid_tasks", (tasks, r.text)
    r = requests.post(url, json={"tasks": ["caption"]}, headers=AUTH, timeout=30)
    assert r.status_code == 422 and r.json()["error"] == "invalid_uri"
    r = requests.post(url, data="{not json", headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 422 and r.json()["error"] == "invalid_json"
    r = requests.post(url, data=json.dumps({"uri": "x" * 70_000}), headers={**AUTH, "Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 413


@pytest.mark.integration
def test_upload_limits_and_bad_files(server: str, tmp_path: Path) -> None:
    import requests

    url = server + "/v1/analyze"
    big = os.urandom(600 * 1024)  # over max_upload_bytes=512 KiB
    r = requests.post(url, files={"file": ("big.mp4", big, "video/mp4")}, data={"tasks": "caption"}, headers=AUTH,
                      timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    # Without a Content-Length (chunked), the limit is enforced while the body streams in.
    boundary = "molmo-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"tasks\"\r\n\r\ncaption\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]
        yield f"\r\n--{boundary}--\r\n".encode()

    r = requests.post(url, data=chunks(), headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                      timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    long = write_video(tmp_path / "long.mp4", SampleSpec("long", seconds=30.0, fps=2, width=32, height=32, seed=1))
    r = requests.post(url, files={"file": ("long.mp4", long.read_bytes(), "video/mp4")}, data={"tasks": "caption"},
                      headers=AUTH, timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "too_long" and "30.0 s" in r.json()["detail"]

    import tempfile

    for name, data in (("notes.mp4", b"not a video at all" * 50), ("noise.mp4", os.urandom(4096)),
                       ("cut.mp4", long.read_bytes()[:3000])):
        r = requests.post(url, files={"file": (name, data, "video/mp4")}, data={"tasks": "caption"}, headers=AUTH,
                          timeout=60)
        assert r.status_code == 422 and r.json()["error"] == "invalid_video", (name, r.text)
        for server_path in (tempfile.gettempdir(), "molmo-serve-", "/upload"):  # names no path of the server
            assert server_path not in r.json()["detail"], (name, r.json())
    r = requests.post(url, data={"tasks": "caption"}, files={"other": ("x", b"1")}, headers=AUTH, timeout=60)
    assert r.status_code == 422 and r.json()["error"] == "missing_file"
    r = requests.post(url, files={"file": ("v.mp4", b"1", "video/mp4")}, data={"tasks": "juggle"}, headers=AUTH,
                      timeout=60)
    assert r.status_code == 422 and r.json()["error"] == "invalid_tasks"


@pytest.mark.integration
def test_analyze_an_upload(server: str, tmp_path: Path) -> None:
    import requests

    video = write_video(tmp_path / "clip.mp4", SampleSpec("clip", seconds=3.0, fps=10, width=96, height=64, seed=3))
    r = requests.post(server + "/v1/analyze", files={"file": ("clip.mp4", video.read_bytes(), "video/mp4")},
                      data={"tasks": "caption,count:person,track:person"}, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    v = body["video"]
    assert (v["uri"], v["status"], v["windows"], v["width"], v["height"], v["duration_s"]) == (
        "upload:clip.mp4", "ok", 1, 96, 64, 3.0)
    assert v["tasks"] == "caption,count:person,track:person"
    # Every list holds rows in exactly the shape of the batch table of the same name; what the seeded random
    # tiny model writes is fixed: no tag anywhere (no points, no tracks, no answers asked), every answer cut at
    # max_new_tokens=12, the count answer's first number read as its count.
    assert list(v) == TABLES["videos"].names
    assert {k: len(body[k]) for k in ("captions", "counts", "points", "tracks", "answers", "video_counts", "errors")} == {
        "captions": 1, "counts": 1, "points": 0, "tracks": 0, "answers": 0, "video_counts": 2, "errors": 0}
    for table in ("captions", "counts", "video_counts"):
        for row in body[table]:
            assert list(row) == TABLES[table].names, table
    (cap,) = body["captions"]
    assert cap["caption"] and cap["prompt"] == "Describe this video in detail."
    assert (cap["frames_used"], cap["generated_tokens"], cap["truncated"]) == (6, 12, True)
    assert cap["video_id"] == v["video_id"] and cap["run_id"].startswith("serve-")
    (count,) = body["counts"]
    stated = count["count"]  # a number the answer states (the parser's reading of gibberish)
    assert isinstance(stated, int) and str(stated) in re.findall(r"\d+", count["answer"])
    assert (count["query"], count["prompt"], count["parse_status"], count["count_method"]) == (
        "person", "How many people are there?", "truncated", "text_number")
    assert sorted((r["task"], r["query"], r["distinct_objects"], r["max_window_count"], r["windows"])
                  for r in body["video_counts"]) == [("count", "person", None, stated, 1), ("track", "person", None, 0, 1)]
    assert body["timings"]["model_s"] > 0
    # The same bytes get the same video_id (content-addressed uploads).
    again = requests.post(server + "/v1/analyze", files={"file": ("clip.mp4", video.read_bytes(), "video/mp4")},
                          data={"tasks": '["caption"]'}, headers=AUTH, timeout=120)
    assert again.status_code == 200 and again.json()["video"]["video_id"] == v["video_id"]
    assert again.json()["captions"][0]["caption"] == cap["caption"]  # greedy: same answer
