"""The tiny random Molmo2 builder: real transformers classes, offline load path, input-dependent outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pipeline.devtools.tiny_model import (  # noqa: E402
    EXTRA_TOKENS,
    METADATA_FILE,
    build_tiny_molmo2,
    chat_prompt,
    image_overlap_margin,
    main,
    visual_tokens_per_frame,
)

REPO = Path(__file__).resolve().parents[2]
FRAME_SIZE = 112
MAX_NEW = 16


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_molmo2(tmp_path_factory.mktemp("tiny") / "molmo2", frame_size=FRAME_SIZE, seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path) -> tuple[Any, Any]:
    # The unchanged production loading path: Auto classes, a local directory, no trust_remote_code.
    processor = transformers.AutoProcessor.from_pretrained(tiny_dir)
    processor.tokenizer.padding_side = "left"
    model = transformers.AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)
    model.eval()
    return processor, model


def make_video(kind: int, num_frames: int = 4, height: int = 90, width: int = 160) -> np.ndarray:
    """Already-sampled uint8 frames (T, H, W, 3); non-square so that the processor has to resize."""
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(kind)
    frames = []
    for t in range(num_frames):
        if kind == 0:  # red gradient with a white square moving right
            f = np.zeros((height, width, 3), np.uint8)
            f[..., 0] = xx * 255 // width
            x0 = (10 + 25 * t) % max(width - 40, 1)
            f[20:60, x0 : x0 + 40] = 255
        elif kind == 1:  # noise
            f = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        else:  # brightening blue gradient
            f = np.full((height, width, 3), (40 * t) % 256, np.uint8)
            f[..., 2] = yy * 255 // height
        frames.append(f)
    return np.stack(frames)


def metadata(frames: np.ndarray, fps: float = 30.0, step: int = 15) -> dict[str, Any]:
    """Frames taken every `step` source frames of a `fps` video: timestamps 0.0, 0.5, 1.0, ..."""
    indices = [i * step for i in range(len(frames))]
    total = indices[-1] + 1
    return {
        "fps": fps,
        "duration": total / fps,
        "width": int(frames.shape[2]),
        "height": int(frames.shape[1]),
        "total_num_frames": total,
        "frames_indices": indices,
    }


def encode(processor: Any, videos: list[np.ndarray], questions: list[str]) -> Any:
    return processor(
        text=[chat_prompt(processor, q) for q in questions],
        videos=videos,
        video_metadata=[metadata(v) for v in videos],
        do_sample_frames=False,
        padding=True,
        return_tensors="pt",
    )


def generate(
    loaded: tuple[Any, Any], videos: list[np.ndarray], questions: list[str]
) -> tuple[Any, list[list[int]]]:
    processor, model = loaded
    inputs = encode(processor, videos, questions)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
    new = out[:, inputs["input_ids"].shape[1] :].tolist()
    eos = processor.tokenizer.eos_token_id
    trimmed = [row[: row.index(eos) + 1] if eos in row else row for row in new]
    return inputs, trimmed


# -- the checkpoint on disk -------------------------------------------------------------------------


def test_checkpoint_files_and_metadata(tiny_dir: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        METADATA_FILE,
    ):
        assert (tiny_dir / name).is_file(), name
    meta = json.loads((tiny_dir / METADATA_FILE).read_text())
    assert "random" in meta["note"]
    assert meta["frame_size"] == FRAME_SIZE and meta["seed"] == 0
    assert 0 < meta["parameters"] < 1_000_000
    assert (tiny_dir / "model.safetensors").stat().st_size < 4_000_000


def test_config_geometry_and_token_ids(tiny_dir: Path) -> None:
    config = transformers.AutoConfig.from_pretrained(tiny_dir)
    text, vision = config.text_config, config.vision_config
    assert config.model_type == "molmo2"
    assert text.hidden_size == 64 and text.num_hidden_layers == 2
    assert vision.hidden_size == 32 and vision.num_hidden_layers == 2
    assert list(vision.image_size) == [FRAME_SIZE, FRAME_SIZE]
    assert config.adapter_config.text_hidden_size == text.hidden_size
    assert text.max_position_embeddings >= 64 * (81 + 8) + 512  # 64 frames at 378 px plus text
    # Extra tokens directly after the output layer's rows, in Molmo2's order; eos/pad inside them.
    vocab = transformers.AutoTokenizer.from_pretrained(tiny_dir).get_vocab()
    assert [vocab[t] for t in EXTRA_TOKENS] == list(
        range(text.vocab_size, text.vocab_size + len(EXTRA_TOKENS))
    )
    assert text.additional_vocab_size >= len(EXTRA_TOKENS)
    assert config.image_patch_id == vocab["<im_patch>"]
    assert config.frame_start_token_id == vocab["<frame_start>"]
    assert config.frame_end_token_id == vocab["<frame_end>"]
    assert config.image_start_token_id == vocab["<im_start>"]
    assert config.low_res_image_start_token_id == vocab["<low_res_im_start>"]
    assert config.image_end_token_id == vocab["<im_end>"]


def test_loads_through_auto_classes(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    assert type(processor).__name__ == "Molmo2Processor"
    assert type(model).__name__ == "Molmo2ForConditionalGeneration"
    assert type(processor.video_processor).__name__ == "Molmo2VideoProcessor"
    assert type(processor.image_processor).__name__ == "Molmo2ImageProcessor"
    tok = processor.tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is not None
    assert tok.pad_token_id < model.config.text_config.vocab_size
    assert tok.eos_token_id < model.config.text_config.vocab_size
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_video_processor_settings(loaded: tuple[Any, Any]) -> None:
    vp = loaded[0].video_processor
    assert vp.size["height"] == vp.size["width"] == FRAME_SIZE
    assert vp.patch_size == 14 and list(vp.pooling_size) == [3, 3]
    assert vp.num_frames == 64 and vp.max_fps == 2
    # Unset, these let raw 0..255 values reach the model without any error.
    assert vp.do_rescale is True and vp.do_normalize is True and vp.do_convert_rgb is True
    ip = loaded[0].image_processor
    assert list(ip.overlap_margins) == [image_overlap_margin(FRAME_SIZE)] * 2


def test_tokenizer_round_trips_point_grammar(loaded: tuple[Any, Any]) -> None:
    tok = loaded[0].tokenizer
    text = 'There are 2. <points coords="8.5 1 255 301 2 610 288">penguins</points>'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # merges were learnt
    for token in EXTRA_TOKENS:
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1


# -- prompts -----------------------------------------------------------------------------------------


def test_chat_prompt_puts_video_first(loaded: tuple[Any, Any]) -> None:
    processor = loaded[0]
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    direct = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = "<|video|><|im_start|>user\nWhat happens?<|im_end|>\n<|im_start|>assistant\n"
    assert direct == expected
    assert chat_prompt(processor, "What happens?") == expected
    # Every question about the same clip shares the text up to and including the video.
    a, b = chat_prompt(processor, "Count the cars."), chat_prompt(processor, "Where is the cat?")
    assert a.split("Count")[0] == b.split("Where")[0]


def test_visual_tokens_per_frame_formula() -> None:
    assert visual_tokens_per_frame(112) == 9  # 8 patches a side, pooled 3x3 with ceil: 3 x 3
    assert visual_tokens_per_frame(378) == 81  # Molmo2-8B's real geometry: 27 -> 9 x 9
    assert visual_tokens_per_frame(14 * 10) == 16
    with pytest.raises(ValueError):
        visual_tokens_per_frame(100)


def test_video_tokens_and_timestamps(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    frames = make_video(0, num_frames=4)
    inputs = encode(processor, [frames], ["What happens?"])
    ids = inputs["input_ids"][0]
    per_frame = (FRAME_SIZE // 14 + 2) // 3  # ceil(patches / 3) a side
    assert visual_tokens_per_frame(FRAME_SIZE) == per_frame**2 == 9
    assert int((ids == model.config.image_patch_id).sum()) == len(frames) * per_frame**2
    assert int((ids == model.config.frame_start_token_id).sum()) == len(frames)
    assert inputs["video_grids"].tolist() == [[len(frames), per_frame, per_frame]]
    text = processor.tokenizer.decode(ids)
    assert text.startswith(processor.tokenizer.bos_token)  # the processor prepends bos to every prompt
    for t in ("0.0", "0.5", "1.0", "1.5"):
        assert f"{t} <frame_start>" in text
    assert text.index("<frame_end>") < text.index("What happens?")  # video before the question
    # Frames reach the model normalised to [-1, 1], not as raw 0..255.
    pixels = inputs["pixel_values_videos"]
    assert float(pixels.min()) >= -1.0001 and float(pixels.max()) <= 1.0001
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
    assert out.shape[1] > ids.shape[0]


def test_outputs_depend_on_video(loaded: tuple[Any, Any]) -> None:
    question = "What happens in the video?"
    outs = [generate(loaded, [make_video(k)], [question])[1][0] for k in range(3)]
    assert len({tuple(o) for o in outs}) == 3, outs
    for o in outs:  # meaningless but printable text: no control bytes, no lone UTF-8 bytes
        text = loaded[0].decode(o, skip_special_tokens=True)
        assert text and "\ufffd" not in text and text.replace("\n", "").isprintable(), repr(text)


def test_outputs_depend_on_question(loaded: tuple[Any, Any]) -> None:
    video = make_video(0)
    questions = ["What happens in the video?", "How many people are there?", "Point to the cars."]
    outs = [generate(loaded, [video], [q])[1][0] for q in questions]
    assert len({tuple(o) for o in outs}) == 3, outs


def test_batch_with_left_padding_matches_single_runs(loaded: tuple[Any, Any]) -> None:
    videos = [make_video(0), make_video(1, num_frames=3)]  # different lengths: real left padding
    questions = ["Describe this video in detail, please.", "Count."]
    inputs, batched = generate(loaded, videos, questions)
    assert int(inputs["attention_mask"][1].sum()) < inputs["attention_mask"].shape[1]  # row 1 is padded
    assert int(inputs["attention_mask"][1, 0]) == 0  # on the left
    singles = [generate(loaded, [v], [q])[1][0] for v, q in zip(videos, questions, strict=True)]
    assert batched == singles
    assert singles[0] != singles[1]


# -- determinism, options, command line ---------------------------------------------------------------


def test_deterministic_given_seed(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_molmo2(tmp_path / "same", frame_size=FRAME_SIZE, seed=0)
    other = build_tiny_molmo2(tmp_path / "other", frame_size=FRAME_SIZE, seed=1)
    weights = (tiny_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    for name in ("tokenizer.json", "config.json", "processor_config.json", METADATA_FILE):
        assert (again / name).read_text() == (tiny_dir / name).read_text(), name


def test_overwrite_rules(tmp_path: Path) -> None:
    out = build_tiny_molmo2(tmp_path / "m", seed=0)
    with pytest.raises(FileExistsError):
        build_tiny_molmo2(out, seed=0)
    assert build_tiny_molmo2(out, seed=2, overwrite=True) == out
    assert json.loads((out / METADATA_FILE).read_text())["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging directory left behind
    assert (out / "config.json").stat().st_mode & 0o005  # readable by others, like any model directory
    stranger = tmp_path / "not-a-model"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_molmo2(stranger, overwrite=True)
    assert (stranger / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError):
        build_tiny_molmo2(tmp_path / "bad", frame_size=100)
    empty = tmp_path / "empty"  # e.g. tmp_path_factory.mktemp(): an existing empty directory is fine
    empty.mkdir()
    assert (build_tiny_molmo2(empty) / "config.json").is_file()


def test_real_geometry_378(tmp_path: Path) -> None:
    out = build_tiny_molmo2(tmp_path / "m378", frame_size=378, seed=0)
    processor = transformers.AutoProcessor.from_pretrained(out)
    model = transformers.AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    frames = make_video(2, num_frames=2)
    inputs = encode(processor, [frames], ["What happens?"])
    assert int((inputs["input_ids"][0] == model.config.image_patch_id).sum()) == 2 * 81
    assert model.config.vision_config.image_size == [378, 378]
    with torch.no_grad():
        out_ids = model.generate(**inputs, do_sample=False, max_new_tokens=4)
    assert out_ids.shape[1] > inputs["input_ids"].shape[1]


def test_main_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "cli"), "--seed", "3"]) == 0
    assert json.loads((tmp_path / "cli" / METADATA_FILE).read_text())["seed"] == 3
    assert main(["--out", str(tmp_path / "cli")]) == 2  # exists, no --overwrite
    assert main(["--out", str(tmp_path / "cli"), "--overwrite", "--frame-size", "126"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for option in ("--out", "--frame-size", "--seed", "--overwrite"):
        assert option in help_text


def test_module_does_not_import_ray_or_torch_at_import() -> None:
    code = (
        "import sys, pipeline.devtools.tiny_model as m; "
        "assert 'ray' not in sys.modules, 'ray'; assert 'torch' not in sys.modules, 'torch'; "
        "assert callable(m.build_tiny_molmo2) and callable(m.main)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
