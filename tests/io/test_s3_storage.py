"""Object storage for real: a SeaweedFS S3 server on loopback (no mock), credentials from the standard AWS
chain (the environment here, set per test), the endpoint from config. No Ray in this module; the tests
that build the tiny model or start extra servers are marked integration."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from jobs.retail_tables import RETAIL_COMMIT_TABLE, RETAIL_TABLES
from pipeline.devtools.seaweed import HOST, PORT_FLAGS, VOLUME_MAX, VOLUME_SIZE_LIMIT_MB, SeaweedServer
from pipeline.io import storage
from pipeline.io.storage import get_fs, iso_timestamp
from pipeline.model import store as model_store
from pipeline.model.store import copy_model_once, resolve_model_path
from pipeline.source.listing import Lister, list_videos
from pipeline.tables.sink import TableSink


@pytest.fixture
def aws_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's keys in this test's environment (the AWS chain s3fs reads); returns the endpoint.

    The endpoint itself is passed explicitly (config/argument), never via AWS_ENDPOINT_URL here."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return seaweed.endpoint


def _fresh_fs(url: str, endpoint: str) -> None:
    """Forget fsspec's cached listings (the test uploads through another client)."""
    fs, _ = get_fs(url, endpoint)
    fs.invalidate_cache()


def test_server_is_real_authenticated_and_loopback_only(seaweed: SeaweedServer) -> None:
    from botocore.exceptions import ClientError

    bucket = seaweed.make_bucket()
    seaweed.filesystem().pipe_file(f"{bucket}/hello.txt", b"hi")
    assert seaweed.filesystem().cat_file(f"{bucket}/hello.txt") == b"hi"
    with pytest.raises(ClientError):  # wrong keys are refused
        seaweed._client("AKIAWRONGWRONGWRONG1", "wrong-secret-wrong-secret-wrong-secret00").list_objects_v2(Bucket=bucket)
    # Every port it listens on is one we chose, on 127.0.0.1 only.
    assert seaweed.pid is not None
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(seaweed.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening and {ip for ip, _ in listening} == {HOST}
    assert {port for _, port in listening} <= set(seaweed.ports.values())
    assert set(seaweed.ports) == set(PORT_FLAGS) and len(set(seaweed.ports.values())) == len(PORT_FLAGS)


def test_bucket_capacity_does_not_depend_on_the_free_disk(seaweed: SeaweedServer) -> None:
    """Each bucket takes volumes of its own; `weed mini` would size their number from the free disk
    (a few dozen on a small CI runner, fewer than the buckets one test session makes)."""
    banner = seaweed.log_path.read_text(errors="replace")
    assert f"Volume Count:     {VOLUME_MAX}" in banner
    assert f"Volume Size:      {VOLUME_SIZE_LIMIT_MB}.00 MiB" in banner
    client = seaweed._client()
    for _ in range(3):  # and new buckets still take writes
        bucket = seaweed.make_bucket()
        client.put_object(Bucket=bucket, Key="k", Body=b"x")


def test_list_videos_on_s3_uses_etags_and_sees_changes(seaweed: SeaweedServer, aws_env: str) -> None:
    bucket = seaweed.make_bucket()
    fs = seaweed.filesystem()
    fs.pipe_file(f"{bucket}/in/a.mp4", b"a" * 100)
    fs.pipe_file(f"{bucket}/in/sub/b.mp4", b"b" * 50)
    fs.pipe_file(f"{bucket}/in/notes.txt", b"not a video")
    url = f"s3://{bucket}/in"
    refs = list_videos(url, include=["*.mp4"], endpoint_url=aws_env)
    assert [r.uri for r in refs] == [f"s3://{bucket}/in/a.mp4", f"s3://{bucket}/in/sub/b.mp4"]
    assert [r.size_bytes for r in refs] == [100, 50]
    assert all(r.version.startswith("etag:") for r in refs)

    fs.pipe_file(f"{bucket}/in/a.mp4", b"A" * 100)  # same name and size, new content: a new video
    _fresh_fs(url, aws_env)
    again = {r.uri: r.video_id for r in list_videos(url, include=["*.mp4"], endpoint_url=aws_env)}
    assert again[f"s3://{bucket}/in/a.mp4"] != refs[0].video_id
    assert again[f"s3://{bucket}/in/sub/b.mp4"] == refs[1].video_id


@pytest.mark.parametrize("value", [
    "2026-11-30T12:00:01.000Z", "2026-11-30T12:00:01Z", "2026-11-30T12:00:01.123456Z", "2026-11-30T23:59:59+02:00",
    "2026-11-30T12:00:01", "Mon, 30 Nov 2026 12:00:01 GMT", "1732968001",
])
def test_iso_timestamp_gives_botocores_values(value: str) -> None:
    from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

    assert iso_timestamp(value) == DEFAULT_TIMESTAMP_PARSER(value)
    assert iso_timestamp(value).timestamp() == DEFAULT_TIMESTAMP_PARSER(value).timestamp()


def test_the_listing_parses_timestamps_its_own_way_with_the_same_answers(
    seaweed: SeaweedServer, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsspec.asyn import sync
    from fsspec.core import url_to_fs

    bucket = seaweed.make_bucket()
    fs = seaweed.filesystem()
    for name in ("a", "b", "c"):
        fs.pipe_file(f"{bucket}/in/{name}.mp4", name.encode() * 10)
    parsed: list[str] = []

    def counting(value: str) -> Any:
        parsed.append(value)
        return iso_timestamp(value)

    monkeypatch.setattr(storage, "iso_timestamp", counting)
    lister = Lister(f"s3://{bucket}/in", aws_env)
    fast = lister._s3_page(lister.root, None, "/")["Contents"]
    assert len(parsed) == 3  # the listing's own parser read the 3 keys' LastModified ...
    plain, _ = url_to_fs(f"s3://{bucket}/in", endpoint_url=aws_env, use_listings_cache=False, skip_instance_cache=True)
    slow = sync(plain.loop, plain._call_s3, "list_objects_v2", Bucket=bucket, Prefix="in/", Delimiter="/")["Contents"]
    assert len(parsed) == 3  # ... and only the listing's: another filesystem keeps botocore's
    assert fast == slow  # the same answers, timestamps included


def test_table_sink_parts_on_s3(seaweed: SeaweedServer, aws_env: str) -> None:
    bucket = seaweed.make_bucket()
    out = f"s3://{bucket}/tables"
    sink = TableSink(out, run_date="2026-11-01", endpoint_url=aws_env)
    row = {"video_id": "v1", "uri": "s3://x/v1.mp4", "status": "failed", "run_id": "r1"}
    err = {"video_id": "v1", "stage": "decode", "error_type": "Broken", "run_id": "r1"}
    sink.add_video("v1", {"videos": [row], "errors": [err]})
    sink.add_video("v2", {"videos": [{**row, "video_id": "v2", "status": "ok"}]})
    sink.flush()
    assert sink.done_video_ids() == {"v1", "v2"}
    assert sink.done_video_ids(statuses=["ok", "partial"]) == {"v2"}

    # A writer that dies between its data files and its commit record: once its lease expires, the next
    # writer's recovery finds its files by prefix in its partition and removes them; committed parts stay.
    fs = seaweed.filesystem()
    dying = TableSink(out, run_date="2026-11-02", endpoint_url=aws_env, writer_id="dies", lease_ttl_s=1.0)
    dying.add_video("v3", {"videos": [{**row, "video_id": "v3"}], "errors": [{**err, "video_id": "v3"}]})
    real_write = dying._write

    def write(table: str, key: str, data: Any) -> None:
        if table == dying.commit_table:
            dying.lease._stop.set()  # no heartbeat any more, nothing released
            raise KeyboardInterrupt("killed")
        real_write(table, key, data)

    dying._write = write  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        dying.flush()
    (orphan,) = fs.find(f"{bucket}/tables/errors/run_date=2026-11-02")
    time.sleep(1.5)  # its lease expires
    again = TableSink(out, run_date="2026-11-03", endpoint_url=aws_env)
    assert again.recover() == 1
    fs.invalidate_cache()
    assert not fs.exists(orphan) and len(fs.find(f"{bucket}/tables/errors")) == 1
    # A file no lease accounts for is the operator's sweep's (it lists everything).
    stray = f"{bucket}/tables/errors/run_date=2026-11-02/part-{'0' * 24}.parquet"
    fs.pipe_file(stray, fs.cat_file(fs.find(f"{bucket}/tables/errors")[0]))
    assert again.recover() == 0 and again.sweep() == 1
    fs.invalidate_cache()
    assert not fs.exists(stray)
    again.close()

    # Readable by pyarrow's own S3 client as a Hive-partitioned dataset.
    s3 = pafs.S3FileSystem(access_key=seaweed.access_key, secret_key=seaweed.secret_key,
                           endpoint_override=seaweed.endpoint, scheme="http", region="us-east-1")
    videos = pads.dataset(f"{bucket}/tables/videos", filesystem=s3, format="parquet", partitioning="hive").to_table()
    assert sorted(videos.column("video_id").to_pylist()) == ["v1", "v2"]
    assert set(videos.column("run_date").to_pylist()) == {"2026-11-01"}

    # A job's own tables use the same protocol with their own commit record.
    job = TableSink(out, run_date="2026-11-01", endpoint_url=aws_env, tables=RETAIL_TABLES,
                    commit_table=RETAIL_COMMIT_TABLE)
    assert job.recover() == 0 and job.done_video_ids() == set()
    with pytest.raises(KeyError):
        job.add_video("v1", {RETAIL_COMMIT_TABLE: [{}], "videos": [row]})


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".molmo-batch")
    }


@pytest.mark.integration
def test_s3_model_is_copied_once_per_node(
    seaweed: SeaweedServer, aws_env: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--model s3://.../` -> one local copy per node even when two model actors start together."""
    bucket = seaweed.make_bucket("models")
    url = f"s3://{bucket}/models/tiny-molmo2/"
    seaweed.upload(tiny_model_dir, url)
    cache = tmp_path / "cache"

    calls: list[str] = []  # every object download made by the model store

    class CountingFs:
        def __init__(self, fs: Any) -> None:
            self._fs = fs

        def __getattr__(self, name: str) -> Any:
            return getattr(self._fs, name)

        def get_file(self, rpath: str, lpath: str, **kw: Any) -> Any:
            calls.append(rpath)
            return self._fs.get_file(rpath, lpath, **kw)

    def counting_get_fs(url: str, endpoint_url: str | None = None) -> tuple[Any, str]:
        fs, path = get_fs(url, endpoint_url)
        return CountingFs(fs), path

    monkeypatch.setattr(model_store, "get_fs", counting_get_fs)
    start = threading.Barrier(2)
    results: list[Path] = []
    errors: list[BaseException] = []

    def actor() -> None:
        try:
            start.wait()
            results.append(copy_model_once(url, cache, aws_env))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=actor) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 2 and results[0] == results[1]
    local = results[0]
    n_files = len(_digest(tiny_model_dir))
    assert len(calls) == n_files  # each file fetched exactly once: one copy, not two
    assert _digest(local) == _digest(tiny_model_dir)
    assert (local / ".molmo-batch-complete").exists()
    assert [p.name for p in cache.iterdir() if ".partial-" in p.name] == []
    # Later actors on this node load from the local copy without fetching anything.
    assert resolve_model_path(url, cache_dir=str(cache), endpoint_url=aws_env) == str(local)
    assert len(calls) == n_files

    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(local), trust_remote_code=False).model_type == \
        AutoConfig.from_pretrained(str(tiny_model_dir)).model_type


@pytest.mark.integration
def test_local_demo_server_command(tmp_path: Path) -> None:
    """`python -m pipeline.devtools.seaweed --dir D` prints the endpoint and exports, serves until Ctrl-C,
    and a restart on the same D keeps the data and the keys."""
    import json
    import signal
    import subprocess
    import sys

    data = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.devtools.seaweed", "--dir", str(data), "--bucket", "videos"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any(line.startswith("# Ctrl-C") for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        exports = dict(line[len("export "):].strip().split("=", 1) for line in lines if line.startswith("export "))
        assert set(exports) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
        assert exports["AWS_ENDPOINT_URL"].startswith(f"http://{HOST}:")
        assert any(exports["AWS_ENDPOINT_URL"] in line for line in lines if "S3 endpoint" in line)
        import s3fs

        fs = s3fs.S3FileSystem(key=exports["AWS_ACCESS_KEY_ID"], secret=exports["AWS_SECRET_ACCESS_KEY"],
                               endpoint_url=exports["AWS_ENDPOINT_URL"], skip_instance_cache=True)
        fs.pipe_file("videos/kept.txt", b"kept")
        weed_pid = int(next(line for line in lines if "S3 endpoint" in line).split("(pid ")[1].split(",")[0])
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
        assert not psutil.pid_exists(weed_pid)  # the server went down with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    creds = json.loads((data / "credentials.json").read_text())
    assert creds["access_key"] == exports["AWS_ACCESS_KEY_ID"]
    with SeaweedServer(data, access_key=creds["access_key"], secret_key=creds["secret_key"]) as again:
        assert again.filesystem().cat_file("videos/kept.txt") == b"kept"
        pid = again.pid
    assert pid is not None and not psutil.pid_exists(pid)


def test_object_the_credentials_may_not_read_is_an_error_row(
    tmp_path: Path, sample_videos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real AccessDenied: the run's keys may list the bucket and read `ok/` but not `private/`."""
    from pipeline.video.decode import DecodeSettings, decode_video
    from pipeline.video.sampling import FrameSampler

    bucket = "footage"
    server = SeaweedServer(tmp_path / "seaweed", identities={"pipeline": [f"List:{bucket}", f"Read:{bucket}/ok/*"]})
    with server:
        server.create_bucket(bucket)
        clip = sorted(sample_videos.glob("*.mp4"))[0]
        server.upload(clip, f"s3://{bucket}/ok/a.mp4")
        server.upload(clip, f"s3://{bucket}/private/b.mp4")
        key, secret = server.identity_keys["pipeline"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)

        refs = list_videos(f"s3://{bucket}/", include=["*.mp4"], endpoint_url=server.endpoint)
        assert [r.uri for r in refs] == [f"s3://{bucket}/ok/a.mp4", f"s3://{bucket}/private/b.mp4"]
        settings = DecodeSettings(
            frame_size=112, sampler=FrameSampler("native", 4, 1.0), window_s=10.0, overlap_s=2.0,
            endpoint_url=server.endpoint,
        )
        rows = {r.uri: list(decode_video(r.as_row(), settings)) for r in refs}
        ok, denied = rows[refs[0].uri], rows[refs[1].uri]
        assert ok and all(r["decode_status"] == "ok" for r in ok)
        assert len(denied) == 1 and denied[0]["decode_status"] == "failed"
        assert (denied[0]["error_stage"], denied[0]["error_type"]) == ("fetch", "AccessDenied")
        assert "access denied" in denied[0]["error_message"].lower() and secret not in denied[0]["error_message"]


def test_webdataset_shards_on_s3_are_read_by_byte_range(
    seaweed: SeaweedServer, aws_env: str, sample_videos: Path, tmp_path: Path
) -> None:
    """Tar shards in a real S3 bucket: indexed from their headers, each member fetched by one ranged read,
    and decoded to exactly the frames of the same video as a loose local file."""
    import io
    import tarfile

    import numpy as np

    from pipeline.config import VIDEO_GLOBS
    from pipeline.video.decode import DecodeSettings, decode_video
    from pipeline.video.sampling import FrameSampler

    clips = sorted(sample_videos.glob("*.mp4"))[:3]
    local = tmp_path / "shards"
    local.mkdir()
    for n, members in enumerate([clips[:2], clips[2:]]):
        with tarfile.open(local / f"{n:05d}.tar", "w") as tar:
            for clip in members:
                tar.add(clip, arcname=clip.name)
                meta = json.dumps({"camera": clip.stem}).encode()
                info = tarfile.TarInfo(clip.stem + ".json")
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta))
    bucket = seaweed.make_bucket("shards")
    seaweed.upload(local, f"s3://{bucket}/train/")

    refs = list_videos(f"s3://{bucket}/train/{{00000..00001}}.tar", include=list(VIDEO_GLOBS), endpoint_url=aws_env)
    assert [r.uri for r in refs] == [
        f"s3://{bucket}/train/00000.tar#{clips[0].name}",
        f"s3://{bucket}/train/00000.tar#{clips[1].name}",
        f"s3://{bucket}/train/00001.tar#{clips[2].name}",
    ]
    assert all(r.source_url.startswith(f"s3://{bucket}/train/0000") and r.byte_offset > 0 for r in refs)
    assert [json.loads(r.source_metadata)["sidecar"]["camera"] for r in refs] == [c.stem for c in clips]

    settings = DecodeSettings(
        frame_size=112, sampler=FrameSampler("native", 4, 1.0), window_s=10.0, overlap_s=2.0, endpoint_url=aws_env
    )
    for ref, clip in zip(refs, clips, strict=True):
        from_shard = list(decode_video(ref.as_row(), settings))
        loose = list(decode_video({"video_id": "x", "uri": str(clip), "size_bytes": clip.stat().st_size}, settings))
        assert [r["decode_status"] for r in from_shard] == ["ok"] * len(loose), from_shard[0].get("error_message")
        for a, b in zip(from_shard, loose, strict=True):
            assert np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["frame_times"], b["frame_times"])
