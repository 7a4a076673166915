"""A manifest of presigned URLs (real ones: SigV4 and SigV2 URLs signed for a SeaweedFS S3 server on
loopback): each video is read through its signed URL, but no signature, access key id or token is
stored in a ref, a table, an error message or the printed summary, and `video_id` does not change when
the same objects are signed again."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.config import VIDEO_GLOBS, build_config
from pipeline.devtools.seaweed import REGION, SeaweedServer
from pipeline.io.storage import get_fs
from pipeline.source.listing import list_videos

SIGNATURE_MARKS = ("X-Amz-", "AWSAccessKeyId", "Signature=", "Expires=")

Signer = Callable[[str, int], str]


@pytest.fixture
def signed(seaweed: SeaweedServer) -> tuple[str, dict[str, Signer]]:
    """A fresh bucket and two signers (SigV4, SigV2): `sign(key, expires_in)` -> a presigned GET URL."""
    import botocore.session
    from botocore.config import Config

    bucket = seaweed.make_bucket("presigned")

    def signer(version: str) -> Signer:
        client = botocore.session.Session().create_client(
            "s3", endpoint_url=seaweed.endpoint, region_name=REGION, aws_access_key_id=seaweed.access_key,
            aws_secret_access_key=seaweed.secret_key, config=Config(signature_version=version))

        def sign(key: str, expires_in: int) -> str:
            return str(client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                     ExpiresIn=expires_in))

        return sign

    return bucket, {"v4": signer("s3v4"), "v2": signer("s3")}


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _secrets(seaweed: SeaweedServer, urls: list[str]) -> list[str]:
    """What must appear nowhere: the keys, and each URL's signature and credential values."""
    found = [seaweed.access_key, seaweed.secret_key]
    for url in urls:
        for piece in url.split("?", 1)[1].split("&"):
            name, _, value = piece.partition("=")
            if name in ("X-Amz-Signature", "X-Amz-Credential", "Signature", "AWSAccessKeyId"):
                found.append(value)
    return found


def test_manifest_refs_keep_the_signed_url_only_for_reading(
    seaweed: SeaweedServer, signed: tuple[str, dict[str, Signer]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket, sign = signed
    fs = seaweed.filesystem()
    fs.pipe_file(f"{bucket}/clips/a.mp4", b"a" * 300)
    fs.pipe_file(f"{bucket}/clips/b.mp4", b"b" * 200)
    first = [sign["v4"]("clips/a.mp4", 600), sign["v2"]("clips/b.mp4", 600), sign["v4"]("clips/gone.mp4", 600)]
    thumb = sign["v4"]("thumbs/a.jpg", 600)
    manifest = _write_manifest(tmp_path / "first.csv", [
        {"uri": first[0], "camera": "c1", "thumbnail": thumb},
        {"uri": first[1], "camera": "c2", "thumbnail": ""},
        {"uri": first[2], "camera": "c3", "thumbnail": ""},
    ])
    refs = list_videos(str(manifest), include=VIDEO_GLOBS)
    base = f"{seaweed.endpoint}/{bucket}/clips"
    assert [r.uri for r in refs] == [f"{base}/a.mp4", f"{base}/b.mp4", f"{base}/gone.mp4"]
    assert [r.size_bytes for r in refs] == [300, 200, 0]
    assert [r.source_url for r in refs] == first  # decode reads the signed URL...
    with get_fs(refs[0].source_url)[0].open(refs[0].source_url, "rb") as fh:
        assert fh.read() == b"a" * 300
    # A missing object is no error at listing (no request per row is needed for that): its fetch says so.
    assert (refs[2].version, refs[2].source_error) == ("unknown", "")
    secrets = _secrets(seaweed, [*first, thumb])
    for ref in refs:  # ...and nothing that is stored or shown holds a signature
        shown = json.dumps([ref.video_id, ref.uri, ref.source_metadata, ref.source_error])
        for secret in [*secrets, *SIGNATURE_MARKS]:
            assert secret not in shown, (secret, shown)
    assert json.loads(refs[0].source_metadata)["thumbnail"] == f"{seaweed.endpoint}/{bucket}/thumbs/a.jpg"

    # `plan` reads the headers through the signed URLs and shows neither signature nor key.
    from pipeline.cli import main

    assert main(["plan", "--input", str(manifest), "--frame-size", "112", "--format", "json"]) == 0
    shown_plan = capsys.readouterr().out
    unreadable = json.loads(shown_plan)["errors"]
    assert [e["uri"] for e in unreadable] == [r.uri for r in refs]  # 300 bytes of "a" are no video
    # Read through the signatures: the bytes arrived (and are no video); only the missing object is missing.
    assert [e["error"].split(":", 1)[0] for e in unreadable] == ["InvalidDataError", "InvalidDataError",
                                                                  "FileNotFoundError"], unreadable
    for secret in [*secrets, *SIGNATURE_MARKS]:
        assert secret not in shown_plan, secret

    # The same objects signed again (other expiry: other signature) keep their ids.
    again = [sign["v4"]("clips/a.mp4", 900), sign["v4"]("clips/b.mp4", 900), sign["v2"]("clips/gone.mp4", 900)]
    assert again[0] != first[0]
    resigned = _write_manifest(tmp_path / "again.csv", [{"uri": u, "camera": "", "thumbnail": ""} for u in again])
    assert [r.video_id for r in list_videos(str(resigned), include=VIDEO_GLOBS)] == [r.video_id for r in refs]


@pytest.mark.integration
def test_a_run_over_presigned_urls_writes_no_signature_and_reruns_nothing(
    seaweed: SeaweedServer, signed: tuple[str, dict[str, Signer]], ray_local: None, tiny_model_dir: Path,
    sample_videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.cli import main

    bucket, sign = signed
    fs = seaweed.filesystem()
    for name in ("street_short", "portrait_phone"):
        fs.put_file(str(sample_videos / f"{name}.mp4"), f"{bucket}/clips/{name}.mp4")

    def manifest(path: Path, expires_in: int) -> tuple[Path, list[str]]:
        urls = [sign["v4"]("clips/street_short.mp4", expires_in), sign["v2"]("clips/portrait_phone.mp4", expires_in),
                sign["v4"]("clips/deleted.mp4", expires_in)]
        return _write_manifest(path, [{"uri": u, "camera": f"c{i}"} for i, u in enumerate(urls)]), urls

    out = tmp_path / "tables"
    first, urls = manifest(tmp_path / "m1.csv", 600)
    argv = ["run", "--input", str(first), "--output", str(out), "--model", str(tiny_model_dir), "--tasks", "caption",
            "--max-new-tokens", "8", "--num-frames", "4", "--window-s", "10", "--overlap-s", "2", "--progress", "off"]
    code = main(argv)
    printed = capsys.readouterr()
    assert code == 3, printed  # two videos ok, the deleted one failed
    base = f"{seaweed.endpoint}/{bucket}/clips"

    cells: list[str] = [printed.out, printed.err]
    tables: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.rglob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        tables.setdefault(path.relative_to(out).parts[0], []).extend(rows)
        cells.extend(str(v) for row in rows for v in row.values())
    status = {v["uri"]: v["status"] for v in tables["videos"]}
    assert status == {f"{base}/street_short.mp4": "ok", f"{base}/portrait_phone.mp4": "ok",
                      f"{base}/deleted.mp4": "failed"}  # read through the signed URLs
    assert [e["uri"] for e in tables["errors"]] == [f"{base}/deleted.mp4"]
    for secret in [*_secrets(seaweed, urls), *SIGNATURE_MARKS]:
        leaks = [c for c in cells if secret in c]
        assert not leaks, (secret, leaks[:3])

    # Signed again (new signatures): the same videos, nothing to redo.
    again, _ = manifest(tmp_path / "m2.csv", 900)
    assert main([*argv[:2], str(again), *argv[3:]]) == 0
    rerun = capsys.readouterr().out
    assert "3 video(s) listed under" in rerun and ", 0 to process" in rerun
    assert len(pq.read_table(out / "videos").to_pylist()) == 3


def test_config_and_summary_with_a_presigned_input_print_no_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The manifest itself may be presigned: --print-config shows it without its signature."""
    from pipeline.cli import main

    url = ("https://bucket.s3.amazonaws.com/lists/today.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
           "&X-Amz-Signature=5eb1e2f3a4")
    assert main(["run", "--input", url, "--output", str(tmp_path), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "input: https://bucket.s3.amazonaws.com/lists/today.csv\n" in printed
    assert "AKIAIOSFODNN7EXAMPLE" not in printed and "5eb1e2f3a4" not in printed
    assert build_config({"source": {"input": url}}).public_dict()["source"]["input"].endswith("today.csv")
