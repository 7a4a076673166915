"""The one place the Ray Data graph is built: video refs -> decode tasks (CPU) -> Molmo2 actors (GPU).

    VideoRef rows (source.stream.video_dataset: listed by Ray tasks as the run goes; or from_items(list))
      .repartition(target_num_rows_per_block=1)                                   # one video a decode task
      .map_batches(decode_batch, num_cpus=decode CPUs, [resources={decode_resource: 0.001}],
                   TaskPoolStrategy(decode concurrency))                                          # CPU
      .map_batches(Molmo2Host, num_gpus=1, ActorPoolStrategy(min..max model actors), batch_size=B)  # GPU

Decode and the model are separate stages with their own resources and concurrency, so Ray Data
streams: decode keeps working on the next videos while the GPUs generate, and its backpressure bounds
how many decoded windows wait in the object store.

Placement is by resources, never by luck: a model actor asks Ray for its GPU(s), so Ray puts it on a
node with a free GPU and the actor runs on the device Ray gave it (`model.engine.pick_device`); decode tasks
ask for CPUs and, with `--decode-resource NAME`, for a sliver of a custom resource that only decode
nodes declare (`ray start --resources='{"NAME": 1}'`), so they run there and nowhere else. The plan is
derived from the nodes Ray reports at start (`ClusterInfo`), printed, and checked for a decode/GPU
balance that would leave GPUs idle.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

from ray.data._internal.execution.execution_callback import ExecutionCallback

from pipeline.model.engine import HostSettings
from pipeline.model.host import Molmo2Host
from pipeline.run.resources import DECODE_RESOURCE_PER_TASK, ResourcePlan
from pipeline.source.refs import VideoRef
from pipeline.video.decode import DecodeSettings, decode_batch

# Videos per decode task. Blocks follow the corpus (one per video), so every decode task Ray can run has
# work, whatever the corpus size; a task costs ~10 ms next to a video's seconds of decode, and a decode
# process that dies retries one video, not a block of them.
REFS_PER_BLOCK = 1


def build_dataset(
    refs: Any,
    decode: DecodeSettings,
    host: HostSettings,
    plan: ResourcePlan,
    *,
    stall_timeout_s: float | None = None,
) -> Any:
    """The Ray Data graph for `refs` (a lazy Dataset; nothing runs until it is iterated).

    Args:
        refs: a Ray Data Dataset of VideoRef rows (`pipeline.source.stream`), or a list of VideoRef
            (tests, benchmarks).
        stall_timeout_s: Ray Data stops the run when no block moves for this long (e.g. the only node
            offering a stage's resources died); unset keeps Ray Data's default.
    """
    import ray

    retries = retry_limits(host, decode)
    decode_placement: dict[str, Any] = {}
    if plan.decode_resource:
        decode_placement["resources"] = {plan.decode_resource: DECODE_RESOURCE_PER_TASK}
    if isinstance(refs, list):
        refs = ray.data.from_items([r.as_row() if isinstance(r, VideoRef) else r for r in refs],
                                   override_num_blocks=max(1, min(len(refs), plan.input_blocks)))
    ds: Any = refs.repartition(target_num_rows_per_block=REFS_PER_BLOCK)
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for these yet; its generic remote-args route warns.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
        ds = ds.map_batches(
            decode_batch,
            fn_kwargs={"settings": decode},
            batch_size=1,
            batch_format="numpy",
            num_cpus=plan.decode_cpus,
            compute=ray.data.TaskPoolStrategy(size=plan.decode_concurrency),
            max_retries=retries["decode_max_retries"],
            **decode_placement,
        )
        ds = ds.map_batches(
            Molmo2Host,
            fn_constructor_kwargs={"settings": host},
            batch_size=plan.batch_size,
            batch_format="numpy",
            num_cpus=plan.model_cpus,
            num_gpus=plan.gpus_per_actor,
            compute=ray.data.ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.model_actors),
            max_restarts=-1,  # a dead model actor is always replaced ...
            max_task_retries=retries["model_max_task_retries"],  # ... but a call is retried a bounded number of times
        )
    if stall_timeout_s:
        ds.context.execution_no_progress_timeout_s = stall_timeout_s  # this Dataset only, not the process
    return ds


class StreamStop:
    """Ends a Dataset's execution from another thread: its iteration then stops as if the stream had ended.

    Why: once the listing is complete with nothing to process, no row can come, but Ray Data still waits
    for every stage to finish, the model actors' start included (seconds to minutes for an 8B checkpoint
    on a fresh node) before the stream ends. The driver's listing watch calls `stop()` then.

    Ray Data offers no public way to end an execution from outside its iterator; its execution callbacks
    (`DataContext.custom_execution_callback_classes`, instantiated without arguments) are handed the
    executor when it starts, and the executor's `shutdown(force=True)` ends its loop, kills its actors
    (pending ones too) and marks the output finished. The callback finds its StreamStop by the dataset's id
    (`get_dataset_id()` less the execution index the executor adds). Checked against Ray 2.60 (the pin in
    pyproject) by tests/run/test_work_identity.py.
    """

    def __init__(self, ds: Any) -> None:
        import threading

        self._lock = threading.Lock()
        self._executor: Any = None
        _STREAM_STOPS[_dataset_key(ds.get_dataset_id())] = self
        if _CaptureExecutor not in ds.context.custom_execution_callback_classes:
            ds.context.custom_execution_callback_classes = [*ds.context.custom_execution_callback_classes,
                                                            _CaptureExecutor]

    def started(self, executor: Any) -> None:
        with self._lock:
            self._executor = executor

    def stop(self) -> bool:
        """End the execution now (from any thread but Ray Data's own); False if it has not started."""
        with self._lock:
            executor = self._executor
        if executor is None:
            return False
        executor.shutdown(force=True)
        return True


def _dataset_key(dataset_id: str) -> str:
    return dataset_id.rsplit("_", 1)[0]  # "<name>_<uuid>_<execution index>": the index grows per execution


_STREAM_STOPS: weakref.WeakValueDictionary[str, StreamStop] = weakref.WeakValueDictionary()


class _CaptureExecutor(ExecutionCallback):
    """Hands each starting executor to its dataset's StreamStop (module level: the DataContext is pickled)."""

    def before_execution_starts(self, executor: Any) -> None:
        stop = _STREAM_STOPS.get(_dataset_key(str(getattr(executor, "_dataset_id", ""))))
        if stop is not None:
            stop.started(executor)


DECODE_MAX_RETRIES = 3


def retry_limits(host: HostSettings, decode: DecodeSettings | None = None) -> dict[str, int]:
    """Bounds on Ray's own retries of work whose process died (Ray Data's defaults are infinite).

    Python exceptions never reach Ray (both stages turn them into error rows); these bounds only count
    process deaths. A model call that crashes is retried once as a batch and then `crash_retries` times
    per culprit window (Molmo2Host); the bound leaves room for a few culprits in one call. Past a bound
    Ray fails the block; run.driver lets the run finish and reports those videos as incomplete.
    """
    return {
        # A video that kills its decode task is retried `crash_retries` times, then skipped as an error
        # row (video.decode._decode_guarded); room for two such videos in one block.
        "decode_max_retries": max(DECODE_MAX_RETRIES, 2 * ((decode.crash_retries if decode else 1) + 1) + 1),
        "model_max_task_retries": 4 * (host.crash_retries + 1) + 2,
    }
