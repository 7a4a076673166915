"""Fetching a video's bytes: a shard member costs ranged reads of its own bytes only (counted at the
filesystem), and a local object the process cannot read fails at fetch with a clear row."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from pipeline.devtools.samples import SampleSpec, write_video
from pipeline.source.shards import index_shard
from pipeline.video.decode import DecodeSettings, decode_video
from pipeline.video.fetch import local_copy
from pipeline.video.sampling import FrameSampler


class _CountedFile(AbstractBufferedFile):
    """A read-only file that fetches byte ranges the way s3fs's S3File does (one GET per `_fetch_range`,
    through fsspec's default read-ahead cache), and records every range it fetches."""

    def _fetch_range(self, start: int, end: int) -> bytes:
        CountingFS.reads.append((self.path, start, end))
        with open(self.path, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start)


class CountingFS(AbstractFileSystem):
    """`counting://<local path>`: local files seen through an object-store-like file class."""

    protocol = "counting"
    # Like s3fs (50 MiB blocks, read-ahead): a reader that does not ask for exact ranges reads far past
    # the member it wants.
    default_block_size = 50 * 2**20
    reads: ClassVar[list[tuple[str, int, int]]] = []

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return path[len("counting://") :] if path.startswith("counting://") else path

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return {"name": path, "size": os.path.getsize(path), "type": "file"}

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> _CountedFile:
        return _CountedFile(self, path, mode, block_size=block_size or self.default_block_size, **kwargs)


@pytest.fixture
def counting_fs() -> CountingFS:
    fsspec.register_implementation("counting", CountingFS, clobber=True)
    CountingFS.reads.clear()
    return CountingFS()


def _member_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_shard_member_is_one_ranged_read_of_its_own_bytes(tmp_path: Path, counting_fs: CountingFS) -> None:
    first, second, third = os.urandom(300_000), os.urandom(200_000), os.urandom(400_000)
    shard = _member_shard(tmp_path / "00000.tar", [("a.mp4", first), ("b.mp4", second), ("c.mp4", third)])
    refs = index_shard(str(shard), video_suffixes=[".mp4"])
    member = refs[1]
    assert member.byte_length == len(second)
    CountingFS.reads.clear()

    with local_copy(f"counting://{shard}", endpoint_url=None, max_bytes=10**9,
                    byte_offset=member.byte_offset, byte_length=member.byte_length) as local:
        assert Path(local).read_bytes() == second
    # One ranged read, exactly the member: not the whole shard, not a read-ahead block past its end.
    assert CountingFS.reads == [(str(shard), member.byte_offset, member.byte_offset + len(second))]


def _settings() -> DecodeSettings:
    return DecodeSettings(frame_size=112, sampler=FrameSampler("native", 4, 2.0), window_s=900.0, overlap_s=10.0)


def test_a_local_directory_named_like_a_video_fails_at_fetch(tmp_path: Path) -> None:
    """An object this process truly cannot read as a file, whoever runs the test (root included): the
    readability check stops it at fetch instead of handing a path to the decoder."""
    fake = tmp_path / "clip.mp4"
    fake.mkdir()
    (fake / ("x" * 64)).write_bytes(b"0")  # a directory with an entry has a non-zero size on every filesystem
    (row,) = decode_video({"video_id": "d", "uri": str(fake), "size_bytes": 4096}, _settings())
    assert (row["decode_status"], row["error_stage"], row["error_type"]) == ("failed", "fetch", "IsADirectoryError")
    assert row["window_index"] == -1


def _decode_as(uid: int, uri: str) -> list[list[str]]:
    """(stage, error type, message) of the rows of `uri`, decoded in a forked child running as `uid`."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so it needs no access to the interpreter's files
        code = 1
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            rows = [[r["error_stage"], r["error_type"], r["error_message"]]
                    for r in decode_video({"video_id": "p", "uri": uri, "size_bytes": 10}, _settings())]
            os.write(write_end, json.dumps(rows).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return list(json.loads(data))


def test_a_local_file_without_read_permission_fails_at_fetch(tmp_path: Path) -> None:
    """chmod 000 on a real video. Root reads it anyway (CAP_DAC_OVERRIDE), so as root the decode runs in a
    forked child as user `nobody`, who is truly denied; as anyone else it runs in this process. The folder
    stays traversable, so `stat` (the size) succeeds and only the read is denied: the readability check
    is what fails the video."""
    video = write_video(tmp_path / "v.mp4", SampleSpec("v", seconds=1.0, fps=4, width=32, height=32, seed=1))
    with tempfile.TemporaryDirectory(prefix="molmo-batch-denied-") as folder:
        os.chmod(folder, 0o755)  # pytest's own temp folders are private to their owner
        denied = Path(folder) / "denied.mp4"
        denied.write_bytes(video.read_bytes())
        denied.chmod(0)
        if os.geteuid() != 0:
            rows = [[r["error_stage"], r["error_type"], r["error_message"]]
                    for r in decode_video({"video_id": "p", "uri": str(denied), "size_bytes": 10}, _settings())]
        else:
            rows = _decode_as(65534, str(denied))  # nobody
    assert [(stage, etype) for stage, etype, _ in rows] == [("fetch", "AccessDenied")]
    assert "access denied reading" in rows[0][2]
