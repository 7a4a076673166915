"""Typed run configuration: the YAML file and the CLI load into these same objects.

Every field carries a description; `pipeline.cli` turns each field into a `--flag` with that description
as its help text, so the CLI, the YAML schema and this module cannot drift apart. Field names are unique
across sections for exactly that reason (a flag is named after its field). A flag's value is stored under
`section.field` (`model.batch_size`); `merge_flags` puts those values into the nested config, for `run`,
`plan`, `serve` and the jobs alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import MolmoBatchError
from pipeline.io.secrets import redact, redact_data
from pipeline.results.tasks import (
    DEFAULT_TEMPLATES,
    NOUN_PLACEHOLDERS,
    build_tasks,
    check_task_keys,
    parse_task_list,
)

VIDEO_GLOBS = ["*.mp4", "*.mov", "*.mkv", "*.webm", "*.avi", "*.m4v", "*.mpg", "*.mpeg", "*.ts"]


class ConfigError(MolmoBatchError, ValueError):
    """Bad configuration: raised at start-up with a message that says how to fix it."""


class ConfigSection(BaseModel):
    """One section of settings: a YAML mapping and a group of flags (each field a `--flag`).

    Numbers must be finite (`allow_inf_nan=False`): `--window-s inf` or `nan` is a configuration error,
    not a run that never ends its first window.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


SectionT = TypeVar("SectionT", bound=ConfigSection)


class SourceConfig(ConfigSection):
    input: str = Field(
        "",
        description="Where the videos are: a local folder or file, file://, s3://BUCKET/PREFIX, or any fsspec URL.",
    )
    include: list[str] = Field(
        default_factory=lambda: list(VIDEO_GLOBS),
        description="Glob patterns (on the file name or the path below --input) a video must match.",
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns that remove videos matched by --include."
    )
    max_videos: int | None = Field(
        None, ge=1, description="Process at most this many videos (in listing order); unset for all."
    )
    manifest_uri_column: str = Field(
        "uri", description="With a manifest --input (.parquet/.csv/.jsonl): the column holding video URIs."
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (e.g. http://127.0.0.1:8333); defaults to AWS_ENDPOINT_URL or AWS.",
    )
    storage_retry_budget_s: float = Field(
        60.0,
        ge=0,
        description=(
            "Retry transient storage errors (connection refused, timeouts, 5xx, throttling) with backoff and "
            "jitter for up to this many seconds per operation; past it a read fails its video (an error row) "
            "and a write stops the run (nothing half-written; a rerun resumes)."
        ),
    )


class SamplingConfig(ConfigSection):
    sampling_mode: Literal["native", "uniform_last_frame"] = Field(
        "native",
        description=(
            "Frame sampling policy: 'native' = Molmo2's transformers processor (evenly spaced frame indices); "
            "'uniform_last_frame' = the original Molmo2 code (evenly spaced times that include the last frame)."
        ),
    )
    num_frames: int | None = Field(
        None,
        ge=1,
        le=1024,
        description=(
            "At most this many frames per window; unset reads the model's video processor (`num_frames`: 64 for "
            "the released Molmo2, 8 for the toy checkpoint)."
        ),
    )
    max_fps: float | None = Field(
        None,
        gt=0,
        description=(
            "At most this many sampled frames per second of video; unset reads the model's video processor "
            "(`max_fps`: 2 for the released Molmo2)."
        ),
    )


class WindowConfig(ConfigSection):
    window_s: float = Field(
        60.0, gt=0, description="Window length in seconds: longer videos are cut into windows of this length."
    )
    overlap_s: float = Field(
        5.0, ge=0, description="Seconds shared by consecutive windows (tracks are stitched across it)."
    )

    @model_validator(mode="after")
    def _overlap_below_length(self) -> WindowConfig:
        if self.overlap_s >= self.window_s:
            raise ValueError(
                f"overlap_s ({self.overlap_s}) must be smaller than window_s ({self.window_s}); "
                "lower --overlap-s or raise --window-s"
            )
        return self


class DecodeConfig(ConfigSection):
    decode_num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves for each decode task.")
    decode_concurrency: int = Field(
        2, ge=1, description="How many decode tasks may run at once (the decode stage's own concurrency)."
    )
    decode_resource: str | None = Field(
        None,
        min_length=1,
        description=(
            "Pin decode tasks to the nodes declaring this custom Ray resource (e.g. 'decode', with "
            "`ray start --resources='{\"decode\": 1}'` on the decode nodes); each task asks for 0.001 of it, so "
            "those nodes' CPUs bound how many run there. Unset: decode runs on any node with free CPUs."
        ),
    )
    frame_size: int | None = Field(
        None,
        ge=14,
        description="Side of the square frames handed to the model, in pixels; unset reads it from the model's processor.",
    )
    decoder: Literal["decord", "pyav"] = Field(
        "pyav",
        description=(
            "Decoder: pyav (default: skips the unsampled frames no other frame needs, converts and resizes only"
            " the sampled ones) or decord (decord2, with PyAV as its fallback when it fails)."
        ),
    )
    decode_threads: int = Field(
        0,
        ge=0,
        description=(
            "Decoder threads per video; 0 = the CPUs Ray reserves for each decode task (decode_num_cpus), so"
            " parallel decode tasks never oversubscribe the cores they hold."
        ),
    )
    decode_timeout_s: float = Field(
        600.0, gt=0, description="Give up decoding one video after this many seconds (an error row)."
    )
    max_video_bytes: int = Field(
        20 * 1024**3, ge=1, description="Videos larger than this many bytes are refused with an error row."
    )
    decode_crash_retries: int = Field(
        1,
        ge=0,
        description=(
            "When decoding a video kills its process (a native crash, an OOM kill), Ray retries the task; a"
            " video that kills it this many more times is written as a DecoderCrashed error row instead."
        ),
    )


class ModelConfig(ConfigSection):
    model: str = Field(
        "allenai/Molmo2-8B",
        description=(
            "Molmo2 checkpoint: a Hub id (allenai/Molmo2-8B, allenai/Molmo2-4B, allenai/Molmo2-O-7B), "
            "a local directory, or an s3:// prefix copied to local disk once per node."
        ),
    )
    model_name: str | None = Field(
        None,
        description=(
            "A stable name for these weights in work keys (default: --model itself). Give the same name when "
            "the same checkpoint moves (a disk to a bucket, one bucket to another) so its finished work is not "
            "redone; a different checkpoint needs a different name."
        ),
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of --model.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="'auto' uses the GPU Ray assigned to the actor, else the CPU."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="'auto' is bfloat16 on CUDA and float32 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel passed to transformers."
    )
    num_gpus_per_actor: float | None = Field(
        None,
        ge=0,
        description="GPUs per model actor; unset means 1 when the cluster has GPUs, else 0 (CPU).",
    )
    model_num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each model actor.")
    num_model_actors: int | None = Field(
        None,
        ge=1,
        description="Model actors (one Molmo2 each); unset means one per GPU, or 1 without GPUs.",
    )
    min_model_actors: int | None = Field(
        None,
        ge=1,
        description=(
            "Lower bound of the model actor pool; below --max-model-actors Ray Data autoscales between the two. "
            "Unset: the number of model actors (a fixed pool, every GPU busy from the start)."
        ),
    )
    max_model_actors: int | None = Field(
        None,
        ge=1,
        description="Upper bound of the model actor pool (autoscaling); unset: the number of model actors.",
    )
    batch_size: int = Field(
        4, ge=1, description="Windows handed to one model actor call (batched in one generate where possible)."
    )
    max_new_tokens: int = Field(
        256, ge=1, description="Generation limit per answer; answers that hit it are marked truncated."
    )
    model_crash_retries: int = Field(
        1,
        ge=0,
        description=(
            "When a batch kills its model actor process (crash, OOM kill), Ray replaces the actor and the "
            "batch is retried one window at a time; a window that kills it this many more times is written "
            "as a WorkerCrashed error row instead of being retried again."
        ),
    )
    model_cache_dir: str | None = Field(
        None,
        description="Local directory for weights copied from s3:// (default: ~/.cache/molmo-batch/models).",
    )

    @model_validator(mode="after")
    def _actor_bounds(self) -> ModelConfig:
        lo, hi = self.min_model_actors, self.max_model_actors
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_model_actors ({lo}) is above max_model_actors ({hi}); lower one of them")
        return self


class TasksConfig(ConfigSection):
    tasks: list[str] = Field(
        default_factory=lambda: ["caption"],
        description=(
            "Comma-separated tasks: caption, count:<noun>, point:<noun>, track:<noun>, ask:<question>."
        ),
    )
    prompt_templates: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Override a task's prompt template (keys: caption, count, point, track; count, point and track "
            "templates must contain '{noun}' (the noun as written) or '{nouns}' (its plural), which is filled in)."
        ),
    )
    noun_plurals: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "NOUN=PLURAL for a noun whose plural the prompts get wrong ('{nouns}' in a template, e.g. the count "
            "prompt 'How many {nouns} are there?'): bus=buses, 'person wearing a hat=people wearing hats'."
        ),
    )
    task_max_fps: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "A task's own sampling rate, KEY=FPS with KEY a task kind (track) or task (track:person); others use "
            "--max-fps. Molmo2's card recommends up to 8 fps for tracking, 2 for captions. Each rate is its own "
            "clip of the window (one video per prompt): the frames of the rates are decoded once together."
        ),
    )
    task_num_frames: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "A task's own frame budget per window, KEY=N (keys as --task-max-fps); others use --num-frames. "
            "A higher rate needs more frames (30 s at 8 fps: 240); the visual tokens are checked against "
            "Molmo2's context at start."
        ),
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t for t in (s.strip() for s in value.split(",")) if t]
        return value

    @field_validator("tasks")
    @classmethod
    def _valid(cls, value: list[str]) -> list[str]:
        parse_task_list(value)  # raises ValueError with a fix-it message
        return value

    @field_validator("prompt_templates")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        """Every template is checked, not only those of the tasks asked for now: a YAML file is reused."""
        kinds = ", ".join(DEFAULT_TEMPLATES)
        for kind, template in value.items():
            if kind not in DEFAULT_TEMPLATES:
                raise ValueError(f"unknown kind {kind!r}: use one of {kinds} (an ask:<question> is its own prompt)")
            if not template.strip():
                raise ValueError(f"the {kind!r} template is empty: write the question, e.g. {DEFAULT_TEMPLATES[kind]!r}")
            needs_noun = any(p in DEFAULT_TEMPLATES[kind] for p in NOUN_PLACEHOLDERS)
            has_noun = any(p in template for p in NOUN_PLACEHOLDERS)
            if needs_noun and not has_noun:
                raise ValueError(f"the {kind!r} template {template!r} has no '{{noun}}' or '{{nouns}}' placeholder: "
                                 f"write one where the noun goes, e.g. {DEFAULT_TEMPLATES[kind]!r}")
            if not needs_noun and has_noun:
                raise ValueError(f"the {kind!r} template {template!r} has a noun placeholder but {kind} takes no "
                                 "noun: remove it")
        return value

    @model_validator(mode="after")
    def _prompts(self) -> TasksConfig:
        # the prompts a run will send (ValueError with a fix)
        build_tasks(self.tasks, self.prompt_templates, plurals=self.noun_plurals)
        return self

    @field_validator("task_max_fps")
    @classmethod
    def _positive_rates(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if not v > 0)
        if bad:
            raise ValueError(f"rates must be > 0 frames per second (keys {bad})")
        return value

    @field_validator("task_num_frames")
    @classmethod
    def _positive_frames(cls, value: dict[str, int]) -> dict[str, int]:
        bad = sorted(k for k, v in value.items() if v < 1)
        if bad:
            raise ValueError(f"frame budgets must be >= 1 (keys {bad})")
        return value

    @model_validator(mode="after")
    def _keys_name_tasks(self) -> TasksConfig:
        check_task_keys("task_max_fps", self.task_max_fps, self.tasks)
        check_task_keys("task_num_frames", self.task_num_frames, self.tasks)
        return self


class OutputConfig(ConfigSection):
    output: str = Field("", description="Where the Parquet tables go: a local folder, file://, s3://BUCKET/PREFIX.")
    run_id: str | None = Field(None, description="Run identifier written on every row (default: generated).")
    flush_videos: int = Field(
        64, ge=1, description="Write a Parquet part after this many finished videos (and at the end)."
    )
    retry_statuses: list[Literal["failed", "partial"]] = Field(
        default_factory=list,
        description=(
            "Process again the videos whose committed rows all have one of these statuses (e.g. failed); "
            "their earlier rows stay as history and the newest `videos` row per video_id is its current state."
        ),
    )
    lease_ttl_s: float = Field(
        300.0, gt=0,
        description=(
            "Other writers on this output presume this run dead this long after its last lease heartbeat "
            "(every ttl/6); they then delete its uncommitted files and redo its videos. Keep it well above "
            "clock skew and store outages you want to ride out."
        ),
    )
    commit_lock_ttl_s: float = Field(
        120.0, gt=0,
        description="The longest one commit (one part's files) may hold the output's commit lock.",
    )
    done_index_parts: int = Field(
        64, ge=1,
        description=(
            "Commit parts the output's done index may leave uncovered: a run reads at most this many on its "
            "driver at start (more: it compacts the index first, as Ray tasks) and compacts at its end when "
            "this many are uncovered, so the next run starts from a fresh index (docs/tables.md)."
        ),
    )


class RayConfig(ConfigSection):
    address: str | None = Field(
        None, description="Ray cluster to join (or RAY_ADDRESS); unset starts an embedded local Ray."
    )
    ray_num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of the embedded local Ray (default: the machine's cores, at least 4)."
    )
    progress: Literal["auto", "on", "off"] = Field(
        "auto", description="Progress display: 'auto' shows it only on a terminal."
    )
    stall_timeout_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Stop the run when no data moves through the graph for this many seconds (e.g. the only node with "
            "a stage's resources died and none replaces it); committed videos stay and a rerun does the rest. "
            "Unset: Ray Data's default (1800 s)."
        ),
    )


class RunConfig(BaseModel):
    """Everything one run needs; YAML sections map to these attributes."""

    model_config = ConfigDict(extra="forbid")

    source: SourceConfig = Field(default_factory=lambda: SourceConfig())
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig())
    window: WindowConfig = Field(default_factory=lambda: WindowConfig())
    decode: DecodeConfig = Field(default_factory=lambda: DecodeConfig())
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    tasks: TasksConfig = Field(default_factory=lambda: TasksConfig())
    output: OutputConfig = Field(default_factory=lambda: OutputConfig())
    ray: RayConfig = Field(default_factory=lambda: RayConfig())

    def check_ready(self) -> None:
        """Checks that need every section; raise ConfigError with a fix-it message.

        The frames-fit-the-context check needs Molmo2's geometry: `pipeline.run.settings.check_ready` makes
        both.
        """
        if not self.source.input:
            raise ConfigError("no input: pass --input URL (a folder, file://, s3://...) or set source.input in YAML")
        if not self.output.output:
            raise ConfigError("no output: pass --output URL or set output.output in YAML")

    def public_dict(self) -> dict[str, Any]:
        """The config as plain data, safe to print (`--print-config`), log and write into the runs table:
        credentials in URLs (`http://key:secret@host`, presigned signatures) and secret-named values masked
        (`pipeline.io.secrets.redact_data`)."""
        data: dict[str, Any] = redact_data(self.model_dump(mode="json"))
        return data


SECTIONS: dict[str, type[ConfigSection]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in RunConfig.model_fields.items()
}


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into nested plain data (sections -> fields); a file that is missing, not
    UTF-8 or not valid YAML is a one-line ConfigError that says where."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist (or is not a file): check the --config path")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start}: {exc.reason}): save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(exc)}; fix the syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections (source:, model:, ...)")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """'line L, column C: problem' of a YAML error, in one line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def build_config(nested: dict[str, Any]) -> RunConfig:
    """Validate nested data into a RunConfig, turning pydantic errors into one readable ConfigError."""
    try:
        return RunConfig.model_validate(nested)
    except ValidationError as exc:
        raise _readable(exc, SECTIONS) from None


def build_section(name: str, model: type[SectionT], data: Mapping[str, Any]) -> SectionT:
    """Validate one section's data (e.g. a tool's own options), errors as one readable ConfigError."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise _readable(exc, {name: model}, prefix=name) from None


def _readable(exc: ValidationError, sections: Mapping[str, type[ConfigSection]], prefix: str = "") -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = (prefix, *err["loc"]) if prefix else err["loc"]
        where = ".".join(str(p) for p in loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            section = sections.get(str(loc[0])) if len(loc) > 1 else None
            valid = sorted(section.model_fields) if section else sorted(sections)
            msg = f"unknown setting (check the spelling); valid here: {', '.join(valid)}"
        elif err["type"] == "finite_number":
            msg = "must be a finite number (not inf or nan)"
        elif err["type"] == "value_error":
            msg = str(msg).removeprefix("Value error, ")
        lines.append(f"{where}: {' '.join(str(msg).split())}" if where else " ".join(str(msg).split()))
    # One line (the CLI prints `configuration error: <this>`); values are redacted, as in every message.
    return ConfigError(redact("invalid configuration: " + "; ".join(lines)))


def flag_values(flags: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The values of one section's flags given on the command line (argparse dests `section.field`)."""
    prefix = section + "."
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if not key.startswith(prefix):
            continue
        if isinstance(value, list) and value and isinstance(value[0], tuple):  # repeated KEY=VALUE
            value = dict(value)
        out[key[len(prefix) :]] = value
    return out


def merge_flags(nested: dict[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """Put the run config's flags (`section.field` keys; others are ignored) over nested data (e.g. a YAML
    file's) and return it: flags given on the command line override the file, field by field."""
    for section in SECTIONS:
        values = flag_values(flags, section)
        if not values:
            continue
        nested.setdefault(section, {})
        if not isinstance(nested[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        nested[section].update(values)
    return nested


def config_from_flags(flags: Mapping[str, Any], nested: dict[str, Any] | None = None) -> RunConfig:
    """The RunConfig of defaults < `nested` (e.g. a YAML file's data) < flags (see `merge_flags`)."""
    return build_config(merge_flags(nested if nested is not None else {}, flags))
