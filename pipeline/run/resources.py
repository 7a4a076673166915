"""Resources: what the cluster has, and how many decode tasks and model actors a run asks for."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The fewest decode CPUs per GPU that keep Molmo2-8B busy at 64 frames per 60 s window of 1080p video
# (below it the run warns). decode CPU-s per window / GPU-s per window, from docs/benchmarks.md (item 6):
# - CPU, measured (benchmarks/bench_gpu_sim.py): ~3.4-5.4 CPU-s (the upper end used here) per 60 s window of 1080p30 H.264 with the
#   default PyAV decode (every reference frame decoded, unsampled non-reference frames skipped); a
#   synthetic clip, real footage costs more.
# - GPU, modelled (nothing here ran on a GPU), ~200-token captions at batch 4: ~1.6 GPU-s per window on an
#   A100/L40S-class GPU (pipeline/tools/estimate.py's DEFAULT_PROFILE), 0.80 on an H100 (benchmarks/latency_model.py).
# 5.4 / 1.6 ~= 3.4 -> 4; an H100 needs ~7 (5.4 / 0.8), 720p sources about half. cluster/SIZING.md has the ranges.
DECODE_CPUS_PER_GPU = 4.0


DECODE_CPUS_PER_H100 = 7.0


# Decode tasks ask for this much of `--decode-resource`: enough to pin them to nodes declaring it, little
# enough that the node's CPUs (not the resource's amount) bound how many run there (up to 1000 per unit).
DECODE_RESOURCE_PER_TASK = 0.001


_STANDARD = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass(frozen=True)
class NodeInfo:
    """One alive Ray node's declared resources (what the scheduler places work by)."""

    node_id: str
    cpus: float = 0.0
    gpus: float = 0.0
    memory_bytes: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)
    is_head: bool = False

    def amount(self, resource: str) -> float:
        return {"CPU": self.cpus, "GPU": self.gpus, "memory": self.memory_bytes}.get(resource, self.custom.get(resource, 0.0))

    def describe(self) -> str:
        extra = "".join(f", {k}={v:g}" for k, v in sorted(self.custom.items()))
        head = " (head)" if self.is_head else ""
        return f"node {self.node_id[:8]}{head}: {self.cpus:g} CPU, {self.gpus:g} GPU, {self.memory_bytes / 2**30:.1f} GiB{extra}"


@dataclass(frozen=True)
class ClusterInfo:
    """The alive nodes of the cluster a run sees."""

    nodes: tuple[NodeInfo, ...]

    @classmethod
    def from_ray_nodes(cls, nodes: Sequence[Mapping[str, Any]]) -> ClusterInfo:
        """From `ray.nodes()`: alive nodes only; Ray's bookkeeping resources (node:*, bundles) dropped."""
        infos = []
        for n in nodes:
            if not n.get("Alive", True):
                continue
            res = {str(k): float(v) for k, v in (n.get("Resources") or {}).items()}
            custom = {
                k: v
                for k, v in res.items()
                if k not in _STANDARD and not k.startswith(("node:", "accelerator_type:")) and "_group_" not in k
            }
            infos.append(
                NodeInfo(
                    node_id=str(n.get("NodeID", "")),
                    cpus=res.get("CPU", 0.0),
                    gpus=res.get("GPU", 0.0),
                    memory_bytes=res.get("memory", 0.0),
                    custom=custom,
                    is_head="node:__internal_head__" in res,
                )
            )
        return cls(tuple(sorted(infos, key=lambda i: (not i.is_head, i.node_id))))

    @classmethod
    def from_totals(cls, totals: Mapping[str, float]) -> ClusterInfo:
        """One pseudo node holding `ray.cluster_resources()`-style totals."""
        return cls.from_ray_nodes([{"NodeID": "cluster", "Alive": True, "Resources": dict(totals)}])

    def total(self, resource: str) -> float:
        return sum(n.amount(resource) for n in self.nodes)

    def describe(self) -> str:
        lines = [
            f"cluster: {len(self.nodes)} node(s), {self.total('CPU'):g} CPU, {self.total('GPU'):g} GPU, "
            f"{self.total('memory') / 2**30:.1f} GiB memory"
        ]
        lines += [f"  {n.describe()}" for n in self.nodes]
        return "\n".join(lines)


@dataclass(frozen=True)
class ResourcePlan:
    """How the run uses the cluster, derived from its resources and the config."""

    model_actors: int  # the actor pool's upper bound (one Molmo2 each)
    gpus_per_actor: float
    model_cpus: float
    decode_cpus: float
    decode_concurrency: int
    batch_size: int
    input_blocks: int
    min_model_actors: int = 0  # the pool's lower bound; 0 means model_actors (a fixed pool)
    decode_resource: str | None = None  # custom resource that pins decode tasks to the nodes declaring it
    decode_node_cpus: float = 0.0  # CPUs of the nodes decode may run on (after the model actors' share)
    warnings: tuple[str, ...] = ()

    @property
    def min_actors(self) -> int:
        return self.min_model_actors or self.model_actors

    def describe(self) -> str:
        where = f"{self.gpus_per_actor:g} GPU each" if self.gpus_per_actor else "CPU"
        count = (
            f"{self.model_actors}" if self.min_actors == self.model_actors else f"{self.min_actors}-{self.model_actors}"
        )
        pinned = f" on nodes with resource '{self.decode_resource}'" if self.decode_resource else ""
        return (
            f"{count} model actor(s) ({where}, {self.model_cpus:g} CPU), batch {self.batch_size}; "
            f"decode: {self.decode_concurrency} task(s) x {self.decode_cpus:g} CPU{pinned}; "
            f"{self.input_blocks} input block(s)"
        )


def plan_resources(
    cluster: ClusterInfo | Mapping[str, float],
    *,
    num_videos: int,
    num_model_actors: int | None,
    num_gpus_per_actor: float | None,
    model_cpus: float,
    decode_cpus: float,
    decode_concurrency: int,
    batch_size: int,
    min_model_actors: int | None = None,
    max_model_actors: int | None = None,
    decode_resource: str | None = None,
) -> ResourcePlan:
    """Pick model actors and GPUs per actor from the cluster's resources, and check the decode/GPU balance (pure).

    Model actors: `num_model_actors`, else one per `num_gpus_per_actor` GPUs in the cluster (1 GPU each
    when it has GPUs), else 1 on CPU. That count is a fixed pool unless `min_model_actors` /
    `max_model_actors` widen it into an autoscaling range.
    """
    info = cluster if isinstance(cluster, ClusterInfo) else ClusterInfo.from_totals(cluster)
    gpus = info.total("GPU")
    gpus_per_actor = num_gpus_per_actor if num_gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    if num_model_actors is not None:
        target = num_model_actors
    elif gpus_per_actor > 0:
        target = max(1, int(gpus // gpus_per_actor))
    else:
        target = 1
    upper = max_model_actors if max_model_actors is not None else max(target, min_model_actors or 0)
    lower = min_model_actors if min_model_actors is not None else min(target, upper)
    if lower > upper:
        raise ValueError(f"min_model_actors ({lower}) is above max_model_actors ({upper})")
    # Enough blocks that every decode task has work, without one task per tiny video.
    blocks = max(1, min(num_videos, max(decode_concurrency * 4, upper * 2)))

    warns: list[str] = []
    if decode_resource:
        decode_node_cpus = sum(n.cpus for n in info.nodes if n.amount(decode_resource) > 0)
        if decode_node_cpus <= 0:
            warns.append(
                f"no node offers resource '{decode_resource}' (--decode-resource): decode tasks wait until "
                f"one joins (ray start --resources='{{\"{decode_resource}\": 1}}')"
            )
    else:  # decode shares the nodes with the model actors
        decode_node_cpus = max(0.0, info.total("CPU") - upper * model_cpus)
    gpus_used = upper * gpus_per_actor
    decode_used = min(decode_node_cpus, decode_concurrency * decode_cpus)
    if gpus_used > 0 and decode_node_cpus > 0 and decode_used < DECODE_CPUS_PER_GPU * gpus_used:
        need = DECODE_CPUS_PER_GPU * gpus_used
        if decode_node_cpus < need:
            where = f"nodes with resource '{decode_resource}'" if decode_resource else "the cluster, beside the model actors"
            warns.append(
                f"decode has {decode_node_cpus:g} CPU(s) on {where} for {gpus_used:g} GPU(s) "
                f"({decode_node_cpus / gpus_used:.1f} per GPU; Molmo2-8B at 64 frames on 1080p video needs "
                f"~{DECODE_CPUS_PER_GPU:g}, an H100 ~{DECODE_CPUS_PER_H100:g}): the GPUs will wait on decode; "
                f"add CPU nodes for decode (cluster/SIZING.md)"
            )
        else:
            warns.append(
                f"decode runs {decode_concurrency} task(s) x {decode_cpus:g} CPU = {decode_used:g} CPU for "
                f"{gpus_used:g} GPU(s) (Molmo2-8B at 64 frames on 1080p video needs ~{DECODE_CPUS_PER_GPU:g} per "
                f"GPU): raise --decode-concurrency to {math.ceil(need / decode_cpus)}"
            )
    return ResourcePlan(
        model_actors=upper,
        gpus_per_actor=gpus_per_actor,
        model_cpus=model_cpus,
        decode_cpus=decode_cpus,
        decode_concurrency=decode_concurrency,
        batch_size=batch_size,
        input_blocks=blocks,
        min_model_actors=lower,
        decode_resource=decode_resource or None,
        decode_node_cpus=decode_node_cpus,
        warnings=tuple(warns),
    )


def unmet_needs(plan: ResourcePlan, cluster: ClusterInfo | None = None) -> list[str]:
    """What the plan's stages need that no alive node offers any more (why a run stalls after a node died).

    `cluster` defaults to the alive nodes now; when Ray cannot say (it is down), nothing is reported.
    """
    if cluster is None:
        try:
            import ray

            cluster = ClusterInfo.from_ray_nodes(ray.nodes())
        except Exception:
            return []
    needs = []
    if plan.decode_resource and not any(n.amount(plan.decode_resource) > 0 for n in cluster.nodes):
        needs.append(
            f"decode tasks need a node with resource '{plan.decode_resource}' and none is alive: add one "
            f"(ray start --resources='{{\"{plan.decode_resource}\": 1}}') or run without --decode-resource"
        )
    if plan.gpus_per_actor > 0 and not any(n.gpus >= plan.gpus_per_actor for n in cluster.nodes):
        needs.append(f"model actors need {plan.gpus_per_actor:g} GPU each and no alive node has that many")
    return needs
