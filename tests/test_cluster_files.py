"""cluster/: the AWS launcher config validates against Ray's own cluster schema; the KubeRay manifests have
the structure KubeRay expects (ray.io/v1 kinds, GPU limits, images, entrypoint) and their entrypoint is
a valid command line of the job it runs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from jobs import nightly_captions

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def _load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_aws_launcher_config_matches_rays_schema() -> None:
    config = _load("aws-molmo2.yaml")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does first: fill in the AWS provider's defaults, then Ray's own checks on top of the
    # schema (head type among the node types, worker bounds, ...). No AWS call is made.
    validate_config(prepare_config(config))

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and "GPU" not in head["resources"]
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert {t["node_config"]["InstanceType"] for t in gpu.values()} == {"g6e.xlarge", "p5.48xlarge"}
    assert types["gpu_l40s"]["resources"] == {"CPU": 4, "GPU": 1}
    decode = types["decode_cpu"]
    assert decode["resources"]["decode"] >= 1 and "GPU" not in decode["resources"]
    for t in types.values():  # autoscaling bounds
        assert 0 <= t.get("min_workers", 0) <= t.get("max_workers", 0) <= config["max_workers"]
    assert config["max_workers"] <= sum(t.get("max_workers", 0) for name, t in types.items() if name != "head")
    setup = " ".join(config["setup_commands"])
    assert "pip install -e ." in setup and "~/molmo-batch" in config["file_mounts"]
    assert all("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"] if "--head" in c)


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return list(group["template"]["spec"]["containers"])


def _check_cluster_spec(spec: dict[str, Any]) -> None:
    assert spec["rayVersion"] == ray.__version__
    head = _containers(spec["headGroupSpec"])
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in head)
    images = {c["image"] for c in head}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu-l40s"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    for c in _containers(gpu):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 == c["resources"]["requests"]["nvidia.com/gpu"]
        assert any(m["mountPath"].endswith(".cache/molmo-batch") for m in c["volumeMounts"])
        images.add(c["image"])
    decode = groups["decode-cpu"]
    assert json.loads(json.loads(decode["rayStartParams"]["resources"])) == {"decode": 1}
    for c in _containers(decode):
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        images.add(c["image"])
    assert len(images) == 1  # one image everywhere: same Ray, same project
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for c in _containers(group):
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
            assert not any(k.startswith("AWS_SECRET") or k == "AWS_ACCESS_KEY_ID" for k in env)  # IRSA, no keys


def test_kuberay_raycluster_manifest() -> None:
    doc = _load("kuberay-raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(doc["spec"])


def test_kuberay_rayjob_manifest_runs_the_nightly_job() -> None:
    doc = _load("kuberay-rayjob-nightly.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    _check_cluster_spec(spec["rayClusterSpec"])
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.nightly_captions"]
    _, config, _job = nightly_captions.build(argv[3:])  # every flag exists and the values validate
    assert config.source.input.startswith("s3://") and config.output.output.startswith("s3://")
    assert config.model.model.startswith("s3://") and config.model.num_gpus_per_actor == 1
    assert config.decode.decode_resource == "decode"
    max_gpus = spec["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert config.model.num_model_actors is not None and config.model.num_model_actors <= max_gpus
    assert config.tasks.tasks[0] == "caption" and config.output.retry_statuses == ["failed"]


@pytest.mark.parametrize("name", ["SIZING.md"])
def test_sizing_guide_covers_the_questions(name: str) -> None:
    text = (CLUSTER / name).read_text()
    for needle in ("decode CPUs per GPU", "batch size", "window", "memory", "Molmo2-8B", "Molmo2-4B", "Molmo2-O-7B",
                   "g6e.xlarge", "L40S", "24 GB"):
        assert needle in text, needle
