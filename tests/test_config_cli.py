"""Typed config, YAML and CLI load into the same objects; bad config fails with a fix-it message."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import build_parser, config_from_args, main
from pipeline.config import SECTIONS, ConfigError, RunConfig, build_config
from pipeline.results.tasks import build_tasks, parse_task


def _cfg(argv: list[str]) -> RunConfig:
    return config_from_args(build_parser().parse_args(["run", *argv]))


def test_every_field_has_a_description_and_a_unique_flag() -> None:
    seen: set[str] = set()
    for model in SECTIONS.values():
        for name, info in model.model_fields.items():
            assert info.description, name
            assert name not in seen, f"duplicate field name {name}"
            seen.add(name)


def test_run_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for model in SECTIONS.values():
        for name in model.model_fields:
            assert "--" + name.replace("_", "-") in text


def test_cli_and_yaml_give_the_same_config(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "source: {input: s3://b/videos}\n"
        "model: {model: allenai/Molmo2-4B, batch_size: 8}\n"
        "tasks: {tasks: [caption, 'count:person']}\n"
        "window: {window_s: 30, overlap_s: 3}\n"
        "output: {output: /tmp/out}\n"
    )
    from_yaml = _cfg(["--config", str(yaml_file)])
    from_cli = _cfg(
        ["--input", "s3://b/videos", "--model", "allenai/Molmo2-4B", "--batch-size", "8",
         "--tasks", "caption,count:person", "--window-s", "30", "--overlap-s", "3", "--output", "/tmp/out"]
    )
    assert from_yaml == from_cli
    # flags override the file
    assert _cfg(["--config", str(yaml_file), "--batch-size", "2"]).model.batch_size == 2


def test_bad_values_fail_with_fix_it_messages() -> None:
    with pytest.raises(ConfigError, match="overlap_s"):
        _cfg(["--window-s", "5", "--overlap-s", "5"])
    with pytest.raises(ConfigError, match="unknown task"):
        _cfg(["--tasks", "summarize"])
    with pytest.raises(ConfigError, match="needs an argument"):
        _cfg(["--tasks", "count:"])
    with pytest.raises(ConfigError, match=r"unknown setting.*batch_size"):
        build_config({"model": {"modle": "x"}})
    with pytest.raises(ConfigError, match="no input"):
        build_config({}).check_ready()


def test_main_returns_2_on_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--input", "x", "--output", "y", "--window-s", "1", "--overlap-s", "2"]) == 2
    assert "overlap_s" in capsys.readouterr().err


def test_tasks_and_prompts() -> None:
    tasks = build_tasks(["caption", "count:person", "point:cart", "track:person", "ask:Is it raining?", "count:person"])
    assert [t.name for t in tasks] == ["caption", "count:person", "point:cart", "track:person", "ask:Is it raining?"]
    assert tasks[1].prompt == "How many people are there?"  # Molmo2's phrasing: the plural
    assert (tasks[2].prompt, tasks[3].prompt) == ("Point to the cart.", "Track the person.")
    assert tasks[4].prompt == "Is it raining?"
    custom = build_tasks(["count:cart"], {"count": "Count every {noun}."})
    assert custom[0].prompt == "Count every cart."
    with pytest.raises(ValueError, match="noun"):
        build_tasks(["count:cart"], {"count": "Count."})
    assert parse_task(" Track: person ") == ("track", "person")


def test_main_reports_a_broken_run_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that breaks (a node lost, the store gone) exits 1 with its message, not a traceback."""
    from pipeline.run import driver as run

    def broken(config: RunConfig) -> None:
        raise run.PipelineError("run stopped: decode node lost\n3 video(s) were committed; rerun the same command")

    monkeypatch.setattr(run, "run_pipeline", broken)
    (tmp_path / "in").mkdir()
    assert main(["run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: run stopped: decode node lost") and "Traceback" not in err


def test_chosen_sections_and_fields_become_flags() -> None:
    """`plan`, `serve` and the tools' own sections use the same flag builder as `run`."""
    import argparse

    from pydantic import Field

    from pipeline.cli import add_config_flags
    from pipeline.config import ConfigSection, build_section, flag_values

    class ToolOptions(ConfigSection):
        names: list[str] = Field(default_factory=list, description="Repeatable.", json_schema_extra={"repeatable": True})
        dry_run: bool = Field(False, description="A switch.")
        level: int = Field(3, description="A number.")

    parser = argparse.ArgumentParser()
    add_config_flags(parser, {"window": ["window_s"], "model": ["model"]}, required={"model.model"})
    add_config_flags(parser, sections={"tool": ToolOptions})
    flags = vars(parser.parse_args(["--model", "m", "--names", "a", "--names", "b,c", "--dry-run"]))
    assert flags == {"model.model": "m", "tool.names": ["a", "b,c"], "tool.dry_run": True}  # defaults suppressed
    assert "--overlap-s" not in parser.format_help() and "--window-s" in parser.format_help()
    options = build_section("tool", ToolOptions, flag_values(flags, "tool"))
    assert options == ToolOptions(names=["a", "b,c"], dry_run=True, level=3)
    with pytest.raises(ConfigError, match=r"tool\.level"):
        build_section("tool", ToolOptions, {"level": "many"})
    with pytest.raises(SystemExit):
        parser.parse_args(["--window-s", "3"])  # --model is required here


def test_flags_override_yaml_field_by_field() -> None:
    from pipeline.config import config_from_flags, merge_flags

    nested = {"model": {"model": "a", "batch_size": 2}, "tasks": {"tasks": "caption"}}
    flags = {"model.batch_size": 8, "tasks.prompt_templates": [("count", "Count {noun}.")], "job.extra": 1}
    assert merge_flags(nested, flags) == {
        "model": {"model": "a", "batch_size": 8},
        "tasks": {"tasks": "caption", "prompt_templates": {"count": "Count {noun}."}},
    }  # a job's own options (job.*) are not the run config's
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_flags({"model.batch_size": 8}, {"model": "x"})


def test_frames_must_fit_the_context_before_a_run() -> None:
    from pipeline.run.settings import check_ready

    ready = {"source": {"input": "/v"}, "output": {"output": "/o"}}
    check_ready(build_config({**ready, "sampling": {"num_frames": 384}}))
    with pytest.raises(ConfigError, match=r"num_frames=500 needs ~40500 visual tokens.*--num-frames"):
        check_ready(build_config({**ready, "sampling": {"num_frames": 500}}))
    with pytest.raises(ConfigError, match="no input"):
        check_ready(build_config({"output": {"output": "/o"}}))


def test_print_config_masks_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key in an endpoint URL or a URI, a presigned signature: --print-config shows none of them, for
    `run` and for the jobs, from flags and from YAML."""
    key_id, secret = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        f"source: {{s3_endpoint_url: 'http://{key_id}:{secret}@minio.internal:9000'}}\n"
        f"model: {{model: 's3://{key_id}:{secret}@models/Molmo2-8B/'}}\n"
        "output: {output: 's3://tables/out?X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLETOKEN&X-Amz-Signature=abc123'}\n"
    )
    assert main(["run", "--config", str(yaml_file), "--input", f"https://{key_id}:{secret}@h/v/", "--print-config"]) == 0
    printed = capsys.readouterr().out
    for leaked in (key_id, secret, "FwoGZXIvYXdzEXAMPLETOKEN", "abc123", "X-Amz-"):
        assert leaked not in printed, (leaked, printed)
    assert "s3_endpoint_url: http://***@minio.internal:9000\n" in printed
    assert "model: s3://***@models/Molmo2-8B/\n" in printed and "output: s3://tables/out\n" in printed

    from jobs.nightly_captions import main as nightly

    assert nightly(["--config", str(yaml_file), "--input", "s3://videos/in/", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert key_id not in printed and secret not in printed and "http://***@minio.internal:9000" in printed


def test_config_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--input", "x", "--output", "y", "--window-s", "1", "--overlap-s", "2", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("configuration error: invalid configuration: ")
    assert "overlap_s" in err and "model.batch_size" in err
