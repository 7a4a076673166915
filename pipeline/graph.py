"""The one place the Ray Data graph is built: video refs -> decode tasks (CPU) -> Molmo2 actors (GPU).

    from_items(VideoRef rows)
      .map_batches(decode_batch, num_cpus=decode CPUs, TaskPoolStrategy(decode concurrency))   # CPU
      .map_batches(Molmo2Host, num_gpus=1, ActorPoolStrategy(model actors), batch_size=B)    # GPU

Decode and the model are separate stages with their own resources and concurrency, so Ray Data
streams: decode keeps working on the next videos while the GPUs generate, and its backpressure bounds
how many decoded windows wait in the object store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.decode import DecodeSettings, decode_batch
from pipeline.infer import HostSettings, Molmo2Host
from pipeline.source import VideoRef


@dataclass(frozen=True)
class ResourcePlan:
    """How the run uses the cluster, derived from its resources and the config."""

    model_actors: int
    gpus_per_actor: float
    model_cpus: float
    decode_cpus: float
    decode_concurrency: int
    batch_size: int
    input_blocks: int

    def describe(self) -> str:
        where = f"{self.gpus_per_actor:g} GPU each" if self.gpus_per_actor else "CPU"
        return (
            f"{self.model_actors} model actor(s) ({where}, {self.model_cpus:g} CPU), batch {self.batch_size}; "
            f"decode: {self.decode_concurrency} task(s) x {self.decode_cpus:g} CPU; {self.input_blocks} input block(s)"
        )


def plan_resources(
    cluster: dict[str, float],
    *,
    num_videos: int,
    num_model_actors: int | None,
    num_gpus_per_actor: float | None,
    model_cpus: float,
    decode_cpus: float,
    decode_concurrency: int,
    batch_size: int,
) -> ResourcePlan:
    """Pick model actors and GPUs per actor from the cluster's resources (pure)."""
    gpus = float(cluster.get("GPU", 0.0))
    gpus_per_actor = num_gpus_per_actor if num_gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    if num_model_actors is not None:
        actors = num_model_actors
    elif gpus_per_actor > 0:
        actors = max(1, int(gpus // gpus_per_actor))
    else:
        actors = 1
    # Enough blocks that every decode task has work, without one task per tiny video.
    blocks = max(1, min(num_videos, max(decode_concurrency * 4, actors * 2)))
    return ResourcePlan(actors, gpus_per_actor, model_cpus, decode_cpus, decode_concurrency, batch_size, blocks)


def build_dataset(refs: list[VideoRef], decode: DecodeSettings, host: HostSettings, plan: ResourcePlan) -> Any:
    """The Ray Data graph for `refs` (a lazy Dataset; nothing runs until it is iterated)."""
    import ray

    items = [r.as_row() for r in refs]
    ds: Any = ray.data.from_items(items, override_num_blocks=plan.input_blocks)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"settings": decode},
        batch_size=1,
        batch_format="numpy",
        num_cpus=plan.decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=plan.decode_concurrency),
    )
    ds = ds.map_batches(
        Molmo2Host,
        fn_constructor_kwargs={"settings": host},
        batch_size=plan.batch_size,
        batch_format="numpy",
        num_cpus=plan.model_cpus,
        num_gpus=plan.gpus_per_actor,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.model_actors),
    )
    return ds
