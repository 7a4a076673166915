"""Listing and stable video ids."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.config import VIDEO_GLOBS
from pipeline.source.listing import list_videos
from pipeline.source.refs import SourceError, make_video_id, object_version


def _touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_video_id_is_stable_and_depends_on_uri_and_version() -> None:
    a = make_video_id("s3://b/k.mp4", "etag:abc")
    assert a == make_video_id("s3://b/k.mp4", "etag:abc")
    assert a != make_video_id("s3://b/k.mp4", "etag:abd")
    assert a != make_video_id("s3://b/k2.mp4", "etag:abc")
    assert len(a) == 20 and int(a, 16) >= 0


def test_version_prefers_etag_then_size_mtime() -> None:
    assert object_version({"ETag": '"abc"', "size": 3}) == "etag:abc"
    assert object_version({"size": 3, "mtime": 12.5}) == "size:3:mtime:12.500000"


def test_listing_filters_recurses_and_sorts(tmp_path: Path) -> None:
    _touch(tmp_path / "b.mp4")
    _touch(tmp_path / "sub" / "a.MOV")  # case matters for globs: not matched by *.mov
    _touch(tmp_path / "sub" / "c.mov")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "skip" / "d.mp4")
    refs = list_videos(str(tmp_path), include=VIDEO_GLOBS, exclude=["skip/*"])
    assert [Path(r.uri).name for r in refs] == ["b.mp4", "c.mov"]
    assert all(r.size_bytes == 1 for r in refs)


def test_rerun_recognises_unchanged_and_changed_videos(tmp_path: Path) -> None:
    p = _touch(tmp_path / "v.mp4", b"one")
    first = list_videos(f"file://{tmp_path}", include=["*.mp4"])[0]
    again = list_videos(str(tmp_path), include=["*.mp4"])[0]
    assert first.video_id == again.video_id
    p.write_bytes(b"changed!")
    os.utime(p, (1_000_000, 1_000_000))
    changed = list_videos(str(tmp_path), include=["*.mp4"])[0]
    assert changed.video_id != first.video_id


def test_single_file_input_and_max_videos(tmp_path: Path) -> None:
    for n in "abc":
        _touch(tmp_path / f"{n}.mp4")
    assert len(list_videos(str(tmp_path / "b.mp4"), include=["*.mp4"])) == 1
    assert len(list_videos(str(tmp_path), include=["*.mp4"], max_videos=2)) == 2


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        list_videos(str(tmp_path / "nope"), include=["*.mp4"])


class _FlakyFS:
    """A real local filesystem whose first `failures` listings are refused, like a store restarting."""

    def __init__(self, failures: int, exc: Exception) -> None:
        from fsspec.implementations.local import LocalFileSystem

        self._fs, self.failures, self.exc, self.calls = LocalFileSystem(), failures, exc, 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._fs, name)

    def info(self, path: str, **kw: object) -> dict:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return dict(self._fs.info(path, **kw))


def test_listing_retries_transient_store_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.io.retry import RetryPolicy
    from pipeline.source import listing as source

    (tmp_path / "a.mp4").write_bytes(b"x")
    fast = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.02, budget_s=5)
    flaky = _FlakyFS(2, ConnectionRefusedError(111, "Connection refused"))
    monkeypatch.setattr(source, "_uncached_fs", lambda url, endpoint=None: (flaky, str(tmp_path)))
    refs = list_videos(str(tmp_path), include=list(VIDEO_GLOBS), retry=fast)
    assert [Path(r.uri).name for r in refs] == ["a.mp4"] and flaky.calls == 3

    # Past the budget: a start-up error that names the input, not a traceback from deep in s3fs.
    down = _FlakyFS(100, ConnectionRefusedError(111, "Connection refused"))
    monkeypatch.setattr(source, "_uncached_fs", lambda url, endpoint=None: (down, str(tmp_path)))
    with pytest.raises(SourceError, match="cannot list input"):
        list_videos(str(tmp_path), include=list(VIDEO_GLOBS), retry=fast)
    assert down.calls == 4

    # Not transient (permission): fails at once.
    denied = _FlakyFS(100, PermissionError("Access Denied"))
    monkeypatch.setattr(source, "_uncached_fs", lambda url, endpoint=None: (denied, str(tmp_path)))
    with pytest.raises(SourceError, match="Access Denied"):
        list_videos(str(tmp_path), include=list(VIDEO_GLOBS), retry=fast)
    assert denied.calls == 1
