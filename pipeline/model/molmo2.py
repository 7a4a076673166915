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


def visual_tokens_per_frame(frame_size: int = FRAME_SIZE) -> int:
    """Visual tokens of one frame of `frame_size` pixels with Molmo2's patches and pooling (81 at 378 px)."""
    return Molmo2Geometry(frame_size=frame_size).tokens_per_frame


def check_frame_budget(num_frames: int, geometry: Molmo2Geometry = DEFAULT_GEOMETRY) -> None:
    """Raise ConfigError when `num_frames` frames cannot fit the model's context."""
    visual = num_frames * geometry.tokens_per_frame
    if visual > VISUAL_TOKEN_BUDGET:
        raise ConfigError(
            f"num_frames={num_frames} needs ~{visual} visual tokens, over Molmo2's {CONTEXT_TOKENS:,}-token "
            "context: lower --num-frames (<= 384)"
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
