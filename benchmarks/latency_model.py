"""A latency model of Molmo2-8B on one H100 (SIMULATION: nothing here ran on a GPU).

Prefill time comes from FLOPs at a stated utilisation of the H100's dense bf16 peak; each decoding step
reads every weight used per token once plus each row's KV cache, at a stated fraction of HBM bandwidth.
Every constant is written out below and derived in docs/benchmarks.md ("The latency model").

Molmo2-8B (allenai/Molmo2-8B config): a Qwen3-8B language model (36 layers, hidden 4096, 32 query /
8 KV heads of 128, MLP 12288, vocabulary 151,936 + 128 extra, lm_head not tied), a SigLIP-2 so400m/14
vision transformer (27 layers, hidden 1152, MLP 4304; features read from layers -3 and -9, so 25 layers
run), and an adapter (attention pooling of 3x3 patches, SwiGLU MLP 1152 -> 12288 -> 4096).
A 378 px frame is 27x27 = 729 patches, pooled to 9x9 = 81 visual tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.model import molmo2

# -- Molmo2-8B ----------------------------------------------------------------------------------------
LM_LAYERS = 36
LM_HIDDEN = 4096
LM_HEADS, LM_KV_HEADS, HEAD_DIM = 32, 8, 128
LM_MLP = 12288
VOCAB = 151_936
# Per layer: q and o (4096x4096 each), k and v (4096x1024 each), SwiGLU MLP (3 x 4096x12288).
LM_LAYER_PARAMS = 2 * LM_HIDDEN * LM_HEADS * HEAD_DIM + 2 * LM_HIDDEN * LM_KV_HEADS * HEAD_DIM + 3 * LM_HIDDEN * LM_MLP
LM_BLOCK_PARAMS = LM_LAYERS * LM_LAYER_PARAMS  # ~6.95e9
LM_HEAD_PARAMS = VOCAB * LM_HIDDEN  # ~0.62e9, read every step (logits of the last position)
VIT_LAYERS_RUN = 25
VIT_HIDDEN, VIT_MLP = 1152, 4304
VIT_LAYER_PARAMS = 4 * VIT_HIDDEN * VIT_HIDDEN + 2 * VIT_HIDDEN * VIT_MLP  # ~15.2e6
PATCHES_PER_FRAME = 27 * 27
VISUAL_TOKENS_PER_FRAME = molmo2.visual_tokens_per_frame()
# Prompt tokens a frame costs in the language model: 81 visual tokens, <frame_start>/<frame_end> and the
# frame's time label ("12.5 "): 87 measured with the processor at 378 px (5,593 tokens for 64 frames).
PROMPT_TOKENS_PER_FRAME = 87
PROMPT_TEXT_TOKENS = 20  # chat template + question, measured ~15-25
ADAPTER_PARAMS = 2 * VIT_HIDDEN * LM_MLP + LM_MLP * LM_HIDDEN + 4 * VIT_HIDDEN * VIT_HIDDEN
BYTES_PER_PARAM = 2  # bf16
KV_BYTES_PER_TOKEN = 2 * LM_LAYERS * LM_KV_HEADS * HEAD_DIM * BYTES_PER_PARAM  # K and V: 147,456 B

# -- H100 SXM (80 GB HBM3) -----------------------------------------------------------------------------
H100_BF16_DENSE_FLOPS = 989e12
H100_HBM_BYTES_PER_S = 3.35e12


@dataclass(frozen=True)
class GpuModel:
    """The stated efficiencies; change them here and every figure follows."""

    prefill_mfu: float = 0.40  # fraction of dense bf16 peak reached by prefill (HF transformers, sdpa)
    bandwidth_util: float = 0.60  # fraction of HBM bandwidth reached by a decoding step
    step_overhead_s: float = 0.0  # fixed host/launch time per decoding step (0 = ideal; see docs/benchmarks.md)

    @property
    def flops_per_s(self) -> float:
        return H100_BF16_DENSE_FLOPS * self.prefill_mfu

    @property
    def bytes_per_s(self) -> float:
        return H100_HBM_BYTES_PER_S * self.bandwidth_util


def prompt_tokens(frames: int, text_tokens: int = PROMPT_TEXT_TOKENS) -> int:
    return frames * PROMPT_TOKENS_PER_FRAME + text_tokens


def vision_flops(frames: int) -> float:
    """ViT over every frame's 729 patches (attention within a frame) plus the adapter on 81 tokens/frame."""
    n = PATCHES_PER_FRAME
    per_frame = VIT_LAYERS_RUN * (2 * VIT_LAYER_PARAMS * n + 4 * n * n * VIT_HIDDEN)
    per_frame += 2 * ADAPTER_PARAMS * VISUAL_TOKENS_PER_FRAME
    return frames * per_frame


def lm_prefill_flops(tokens: int) -> float:
    """2 FLOPs per weight per token, plus attention (QK^T and AV over the whole prompt: Molmo2's visual
    tokens attend bidirectionally, so the full square is counted)."""
    attention = LM_LAYERS * 4 * tokens * tokens * LM_HEADS * HEAD_DIM
    return 2 * LM_BLOCK_PARAMS * tokens + attention + 2 * LM_HEAD_PARAMS


def prefill_s(frames: int, gpu: GpuModel, text_tokens: int = PROMPT_TEXT_TOKENS) -> float:
    return (vision_flops(frames) + lm_prefill_flops(prompt_tokens(frames, text_tokens))) / gpu.flops_per_s


def decode_step_s(context_tokens: list[int], gpu: GpuModel) -> float:
    """One decoding step for a batch of rows: the weights once, each row's KV cache once."""
    weights = (LM_BLOCK_PARAMS + LM_HEAD_PARAMS) * BYTES_PER_PARAM
    kv = sum(context_tokens) * KV_BYTES_PER_TOKEN
    return (weights + kv) / gpu.bytes_per_s + gpu.step_overhead_s


def decode_s(context_tokens: list[int], new_tokens: int, gpu: GpuModel) -> float:
    """`new_tokens` steps; the context grows by one token per row per step (the mean is used)."""
    grown = [c + new_tokens / 2 for c in context_tokens]
    return new_tokens * decode_step_s([math.ceil(c) for c in grown], gpu)


@dataclass(frozen=True)
class Workload:
    """What one window costs: its frames, its questions, and how long each answer is."""

    name: str
    frames: int  # sampled frames per window (64 = a 60 s window at <= 2 fps, capped at 64)
    window_s: float  # window length; windows overlap by overlap_s
    overlap_s: float
    answer_tokens: tuple[int, ...]  # generated tokens per question (one entry per task)
    batch_size: int = 4  # windows per model call (the config default)
    note: str = ""
    # What the pipeline does: one question -> windows batched in one generate; several questions -> the
    # visual prefixes of the batch's windows prefilled together, each branched per question, and all
    # windows x questions decoded as one batch (Molmo2Engine.answer_shared_prefix_batch). False models the
    # earlier path (one window at a time on the shared prefix), printed for comparison.
    batch_shared_prefix_windows: bool = True
    tags: tuple[str, ...] = field(default_factory=tuple)


def window_gpu_s(w: Workload, gpu: GpuModel) -> float:
    """Modelled GPU seconds per window (averaged over a batch)."""
    k = len(w.answer_tokens)
    ctx = prompt_tokens(w.frames)
    longest = max(w.answer_tokens)
    if k == 1:
        b = w.batch_size
        total = b * prefill_s(w.frames, gpu) + decode_s([ctx] * b, longest, gpu)
        return total / b
    if w.batch_shared_prefix_windows:
        b = w.batch_size
        total = b * prefill_s(w.frames, gpu) + decode_s([ctx] * (b * k), longest, gpu)
        return total / b
    # Shared prefix: prefill once, K rows decode together (the cache is repeated per row).
    return prefill_s(w.frames, gpu) + decode_s([ctx] * k, longest, gpu)


def batch_gpu_s(frames_per_window: list[int], answer_tokens: tuple[int, ...], gpu: GpuModel) -> float:
    """Modelled GPU seconds for one call of the model host on these windows (as infer.py runs them)."""
    k = len(answer_tokens)
    longest = max(answer_tokens)
    if not frames_per_window:
        return 0.0
    if k == 1:
        pre = sum(prefill_s(f, gpu) for f in frames_per_window)
        ctx = [prompt_tokens(max(frames_per_window))] * len(frames_per_window)  # left padding to the longest
        return pre + decode_s(ctx, longest, gpu)
    # Windows of equal geometry share one batch (the usual case: full windows); prefill is per window anyway.
    pre = sum(prefill_s(f, gpu) for f in frames_per_window)
    ctx = [prompt_tokens(f) for f in frames_per_window for _ in range(k)]
    return pre + decode_s(ctx, longest, gpu)


NIGHTLY_CAPTIONING = Workload(
    name="nightly captioning",
    frames=64,
    window_s=60.0,
    overlap_s=5.0,
    answer_tokens=(200,),
    note="caption, 60 s windows (5 s overlap), 64 frames, ~200-token dense captions (max_new_tokens 256)",
)
RETAIL_COUNTING = Workload(
    name="retail counting",
    frames=64,
    window_s=60.0,
    overlap_s=5.0,
    answer_tokens=(80, 80),
    note="count:person + count:shopping cart on one shared prefix, 60 s windows, ~80 tokens of points each",
)
WORKLOADS = (NIGHTLY_CAPTIONING, RETAIL_COUNTING)

# NeMo Curator's published floor for video captioning: 0.85 captioned clips per second on 8 GPUs.
NEMO_CURATOR_CLIPS_PER_S_8GPU = 0.85
NEMO_CURATOR_CLIPS_PER_GPU_HOUR = NEMO_CURATOR_CLIPS_PER_S_8GPU * 3600 / 8
