"""Molmo2's geometry: frame size, patches, pooling, visual tokens a frame, read from the checkpoint.

The one home of these numbers: the config's token budget, `plan`'s estimate, `serve` and the tiny test model
all take them from here. A video frame is resized to a square of `frame_size` pixels, cut into
`patch_size`-pixel ViT patches, and every `video_pooling` block of patches becomes one visual token:

    tokens per frame = ceil(ceil(frame_size / patch_size) / pool_h) * ceil(ceil(frame_size / patch_size) / pool_w)

which is 81 for the released checkpoints (378 px, 14 px patches: 27 x 27, pooled 3 x 3: 9 x 9).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import ConfigError
from pipeline.io.storage import get_fs
from pipeline.model.store import is_remote_prefix

PATCH_SIZE = 14  # SigLIP 2 so400m/14: the ViT's patch side in pixels
FRAME_SIZE = 378  # the released video processors' square frame side (27 patches a side)
VIDEO_POOLING = (3, 3)  # patches pooled into one visual token of a video frame (rows, columns)
CONTEXT_TOKENS = 36_864  # the released checkpoints' max_position_embeddings
# Visual tokens a window may hold: the context less room for the frames' markers, the prompt and the answer.
VISUAL_TOKEN_BUDGET = 36_000
NUM_FRAMES = 64  # transformers' Molmo2VideoProcessor: at most this many frames a clip ...
MAX_FPS = 2.0  # ... at most this many a second

# Where a checkpoint declares its processors' settings, in the order they are looked for.
PROCESSOR_FILES = ("video_preprocessor_config.json", "processor_config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class Molmo2Geometry:
    """How a video frame becomes visual tokens (defaults: the released Molmo2 checkpoints)."""

    frame_size: int = FRAME_SIZE
    patch_size: int = PATCH_SIZE
    video_pooling: tuple[int, int] = VIDEO_POOLING

    def __post_init__(self) -> None:
        sizes = (self.frame_size, self.patch_size, *self.video_pooling)
        if len(self.video_pooling) != 2 or any(not isinstance(v, int) or v < 1 for v in sizes):
            raise ValueError(
                f"Molmo2 geometry needs positive integers and a (rows, columns) pooling, got frame_size="
                f"{self.frame_size}, patch_size={self.patch_size}, video_pooling={self.video_pooling}"
            )

    @property
    def patches_per_side(self) -> int:
        """ViT patches along one side of a frame."""
        return math.ceil(self.frame_size / self.patch_size)

    @property
    def tokens_per_frame(self) -> int:
        """Visual (`<im_patch>`) tokens of one video frame."""
        rows, cols = self.video_pooling
        side = self.patches_per_side
        return math.ceil(side / rows) * math.ceil(side / cols)


DEFAULT_GEOMETRY = Molmo2Geometry()


@dataclass(frozen=True)
class Molmo2Sampling:
    """How many frames a clip gets and how much context holds them, as a checkpoint declares (defaults: the
    released checkpoints and transformers' `Molmo2VideoProcessor`)."""

    num_frames: int = NUM_FRAMES
    max_fps: float = MAX_FPS
    context_tokens: int = CONTEXT_TOKENS

    @property
    def visual_token_budget(self) -> int:
        """Visual tokens a window may hold: the context less the released room for markers, prompt and answer."""
        return self.context_tokens - (CONTEXT_TOKENS - VISUAL_TOKEN_BUDGET)


DEFAULT_SAMPLING = Molmo2Sampling()


def visual_tokens_per_frame(frame_size: int = FRAME_SIZE) -> int:
    """Visual tokens of one frame of `frame_size` pixels with Molmo2's patches and pooling (81 at 378 px)."""
    return Molmo2Geometry(frame_size=frame_size).tokens_per_frame


def check_frame_budget(
    num_frames: int, geometry: Molmo2Geometry = DEFAULT_GEOMETRY, sampling: Molmo2Sampling = DEFAULT_SAMPLING
) -> None:
    """Raise ConfigError when `num_frames` frames cannot fit the model's context (`sampling.context_tokens`)."""
    visual = num_frames * geometry.tokens_per_frame
    if visual > sampling.visual_token_budget:
        most = max(1, sampling.visual_token_budget // geometry.tokens_per_frame)
        raise ConfigError(
            f"num_frames={num_frames} needs ~{visual} visual tokens, over Molmo2's {sampling.context_tokens:,}-token "
            f"context: lower --num-frames (<= {most})"
        )


def checkpoint_geometry(model: str, endpoint_url: str | None) -> Molmo2Geometry:
    """The geometry the checkpoint's processor files declare (a Hub id, a local directory or an s3:// prefix).

    The frame side comes from the first file declaring a size (the video processor's first); the patch side
    from the same settings; the pooling only from a video processor's settings (an image processor's pooling,
    2 x 2 in the released `preprocessor_config.json`, is not a video frame's). What no file declares is the
    released checkpoints' value.
    """
    if model.startswith("file://"):
        model = model[len("file://") :]
    for name in PROCESSOR_FILES:
        data = _read_json(model, name, endpoint_url)
        found = _declared_size(data, video=name.startswith("video_")) if data else None
        if found is None:
            continue
        frame_size, settings, is_video = found
        patch = settings.get("patch_size")
        return Molmo2Geometry(
            frame_size=frame_size,
            patch_size=patch if isinstance(patch, int) and patch > 0 else PATCH_SIZE,
            video_pooling=_pooling(settings.get("pooling_size")) if is_video else VIDEO_POOLING,
        )
    return DEFAULT_GEOMETRY


def checkpoint_sampling(model: str, endpoint_url: str | None) -> Molmo2Sampling:
    """The frames a clip gets (`num_frames`, `max_fps` of the video processor's settings) and the language
    model's context (`max_position_embeddings` in config.json) that a checkpoint declares, as transformers'
    processor would read them; what it does not declare is the released checkpoints' value."""
    if model.startswith("file://"):
        model = model[len("file://") :]
    num_frames, max_fps = NUM_FRAMES, MAX_FPS
    for name in PROCESSOR_FILES:
        data = _read_json(model, name, endpoint_url)
        video = _video_settings(data, video=name.startswith("video_")) if data else None
        if video is None:
            continue
        frames, fps = video.get("num_frames"), video.get("max_fps")
        if isinstance(frames, int) and not isinstance(frames, bool) and frames > 0:
            num_frames = frames
        if isinstance(fps, (int, float)) and not isinstance(fps, bool) and math.isfinite(fps) and fps > 0:
            max_fps = float(fps)
        break
    config = _read_json(model, "config.json", endpoint_url) or {}
    text = config.get("text_config")
    context = (text if isinstance(text, dict) else {}).get("max_position_embeddings", config.get("max_position_embeddings"))
    if not (isinstance(context, int) and not isinstance(context, bool) and context > 0):
        context = CONTEXT_TOKENS
    return Molmo2Sampling(num_frames=num_frames, max_fps=max_fps, context_tokens=context)


def _video_settings(data: Mapping[str, Any], *, video: bool) -> Mapping[str, Any] | None:
    """A video processor's settings: a `video_processor` section, or the whole file when it is one."""
    section = data.get("video_processor")
    if isinstance(section, dict):
        return section
    return data if video else None


def model_frame_size(model: str, endpoint_url: str | None) -> int:
    """The square frame side the model's video processor expects (Molmo2's 378 when none is declared)."""
    return checkpoint_geometry(model, endpoint_url).frame_size


def _read_json(model: str, name: str, endpoint_url: str | None) -> dict[str, Any] | None:
    """One file of the checkpoint as JSON; None when it is missing or unreadable (the defaults then apply)."""
    try:
        if is_remote_prefix(model):
            fs, path = get_fs(model, endpoint_url)
            target = path.rstrip("/") + "/" + name
            return json.loads(fs.cat_file(target)) if fs.exists(target) else None
        if os.path.isdir(model):
            p = os.path.join(model, name)
            if not os.path.isfile(p):
                return None
            with open(p) as fh:
                return json.load(fh)
        from huggingface_hub import hf_hub_download

        with open(hf_hub_download(model, name)) as fh:
            return json.load(fh)
    except Exception:
        return None


def _declared_size(data: Mapping[str, Any], *, video: bool) -> tuple[int, Mapping[str, Any], bool] | None:
    """(frame side, the settings declaring it, whether they are a video processor's), searching the video
    processor's settings before a top-level `size`."""
    for key in ("video_processor", "size"):
        value = data.get(key)
        if not isinstance(value, dict):
            continue
        in_video = video or key == "video_processor"
        if "height" in value:
            size = int(value["height"])
            return (size, value if key == "video_processor" else data, in_video) if size > 0 else None
        nested = _declared_size(value, video=in_video)
        if nested:
            return nested
    return None


def _pooling(value: Any) -> tuple[int, int]:
    """A declared pooling ([rows, columns] or one number); Molmo2's 3 x 3 when it is not one."""
    pair = [value, value] if isinstance(value, int) else value
    if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, int) and v > 0 for v in pair):
        return (pair[0], pair[1])
    return VIDEO_POOLING
