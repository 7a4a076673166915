"""Build a tiny, randomly initialised Molmo2 checkpoint that runs the real code path offline on a CPU.

The checkpoint uses the real `transformers` Molmo2 classes (`Molmo2ForConditionalGeneration`,
`Molmo2Processor`, `Molmo2VideoProcessor`, `Molmo2ImageProcessor`) with a tiny configuration (text hidden 64,
2 layers; vision hidden 32, 2 layers; about 1 MB of float32 weights) and a byte-level BPE tokenizer trained
here, offline, on a few embedded English paragraphs. It loads through the unchanged production path::

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)

Its answers are meaningless, but deterministic for a given seed and dependent on both the video and the
question (needed by tests of batching and of prefix-cache reuse).

Building a prompt for one video and one question (see `chat_prompt`)::

    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    # -> "<|video|><|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n"

As in the real Molmo2 template, media come first, before the first user turn, so every question about the same
clip shares the same visual prefix. The processor then prepends the tokenizer's bos token (`<|im_end|>`, as in
the real checkpoints) and expands `<|video|>` into per-frame `"{t:.1f} <frame_start><im_patch>...<frame_end>"`
blocks. Frames already sampled are passed with `do_sample_frames=False` and true `video_metadata`::

    inputs = processor(
        text=[prompt],
        videos=[frames],                       # uint8 numpy array (T, H, W, 3)
        video_metadata=[{"fps": fps, "duration": duration, "width": w, "height": h,
                         "total_num_frames": n_source_frames, "frames_indices": indices}],
        do_sample_frames=False,
        padding=True,                           # with processor.tokenizer.padding_side = "left" for batches
        return_tensors="pt",
    )
    out = model.generate(**inputs, do_sample=False, max_new_tokens=16)
    answer = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

Run as ``python -m pipeline.devtools.tiny_model --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.model.molmo2 import (
    CONTEXT_TOKENS,
    DEFAULT_GEOMETRY,
    FRAME_SIZE,
    PATCH_SIZE,
    VIDEO_POOLING,
    Molmo2Geometry,
)

logger = logging.getLogger(__name__)


IMAGE_POOLING = (2, 2)


NUM_FRAMES = 64


MAX_FPS = 2


MAX_POSITION_EMBEDDINGS = CONTEXT_TOKENS  # the real Molmo2 value: 64 frames at 378 px (~5,200 tokens) fit easily


METADATA_FILE = "molmo_batch_tiny.json"


# Molmo2's extra tokens, in this order, directly after the base vocabulary (= the output layer's rows).
EXTRA_TOKENS = (
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<low_res_im_start>",
    "<|image|>",
    "<im_low>",
    "<frame_start>",
    "<frame_end>",
    "<|video|>",
)


# Base special tokens (inside the output layer's rows), spelled as in Qwen3 / the Molmo2 checkpoints.
PAD_TOKEN = "<|endoftext|>"


IM_START = "<|im_start|>"


IM_END = "<|im_end|>"


BASE_SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)


BOS_TOKEN = IM_END  # as in allenai/Molmo2-*: bos == eos == <|im_end|>, pad == <|endoftext|>


EOS_TOKEN = IM_END


TEXT_HIDDEN = 64


TEXT_LAYERS = 2


VISION_HIDDEN = 32


VISION_LAYERS = 2


TEXT_INIT_STD = 0.1


VISION_INIT_STD = 0.05


VIDEO_FEATURE_NORM = 1.0  # mean L2 norm of one visual token's feature after the adapter


# Language q/k RMSNorm weights: sharp attention, so that a short question is not drowned by the video.
QK_NORM_SCALE = 3.0


BPE_VOCAB_SIZE = 1024


# A simplified version of the Molmo2 chat template: images / videos first (before the first turn), then
# ChatML turns; text parts of one message are joined with a space; roles must alternate user/assistant.
CHAT_TEMPLATE = (
    "{%- set media = namespace(images=0, videos=0) -%}"
    "{%- for message in messages -%}{%- if message['content'] is not string -%}"
    "{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'image' or 'image' in c or 'image_url' in c -%}"
    "{%- set media.images = media.images + 1 -%}"
    "{%- elif c['type'] == 'video' or 'video' in c or 'video_url' in c -%}"
    "{%- set media.videos = media.videos + 1 -%}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{%- if media.images == 1 -%}{{ '<|image|>' }}"
    "{%- elif media.images > 1 -%}{%- for i in range(media.images) -%}{{ 'Image ' ~ (i + 1) ~ '<|image|>' }}"
    "{%- endfor -%}{%- endif -%}"
    "{%- for _ in range(media.videos) -%}{{ '<|video|>' }}{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- set role = message['role'].lower() -%}"
    "{%- if (loop.index0 % 2 == 0 and role != 'user') or (loop.index0 % 2 == 1 and role != 'assistant') -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set m = namespace(text='') -%}"
    "{%- for c in message['content'] -%}{%- if c['type'] == 'text' -%}"
    "{%- set m.text = m.text ~ ('' if not m.text else ' ') ~ c['text'] -%}"
    "{%- endif -%}{%- endfor -%}{%- set text = m.text -%}{%- endif -%}"
    "{{ '<|im_start|>' ~ role ~ '\\n' ~ text ~ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


# Training text of the tokenizer: plain English, digits, and Molmo2's point/track grammar.
_CORPUS = [
    "Describe this video in detail. What happens in the video? Count the objects and point to each one.",
    "A person walks across the room, picks up a red cup from the table and puts it in the sink.",
    "The camera pans slowly to the left. Two dogs run along the beach while the waves roll in.",
    "How many people are there? There are three people: a man, a woman and a child near the door.",
    "Point to the cars. Track the ball. Where is the cat at the end of the clip? It is under the chair.",
    "The quick brown fox jumps over the lazy dog. A bright blue square moves from left to right.",
    "Summarize the scene in one sentence. The sky is cloudy, the street is wet and a bus stops.",
    "Answer with a number. Answer yes or no. Is the light on? Yes, the light is on in the kitchen.",
    "First, then, after that, finally. Before and after. Above, below, inside, outside, near, far.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 15 20 25 30 42 64 100 128 255 301 378 500 610 720 999 1000",
    "0.0 0.5 1.0 1.5 2.0 2.5 3.0 4.5 8.5 10.0 12.5 30.0 60.0 seconds, frames, fps, width, height",
    '<points coords="8.5 1 255 301">x</points>',
    '<points coords="8.5 1 255 301 2 610 288">penguins</points>',
    '<points coords="0.0 1 120 450;0.5 1 130 440;1.0 1 140 430">person</points>',
    '<tracks coords="0.0 1 730 615 2 120 400;0.5 1 720 600 2 130 410;1.0 1 710 590">cat</tracks>',
    "Counting by pointing: the count is the number of distinct objects pointed to, each with a time.",
    "There is nothing to point to in this video. None of the objects are visible in these frames.",
]


def _corpus() -> list[str]:
    lines = list(_CORPUS)
    lines += [" ".join(str(i) for i in range(k, k + 40)) for k in range(0, 1001, 40)]
    lines += [f"{t / 2:.1f} " for t in range(0, 241)]
    return lines * 3


def _check_frame_size(frame_size: int) -> None:
    if frame_size < PATCH_SIZE or frame_size % PATCH_SIZE:
        raise ValueError(f"frame_size must be a positive multiple of {PATCH_SIZE}, got {frame_size}")


def visual_tokens_per_frame(frame_size: int) -> int:
    """Visual (`<im_patch>`) tokens per video frame of this checkpoint (Molmo2's patches and pooling)."""
    _check_frame_size(frame_size)
    return Molmo2Geometry(frame_size=frame_size).tokens_per_frame


def image_overlap_margin(frame_size: int) -> int:
    """Overlap margin (patches, each side) of the image tiling: 4 at 378 px (27 patches), scaled down for
    smaller crops so that a crop keeps at least one patch of window (else tiling divides by zero)."""
    patches = frame_size // PATCH_SIZE
    margin = round(4 * patches / DEFAULT_GEOMETRY.patches_per_side)
    return max(0, min(margin, (patches - 1) // 2))


# Qwen2/Qwen3 pre-tokenizer: every digit is its own pre-token (as in the real Molmo2 tokenizer).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tokenizer(
    corpus: list[str] | None = None,
    *,
    vocab_size: int = BPE_VOCAB_SIZE,
    split_digits: bool = False,
    model_max_length: int = MAX_POSITION_EMBEDDINGS,
) -> Any:
    """A small byte-level BPE tokenizer trained offline on `corpus` (default: this module's), wrapped as a
    transformers fast tokenizer with Molmo2's special tokens and chat template. `split_digits`: Qwen's
    pre-tokenizer, every digit its own pre-token (the toy model's, pipeline.devtools.toy_build)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(BASE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() if corpus is None else corpus, trainer=trainer)
    base_vocab = tok.get_vocab_size()
    tok.add_special_tokens(list(EXTRA_TOKENS))
    for k, token in enumerate(EXTRA_TOKENS):
        if tok.token_to_id(token) != base_vocab + k:
            raise RuntimeError(f"extra token {token} did not land at id {base_vocab + k}")

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_config(frame_size: int, base_vocab: int, token_ids: dict[str, int]) -> Any:
    from transformers import Molmo2Config

    head_dim = 16
    return Molmo2Config(
        text_config={
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 2 * TEXT_HIDDEN,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": TEXT_HIDDEN // head_dim,
            "num_key_value_heads": TEXT_HIDDEN // head_dim // 2,
            "head_dim": head_dim,
            "vocab_size": base_vocab,
            "additional_vocab_size": len(EXTRA_TOKENS),
            "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "qk_norm_type": "qwen3",
            "initializer_range": TEXT_INIT_STD,
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": VISION_HIDDEN,
            "intermediate_size": 2 * VISION_HIDDEN,
            "num_hidden_layers": VISION_LAYERS,
            "num_attention_heads": VISION_HIDDEN // head_dim,
            "num_key_value_heads": VISION_HIDDEN // head_dim,
            "head_dim": head_dim,
            "image_size": [frame_size, frame_size],
            "patch_size": PATCH_SIZE,
            "initializer_range": VISION_INIT_STD,
        },
        adapter_config={
            # the real model reads ViT layers [24, 18] (counted from 0): here the last and the first layer
            "vision_feature_layer": [VISION_LAYERS - 1, 0],
            "hidden_size": VISION_HIDDEN,
            "num_attention_heads": VISION_HIDDEN // head_dim,
            "num_key_value_heads": VISION_HIDDEN // head_dim,
            "head_dim": head_dim,
            "intermediate_size": 2 * TEXT_HIDDEN,
            "text_hidden_size": TEXT_HIDDEN,
            "initializer_range": TEXT_INIT_STD,
        },
        image_start_token_id=token_ids["<im_start>"],
        low_res_image_start_token_id=token_ids["<low_res_im_start>"],
        image_end_token_id=token_ids["<im_end>"],
        image_patch_id=token_ids["<im_patch>"],
        frame_start_token_id=token_ids["<frame_start>"],
        frame_end_token_id=token_ids["<frame_end>"],
        tie_word_embeddings=False,
    )


def _calibration_video(frame_size: int, num_frames: int = 4) -> Any:
    """A fixed synthetic clip (gradients plus a moving square) used to scale the adapter output."""
    import numpy as np

    yy, xx = np.mgrid[0:frame_size, 0:frame_size].astype(np.float32) / max(frame_size - 1, 1)
    frames = []
    for t in range(num_frames):
        r = 255 * xx
        g = 255 * yy
        b = np.full_like(xx, 40.0 * t)
        frame = np.stack([r, g, b], axis=-1)
        s = frame_size // 4
        x0 = (t * frame_size // (num_frames + 1)) % (frame_size - s)
        frame[s : 2 * s, x0 : x0 + s] = 255.0
        frames.append(frame)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _printable(text: str) -> bool:
    return bool(text) and all(ch == "\n" or (ch.isprintable() and ch != "\ufffd") for ch in text)


def _init_weights(model: Any, processor: Any, frame_size: int, seed: int) -> None:
    """Deterministic init that makes greedy outputs depend on both the video and the question."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith(".bias"):
                param.zero_()
            elif name.startswith("model.language_model.") and (".q_norm." in name or ".k_norm." in name):
                # Hundreds of near-alike visual tokens would otherwise soak up the attention of the last
                # position and the answer would ignore the question (seen at 378 px).
                param.fill_(QK_NORM_SCALE)
            elif "norm" in name:  # RMSNorm / LayerNorm weights
                param.fill_(1.0)
            elif name.startswith("model.vision_tower."):
                std = 0.02 if name.endswith("positional_embedding") else VISION_INIT_STD
                param.copy_(torch.randn(param.shape, generator=gen) * std)
            else:  # language model, lm_head, adapter
                param.copy_(torch.randn(param.shape, generator=gen) * TEXT_INIT_STD)

        # Zero the output rows of tokens a real model would not print (control bytes, lone UTF-8 bytes,
        # pad, <|im_start|>): their logit is then exactly 0, below the best of ~1000 random logits, so
        # greedy answers are printable text (raw ESC bytes in an answer can garble a terminal).
        tok = processor.tokenizer
        base_vocab = model.config.text_config.vocab_size
        unprintable = [i for i in range(base_vocab) if not _printable(tok.decode([i]))]
        unprintable += [tok.convert_tokens_to_ids(PAD_TOKEN), tok.convert_tokens_to_ids(IM_START)]
        model.lm_head.weight[sorted(set(unprintable))] = 0.0

        # Scale the adapter's last projection so that a visual token's feature has norm ~1, comparable to a
        # token embedding (std 0.1 x sqrt(64) ~ 0.8): video does not swamp the text, nor vanish.
        clip = _calibration_video(frame_size)
        feats = processor.video_processor(
            videos=[clip],
            video_metadata=[
                {
                    "fps": 2.0,
                    "duration": len(clip) / 2.0,
                    "width": frame_size,
                    "height": frame_size,
                    "total_num_frames": len(clip),
                    "frames_indices": list(range(len(clip))),
                }
            ],
            do_sample_frames=False,
            return_tensors="pt",
        )
        model.eval()
        pooled = model.get_video_features(
            feats["pixel_values_videos"], feats["video_token_pooling"], feats["video_grids"]
        ).pooler_output
        norm = torch.cat(list(pooled), dim=0).norm(dim=-1).mean().item()
        if norm > 0:
            proj = model.model.multi_modal_projector.image_projector.down_proj.weight
            proj.mul_(VIDEO_FEATURE_NORM / norm)


def build_processor(
    tokenizer: Any,
    frame_size: int,
    *,
    num_frames: int = NUM_FRAMES,
    max_fps: float = MAX_FPS,
    video_pooling: tuple[int, int] = VIDEO_POOLING,
) -> Any:
    """Molmo2's processor (image, video, tokenizer, chat template) for square `frame_size` frames; the video
    processor declares `num_frames` at most `max_fps` per second (what the pipeline reads as its defaults)
    and pools `video_pooling` patches into one token."""
    from transformers import Molmo2ImageProcessor, Molmo2Processor, Molmo2VideoProcessor
    from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, PILImageResampling

    size = {"height": frame_size, "width": frame_size}
    norm: dict[str, Any] = {
        "do_resize": True,
        "resample": PILImageResampling.BILINEAR,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_STANDARD_MEAN),
        "image_std": list(IMAGENET_STANDARD_STD),
        "do_convert_rgb": True,
    }
    margin = image_overlap_margin(frame_size)
    image_processor = Molmo2ImageProcessor(
        size=size,
        patch_size=PATCH_SIZE,
        pooling_size=list(IMAGE_POOLING),
        max_crops=8,
        overlap_margins=[margin, margin],
        **norm,
    )
    video_processor = Molmo2VideoProcessor(
        size=size,
        patch_size=PATCH_SIZE,
        pooling_size=list(video_pooling),
        num_frames=num_frames,
        max_fps=max_fps,
        do_sample_frames=True,
        **norm,
    )
    return Molmo2Processor(
        image_processor=image_processor,
        video_processor=video_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def chat_prompt(processor: Any, question: str) -> str:
    """The prompt text for one video and one question (media first, then the user turn, then the assistant
    header). Pass it with the frames to `processor(text=..., videos=...)`, which adds bos and expands the
    video token."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite)")
        looks_like_checkpoint = out_dir.is_dir() and (
            (out_dir / METADATA_FILE).exists() or (out_dir / "config.json").exists()
        )
        if not looks_like_checkpoint:
            raise FileExistsError(
                f"refusing to overwrite {out_dir}: it does not hold a tiny Molmo2 checkpoint"
            )


def build_tiny_molmo2(
    out_dir: str | Path, *, frame_size: int = 112, seed: int = 0, overwrite: bool = False
) -> Path:
    """Build a tiny randomly initialised Molmo2 checkpoint (real transformers Molmo2 classes) + processor +
    locally built tokenizer into out_dir.

    `frame_size` is the square frame side in pixels, a multiple of 14 (378 = the real geometry, 81 visual
    tokens a frame; 112 = fast, 9 tokens a frame). Weights are deterministic given `seed`. An existing
    non-empty `out_dir` raises `FileExistsError` unless `overwrite` (only a previous checkpoint is replaced).
    Returns the checkpoint directory.
    """
    _check_frame_size(frame_size)
    out = Path(out_dir).expanduser().resolve()
    _prepare_out_dir(out, overwrite)

    import torch
    from transformers import GenerationConfig, Molmo2ForConditionalGeneration

    started = time.monotonic()
    tokenizer = build_tokenizer()
    base_vocab = len(tokenizer) - len(EXTRA_TOKENS)
    token_ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in EXTRA_TOKENS}
    special = {
        "bos": int(tokenizer.convert_tokens_to_ids(BOS_TOKEN)),
        "eos": int(tokenizer.convert_tokens_to_ids(EOS_TOKEN)),
        "pad": int(tokenizer.convert_tokens_to_ids(PAD_TOKEN)),
    }
    if max(special.values()) >= base_vocab:
        raise RuntimeError("bos/eos/pad must lie inside the output layer's rows")
    processor = build_processor(tokenizer, frame_size)
    config = _build_config(frame_size, base_vocab, token_ids)

    torch.manual_seed(seed)
    model = Molmo2ForConditionalGeneration(config)
    _init_weights(model, processor, frame_size, seed)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"]
    )
    num_params = sum(p.numel() for p in model.parameters())

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it 0700; the checkpoint should be readable like any model dir
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        meta = {
            "kind": "molmo-batch tiny Molmo2",
            "note": "random weights: a test double of Molmo2, its text is meaningless",
            "frame_size": frame_size,
            "seed": seed,
            "parameters": num_params,
            "visual_tokens_per_frame": visual_tokens_per_frame(frame_size),
            "patch_size": PATCH_SIZE,
            "video_pooling": list(VIDEO_POOLING),
            "num_frames": NUM_FRAMES,
            "max_fps": MAX_FPS,
            "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
            "vocab_size": base_vocab,
            "extra_tokens": {t: token_ids[t] for t in EXTRA_TOKENS},
            "text": {"hidden_size": TEXT_HIDDEN, "num_hidden_layers": TEXT_LAYERS},
            "vision": {"hidden_size": VISION_HIDDEN, "num_hidden_layers": VISION_LAYERS},
        }
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for file in staging.iterdir():
            file.chmod(0o644)  # save_pretrained writes the weights 0600
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("tiny Molmo2 built in %.2f s: %s", time.monotonic() - started, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.devtools.tiny_model",
        description="Build a tiny randomly initialised Molmo2 (real transformers classes, offline tokenizer) "
        "for offline runs and tests. Its answers are meaningless.",
    )
    parser.add_argument("--out", required=True, help="Directory to write the checkpoint into.")
    parser.add_argument(
        "--frame-size",
        type=int,
        default=112,
        help=f"Square frame side in pixels, a multiple of {PATCH_SIZE} ({FRAME_SIZE} = real geometry, "
        f"{DEFAULT_GEOMETRY.tokens_per_frame} tokens a frame).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed of the weights.")
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace an existing tiny checkpoint in --out."
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        path = build_tiny_molmo2(
            args.out, frame_size=args.frame_size, seed=args.seed, overwrite=args.overwrite
        )
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads((path / METADATA_FILE).read_text())
    print(
        f"tiny Molmo2 written to {path} ({meta['parameters']:,} parameters, frame {meta['frame_size']} px, "
        f"{meta['visual_tokens_per_frame']} visual tokens a frame, {time.monotonic() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
