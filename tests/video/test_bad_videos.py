"""Bad videos are rows, not crashes: every kind of broken file gives one `errors` row and a `videos`
status, while the good videos around it complete. Decode-level checks run without Ray; one pipeline
run over the whole mixed corpus checks the tables and the run's exit status."""

from __future__ import annotations

import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from pipeline.results.collect import RowContext, VideoCollector, video_tables
from pipeline.results.tasks import build_tasks
from pipeline.run.summary import EXIT_PARTIAL
from pipeline.video.decode import DecodeSettings, decode_video
from pipeline.video.sampling import FrameSampler, plan_windows
from tests.badvideos import DENIED, VFR_TIMES_MS, Expected, write_bad_corpus

WINDOW_S, OVERLAP_S = 900.0, 10.0  # one window per short video; the 2 h video gets a handful


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Expected]]:
    folder = tmp_path_factory.mktemp("bad")
    return folder, write_bad_corpus(folder)


def _settings(**kw: Any) -> DecodeSettings:
    base: dict[str, Any] = {
        "frame_size": 112,
        "sampler": FrameSampler("native", 8, 2.0),
        "window_s": WINDOW_S,
        "overlap_s": OVERLAP_S,
    }
    return DecodeSettings(**{**base, **kw})


def _ref(path: Path) -> dict[str, Any]:
    return {"video_id": path.stem, "uri": str(path), "size_bytes": path.stat().st_size}


TASKS = build_tasks(["caption"])
CTX = RowContext(run_id="r", model_id="m", max_new_tokens=8, sampling_mode="native", num_frames=8, max_fps=2.0)
# What the model stage adds to a decoded window (a stand-in answer: only the decode outcome is under test).
ANSWERED = {"task": "caption", "query": "", "prompt": TASKS[0].prompt, "answer": "a caption", "prompt_tokens": 10,
            "generated_tokens": 2, "hit_max_new_tokens": False, "latency_s": 0.1, "frames_used": 1,
            "infer_error_type": None, "infer_error_message": None}


def _outcome(rows: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str, str]]]:
    """(the `videos` status, [(stage, type, message)] of the `errors` rows) as the pipeline writes them: the
    decode rows, each window answered, through collect's VideoCollector and video_tables."""
    collector = VideoCollector(num_tasks=len(TASKS))
    complete = None
    for r in rows:
        row = {k: v for k, v in r.items() if k != "frames"}
        complete = collector.add(row if row["window_index"] < 0 else {**row, **ANSWERED}) or complete
    assert complete is not None and collector.in_flight == 0
    tables = video_tables(complete, TASKS, CTX)
    (video,) = tables["videos"]
    return video["status"], [(e["stage"], e["error_type"], e["message"]) for e in tables["errors"]]


def test_each_bad_file_decodes_to_its_expected_row(bad_corpus: tuple[Path, dict[str, Expected]]) -> None:
    folder, expected = bad_corpus
    for name, exp in expected.items():
        if name == "vanished.mp4":  # it exists until the pipeline test deletes it after listing
            continue
        rows = list(decode_video(_ref(folder / name), _settings()))
        status, errors = _outcome(rows)
        assert status == exp.status, (name, errors)
        if exp.error_type is None:
            assert errors == [], name
            continue
        assert len(errors) == 1, (name, errors)
        stage, etype, message = errors[0]
        assert (stage, etype) == (exp.stage, exp.error_type), (name, errors)
        assert exp.message and exp.message in message, (name, message)


def test_geometry_rotation_huge_single_frame(bad_corpus: tuple[Path, dict[str, Expected]]) -> None:
    folder, _ = bad_corpus
    (rot,) = decode_video(_ref(folder / "rotated_270.mp4"), _settings())
    assert (rot["width"], rot["height"], rot["rotation"]) == (96, 160, 270)
    assert rot["frames"].shape[1:] == (112, 112, 3)
    (huge,) = decode_video(_ref(folder / "huge_8k.mp4"), _settings())
    assert (huge["width"], huge["height"]) == (7680, 4320)
    assert huge["frames"].shape == (2, 112, 112, 3)  # resized in the decoder: 8K frames never reach Ray
    # Decision: a single-frame video is a valid 1-frame clip, not an error.
    (one,) = decode_video(_ref(folder / "single_frame.mp4"), _settings())
    assert one["decode_status"] == "ok" and one["frames"].shape[0] == 1 and list(one["frame_times"]) == [0.0]


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_variable_frame_rate_keeps_true_timestamps(bad_corpus: tuple[Path, dict[str, Expected]], decoder: str) -> None:
    folder, _ = bad_corpus
    (row,) = decode_video(_ref(folder / "vfr.mp4"), _settings(decoder=decoder))
    true_times = {t / 1000 for t in VFR_TIMES_MS}
    got = [float(t) for t in row["frame_times"]]
    assert got and all(min(abs(t - s) for s in true_times) < 1e-3 for t in got), got
    assert len(got) == row["frames"].shape[0]


def test_long_video_streams_window_by_window_in_bounded_memory(bad_corpus: tuple[Path, dict[str, Expected]]) -> None:
    folder, _ = bad_corpus
    settings = _settings(window_s=60.0, overlap_s=5.0)
    planned = plan_windows(7200.0, 60.0, 5.0)
    assert len(planned) > 100
    tracemalloc.start()
    try:
        gen = decode_video(_ref(folder / "long_2h.mp4"), settings)
        first = next(gen)  # the generator is lazy: a window comes out before the rest is decoded
        tracemalloc.reset_peak()
        seen = 1
        for row in gen:
            assert row["decode_status"] == "ok" and row["frames"].shape[0] <= 8
            seen += 1
            if seen == 40:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first["num_windows"] == len(planned) and first["duration_s"] == pytest.approx(7200.0)
    # 40 windows of 8 x 112 x 112 x 3 bytes would be ~12 MB held at once; one at a time stays far below.
    assert peak < 6 * 2**20, peak


def test_decode_timeout_is_enforced_inside_a_video(bad_corpus: tuple[Path, dict[str, Expected]]) -> None:
    folder, _ = bad_corpus
    rows = list(decode_video(_ref(folder / "good_a.mp4"), _settings(timeout_s=1e-9)))
    assert [(r["error_stage"], r["error_type"]) for r in rows] == [("probe", "DecodeTimeout")]
    assert "decode_timeout_s=1e-09" in rows[0]["error_message"]

    # 0.5 s cannot cover ~900 windows of a 2 h video: decoding stops early with a DecodeTimeout row, and
    # the windows emitted before it are kept (how many depends on the machine's load, so no count).
    rows = list(decode_video(_ref(folder / "long_2h.mp4"), _settings(window_s=10.0, overlap_s=2.0, timeout_s=0.5)))
    assert rows[-1]["error_type"] == "DecodeTimeout" and rows[-1]["window_index"] == -1
    emitted = len(rows) - 1
    assert rows[-1]["num_windows"] == emitted
    assert emitted < 899  # planned windows of 7200 s at 10 s / 2 s overlap


def test_unreadable_objects_fail_at_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "gone.mp4"
    (row,) = decode_video({"video_id": "g", "uri": str(gone), "size_bytes": 10}, _settings())
    assert (row["error_stage"], row["error_type"]) == ("fetch", "ObjectMissing")

    # Permission denied, simulated: this suite may run as root, whom chmod 000 does not stop.
    class DeniedFS:
        protocol = "s3"

        def size(self, path: str) -> int:
            raise PermissionError(13, "Access Denied")

        def get_file(self, path: str, local: str) -> None:  # (a listed size spares the HEAD: the GET is refused)
            raise PermissionError(13, "Access Denied")

    monkeypatch.setattr("pipeline.video.fetch.get_fs", lambda uri, endpoint=None: (DeniedFS(), uri))
    (row,) = decode_video({"video_id": "d", "uri": "s3://bucket/secret.mp4", "size_bytes": 10}, _settings())
    assert (row["error_stage"], row["error_type"]) == (DENIED.stage, DENIED.error_type)
    assert DENIED.message and DENIED.message in row["error_message"]


@pytest.mark.integration
def test_mixed_corpus_run(
    ray_local: None,
    tiny_model_dir: Path,
    bad_corpus: tuple[Path, dict[str, Expected]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pipeline.run.driver as run_mod
    from pipeline.config import build_config
    from pipeline.source.stream import ListingPlan

    folder, expected = bad_corpus
    expected = dict(expected)
    # A local file the process may not read: tests/video/test_fetch.py (as root too); a real S3 AccessDenied:
    # tests/io/test_s3_storage.py::test_object_the_credentials_may_not_read_is_an_error_row.

    real_dataset = ListingPlan.dataset

    def list_then_delete(self: ListingPlan, *args: Any, **kw: Any) -> Any:
        refs = real_dataset(self, *args, **kw).materialize()  # the listing streams: run it to the end here
        (folder / "vanished.mp4").unlink()  # deleted between listing and reading
        return refs

    monkeypatch.setattr(ListingPlan, "dataset", list_then_delete)
    # TEST-ONLY hooks. Any generate batch of more than one window runs out of memory: batches must split.
    monkeypatch.setenv("MOLMO_BATCH_TEST_OOM_ABOVE", "1")
    # A model call holding crash_trigger.mp4's window kills its process (os._exit: a native crash). Ray
    # replaces the actor and retries; the retry runs that batch one window at a time, the others are
    # answered, and the culprit becomes a WorkerCrashed row after model_crash_retries=1 more death.
    crash = folder / "crash_trigger.mp4"
    crash.write_bytes((folder / "good_b.mp4").read_bytes())
    expected["crash_trigger.mp4"] = Expected("failed", "infer", "WorkerCrashed", "model_crash_retries=1")
    monkeypatch.setenv("MOLMO_BATCH_TEST_CRASH_ON", "crash_trigger.mp4")
    # A poison file whose decoding kills the decode task's process (os._exit, as a native FFmpeg crash
    # would): Ray retries the task, the ledger counts the deaths, and after decode_crash_retries=1 more
    # the video is a DecoderCrashed row while the other videos of its block are decoded.
    poison = folder / "decoder_crash.mp4"
    poison.write_bytes((folder / "good_a.mp4").read_bytes())
    expected["decoder_crash.mp4"] = Expected("failed", "decode", "DecoderCrashed", "decode_crash_retries=1")
    monkeypatch.setenv("MOLMO_BATCH_TEST_DECODE_CRASH_ON", "decoder_crash.mp4")
    out = tmp_path / "tables"
    config = build_config({
        "source": {"input": str(folder)},
        "model": {"model": str(tiny_model_dir), "max_new_tokens": 8, "batch_size": 3, "model_crash_retries": 1},
        "window": {"window_s": WINDOW_S, "overlap_s": OVERLAP_S},
        "sampling": {"num_frames": 4, "max_fps": 2.0},
        "tasks": {"tasks": "caption"},
        "output": {"output": str(out), "flush_videos": 4},
        "ray": {"progress": "off"},
    })
    summary = run_mod.run_pipeline(config, echo=lambda _m: None)

    def read(table: str) -> list[dict[str, Any]]:
        return pads.dataset(str(out / table), format="parquet", partitioning="hive").to_table().to_pylist()

    videos = {Path(v["uri"]).name: v for v in read("videos")}
    assert {n: v["status"] for n, v in videos.items()} == {n: e.status for n, e in expected.items()}
    errors = read("errors")
    by_file: dict[str, list[dict[str, Any]]] = {}
    for e in errors:
        by_file.setdefault(Path(e["uri"]).name, []).append(e)
    for name, exp in expected.items():
        got = by_file.get(name, [])
        if exp.error_type is None:
            assert got == [], (name, got)
            continue
        assert len(got) == 1, (name, got)
        (err,) = got
        assert (err["stage"], err["error_type"]) == (exp.stage, exp.error_type), (name, err)
        assert exp.message and exp.message in err["message"], (name, err["message"])
        assert err["video_id"] == videos[name]["video_id"] and err["run_id"] == summary.run_id
        summary_text = videos[name]["error_summary"] or ""
        assert exp.message in summary_text or exp.error_type in summary_text, (name, summary_text)

    long = videos["long_2h.mp4"]
    assert long["duration_s"] == pytest.approx(7200.0)
    assert long["windows"] == len(plan_windows(7200.0, WINDOW_S, OVERLAP_S)) > 1
    assert (videos["huge_8k.mp4"]["width"], videos["huge_8k.mp4"]["height"]) == (7680, 4320)
    rot = videos["rotated_270.mp4"]
    assert (rot["width"], rot["height"], rot["rotation"]) == (96, 160, 270)
    captions = read("captions")
    single = [c for c in captions if c["video_id"] == videos["single_frame.mp4"]["video_id"]]
    assert len(single) == 1 and single[0]["frames_used"] == 1 and single[0]["caption"] is not None

    # The run tells partial from success and failure, and counts every error type.
    assert summary.exit_code == EXIT_PARTIAL
    want = Counter(f"{e.stage}:{e.error_type}" for e in expected.values() if e.error_type)
    assert dict(summary.error_types) == dict(want)
    assert summary.ok == sum(e.status == "ok" for e in expected.values())
    assert summary.failed == sum(e.status == "failed" for e in expected.values())
    assert summary.partial == sum(e.status == "partial" for e in expected.values())
    # OOM injected on every multi-window batch: split down to single windows, no answer lost; the
    # actor deaths lost nothing either, and no row was written twice.
    assert [e["error_type"] for e in errors if e["stage"] == "infer"] == ["WorkerCrashed"]
    keys = [(c["video_id"], c["window_index"]) for c in captions]
    assert len(keys) == len(set(keys)) == sum(v["windows"] for v in videos.values()) - 1
