"""The streamed listing (pipeline.source.stream, listing, manifest, shards): units that cover a prefix
exactly once, no listing cache, manifests without a request per row, shards in one forward pass, and the
Ray stream of refs. Requests are counted at a loopback proxy in front of a real SeaweedFS (no mock).

The tests without Ray run what each listing task runs, in this process; the integration tests run the
same listing as Ray tasks, with the S3 keys in the Ray workers' environment (`ray_s3`)."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import VIDEO_GLOBS, SourceConfig
from pipeline.devtools.latency_proxy import LatencyProxy
from pipeline.devtools.seaweed import SeaweedServer
from pipeline.source import manifest
from pipeline.source.listing import (
    LevelUnit,
    Lister,
    ObjectsUnit,
    TreeUnit,
    list_videos,
    plan_units,
    refs_of,
    unit_pages,
)
from pipeline.source.refs import VideoRef
from pipeline.source.shards import index_shard
from pipeline.video.decode import DecodeSettings, decode_video
from pipeline.video.sampling import FrameSampler

INCLUDE = list(VIDEO_GLOBS)
EXCLUDE = ["skip/*"]


@pytest.fixture
def aws_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return seaweed.endpoint


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[LatencyProxy]:
    """Counts the requests (no added latency: tests count, they never time)."""
    with LatencyProxy(seaweed.endpoint, delay_s=0.0) as p:
        yield p


# Nested common prefixes, a level bigger than a small page, objects beside folders, names that sort
# around "/" ("a.mp4" < "a/" < "ab.mp4"), a deep chain, and things include/exclude must drop.
TREE = (
    [f"{d}/{e}/k{i}.mp4" for d in ("a", "b", "c") for e in ("x", "y") for i in range(4)]
    + [f"top{i:02d}.mp4" for i in range(9)]
    + ["a.mp4", "ab.mp4", "notes.txt", "b/z.mov", "b/Z.MOV", "deep/1/2/3/4/5/f.mp4", "skip/s.mp4", "c/x/skip/t.mp4"]
)


def _s3_tree(seaweed: SeaweedServer) -> str:
    bucket = seaweed.make_bucket()
    client = seaweed._client()
    for key in TREE:
        client.put_object(Bucket=bucket, Key=f"in/{key}", Body=key.encode())
    return f"s3://{bucket}/in"


def _local_tree(root: Path) -> str:
    for key in TREE:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(key.encode())
    return str(root)


def _oracle(prefix: str) -> list[str]:
    """What a plain listing must return: every key of TREE matching include/exclude, as a URI."""
    def hit(key: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatch(key.rsplit("/", 1)[-1], p) or fnmatch.fnmatch(key, p) for p in patterns)

    return sorted(f"{prefix}/{key}" for key in TREE if hit(key, INCLUDE) and not hit(key, EXCLUDE))


def _run_units(lister: Lister, units: list[Any]) -> list[VideoRef]:
    """What the listing tasks do, one unit after another in this process."""
    refs: list[VideoRef] = []
    for unit in units:
        for page in unit_pages(lister, unit):
            assert not isinstance(page, VideoRef), page  # no listing error here
            refs.extend(refs_of(lister, page, base=lister.root, include=INCLUDE, exclude=EXCLUDE))
    return refs


@pytest.mark.parametrize("page_size", [2, 1000])
def test_units_cover_a_nested_prefix_exactly_once(seaweed: SeaweedServer, aws_env: str, proxy: LatencyProxy,
                                                  page_size: int) -> None:
    url = _s3_tree(seaweed)
    plain = list_videos(url, include=INCLUDE, exclude=EXCLUDE, endpoint_url=proxy.endpoint)
    assert [r.uri for r in plain] == _oracle(url)
    for max_levels in (1, 4, 64):
        lister = Lister(url, proxy.endpoint, page_size=page_size)
        units = plan_units(lister, max_levels=max_levels)
        refs = _run_units(lister, units)
        assert sorted(r.uri for r in refs) == _oracle(url), (page_size, max_levels)  # exactly once each
        assert {r.uri: r.video_id for r in refs} == {r.uri: r.video_id for r in plain}  # same ids as before
        if max_levels == 64:  # split: more units than the root's folders, continuations when pages are small
            assert len(units) > 5
            assert any(isinstance(u, LevelUnit) for u in units) == (page_size == 2)
    # No listing went through s3fs's directory cache (it keeps every object's info on the driver).
    assert not lister.fs.dircache
    assert set(proxy.counts()) == {"LIST"}


def test_units_cover_a_local_folder_exactly_once(tmp_path: Path) -> None:
    root = _local_tree(tmp_path)
    plain = list_videos(root, include=INCLUDE, exclude=EXCLUDE)
    assert [r.uri for r in plain] == _oracle(root)
    lister = Lister(root, page_size=3)
    units = plan_units(lister, max_levels=64)
    assert {type(u) for u in units} <= {ObjectsUnit, TreeUnit} and len(units) > 5
    refs = _run_units(lister, units)
    assert sorted(r.uri for r in refs) == _oracle(root)
    assert {r.uri: r.video_id for r in refs} == {r.uri: r.video_id for r in plain}
    # A walk of the whole tree is in sorted path order: what --max-videos keeps.
    walked = [o.path for page in unit_pages(lister, TreeUnit(root)) if not isinstance(page, VideoRef) for o in page]
    assert walked == sorted(walked)


def test_a_folder_that_cannot_be_listed_is_an_error_row_and_the_listing_goes_on(tmp_path: Path) -> None:
    root = _local_tree(tmp_path)

    class Refusing(Lister):
        def _ls(self, folder: str) -> Any:
            if folder.endswith("/b"):
                raise PermissionError("Access Denied")
            return super()._ls(folder)

    lister = Refusing(root)
    pages = [p for u in plan_units(lister, max_levels=1) for p in unit_pages(lister, u)]
    errors = [p for p in pages if isinstance(p, VideoRef)]
    assert [(e.uri, "Access Denied" in e.source_error) for e in errors] == [(f"{root}/b/", True)]
    listed = {o.path for p in pages if not isinstance(p, VideoRef) for o in p}
    assert f"{root}/a/x/k0.mp4" in listed and f"{root}/c/y/k3.mp4" in listed


def test_manifest_rows_give_their_own_version() -> None:
    assert manifest.row_version({"uri": "s3://b/k", "etag": '"abc"', "size": 3}) == ("etag:abc", 3)
    # The same version string a listing gives: a manifest with ETags keeps the listing's video_ids.
    assert manifest.row_version({"ETag": "abc"}) == ("etag:abc", 0)
    assert manifest.row_version({"version_id": "v7", "size_bytes": "12"}) == ("version:v7", 12)
    assert manifest.row_version({"size": 5, "mtime": 12.5}) == ("size:5:mtime:12.500000", 5)
    assert manifest.row_version({"size": 5, "last_modified": "1970-01-01T00:00:10+00:00"}) == ("size:5:mtime:10.000000", 5)
    assert manifest.row_version({"uri": "s3://b/k", "camera": "c1"}) is None
    assert manifest.row_version({"uri": "s3://b/k", "size": "large"}) is None  # not a byte count: metadata


def test_manifest_with_version_columns_makes_no_request(seaweed: SeaweedServer, aws_env: str, proxy: LatencyProxy) -> None:
    bucket = seaweed.make_bucket()
    client = seaweed._client()
    for i in range(6):
        client.put_object(Bucket=bucket, Key=f"v/{i}.mp4", Body=b"x" * (i + 1))
    uris = [f"s3://{bucket}/v/{i}.mp4" for i in range(6)] + [f"s3://{bucket}/v/gone.mp4"]
    with_versions = [{"uri": u, "etag": f"e{i}", "size": i + 1, "camera": "c"} for i, u in enumerate(uris)]
    refs = manifest.refs_from_rows(with_versions, uri_column="uri", endpoint_url=proxy.endpoint)
    assert proxy.total() == 0
    assert [r.version for r in refs] == [f"etag:e{i}" for i in range(7)]
    assert json.loads(refs[0].source_metadata) == {"camera": "c", "etag": "e0", "size": 1}

    bare = [{"uri": u} for u in uris]
    looked_up = manifest.refs_from_rows(bare, uri_column="uri", endpoint_url=proxy.endpoint)
    # One HEAD per row, in the task that reads the manifest (s3fs lists the missing key once: a folder?).
    assert proxy.counts() == {"HEAD": 7, "LIST": 1}
    listed = {r.uri: r for r in list_videos(f"s3://{bucket}/v", include=INCLUDE, endpoint_url=aws_env)}
    for ref in looked_up[:6]:  # the same id as listing the prefix
        assert (ref.video_id, ref.size_bytes) == (listed[ref.uri].video_id, listed[ref.uri].size_bytes)
    gone = looked_up[6]  # not an error here: the fetch says what is wrong
    assert (gone.version, gone.source_error) == (manifest.UNKNOWN_VERSION, "")


def test_read_manifest_cuts_max_rows_before_any_lookup(seaweed: SeaweedServer, aws_env: str, proxy: LatencyProxy,
                                                       tmp_path: Path) -> None:
    bucket = seaweed.make_bucket()
    for i in range(50):
        seaweed._client().put_object(Bucket=bucket, Key=f"v/{i}.mp4", Body=b"x")
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [f"s3://{bucket}/v/{i}.mp4" for i in range(50)]}), path)
    refs = manifest.read_manifest(str(path), endpoint_url=proxy.endpoint, max_rows=3)
    assert [r.uri.rsplit("/", 1)[-1] for r in refs] == ["0.mp4", "1.mp4", "2.mp4"]
    assert proxy.counts() == {"HEAD": 3}


def _decode_settings(endpoint: str) -> DecodeSettings:
    return DecodeSettings(frame_size=32, sampler=FrameSampler("native", 2, 1.0), window_s=30.0, overlap_s=2.0,
                          endpoint_url=endpoint)


def test_a_missing_manifest_object_is_an_error_row_where_it_is_fetched(seaweed: SeaweedServer, aws_env: str,
                                                                      proxy: LatencyProxy) -> None:
    bucket = seaweed.make_bucket()
    rows = [{"uri": f"s3://{bucket}/v/gone.mp4", "etag": "e1", "size": 10}, {"uri": f"s3://{bucket}/v/unknown.mp4"}]
    known, unknown = manifest.refs_from_rows(rows, uri_column="uri", endpoint_url=proxy.endpoint)
    proxy.reset()
    # A size from the manifest spares the HEAD: one GET finds the object missing. Without one, the HEAD
    # finds it missing (and s3fs lists the key once, to tell a missing object from a folder).
    for ref, requests in ((known, {"GET": 1}), (unknown, {"HEAD": 1, "LIST": 1})):
        (row,) = decode_video(ref.as_row(), _decode_settings(proxy.endpoint))
        assert (row["decode_status"], row["error_stage"], row["error_type"]) == ("failed", "fetch", "ObjectMissing")
        assert ref.uri in row["error_message"]
        assert proxy.counts() == requests
        proxy.reset()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shard_bytes(count: int, size: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(count):
            _member(tar, f"clip{seed}_{i:03d}.json", json.dumps({"caption": f"c{i}"}).encode())  # sidecar first ...
            _member(tar, f"clip{seed}_{i:03d}.mp4", bytes([i % 251]) * (size + i))
            if i % 5 == 0:
                _member(tar, f"clip{seed}_{i:03d}.txt", b"other")  # ... and members that are neither
    return buf.getvalue()


def test_a_shard_is_indexed_in_one_forward_pass(seaweed: SeaweedServer, aws_env: str, proxy: LatencyProxy) -> None:
    bucket = seaweed.make_bucket()
    data = _shard_bytes(120, 20_000)  # ~2.4 MB: three 1 MiB read-ahead blocks
    seaweed._client().put_object(Bucket=bucket, Key="shards/00000.tar", Body=data)
    url = f"s3://{bucket}/shards/00000.tar"
    refs = index_shard(url, video_suffixes=[".mp4"], endpoint_url=proxy.endpoint)
    counts = proxy.counts()
    assert counts["HEAD"] == 1 and counts["GET-range"] <= len(data) // (1 << 20) + 1 and set(counts) == {"HEAD", "GET-range"}
    # Every member where tarfile itself says it is, with its sidecar.
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        truth = [(f"{url}#{m.name}", m.offset_data, m.size) for m in tar.getmembers() if m.name.endswith(".mp4")]
    assert [(r.uri, r.byte_offset, r.byte_length) for r in refs] == truth
    assert [json.loads(r.source_metadata)["sidecar"] for r in refs] == [{"caption": f"c{i}"} for i in range(120)]
    # Fetching a member later is one ranged GET, no HEAD (its bytes are no video: a probe error row).
    proxy.reset()
    (row,) = decode_video(refs[7].as_row(), _decode_settings(proxy.endpoint))
    assert (row["error_stage"], proxy.counts()) == ("probe", {"GET-range": 1})


# -- the stream through Ray --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_s3(seaweed: SeaweedServer) -> Iterator[None]:
    """A local Ray whose workers have the S3 keys in their environment (workers read the environment Ray
    started with); stopped at the end, so the next module's `ray_local` starts its own."""
    import ray

    keys = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in keys}
    if ray.is_initialized():
        ray.shutdown()
    os.environ.update(keys)
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stream(source: SourceConfig, **kw: Any) -> tuple[list[dict[str, Any]], Any]:
    from pipeline.source.stream import listing_counts, new_tally, video_dataset

    tally = new_tally(limit=source.max_videos, decisions=False)
    rows = video_dataset(source, tally=tally, **kw).take_all()
    return rows, listing_counts(tally, wait_s=30)


@pytest.mark.integration
def test_the_stream_lists_what_a_plain_listing_lists(ray_s3: None, seaweed: SeaweedServer, proxy: LatencyProxy,
                                                     tmp_path: Path) -> None:
    s3_url = _s3_tree(seaweed)
    local = _local_tree(tmp_path)
    for url, endpoint in ((s3_url, proxy.endpoint), (local, None)):
        plain = list_videos(url, include=INCLUDE, exclude=EXCLUDE, endpoint_url=endpoint)
        rows, counts = _stream(SourceConfig(input=url, exclude=EXCLUDE, s3_endpoint_url=endpoint), page_size=2)
        assert sorted(r["uri"] for r in rows) == [r.uri for r in plain]  # each exactly once
        assert {r["uri"]: r["video_id"] for r in rows} == {r.uri: r.video_id for r in plain}
        assert (counts.listed, counts.input_objects, counts.complete) == (len(plain), len(plain), True)


@pytest.mark.integration
def test_max_videos_is_applied_before_any_per_object_work(ray_s3: None, seaweed: SeaweedServer, proxy: LatencyProxy,
                                                         tmp_path: Path) -> None:
    bucket = seaweed.make_bucket()
    client = seaweed._client()
    for i in range(40):
        client.put_object(Bucket=bucket, Key=f"v/{i:02d}.mp4", Body=b"x")
    path = tmp_path / "m.csv"
    path.write_text("uri,camera\n" + "".join(f"s3://{bucket}/v/{i:02d}.mp4,c{i}\n" for i in range(40)))
    proxy.reset()
    rows, counts = _stream(SourceConfig(input=str(path), s3_endpoint_url=proxy.endpoint, max_videos=3))
    assert [r["uri"][-6:] for r in rows] == ["00.mp4", "01.mp4", "02.mp4"]
    assert proxy.counts() == {"HEAD": 3} and counts.listed == 3

    # A prefix under --max-videos: the first N in key order, from as few pages as that takes.
    proxy.reset()
    rows, counts = _stream(SourceConfig(input=f"s3://{bucket}/v", s3_endpoint_url=proxy.endpoint, max_videos=5),
                           page_size=4)
    assert [r["uri"][-6:] for r in rows] == [f"{i:02d}.mp4" for i in range(5)]
    assert proxy.counts()["LIST"] <= 3 and counts.listed == 5  # the root's first page, then 2 pages of 4


@pytest.mark.integration
def test_a_manifest_with_size_and_etag_columns_makes_no_head(ray_s3: None, seaweed: SeaweedServer, proxy: LatencyProxy,
                                                            tmp_path: Path) -> None:
    bucket = seaweed.make_bucket()
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [f"s3://{bucket}/v/{i}.mp4" for i in range(30)], "etag": [f"e{i}" for i in range(30)],
                             "size": list(range(1, 31))}), path)
    rows, counts = _stream(SourceConfig(input=str(path), s3_endpoint_url=proxy.endpoint))
    assert proxy.total() == 0
    assert sorted(r["version"] for r in rows) == sorted(f"etag:e{i}" for i in range(30))
    assert (counts.listed, counts.complete) == (30, True)


@pytest.mark.integration
def test_shards_indexed_in_parallel_tasks_give_the_same_refs(ray_s3: None, seaweed: SeaweedServer, proxy: LatencyProxy) -> None:
    bucket = seaweed.make_bucket()
    client = seaweed._client()
    for s in range(4):
        client.put_object(Bucket=bucket, Key=f"shards/{s:05d}.tar", Body=_shard_bytes(15, 3_000, seed=s))
    url = f"s3://{bucket}/shards/{{00000..00003}}.tar"
    serial = list_videos(url, include=INCLUDE, endpoint_url=proxy.endpoint)
    proxy.reset()
    rows, counts = _stream(SourceConfig(input=url, s3_endpoint_url=proxy.endpoint))
    from pipeline.source.stream import ref_of

    by_uri = {r["uri"]: ref_of(r) for r in rows}
    assert len(rows) == len(serial) == 60
    assert all(by_uri[r.uri] == r for r in serial)
    assert proxy.counts()["HEAD"] == 4  # one per shard
    assert (counts.listed, counts.input_objects, counts.complete) == (60, 4, True)

    # --max-videos: the shards in order, until N members; no shard after them is looked at.
    proxy.reset()
    rows, counts = _stream(SourceConfig(input=url, s3_endpoint_url=proxy.endpoint, max_videos=5))
    assert [r["uri"] for r in rows] == [r.uri for r in serial[:5]]
    assert proxy.counts()["HEAD"] == 1 and counts.listed == 5


@pytest.mark.integration
def test_done_work_and_a_jobs_filter_are_steps_of_the_stream(ray_s3: None, tmp_path: Path) -> None:
    from pipeline.results.work import DoneQuery
    from pipeline.source.stream import (
        keep_selected,
        listing_counts,
        new_tally,
        ref_of,
        skip_done,
        video_dataset,
    )
    from pipeline.tables.done_index import DoneLookup

    root = _local_tree(tmp_path)
    plain = list_videos(root, include=INCLUDE)
    keys = ["k-caption", "k-count"]
    done = {r.video_id: {"k-caption", "k-count"} for r in plain[:4]}  # all done
    done[plain[4].video_id] = {"k-caption"}  # a task added since: only the count to do
    committed = {plain[5].video_id: {"k-caption"}}  # done before with a status this run retries
    tally = new_tally()
    ds = keep_selected(video_dataset(SourceConfig(input=root), tally=tally), tally, lambda ref: "/c/" not in ref.uri)
    lookup = DoneLookup(output=str(tmp_path / "out"), endpoint_url=None, files=(),
                        query=DoneQuery(tuple(keys), (), "m", ("ok",)), recent_done=done, recent_committed=committed)
    rows = [ref_of(r) for r in skip_done(ds, tally, lookup, keys).take_all()]
    left_out = {r.uri for r in plain if "/c/" in r.uri}
    assert not left_out & {r.uri for r in plain[:6]}  # (the cases above are all kept by the filter)
    expected = {r.uri: (1,) if r is plain[4] else (0, 1) for r in plain[4:] if r.uri not in left_out}
    assert {r.uri: r.task_ids for r in rows} == expected
    counts = listing_counts(tally, wait_s=30)
    assert (counts.listed, counts.rejected, counts.skipped, counts.to_process, counts.complete) == (
        len(plain), len(left_out), 4, len(expected), True)
    assert (counts.retried, counts.some_tasks, counts.pairs) == (1, 1, 2 * len(expected) - 1)
    assert sorted(r["uri"] for r in counts.rejected_refs) == sorted(left_out)
