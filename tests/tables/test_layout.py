"""`pipeline.tables.layout`: part names, committed-part filtering and the one atomic write (pure, no Ray)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.tables import layout
from pipeline.tables.schemas import PIPELINE_GROUP, TableGroup

KEY = "0123456789abcdef01234567"


def _parquet(**columns: list[Any]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def test_part_names_round_trip_and_reject_what_is_not_a_part() -> None:
    path = layout.part_path("/out/", "captions", "2026-01-01", KEY)
    assert path == f"/out/captions/run_date=2026-01-01/part-{KEY}.parquet"
    assert layout.part_key(path) == KEY
    assert layout.part_key(f"s3://bucket/out/videos/run_date=2026-01-01/{layout.part_name(KEY)}") == KEY

    fresh = {layout.new_part_key(["v2", "v1"]) for _ in range(3)}
    assert len(fresh) == 3  # the nonce: the same videos flushed twice never share a key
    for key in fresh:
        assert re.fullmatch(r"[0-9a-f]{24}", key) and layout.part_key(layout.part_name(key)) == key

    for bad in ("ABCDEF0123456789ABCDEF01", KEY[:-1], KEY + "0", "../x"):
        with pytest.raises(ValueError, match="lowercase hex"):
            layout.part_name(bad)
    run = layout.run_record_path("/out", "2026-01-02", "20260102T030405Z-a/b c")
    assert run == "/out/runs/run_date=2026-01-02/run-20260102T030405Z-a_b_c.parquet"
    for not_a_part in (run, f"/out/videos/run_date=2026-01-01/part-{KEY}.parquet.tmp",
                       layout.temporary_path(path), "/out/videos/part-short.parquet"):
        assert layout.part_key(not_a_part) is None, not_a_part


def test_temporary_names_are_hidden_beside_their_file_and_never_parquet() -> None:
    path = layout.part_path("/out", "videos", "2026-01-01", KEY)
    tmp, other = layout.temporary_path(path), layout.temporary_path(path)
    assert tmp != other and os.path.dirname(tmp) == os.path.dirname(path)
    assert layout.is_temporary(tmp) and layout.is_hidden(os.path.basename(tmp)) and not tmp.endswith(".parquet")
    assert not layout.is_temporary(path)


def _write_part(root: Path, table: str, key: str, run_date: str = "2026-01-01") -> str:
    path = layout.part_path(str(root), table, run_date, key)
    layout.atomic_write(LocalFileSystem(), path, _parquet(x=[1]))
    return path


def test_committed_filter_leaves_out_an_orphan_part_and_keeps_what_is_outside_the_protocol(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    root = tmp_path / "out"
    a, b, orphan = "a" * 24, "b" * 24, "c" * 24
    for key in (a, b):
        _write_part(root, "captions", key)
        _write_part(root, "videos", key, run_date="2026-01-02" if key == b else "2026-01-01")
    orphan_path = _write_part(root, "captions", orphan)  # a flush killed before its `videos` file
    run_path = layout.run_record_path(str(root), "2026-01-01", "r1")
    layout.atomic_write(fs, run_path, _parquet(run_id=["r1"]))
    # A job's group committed by its own table; an undeclared table keeps every file.
    job = TableGroup("job", "job_commits", {"job_commits": pa.schema([]), "job_rows": pa.schema([])})
    _write_part(root, "job_commits", b)
    job_kept, job_orphan = _write_part(root, "job_rows", b), _write_part(root, "job_rows", a)
    stray = _write_part(root, "other_job", orphan)
    (root / "videos" / "run_date=2026-01-01" / ".tmp-part-x-1234abcd").write_bytes(b"half")
    (root / "videos" / "_SUCCESS").write_bytes(b"")

    assert set(layout.list_parts(fs, str(root), "captions").values()) == {a, b, orphan}
    assert layout.list_parts(fs, str(root), "tracks") == {}  # no folder yet
    assert layout.committed_parts(fs, str(root), "captions", "videos") == sorted(
        layout.part_path(str(root), "captions", "2026-01-01", k) for k in (a, b))
    assert layout.committed_parts(fs, str(root), "videos", "videos") == sorted(
        layout.list_parts(fs, str(root), "videos"))
    assert layout.is_uncommitted(orphan_path, {a, b}) and not layout.is_uncommitted(run_path, set())

    files = layout.list_table_files(fs, str(root))
    assert sorted(files) == ["captions", "job_commits", "job_rows", "other_job", "runs", "videos"]
    assert all(not layout.is_hidden(os.path.basename(p)) for paths in files.values() for p in paths)
    kept, skipped = layout.drop_uncommitted(files, [PIPELINE_GROUP, job])
    assert skipped == 2
    assert orphan_path not in kept["captions"] and len(kept["captions"]) == 2
    assert kept["runs"] == [run_path] and kept["other_job"] == [stray] and len(kept["videos"]) == 2
    assert kept["job_rows"] == [job_kept] and job_orphan in files["job_rows"]
    assert layout.drop_uncommitted(files, []) == (files, 0)

    assert layout.temporary_files(fs, str(root)) == [str(root / "videos" / "run_date=2026-01-01" / ".tmp-part-x-1234abcd")]
    assert layout.temporary_files(fs, str(tmp_path / "nothing")) == []


def test_atomic_write_local_replaces_whole_files_and_fsyncs_the_folder(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "t" / "run_date=2026-01-01" / "part-x.parquet")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    layout.atomic_write(LocalFileSystem(), path, b"first")
    layout.atomic_write(LocalFileSystem(), path, b"second")
    assert Path(path).read_bytes() == b"second"
    assert len(synced) == 4  # the file, then its folder, per write
    assert os.listdir(os.path.dirname(path)) == ["part-x.parquet"]


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_atomic_write_leaves_no_temporary_file_and_no_half_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    folder = tmp_path / "t" / "run_date=2026-01-01"
    path = str(folder / "part-x.parquet")
    layout.atomic_write(LocalFileSystem(), path, b"old")

    def boom(*_a: Any, **_k: Any) -> None:
        raise OSError(28, "No space left on device")

    if failing == "write":
        import builtins

        real_open = builtins.open

        class ShortFile:
            def __init__(self, fh: Any) -> None:
                self.fh = fh

            def __enter__(self) -> ShortFile:
                return self

            def __exit__(self, *exc: object) -> None:
                self.fh.close()

            def write(self, data: bytes) -> int:
                self.fh.write(data[:2])  # a partial write, then the disk is full
                raise OSError(28, "No space left on device")

        monkeypatch.setattr(builtins, "open", lambda f, m="r", *a, **k: ShortFile(real_open(f, m, *a, **k))
                            if "w" in m else real_open(f, m, *a, **k))
    else:
        monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="No space left"):
        layout.atomic_write(LocalFileSystem(), path, b"new contents")
    monkeypatch.undo()
    assert os.listdir(folder) == ["part-x.parquet"]  # no .tmp- file left behind
    assert Path(path).read_bytes() == b"old"  # readers still see the previous whole file


def test_atomic_write_remote_is_one_put(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = MemoryFileSystem()
    puts: list[str] = []
    real = fs.pipe_file
    monkeypatch.setattr(fs, "pipe_file", lambda p, v, **kw: (puts.append(p), real(p, v, **kw))[1])
    path = "/bucket/out/videos/run_date=2026-01-01/" + layout.part_name(KEY)
    layout.atomic_write(fs, path, b"payload")
    assert puts == [path] and fs.cat_file(path) == b"payload"
    assert not layout.is_local(fs) and layout.is_local(LocalFileSystem())
    assert layout.list_parts(fs, "/bucket/out", "videos") == {path: KEY}
