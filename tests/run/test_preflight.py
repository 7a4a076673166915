"""Preflight: every bad configuration exits 2 with one line that says how to fix it, before Ray starts and
before any model work; an empty input says so and exits 0.

The runs go through the CLI (`pipeline.cli.main`) in-process with Ray's start replaced by a failure, so a
check that comes too late fails the test instead of starting a cluster. The model is a directory holding
only a Molmo2 config.json: preflight reads no weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import build_config
from pipeline.devtools.seaweed import SeaweedServer

REPO = Path(__file__).resolve().parents[2]
MOLMO2_CONFIG = {"model_type": "molmo2", "architectures": ["Molmo2ForConditionalGeneration"]}


@pytest.fixture(autouse=True)
def ray_must_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Ray was started: a configuration check came too late")

    monkeypatch.setattr("pipeline.run.driver._init_ray", refuse)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "molmo2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MOLMO2_CONFIG))
    return folder


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(b"\x00" * 64)  # listed, never read: the checks come first
    return folder


def _file(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _hf_cache(root: Path, repo: str, config: dict[str, object]) -> Path:
    """A Hugging Face hub cache holding only `repo`'s config.json at `main`."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _file(folder / "refs" / "main", commit.encode())
    _file(folder / "snapshots" / commit / "config.json", json.dumps(config).encode())
    return root


Case = Callable[[Path, Path, Path, pytest.MonkeyPatch], list[str]]

# Each case: the flags that make the configuration bad (given the tmp folder, a good input folder, a good
# model and the monkeypatch), and what the one line must say.
CASES: dict[str, tuple[Case, str]] = {
    "output is a file": (
        lambda tmp, v, m, mp: ["--output", str(_file(tmp / "out.txt"))], "is a file, not a folder"),
    "output under a file": (
        lambda tmp, v, m, mp: ["--output", str(_file(tmp / "out.txt") / "tables")], "is under the file"),
    "output not writable": (  # sysfs refuses new entries, even to root
        lambda tmp, v, m, mp: ["--output", "/sys/molmo-batch-preflight-test/tables"], "is not writable"),
    "YAML syntax": (
        lambda tmp, v, m, mp: ["--config", str(_file(tmp / "bad.yaml", b"source:\n  input: [unclosed\nmodel: {}\n"))],
        "is not valid YAML: line"),
    "YAML encoding": (
        lambda tmp, v, m, mp: ["--config", str(_file(tmp / "latin1.yaml", "tasks: {tasks: caption}  # café\n"
                                                        .encode("latin-1")))],
        "is not UTF-8 text"),
    "prompt template of an unknown kind": (
        lambda tmp, v, m, mp: ["--prompt-templates", "counting=How many {noun} are there?"], "unknown kind 'counting'"),
    "prompt template without {noun}": (
        lambda tmp, v, m, mp: ["--tasks", "count:person", "--prompt-templates", "count=How many are there?"],
        "has no '{noun}' or '{nouns}' placeholder"),
    "prompt template in YAML without {noun}": (
        lambda tmp, v, m, mp: ["--config", str(_file(tmp / "t.yaml", b"tasks: {prompt_templates: {track: Track it.}}\n"))],
        "has no '{noun}' or '{nouns}' placeholder"),
    "model directory that is not a Molmo2": (
        lambda tmp, v, m, mp: ["--model", str(_file(tmp / "llama" / "config.json", json.dumps(
            {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}).encode()).parent)],
        "declares model_type 'llama'"),
    "model config.json that is not JSON": (
        lambda tmp, v, m, mp: ["--model", str(_file(tmp / "broken" / "config.json", b"{not json").parent)],
        "config.json is not valid JSON"),
    "Hub id not in the cache while offline": (
        lambda tmp, v, m, mp: (mp.setenv("HF_HUB_OFFLINE", "1"),
                               mp.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp / "empty-hf-cache")),
                               ["--model", "allenai/Molmo2-8B"])[-1],
        "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
    "cached Hub id that is not a Molmo2": (
        lambda tmp, v, m, mp: (mp.setenv("HF_HUB_OFFLINE", "1"),
                               mp.setattr("huggingface_hub.constants.HF_HUB_CACHE",
                                          str(_hf_cache(tmp / "hf", "someone/not-molmo", {"model_type": "bert"}))),
                               ["--model", "someone/not-molmo"])[-1],
        "not a Molmo2 checkpoint"),
    "--window-s inf": (lambda tmp, v, m, mp: ["--window-s", "inf"], "window.window_s: must be a finite number"),
    "--window-s nan": (lambda tmp, v, m, mp: ["--window-s", "nan"], "window.window_s: must be a finite number"),
    "infinite number in YAML": (
        lambda tmp, v, m, mp: ["--config", str(_file(tmp / "inf.yaml", b"sampling: {max_fps: .inf}\n"))],
        "sampling.max_fps: must be a finite number"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_configuration_exits_2_with_one_line_before_ray(
    case: str, tmp_path: Path, videos: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make, expected = CASES[case]
    bad = make(tmp_path, videos, model_dir, monkeypatch)
    out = tmp_path / "tables"
    argv = ["run", "--input", str(videos), "--output", str(out), "--model", str(model_dir), *bad]
    assert main(argv) == 2
    printed = capsys.readouterr()
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: "), printed.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in printed.err and printed.out == ""
    assert not out.exists()  # nothing written, not even a folder


def test_empty_input_says_so_and_exits_0(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "incoming"
    empty.mkdir()
    _file(empty / "notes.txt")  # not a video
    assert main(["run", "--input", str(empty), "--output", str(tmp_path / "tables"), "--model", str(model_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"no videos found under {empty} matching --include *.mp4," in printed
    assert "nothing to do" in printed


def test_preflight_leaves_no_probe_file_behind(tmp_path: Path, model_dir: Path) -> None:
    from pipeline.run.preflight import preflight

    out = tmp_path / "new" / "tables"
    config = build_config({"source": {"input": str(tmp_path)}, "output": {"output": str(out)},
                           "model": {"model": str(model_dir)}})
    preflight(config)
    # The output folder is created (the run writes there next; two runs starting together both succeed),
    # the probe file is gone.
    assert list(out.iterdir()) == []
    preflight(config)
    assert list(out.iterdir()) == []

    cached = _hf_cache(tmp_path / "hf", "allenai/Molmo2-4B", MOLMO2_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cached))
        preflight(build_config({"source": {"input": str(tmp_path)}, "output": {"output": str(out)},
                                "model": {"model": "allenai/Molmo2-4B"}}))


@pytest.fixture
def aws_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return seaweed.endpoint


def test_s3_output_is_probed_with_a_real_write(
    seaweed: SeaweedServer, aws_env: str, videos: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.run.preflight import preflight

    bucket = seaweed.make_bucket()
    fs = seaweed.filesystem()
    preflight(build_config({"source": {"input": str(videos), "s3_endpoint_url": aws_env},
                            "output": {"output": f"s3://{bucket}/tables"}, "model": {"model": str(model_dir)}}))
    assert fs.find(bucket) == []  # the probe object was written and deleted

    # Keys the store refuses (a wrong secret, an unknown key id): refused at the probe, the keys unprinted.
    import s3fs

    base = ["run", "--input", str(videos), "--model", str(model_dir), "--s3-endpoint-url", aws_env,
            "--output", f"s3://{bucket}/tables"]
    try:
        for key_id, secret in ((seaweed.access_key, "wrong-secret-wrong-secret-wrong-secret00"),
                               ("AKIAWRONGWRONGWRONG1", "wrong-secret-wrong-secret-wrong-secret01")):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            s3fs.S3FileSystem.clear_instance_cache()  # a new process would read the keys afresh
            assert main(base) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"configuration error: --output s3://{bucket}/tables is not writable (PermissionError")
            assert len(err.strip().splitlines()) == 1 and "wrong-secret" not in err and "AKIAWRONG" not in err, err
    finally:  # no filesystem holding the wrong keys outlives this test (fsspec caches instances)
        s3fs.S3FileSystem.clear_instance_cache()
    assert fs.find(bucket) == []


def test_the_command_line_prints_one_line_and_never_starts_ray(tmp_path: Path, videos: Path, model_dir: Path) -> None:
    """As a user runs it: a separate process, its whole output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--input", str(videos), "--output", str(_file(tmp_path / "out")),
         "--model", str(model_dir)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert res.returncode == 2, res
    assert res.stderr.splitlines() == [f"configuration error: --output {tmp_path / 'out'} is a file, not a folder; "
                                       "give --output a folder or s3://BUCKET/PREFIX this user can write to"]
    assert res.stdout == "" and "Ray" not in res.stderr
