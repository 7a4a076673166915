"""Build the initial (untrained) toy Molmo2 checkpoint: real transformers Molmo2 classes, processor and
chat template, a small offline byte-level BPE with Qwen-style digit splitting, and a small declared geometry.

Built with the random tiny model's pieces (pipeline/devtools/tiny_model.py: special tokens, chat template,
tokenizer and processor builders), with its own tokenizer text, geometry and initialisation for training
(see toy/NOTES.md for why each choice).

Geometry declared by the checkpoint (read it from the processor / config, do not assume 378 px):
    video_processor.size = 252 x 252, patch_size 14, pooling_size [2, 2] -> 9 x 9 = 81 tokens a frame
    video_processor.num_frames = 8, max_fps = 2 (a window of <= 8 frames at <= 2 fps)
    config.vision_config.image_size = [252, 252]

    python -m pipeline.devtools.toy_build --out RUN/init [--text-hidden 256 --text-layers 4]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.devtools.tiny_model import (
    BOS_TOKEN,
    EOS_TOKEN,
    EXTRA_TOKENS,
    PAD_TOKEN,
    PATCH_SIZE,
)
from pipeline.devtools.tiny_model import build_processor as build_molmo2_processor
from pipeline.devtools.tiny_model import build_tokenizer as build_molmo2_tokenizer

FRAME_SIZE = 252
VIDEO_POOLING = (2, 2)
NUM_FRAMES = 8
MAX_FPS = 2
MAX_POSITION_EMBEDDINGS = 4096
METADATA_FILE = "molmo_toy.json"

BPE_VOCAB_SIZE = 624
QK_NORM_SCALE = 1.5

_CORPUS = [
    "Describe this video in detail. What happens in the video? Count the objects and point to each one.",
    "A person walks across the room, picks up a red cup from the table and puts it in the sink.",
    "The camera pans slowly to the left. Two dogs run along the beach while the waves roll in.",
    "How many people are there? There are three people: a man, a woman and a child near the door.",
    "Point to the person. Track the person. Point to the cars. Track the ball.",
    "The quick brown fox jumps over the lazy dog. A bright blue square moves from left to right.",
    "Answer with a number. Answer yes or no. Is the light on? Yes, the light is on in the kitchen.",
    "There is nothing to point to in this video. None of the objects are visible in these frames.",
    "<|im_start|>user\n",
    "<|im_start|>assistant\n",
]


def corpus() -> list[str]:
    """Tokenizer training text: plain English plus many toy-world answers (points, tracks, captions)."""
    from pipeline.devtools import toyworld as tw

    lines = list(_CORPUS) * 5
    rng = np.random.default_rng(12345)
    for k in range(300):
        world = tw.make_world(
            10_000_000 + k, duration=float(rng.uniform(0.5, 4.5)), check_times=np.arange(0, 4.5, 0.5)
        )
        times = np.arange(0, min(world.duration, 4.0), 0.5)
        ans = tw.answers(world, times)
        lines += list(ans.values())
    lines += list(tw.QUESTIONS.values()) * 20
    return lines


def build_tokenizer() -> Any:
    """The random tiny model's tokenizer (special tokens, chat template), trained on toy-world text with Qwen's
    digit splitting."""
    return build_molmo2_tokenizer(corpus(), vocab_size=BPE_VOCAB_SIZE, split_digits=True,
                                  model_max_length=MAX_POSITION_EMBEDDINGS)


def build_config(args: Any, base_vocab: int, token_ids: dict[str, int]) -> Any:
    from transformers import Molmo2Config

    th, hd = args.text_hidden, 32
    vh = args.vision_hidden
    return Molmo2Config(
        text_config={
            "hidden_size": th,
            "intermediate_size": 3 * th,
            "num_hidden_layers": args.text_layers,
            "num_attention_heads": th // hd,
            "num_key_value_heads": max(1, th // hd // 2),
            "head_dim": hd,
            "vocab_size": base_vocab,
            "additional_vocab_size": len(EXTRA_TOKENS),
            "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0},
            "qk_norm_type": "qwen3",
            "initializer_range": 0.02,
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": vh,
            "intermediate_size": 4 * vh,
            "num_hidden_layers": args.vision_layers,
            "num_attention_heads": vh // hd,
            "num_key_value_heads": vh // hd,
            "head_dim": hd,
            "image_size": [FRAME_SIZE, FRAME_SIZE],
            "patch_size": PATCH_SIZE,
            "initializer_range": 0.02,
        },
        adapter_config={
            "vision_feature_layer": [args.vision_layers - 1, 0],
            "hidden_size": vh,
            "num_attention_heads": vh // hd,
            "num_key_value_heads": vh // hd,
            "head_dim": hd,
            "intermediate_size": 2 * th,
            "text_hidden_size": th,
            "initializer_range": 0.02,
        },
        image_start_token_id=token_ids["<im_start>"],
        low_res_image_start_token_id=token_ids["<low_res_im_start>"],
        image_end_token_id=token_ids["<im_end>"],
        image_patch_id=token_ids["<im_patch>"],
        frame_start_token_id=token_ids["<frame_start>"],
        frame_end_token_id=token_ids["<frame_end>"],
        tie_word_embeddings=False,
    )


def build_processor(tokenizer: Any) -> Any:
    return build_molmo2_processor(tokenizer, FRAME_SIZE, num_frames=NUM_FRAMES, max_fps=MAX_FPS,
                                  video_pooling=VIDEO_POOLING)


def sincos_2d(n_side: int, dim: int, temperature: float = 100.0) -> np.ndarray:
    """2-D sine/cosine position table (n_side^2, dim), row-major patches; first half of the dims encode y,
    the second half x."""
    if dim % 4:
        raise ValueError(f"a 2-D sin/cos table needs a dimension divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / temperature ** (np.arange(q) / max(q - 1, 1))
    ys, xs = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    out = []
    for pos in (ys.reshape(-1), xs.reshape(-1)):
        arg = pos[:, None] * omega[None, :]
        out += [np.sin(arg), np.cos(arg)]
    return np.concatenate(out, axis=1).astype(np.float32)


def calibration_video(num_frames: int = 4) -> np.ndarray:
    from pipeline.devtools import toyworld as tw

    world = tw.make_world(424242, width=640, height=480, fps=10, duration=2.0, n_start=3, arrival_rate=0.0)
    return tw.render_model_frames(world, np.arange(num_frames) * 0.5, FRAME_SIZE)


def init_weights(model: Any, processor: Any, seed: int, visual_norm: float = 1.0) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    vt = model.model.vision_tower
    n_side = FRAME_SIZE // PATCH_SIZE
    with torch.no_grad():
        table = torch.from_numpy(sincos_2d(n_side, vt.positional_embedding.shape[1]))
        vt.positional_embedding.copy_(table)
        # patch embedding: unit-ish output std for normalised pixels
        pe = vt.patch_embedding
        pe.weight.copy_(torch.randn(pe.weight.shape, generator=gen) / math.sqrt(pe.weight.shape[1]))
        pe.bias.zero_()
        adapter = model.model.multi_modal_projector
        for mod in adapter.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) / math.sqrt(mod.weight.shape[1]))
                if mod.bias is not None:
                    mod.bias.zero_()
        # sharper language-model attention at the start (q/k RMSNorm weights 3, as the project's tiny model):
        # with flat attention, the ~100 near-alike visual tokens are averaged and a disc's token is lost
        for name, prm in model.named_parameters():
            if "language_model" in name and (".q_norm." in name or ".k_norm." in name):
                prm.fill_(QK_NORM_SCALE)
        clip = calibration_video()
        feats = processor.video_processor(
            videos=[clip],
            video_metadata=[{"fps": 2.0, "duration": len(clip) / 2.0, "width": FRAME_SIZE, "height": FRAME_SIZE,
                             "total_num_frames": len(clip), "frames_indices": list(range(len(clip)))}],
            do_sample_frames=False, return_tensors="pt",
        )
        model.eval()
        pooled = model.get_video_features(
            feats["pixel_values_videos"], feats["video_token_pooling"], feats["video_grids"]
        ).pooler_output
        norm = torch.cat(list(pooled), dim=0).norm(dim=-1).mean().item()
        adapter.image_projector.down_proj.weight.mul_(visual_norm / norm)


def build(args: Any) -> Path:
    import torch
    from transformers import GenerationConfig, Molmo2ForConditionalGeneration

    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    t0 = time.monotonic()
    tokenizer = build_tokenizer()
    base_vocab = len(tokenizer) - len(EXTRA_TOKENS)
    token_ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in EXTRA_TOKENS}
    special = {k: int(tokenizer.convert_tokens_to_ids(v)) for k, v in
               (("bos", BOS_TOKEN), ("eos", EOS_TOKEN), ("pad", PAD_TOKEN))}
    if max(special.values()) >= base_vocab:
        raise RuntimeError(f"special tokens {special} must be in the base vocabulary ({base_vocab})")
    processor = build_processor(tokenizer)
    config = build_config(args, base_vocab, token_ids)
    torch.manual_seed(args.seed)
    model = Molmo2ForConditionalGeneration(config)
    init_weights(model, processor, args.seed)
    model.generation_config = GenerationConfig(
        bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"]
    )
    n_params = sum(p.numel() for p in model.parameters())
    if out.exists():
        if not args.overwrite:
            raise SystemExit(f"{out} exists (pass --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    meta = {
        "kind": "molmo-batch toy Molmo2 (trained on the toy world of pipeline/devtools/toyworld.py)",
        "frame_size": FRAME_SIZE,
        "patch_size": PATCH_SIZE,
        "video_pooling": list(VIDEO_POOLING),
        "visual_tokens_per_frame": (FRAME_SIZE // PATCH_SIZE // VIDEO_POOLING[0]) ** 2,
        "num_frames": NUM_FRAMES,
        "max_fps": MAX_FPS,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "parameters": n_params,
        "vocab_size": base_vocab,
        "text": {"hidden_size": args.text_hidden, "num_hidden_layers": args.text_layers},
        "vision": {"hidden_size": args.vision_hidden, "num_hidden_layers": args.vision_layers},
        "vision_position_table": "2-D sin/cos (temperature 100), frozen in training",
        "seed": args.seed,
    }
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"built {out}: {n_params:,} parameters, base vocab {base_vocab}, {time.monotonic() - t0:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--text-hidden", type=int, default=256)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--vision-hidden", type=int, default=96)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    build(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
