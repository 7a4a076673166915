"""Many machines, on one: placement by resources and failover on a real multi-node Ray cluster.

`ray.cluster_utils.Cluster` (Ray's own test utility) runs real raylets on loopback: a head (1 CPU, no
GPU), two "GPU" workers (1 CPU and 1 logical GPU each) and a decode node (2 CPUs and the custom resource
`decode`). Runs use the tiny Molmo2 and generated mp4s; where each actor and task ran comes from Ray's
state API (served by the head's dashboard), and the tables are compared with a single-node run's.

Ray in this driver: a driver joins one cluster at a time, so these tests shut down whatever Ray the
session had (`ray_local`) before they start, and leave Ray shut down after; `ray_local` starts it again
for the modules that follow. The cluster is shared by this module's tests (starting one costs ~20 s on
2 cores) and stopped by its fixture; each test records which nodes it found and changes.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from pipeline.config import RunConfig, build_config
from pipeline.devtools.samples import SampleSpec, write_demo_corpus
from pipeline.errors import PipelineError
from pipeline.run.driver import run_pipeline
from pipeline.run.resources import DECODE_CPUS_PER_GPU, ClusterInfo, plan_resources, unmet_needs
from pipeline.run.summary import RunSummary

NUM_VIDEOS = 8  # 3 s clips: one window each, enough that both model actors get several
DECODE_TASK = "MapBatches(decode_batch)"
MODEL_CALL = "MapWorker(MapBatches(Molmo2Host)).submit"


def _stop_driver_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(videos: Path, model: Path, out: Path, **sections: dict[str, Any]) -> RunConfig:
    data: dict[str, Any] = {
        "source": {"input": str(videos)},
        # batch 1: the same windows meet the same model calls on one node or four (greedy, deterministic)
        "model": {"model": str(model), "max_new_tokens": 48, "batch_size": 1},
        "window": {"window_s": 10.0, "overlap_s": 2.0},
        "sampling": {"num_frames": 8, "max_fps": 2.0},
        "tasks": {"tasks": "caption"},
        "output": {"output": str(out), "flush_videos": 1},  # a committed part per finished video
        "ray": {"progress": "off"},
    }
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return build_config(data)


def _read(out: Path, table: str) -> list[dict[str, Any]]:
    return pads.dataset(str(out / table), format="parquet", partitioning="hive").to_table().to_pylist()


def _captions(out: Path) -> dict[tuple[str, int], str]:
    rows = _read(out, "captions")
    keys = [(r["video_id"], r["window_index"]) for r in rows]
    assert len(keys) == len(set(keys)), "a window was written twice"
    return {(r["video_id"], r["window_index"]): r["caption"] for r in rows}


def _committed_parts(out: Path) -> int:
    return len(list((out / "videos").rglob("part-*.parquet"))) if (out / "videos").exists() else 0


# -- the plan, from what Ray reports (pure; no Ray) --------------------------------------------------------

RAY_NODES = [  # the shape of `ray.nodes()` for the cluster below, plus a node that died
    {"NodeID": "h" * 56, "Alive": True, "Resources": {"CPU": 1.0, "memory": 2.0 * 2**30, "node:__internal_head__": 1.0,
                                                     "node:127.0.0.1": 1.0, "object_store_memory": 1e8}},
    {"NodeID": "a" * 56, "Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0, "memory": 2.0 * 2**30,
                                                     "accelerator_type:H100": 1.0}},
    {"NodeID": "b" * 56, "Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0, "memory": 2.0 * 2**30}},
    {"NodeID": "d" * 56, "Alive": True, "Resources": {"CPU": 2.0, "memory": 2.0 * 2**30, "decode": 2.0}},
    {"NodeID": "x" * 56, "Alive": False, "Resources": {"CPU": 64.0, "decode": 1.0}},
]
PLAN_ARGS: dict[str, Any] = dict(
    num_videos=100, num_model_actors=None, num_gpus_per_actor=None, model_cpus=1.0, decode_cpus=1.0,
    decode_concurrency=2, batch_size=4,
)


def test_the_cluster_as_ray_reports_it() -> None:
    cluster = ClusterInfo.from_ray_nodes(RAY_NODES)
    assert [n.node_id[0] for n in cluster.nodes] == ["h", "a", "b", "d"]  # alive only, head first
    assert cluster.nodes[0].is_head and dict(cluster.nodes[3].custom) == {"decode": 2.0}
    assert (cluster.total("CPU"), cluster.total("GPU"), cluster.total("decode")) == (5.0, 2.0, 2.0)
    text = cluster.describe()
    assert text.splitlines()[0] == "cluster: 4 node(s), 5 CPU, 2 GPU, 8.0 GiB memory"
    assert "node hhhhhhhh (head): 1 CPU, 0 GPU, 2.0 GiB" in text and "node dddddddd: 2 CPU, 0 GPU, 2.0 GiB, decode=2" in text


def test_the_plan_follows_the_gpus_and_checks_the_decode_balance() -> None:
    cluster = ClusterInfo.from_ray_nodes(RAY_NODES)
    plan = plan_resources(cluster, decode_resource="decode", **PLAN_ARGS)
    # One model actor per GPU, a fixed pool, one GPU each; decode pinned to the decode node's 2 CPUs.
    assert (plan.model_actors, plan.min_actors, plan.gpus_per_actor) == (2, 2, 1.0)
    assert plan.decode_node_cpus == 2.0
    assert plan.describe() == (
        "2 model actor(s) (1 GPU each, 1 CPU), batch 4; decode: 2 task(s) x 1 CPU on nodes with resource "
        "'decode'; 8 input block(s)"
    )
    assert len(plan.warnings) == 1 and f"(1.0 per GPU; Molmo2-8B at 64 frames on 1080p video needs ~{DECODE_CPUS_PER_GPU:g}" in plan.warnings[0]
    # Autoscaling bounds; half a GPU per actor doubles the actors.
    assert plan_resources(cluster, min_model_actors=1, max_model_actors=6, **PLAN_ARGS).describe().startswith(
        "1-6 model actor(s)"
    )
    assert plan_resources(cluster, **{**PLAN_ARGS, "num_gpus_per_actor": 0.5}).model_actors == 4
    # Enough decode CPUs in the cluster, but too little decode concurrency: the warning names the fix.
    big = ClusterInfo.from_totals({"CPU": 64.0, "GPU": 2.0})
    (warning,) = plan_resources(big, **PLAN_ARGS).warnings
    assert "raise --decode-concurrency to 8" in warning
    assert plan_resources(big, **{**PLAN_ARGS, "decode_concurrency": 8}).warnings == ()
    # No GPU: one CPU actor, no balance to check; a decode resource nobody offers is a warning.
    cpu_only = ClusterInfo.from_totals({"CPU": 4.0})
    assert plan_resources(cpu_only, **PLAN_ARGS).describe().startswith("1 model actor(s) (CPU, 1 CPU)")
    (missing,) = plan_resources(cpu_only, decode_resource="decode", **PLAN_ARGS).warnings
    assert "no node offers resource 'decode'" in missing


def test_what_a_stalled_run_lacks() -> None:
    plan = plan_resources(ClusterInfo.from_ray_nodes(RAY_NODES), decode_resource="decode", **PLAN_ARGS)
    assert unmet_needs(plan, ClusterInfo.from_ray_nodes(RAY_NODES)) == []
    no_decode = ClusterInfo.from_ray_nodes(RAY_NODES[:3])
    (need,) = unmet_needs(plan, no_decode)
    assert "decode tasks need a node with resource 'decode' and none is alive" in need
    no_gpu = ClusterInfo.from_ray_nodes([RAY_NODES[0], RAY_NODES[3]])
    assert unmet_needs(plan, no_gpu) == ["model actors need 1 GPU each and no alive node has that many"]


# -- a real multi-node cluster -----------------------------------------------------------------------------


class Background:
    """run_pipeline in a thread of this driver, so the test can act on the cluster while it runs."""

    def __init__(self, config: RunConfig) -> None:
        self.messages: list[str] = []
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(config,), daemon=True)
        self._thread.start()

    def _run(self, config: RunConfig) -> None:
        try:
            self.summary = run_pipeline(config, echo=lambda m: self.messages.append(str(m)))
        except BaseException as exc:
            self.error = exc

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 240.0, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self._thread.is_alive():
                raise AssertionError(f"the run ended before {what}: {self.error!r}\n" + "\n".join(self.messages))
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(self.messages))
            time.sleep(interval)

    def join(self, timeout: float = 300.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the run did not finish\n" + "\n".join(self.messages)


@dataclass
class Nodes:
    """The module's cluster and the nodes the tests add and remove."""

    cluster: Any
    gpu: list[Any]
    decode: Any

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def state(self, kind: str, **filters: str) -> list[Any]:
        """Ray's state API (list_actors / list_tasks), filtered by equality."""
        from ray.util import state

        lister = {"actors": state.list_actors, "tasks": state.list_tasks}[kind]
        return list(
            lister(address=self.address, filters=[(k, "=", v) for k, v in filters.items()], limit=10_000, detail=True)
        )

    def settled_tasks(self, name: str, since: set[str], timeout: float = 20.0) -> list[Any]:
        """This run's task attempts named `name`, once Ray has reported every one of them as ended
        (workers report task events about once a second)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [t for t in self.state("tasks", name=name) if t.task_id not in since]
            if (rows and all(t.state in ("FINISHED", "FAILED") for t in rows)) or time.monotonic() > deadline:
                return rows
            time.sleep(1.0)


@contextlib.contextmanager
def streaming_after_model_actors_start() -> Iterator[None]:
    """Ray Data starts streaming only once the model actor pool is up: both GPU nodes' actors get windows
    from the start, and no stall is counted while the actors load (the stall clock starts after)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.wait_for_min_actors_s
    ctx.wait_for_min_actors_s = 240
    try:
        yield
    finally:
        ctx.wait_for_min_actors_s = saved


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("multinode-videos")
    specs = tuple(
        SampleSpec(f"clip{i:02d}", seconds=3.0, fps=12, width=160, height=120, seed=100 + i) for i in range(NUM_VIDEOS)
    )
    write_demo_corpus(folder, specs)
    return folder


@pytest.fixture(scope="module")
def reference(corpus: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], str]:
    """Captions of a single-node run on the same videos: on the session's local Ray when it is up (one
    node), else on an embedded one."""
    import ray

    if ray.is_initialized() and len(ray.nodes()) != 1:
        _stop_driver_ray()
    out = tmp_path_factory.mktemp("single-node") / "tables"
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("RAY_ADDRESS", raising=False)  # never join some other cluster for the reference
            summary = run_pipeline(_config(corpus, tiny_model_dir, out, ray={"ray_num_cpus": 4}), echo=lambda _m: None)
    finally:
        _stop_driver_ray()
    assert summary.exit_code == 0 and summary.ok == NUM_VIDEOS, summary.render()
    return _captions(out)


@pytest.fixture(scope="module")
def nodes(reference: dict[tuple[str, int], str]) -> Iterator[Nodes]:
    """head (1 CPU) + two 1-GPU workers (1 CPU each) + a decode node (2 CPUs, decode=2), on loopback
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set by conftest before Ray starts). Depends on `reference`
    so the single-node run is over before this driver joins the cluster."""
    from ray.cluster_utils import Cluster

    _stop_driver_ray()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,  # the state API is served by the dashboard
            "dashboard_host": "127.0.0.1",
            "dashboard_port": _free_port(),
        },
    )
    try:
        gpu = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        decode = cluster.add_node(num_cpus=2, resources={"decode": 2})
        cluster.wait_for_nodes()
        yield Nodes(cluster, gpu, decode)
    finally:
        _stop_driver_ray()
        cluster.shutdown()


@pytest.mark.integration
def test_placement_by_resources_and_a_gpu_node_lost_mid_run(
    nodes: Nodes,
    corpus: Path,
    tiny_model_dir: Path,
    reference: dict[tuple[str, int], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One model actor per GPU node and decode only on the decode node; then a GPU node dies with a model
    call in flight, and the run completes on the other one with every row once and single-node captions."""
    from ray.util.state import get_log

    # TEST-ONLY hook (pipeline.faults): each model call appends its process id to events/infer-call, and a
    # process with a events/infer-call.hold-<pid> file waits there (after appending its id to
    # events/infer-call.held) until the file is gone: the test keeps a call in flight as long as it needs.
    events = tmp_path / "events"
    monkeypatch.setenv("MOLMO_BATCH_TEST_EVENTS", str(events))

    assert len(nodes.gpu) == 2, "this test needs both GPU workers"
    g1, g2 = nodes.gpu
    out = tmp_path / "tables"
    config = _config(
        corpus, tiny_model_dir, out, decode={"decode_resource": "decode"}, ray={"address": nodes.address}
    )
    before = {t.task_id for name in (DECODE_TASK, MODEL_CALL) for t in nodes.state("tasks", name=name)}
    with streaming_after_model_actors_start():
        run = Background(config)

        def model_actors() -> list[Any]:
            return [a for a in nodes.state("actors", state="ALIVE") if "Molmo2Host" in a.class_name]

        run.wait_for(lambda: len(model_actors()) == 2, "two model actors")
        # Hold the second GPU node's next model call at once: waiting for a commit first let a fast run finish
        # all its videos before the hold. The held call keeps the run going while the first GPU node commits.
        actors = model_actors()
        g2_pid = str(next(a.pid for a in actors if a.node_id == g2.node_id))
        held, hold = events / "infer-call.held", events / f"infer-call.hold-{g2_pid}"
        hold.parent.mkdir(parents=True, exist_ok=True)
        hold.touch()
        try:
            # Placement, from Ray's state: one model actor on each GPU node, each asking for one GPU ...
            assert sorted(a.node_id for a in actors) == sorted([g1.node_id, g2.node_id]), actors
            for a in actors:
                assert a.required_resources.get("GPU") == 1.0, a.required_resources
                # ... and running on the device picked from what Ray gave it: GPU id 0, which torch cannot see.
                log_text = "".join(get_log(address=nodes.address, actor_id=a.actor_id, suffix="out", timeout=30))
                line = re.search(r"molmo-batch placement: (.*)", log_text)
                assert line, log_text
                assert f"node={a.node_id}" in line.group(1)
                assert "device=cpu" in line.group(1) and "ray_gpu_ids=['0']" in line.group(1)
                assert "CUDA_VISIBLE_DEVICES=0" in line.group(1)

            run.wait_for(lambda: held.exists() and g2_pid in held.read_text().split(),
                         "a model call held in flight on the second GPU node")
            run.wait_for(lambda: _committed_parts(out) > 0, "the first committed part")
            nodes.cluster.remove_node(g2)  # the held call stays in flight until its node is gone
            nodes.gpu.remove(g2)
        finally:
            hold.unlink()
        run.join()

    assert run.error is None, run.error
    assert run.summary is not None
    summary = run.summary
    # Outputs the lost node had produced but not yet handed to the driver are lost with the node (Ray does not
    # rebuild an actor task's output); their videos end as run:Incomplete, nothing of them is written, and the
    # same command again processes them (docs/many-machines.md). Whether any were pending is a matter of timing.
    incomplete = summary.error_types.get("run:Incomplete", 0)
    assert set(summary.error_types) <= {"run:Incomplete"}, summary.render()
    assert summary.ok + incomplete == NUM_VIDEOS and summary.partial == 0, summary.render()
    if incomplete:
        again = run_pipeline(config, echo=lambda _m: None)
        assert again.exit_code == 0 and again.ok == incomplete, again.render()
    # At start the run printed the cluster it saw, the plan, and the decode/GPU balance warning.
    text = "\n".join(run.messages)
    assert "cluster: 4 node(s), 5 CPU, 2 GPU" in text and "decode=2" in text, text
    assert "plan: 2 model actor(s) (1 GPU each, 1 CPU), batch 1; decode: 2 task(s) x 1 CPU on nodes with resource 'decode'" in text
    assert "warning: decode has 2 CPU(s) on nodes with resource 'decode' for 2 GPU(s)" in text

    # Every decode task ran on the decode node, before and after the GPU node was lost.
    decode_tasks = nodes.settled_tasks(DECODE_TASK, since=before)
    assert decode_tasks and {t.node_id for t in decode_tasks} == {nodes.decode.node_id}
    # The model call in flight on the lost node did not finish there; Ray retried it on the surviving node.
    calls = nodes.settled_tasks(MODEL_CALL, since=before)
    lost = {t.task_id for t in calls if t.node_id == g2.node_id and t.state != "FINISHED"}
    retried = {t.task_id for t in calls if t.attempt_number > 0 and t.state == "FINISHED" and t.node_id == g1.node_id}
    assert lost and lost <= retried, [(t.task_id[:8], str(t.node_id)[:8], t.state, t.attempt_number) for t in calls]

    # Every row written once, nothing missing, and the same captions as on one node.
    videos = _read(out, "videos")
    assert len(videos) == len({v["video_id"] for v in videos}) == NUM_VIDEOS
    assert _captions(out) == reference


@pytest.mark.integration
def test_decode_node_lost_stops_clearly_and_a_rerun_completes(
    nodes: Nodes, corpus: Path, tiny_model_dir: Path, reference: dict[tuple[str, int], str], tmp_path: Path
) -> None:
    """The only decode node dies mid-run: the run stops saying which resource is missing, with the finished
    videos committed; once a decode node joins, the same command completes the corpus exactly once."""
    out = tmp_path / "tables"
    config = _config(
        corpus,
        tiny_model_dir,
        out,
        decode={"decode_resource": "decode"},
        # No node can take decode over (none declares `decode`): Ray Data stops after this long without progress.
        ray={"address": nodes.address, "stall_timeout_s": 15},
    )
    with streaming_after_model_actors_start():
        run = Background(config)
        run.wait_for(lambda: _committed_parts(out) > 0, "the first committed part")
        nodes.cluster.remove_node(nodes.decode)
        run.join()

    assert isinstance(run.error, PipelineError), (run.error, run.messages)
    message = str(run.error)
    assert "decode tasks need a node with resource 'decode' and none is alive" in message, message
    assert "rerun the same command" in message
    done = {v["video_id"] for v in _read(out, "videos")}
    assert 0 < len(done) < NUM_VIDEOS

    # A decode node joins again; the same command finishes the corpus and skips what was committed.
    nodes.decode = nodes.cluster.add_node(num_cpus=2, resources={"decode": 2})
    nodes.cluster.wait_for_nodes()
    before = {t.task_id for t in nodes.state("tasks", name=DECODE_TASK)}
    with streaming_after_model_actors_start():
        again = run_pipeline(config, echo=lambda _m: None)
    assert again.exit_code == 0, again.render()
    assert again.videos_skipped == len(done) and again.ok == NUM_VIDEOS - len(done)
    rerun_decode = nodes.settled_tasks(DECODE_TASK, since=before)
    assert rerun_decode and {t.node_id for t in rerun_decode} == {nodes.decode.node_id}

    videos = _read(out, "videos")
    assert len(videos) == len({v["video_id"] for v in videos}) == NUM_VIDEOS
    assert _captions(out) == reference
