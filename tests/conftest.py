"""Shared fixtures: the tiny Molmo2 (built once per session), generated mp4s, and one local Ray."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Offline and on loopback, before anything imports Ray or transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.tiny_model import build_tiny_molmo2

    return build_tiny_molmo2(tmp_path_factory.mktemp("tiny-molmo2"), frame_size=112, seed=0)


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus: 4 real mp4s, one (26 s) longer than a 10 s window, one rotated portrait."""
    from pipeline.samples import write_demo_corpus

    folder = tmp_path_factory.mktemp("videos")
    write_demo_corpus(folder)
    return folder


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One in-process local Ray for the session (more logical CPUs than cores: see RAY_AND_S3.md)."""
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=400 * 1024**2,
        log_to_driver=False,
    )
    yield
    ray.shutdown()
