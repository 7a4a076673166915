"""PyAV decode skips the non-reference frames nobody sampled, and every frame it returns is bit-identical
to a full decode (the speed of docs/benchmarks.md item 1 without changing a pixel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.devtools.samples import SampleSpec, write_video
from pipeline.video.errors import Deadline
from pipeline.video.probe import probe_video
from pipeline.video.readers import PyAVReader
from pipeline.video.sampling import FrameSampler, frames_in_window, plan_windows


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 30 fps H.264 with libx264's default B-frames, long enough for two 6 s windows.
    return write_video(tmp_path_factory.mktemp("skip") / "clip.mp4", SampleSpec("clip", 10.0, fps=30.0, seed=3))


@pytest.mark.parametrize("threads", [0, 1])
def test_skipping_unsampled_frames_changes_no_pixel(clip: Path, threads: int) -> None:
    probe = probe_video(str(clip))
    times = np.asarray(probe.frame_times, dtype=np.float64)
    windows = plan_windows(probe.duration_s, 6.0, 1.0)
    assert len(windows) == 2
    sampler = FrameSampler("native", 8, 2.0)
    skipping, full = PyAVReader(str(clip), 112, threads, probe), PyAVReader(str(clip), 112, threads, probe)
    full.skip_unsampled = False
    for window in windows:
        idx = frames_in_window(times, window, is_last=window.index == len(windows) - 1)
        picked = [idx[i] for i in sampler.sample(times[idx].tolist(), probe.fps)]
        a, ta = skipping.read(picked, times[picked], Deadline(60))
        b, tb = full.read(picked, times[picked], Deadline(60))
        assert len(a) == len(picked) and np.array_equal(ta, times[picked])
        assert np.array_equal(a, b) and np.array_equal(ta, tb)
    # The point of it: fewer frames went through the decoder (the non-reference B-frames not sampled).
    assert skipping.decoded < full.decoded, (skipping.decoded, full.decoded)


@pytest.mark.parametrize(("rotation", "display"), [(0, (64, 48)), (90, (48, 64)), (180, (64, 48)), (270, (48, 64))])
def test_probe_reports_the_display_size_the_decoder_turns_frames_to(tmp_path: Path, rotation: int,
                                                                    display: tuple[int, int]) -> None:
    video = write_video(tmp_path / "r.mp4", SampleSpec("r", 1.0, fps=4.0, width=64, height=48, seed=2, rotation=rotation))
    probe = probe_video(str(video))
    assert (probe.coded_width, probe.coded_height, probe.rotation) == (64, 48, rotation)
    assert (probe.width, probe.height) == display  # what points are scaled to (pipeline.results.grounding)
