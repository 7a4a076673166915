"""WebDataset tar shards and manifests as inputs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.config import VIDEO_GLOBS, build_config
from pipeline.run.driver import run_pipeline
from pipeline.source.listing import list_videos
from pipeline.source.shards import _split_key, expand_shards, index_shard


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            _add(tar, name, data)
    return path


def test_split_key_follows_webdataset() -> None:
    assert _split_key("a/b/clip01.mp4") == ("a/b/clip01", ".mp4")
    assert _split_key("clip01.seg.json") == ("clip01", ".seg.json")


def test_expand_brace_ranges_and_globs(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    assert expand_shards(str(tmp_path) + "/{00000..00002}.tar") == [f"{tmp_path}/{i:05d}.tar" for i in range(3)]
    assert expand_shards(str(tmp_path) + "/*.tar") == [f"{tmp_path}/{i:05d}.tar" for i in range(3)]


def test_index_shard_byte_ranges_and_sidecars(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "00000.tar", [("k1.mp4", b"A" * 700), ("k1.json", b'{"caption": "hi"}'),
                                             ("k2.mp4", b"B" * 10)])
    refs = index_shard(str(shard), video_suffixes=[".mp4"])
    assert [r.uri for r in refs] == [f"{shard}#k1.mp4", f"{shard}#k2.mp4"]
    raw = shard.read_bytes()
    for ref, body in zip(refs, (b"A" * 700, b"B" * 10), strict=True):
        assert raw[ref.byte_offset : ref.byte_offset + ref.byte_length] == body
        assert ref.source_url == str(shard)
    assert json.loads(refs[0].source_metadata)["sidecar"] == {"caption": "hi"}
    again = index_shard(str(shard), video_suffixes=[".mp4"])
    assert [r.video_id for r in again] == [r.video_id for r in refs]


@pytest.mark.integration
def test_shards_and_manifests_end_to_end(ray_local: None, tiny_model_dir: Path, sample_videos: Path, tmp_path: Path) -> None:
    names = ["street_short", "store_aisle", "portrait_phone"]
    blobs = {n: (sample_videos / f"{n}.mp4").read_bytes() for n in names}
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "00000.tar", [
        ("street_short.mp4", blobs["street_short"]), ("street_short.json", b'{"url": "http://x/1"}'),
        ("notavideo.mp4", b"this is plain text, not a video\n" * 10),
    ])
    full = _shard(shards / "00001.tar", [("store_aisle.mp4", blobs["store_aisle"]),
                                         ("portrait_phone.mp4", blobs["portrait_phone"])])
    # Truncated: the second member is cut in the middle of its bytes.
    raw = full.read_bytes()
    cut = index_shard(str(full), video_suffixes=[".mp4"])[1]
    (shards / "00002.tar").write_bytes(raw[: cut.byte_offset + cut.byte_length // 2])

    loose = tmp_path / "loose"
    loose.mkdir()
    for n in names:
        (loose / f"{n}.mp4").write_bytes(blobs[n])
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({
        "uri": [str(loose / "street_short.mp4"), str(loose / "gone.mp4")],
        "store": ["s1", "s2"], "camera": ["c1", "c2"],
    }), manifest)

    summaries: list = []

    def run(inp: str, out: Path) -> list[dict]:
        cfg = build_config({
            "source": {"input": inp}, "output": {"output": str(out)},
            "model": {"model": str(tiny_model_dir), "max_new_tokens": 12},
            "sampling": {"num_frames": 6}, "window": {"window_s": 30.0, "overlap_s": 2.0},
            "ray": {"progress": "off"},
        })
        summaries.append(run_pipeline(cfg, echo=lambda _m: None))
        return pads.dataset(str(out / "videos"), partitioning="hive").to_table().to_pylist()

    def captions(out: Path) -> dict[str, str]:
        vids = {v["video_id"]: v["uri"] for v in pads.dataset(str(out / "videos"), partitioning="hive").to_table().to_pylist()}
        rows = pads.dataset(str(out / "captions"), partitioning="hive").to_table().to_pylist()
        return {vids[r["video_id"]].rsplit("/", 1)[-1].split("#")[-1]: r["caption"] for r in rows}

    shard_videos = run(str(shards) + "/{00000..00002}.tar", tmp_path / "out_shards")
    assert (summaries[0].videos_listed, summaries[0].input_objects) == (6, 3)
    assert "input block(s)" in summaries[0].render()
    status = {v["uri"].split("#")[-1] + "@" + v["uri"].split("#")[0][-9:]: v["status"] for v in shard_videos}
    assert status == {
        "street_short.mp4@00000.tar": "ok", "notavideo.mp4@00000.tar": "failed",
        "store_aisle.mp4@00001.tar": "ok", "portrait_phone.mp4@00001.tar": "ok",
        "store_aisle.mp4@00002.tar": "ok", "portrait_phone.mp4@00002.tar": "failed",
    }
    meta = {v["uri"].split("#")[-1]: v["source_metadata"] for v in shard_videos if v["uri"].endswith("00000.tar#street_short.mp4")}
    assert json.loads(meta["street_short.mp4"])["sidecar"] == {"url": "http://x/1"}
    errors = pads.dataset(str(tmp_path / "out_shards" / "errors"), partitioning="hive").to_table().to_pylist()
    assert sorted((e["uri"].split("#")[-1], e["stage"]) for e in errors) == [
        ("notavideo.mp4", "probe"), ("portrait_phone.mp4", "source")]

    run(str(loose), tmp_path / "out_loose")
    shard_caps = captions(tmp_path / "out_shards")
    loose_caps = captions(tmp_path / "out_loose")
    for n in names:
        assert shard_caps[f"{n}.mp4"] == loose_caps[f"{n}.mp4"]

    man_videos = run(str(manifest), tmp_path / "out_manifest")
    by_uri = {Path(v["uri"]).name: v for v in man_videos}
    assert by_uri["street_short.mp4"]["status"] == "ok"
    assert json.loads(by_uri["street_short.mp4"]["source_metadata"]) == {"store": "s1", "camera": "c1"}
    assert by_uri["gone.mp4"]["status"] == "failed"
    man_errors = pads.dataset(str(tmp_path / "out_manifest" / "errors"), partitioning="hive").to_table().to_pylist()
    # No HEAD per row at listing: the missing object is found where it is fetched.
    assert [(Path(e["uri"]).name, e["stage"], e["error_type"]) for e in man_errors] == [("gone.mp4", "fetch", "ObjectMissing")]


def test_manifest_csv_and_jsonl_and_missing_column(tmp_path: Path) -> None:
    v = tmp_path / "a.mp4"
    v.write_bytes(b"x")
    (tmp_path / "m.csv").write_text(f"path,store\n{v},s9\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"uri": str(v), "camera": 3}) + "\n")
    csv_refs = list_videos(str(tmp_path / "m.csv"), include=VIDEO_GLOBS, manifest_uri_column="path")
    assert [json.loads(r.source_metadata) for r in csv_refs] == [{"store": "s9"}]
    assert list_videos(str(tmp_path / "m.jsonl"), include=VIDEO_GLOBS)[0].uri == str(v)
    from pipeline.source.refs import SourceError

    with pytest.raises(SourceError, match="no column 'uri'"):
        list_videos(str(tmp_path / "m.csv"), include=VIDEO_GLOBS)
