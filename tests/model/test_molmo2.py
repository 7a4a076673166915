"""Molmo2's geometry (`pipeline.model.molmo2`): visual tokens a frame, and the geometry a checkpoint declares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import ConfigError, DecodeConfig
from pipeline.model.molmo2 import (
    CONTEXT_TOKENS,
    DEFAULT_GEOMETRY,
    FRAME_SIZE,
    PATCH_SIZE,
    VIDEO_POOLING,
    Molmo2Geometry,
    check_frame_budget,
    checkpoint_geometry,
    model_frame_size,
    visual_tokens_per_frame,
)


def test_released_geometry() -> None:
    assert (FRAME_SIZE, PATCH_SIZE, VIDEO_POOLING, CONTEXT_TOKENS) == (378, 14, (3, 3), 36_864)
    assert Molmo2Geometry(378, 14, (3, 3)) == DEFAULT_GEOMETRY
    assert DEFAULT_GEOMETRY.patches_per_side == 27


@pytest.mark.parametrize(
    ("frame_size", "patches", "tokens"),
    [
        (378, 27, 81),  # 27 x 27 patches, pooled 3 x 3: 9 x 9
        (252, 18, 36),  # 18 -> 6 a side
        (112, 8, 9),  # 8 -> ceil(8 / 3) = 3 a side: a partial pooling block still makes a token
        (100, 8, 9),  # not a multiple of the patch: the last, partial patch counts
    ],
)
def test_tokens_per_frame(frame_size: int, patches: int, tokens: int) -> None:
    geometry = Molmo2Geometry(frame_size)
    assert geometry.patches_per_side == patches
    assert geometry.tokens_per_frame == visual_tokens_per_frame(frame_size) == tokens


def test_pooling_and_patch_change_the_count() -> None:
    assert Molmo2Geometry(252, 14, (2, 2)).tokens_per_frame == 81  # 18 -> 9 a side
    assert Molmo2Geometry(252, 14, (2, 3)).tokens_per_frame == 9 * 6
    assert Molmo2Geometry(384, 16, (3, 3)).tokens_per_frame == 64  # 24 -> 8 a side
    for bad in ({"frame_size": 0}, {"patch_size": -14}, {"video_pooling": (3,)}, {"video_pooling": (0, 3)}):
        with pytest.raises(ValueError, match="Molmo2 geometry"):
            Molmo2Geometry(**bad)  # type: ignore[arg-type]


def test_frame_budget() -> None:
    check_frame_budget(444)  # 444 x 81 = 35,964 visual tokens: fits
    with pytest.raises(ConfigError, match=r"num_frames=445 needs ~36045 visual tokens, over Molmo2's 36,864"):
        check_frame_budget(445)
    check_frame_budget(1000, Molmo2Geometry(112))  # 9 tokens a frame


def test_config_frame_size_bound_is_one_patch() -> None:
    """`decode.frame_size` is validated where the config is (below the model layer): at least one patch."""
    bounds = [getattr(m, "ge", None) for m in DecodeConfig.model_fields["frame_size"].metadata]
    assert PATCH_SIZE in bounds


def _write(folder: Path, name: str, data: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def test_a_smaller_declared_geometry_is_read_back(tmp_path: Path) -> None:
    # Shaped like a native transformers checkpoint: processor_config.json holds the image and the video
    # processors; the image processor's 2 x 2 pooling is not a video frame's.
    video = {"size": {"height": 252, "width": 252}, "patch_size": 14, "pooling_size": [2, 2], "num_frames": 64}
    image = {"size": {"height": 378, "width": 378}, "patch_size": 14, "pooling_size": [4, 4]}
    _write(tmp_path / "native", "processor_config.json", {"image_processor": image, "video_processor": video})
    geometry = checkpoint_geometry(str(tmp_path / "native"), None)
    assert geometry == Molmo2Geometry(252, 14, (2, 2)) and geometry.tokens_per_frame == 81
    assert model_frame_size("file://" + str(tmp_path / "native"), None) == 252

    _write(tmp_path / "split", "video_preprocessor_config.json", {**video, "pooling_size": [3, 2]})
    assert checkpoint_geometry(str(tmp_path / "split"), None) == Molmo2Geometry(252, 14, (3, 2))


def test_an_image_processor_gives_the_size_not_the_pooling(tmp_path: Path) -> None:
    # The released remote-code checkpoints ship only preprocessor_config.json, an image processor's.
    _write(tmp_path, "preprocessor_config.json",
           {"size": {"height": 378, "width": 378}, "patch_size": 14, "pooling_size": [2, 2]})
    assert checkpoint_geometry(str(tmp_path), None) == Molmo2Geometry(378, 14, (3, 3))


def test_undeclared_or_unreadable_geometry_is_the_released_one(tmp_path: Path) -> None:
    assert checkpoint_geometry(str(tmp_path), None) == DEFAULT_GEOMETRY  # an empty directory
    (tmp_path / "video_preprocessor_config.json").write_text("{not json")
    _write(tmp_path, "processor_config.json", {"video_processor": {"size": {"height": 0}}})
    assert checkpoint_geometry(str(tmp_path), None) == DEFAULT_GEOMETRY
    _write(tmp_path, "preprocessor_config.json", {"size": {"height": 224, "width": 224}, "patch_size": "x"})
    assert checkpoint_geometry(str(tmp_path), None) == Molmo2Geometry(224)


def test_reads_a_tiny_model_checkpoint(tiny_model_dir: Path) -> None:
    from pipeline.devtools.tiny_model import METADATA_FILE

    meta = json.loads((tiny_model_dir / METADATA_FILE).read_text())
    geometry = checkpoint_geometry(str(tiny_model_dir), None)
    assert geometry == Molmo2Geometry(112, 14, (3, 3))
    assert (geometry.frame_size, geometry.patch_size, list(geometry.video_pooling)) == (
        meta["frame_size"], meta["patch_size"], meta["video_pooling"])
    assert geometry.tokens_per_frame == meta["visual_tokens_per_frame"] == 9
