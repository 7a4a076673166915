"""Serve's settings: its own options (where it listens, what a request may do), and what a replica needs.

The model, sampling, window and decode values are the run config's (`pipeline.config`): `pipeline serve`
takes the same flags as `run`, and `pipeline.run.settings` turns them into the stages' settings, as for a
batch run. Only what a batch run has no use for is declared here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from pipeline.config import ConfigSection

if TYPE_CHECKING:  # the CLI imports this module to build its parser: keep the import light
    from pipeline.model.engine import HostSettings
    from pipeline.results.collect import RowContext
    from pipeline.video.decode import DecodeSettings


class ServeOptions(ConfigSection):
    """`pipeline serve`'s own options (each a `--flag`)."""

    allow_prefix: list[str] = Field(
        default_factory=list,
        description="A URI prefix requests may name (s3://bucket/videos/, https://host/path/); repeatable.",
        json_schema_extra={"repeatable": True, "metavar": "URI_PREFIX"},
    )
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for all).")
    port: int = Field(8000, description="Port to listen on.")
    replicas: int | None = Field(None, description="Replicas; unset: one per GPU, or 1 without GPUs.")
    max_upload_mb: int = Field(512, description="Largest upload or fetched video, MiB (413 above).")
    max_duration_s: float = Field(600.0, description="Longest video in seconds (413 above).")
    max_tasks: int = Field(8, description="Most tasks per request (422 above).")


@dataclass(frozen=True)
class ServeSettings:
    """What a replica needs (small and picklable; holds the token's digest, never the token)."""

    host: HostSettings  # the model (tasks come with each request), built from the run config
    decode: DecodeSettings  # frame size, sampling, windows; its max_video_bytes is the upload limit
    row: RowContext  # what every row records about how it was made; run_id is set per request
    batch_size: int  # windows handed to one model call
    token_sha256: str
    allow_prefixes: tuple[str, ...]
    max_duration_s: float
    max_tasks: int
    fetch_timeout_s: float = 120.0

    @property
    def max_upload_bytes(self) -> int:
        """The largest upload or fetched video (decoding refuses a larger file too)."""
        return self.decode.max_video_bytes

    @property
    def endpoint_url(self) -> str | None:
        """The S3-compatible endpoint requested s3:// URIs are read from."""
        return self.decode.endpoint_url
