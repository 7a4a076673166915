"""Shared fixtures: the tiny Molmo2 (built once per session), generated mp4s, and one local Ray."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipeline.devtools.seaweed import SeaweedServer

# Offline and on loopback, before anything imports Ray or transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.devtools.tiny_model import build_tiny_molmo2

    return build_tiny_molmo2(tmp_path_factory.mktemp("tiny-molmo2"), frame_size=112, seed=0)


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus: 4 real mp4s, one (26 s) longer than a 10 s window, one rotated portrait."""
    from pipeline.devtools.samples import write_demo_corpus

    folder = tmp_path_factory.mktemp("videos")
    write_demo_corpus(folder)
    return folder


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """An in-process local Ray (more logical CPUs than cores: see RAY_AND_S3.md), shared by the modules.

    Started lazily by the first module that needs it and left running for the next ones; started again
    when a module in between shut it down (test_multinode runs its own multi-node cluster and leaves
    Ray shut down). `_stop_ray_at_exit` stops it at the end of the session.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            object_store_memory=400 * 1024**2,
            log_to_driver=False,
        )
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_exit() -> Iterator[None]:
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real S3 server for the session: SeaweedFS `weed mini` on 127.0.0.1, every port free-chosen,
    generated keys, stopped by PID. Sets nothing global: tests pass `seaweed.endpoint` and the keys
    explicitly (config, `seaweed.client_env()` for subprocesses, monkeypatch for in-process clients);
    each test makes its own bucket (`seaweed.make_bucket()`)."""
    from pipeline.devtools.seaweed import SeaweedServer

    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
