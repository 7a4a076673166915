"""The Molmo2 engine: load the model and processor once, answer windows x questions (shared visual prefix, OOM split)."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import faults
from pipeline.errors import MolmoBatchError
from pipeline.io.secrets import redact
from pipeline.model.store import resolve_model_path
from pipeline.results.tasks import Task

log = logging.getLogger(__name__)


PASSTHROUGH = (
    "video_id",
    "uri",
    "size_bytes",
    "duration_s",
    "fps",
    "width",
    "height",
    "codec",
    "rotation",
    "num_windows",
    "source_metadata",
    "task_ids",  # the run's tasks this video still needs (indexes into HostSettings.tasks)
    "window_index",
    "t_start",
    "t_end",
    "frame_times",
    "decoder",
    "decode_status",
    "error_stage",
    "error_type",
    "error_message",
)


@dataclass(frozen=True)
class HostSettings:
    """What the model host needs from the run config (small and picklable)."""

    model: str
    tasks: tuple[Task, ...]
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    max_new_tokens: int = 256
    prefix_reuse: bool = True
    cache_dir: str | None = None
    endpoint_url: str | None = None
    # Crash handling (see Molmo2Host): how often a window whose batch killed the model process is retried
    # alone before it is written as an error row, and the driver's AttemptLedger that counts restarts.
    crash_retries: int = 1
    ledger: Any = field(default=None, compare=False)
    test_hooks: faults.Hooks = ()  # TEST-ONLY fault injection (pipeline.faults)


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    generated_tokens: int
    hit_max_new_tokens: bool
    latency_s: float
    error_type: str | None = None
    error_message: str | None = None


@dataclass
class WindowInput:
    frames: np.ndarray  # (T, S, S, 3) uint8, upright
    frame_times: np.ndarray  # absolute seconds
    t_start: float
    fps: float


def pick_device(requested: str) -> str:
    """The device this actor should use, from what Ray actually gave it.

    In a Ray worker, 'auto' is the GPU Ray assigned to the actor (`ray.get_gpu_ids()`; Ray narrows
    CUDA_VISIBLE_DEVICES to it, so it is torch's "cuda"), and the CPU when Ray assigned none or the GPU is
    only logical (a node declaring GPUs that torch cannot see: tests, mis-declared nodes). Outside Ray,
    any visible CUDA device. In a Ray worker the choice is printed once, with what Ray assigned, to the
    worker's log (which Ray forwards to the driver): one `molmo-batch placement:` line per model actor.
    """
    import torch

    gpu_ids: list[Any] = []
    try:
        import ray

        if ray.is_initialized():
            gpu_ids = list(ray.get_gpu_ids())
    except Exception:
        gpu_ids = []
    has_cuda = torch.cuda.is_available()
    in_ray = _in_ray_worker()
    if requested == "cpu":
        device = "cpu"
    elif requested == "cuda":
        if not has_cuda:
            raise RuntimeError("device=cuda but no CUDA device is visible to this actor")
        device = "cuda"
    else:  # auto: a logical GPU without a physical one still runs on the CPU
        device = "cuda" if has_cuda and (gpu_ids or not in_ray) else "cpu"
    if in_ray:
        import ray

        print(
            f"molmo-batch placement: device={device} requested={requested} "
            f"node={ray.get_runtime_context().get_node_id()} ray_gpu_ids={[str(g) for g in gpu_ids]} "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')} "
            f"torch_cuda_devices={torch.cuda.device_count() if has_cuda else 0}",
            flush=True,
        )
    return device


def _in_ray_worker() -> bool:
    try:
        import ray

        return bool(ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE)
    except Exception:
        return False


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class UnequalPrefixes(MolmoBatchError, ValueError):
    """Windows grouped for one shared-prefix batch encoded to prompts of different lengths."""


class Molmo2Engine:
    """The model and the two generation paths, independent of Ray (usable in a notebook or Serve)."""

    def __init__(self, settings: HostSettings) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor


        self.settings = settings
        self.device = pick_device(settings.device)
        if settings.dtype == "auto":
            dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        else:
            dtype = getattr(torch, settings.dtype)
        path = resolve_model_path(settings.model, cache_dir=settings.cache_dir, endpoint_url=settings.endpoint_url)
        kwargs: dict[str, Any] = {"revision": settings.revision} if settings.revision else {}
        self.processor: Any = AutoProcessor.from_pretrained(path, **kwargs)
        self.processor.tokenizer.padding_side = "left"
        auto_model: Any = AutoModelForImageTextToText
        self.model: Any = auto_model.from_pretrained(
            path, dtype=dtype, attn_implementation=settings.attn_implementation, **kwargs
        )
        self.model.to(self.device)
        self.model.eval()
        self.tokenizer = self.processor.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = self._eos_ids()
        self._prefix_text, self._suffix_tail = self._split_template()

    # -- prompts -------------------------------------------------------------------------------

    def _eos_ids(self) -> set[int]:
        ids = set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def chat_text(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        return str(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def _split_template(self) -> tuple[str, str]:
        """Split the chat prompt at the question: (text up to and including the video, text after it)."""
        sentinel = "\u2063QUESTION\u2063"
        full = self.chat_text(sentinel)
        head, sep, tail = full.partition(sentinel)
        if not sep:
            raise RuntimeError("chat template does not carry the question text verbatim; prefix reuse impossible")
        return head, tail

    @staticmethod
    def _metadata(window: WindowInput) -> dict[str, Any]:
        # Times relative to the window start go into the prompt (that is the clip the model sees);
        # frames_indices / fps = those times, the form the processor turns into "t.t" labels.
        rel = np.asarray(window.frame_times, dtype=np.float64) - window.t_start
        fps = float(window.fps) if window.fps and window.fps > 0 else 1.0
        return {
            "total_num_frames": len(rel),
            "fps": fps,
            "duration": float(rel[-1] + 1.0 / fps) if len(rel) else 0.0,
            "width": int(window.frames.shape[2]),
            "height": int(window.frames.shape[1]),
            "frames_indices": (rel * fps).tolist(),
        }

    def _encode(self, texts: list[str], windows: Sequence[WindowInput]) -> Any:
        return self.processor(
            text=texts,
            videos=[w.frames for w in windows],
            video_metadata=[self._metadata(w) for w in windows],
            do_sample_frames=False,
            padding=True,
            return_tensors="pt",
            # Normalising and patchifying 64 frames is ~0.7 CPU-s per window (docs/benchmarks.md item 2): on a
            # GPU actor the processor does it on the GPU, not on the one CPU the actor holds.
            device=str(self.device),
        ).to(self.device)

    # -- generation ----------------------------------------------------------------------------

    def _decode_outputs(self, sequences: Any, prompt_len: int, prompt_tokens: list[int], latency: float) -> list[Answer]:
        answers = []
        new = sequences[:, prompt_len:].tolist()
        for row, n_prompt in zip(new, prompt_tokens, strict=True):
            generated = []
            ended = False
            for tok in row:
                if tok in self.eos_ids:
                    ended = True
                    break
                generated.append(tok)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            hit = not ended and len(generated) >= self.settings.max_new_tokens
            answers.append(Answer(text, n_prompt, len(generated), hit, latency))
        return answers

    def _gen_kwargs(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.settings.max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.pad_id,
        }

    def answer_batch(self, windows: Sequence[WindowInput], prompts: Sequence[str]) -> list[Answer]:
        """One prompt per window, all windows in one left-padded generate."""
        import torch

        texts = [self.chat_text(p) for p in prompts]
        inputs = self._encode(texts, windows)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self._gen_kwargs())
        latency = time.perf_counter() - start
        return self._decode_outputs(out, inputs["input_ids"].shape[1], prompt_tokens, latency)

    def answer_shared_prefix(self, window: WindowInput, prompts: Sequence[str]) -> list[Answer]:
        """Several prompts on one window: prefill the visual prefix once, branch the KV cache per prompt."""
        return self.answer_shared_prefix_batch([window], prompts)[0]

    def answer_shared_prefix_batch(self, windows: Sequence[WindowInput], prompts: Sequence[str]) -> list[list[Answer]]:
        """Several prompts on each of several windows whose prompts have the same length (`_prefix_group`):
        the visual prefixes of all windows are prefilled in one forward pass, each window's KV cache is
        branched once per prompt, and all len(windows) x len(prompts) suffixes are decoded as one batch,
        so one decoding step reads the weights once for every row (docs/benchmarks.md item 7)."""
        import torch

        start = time.perf_counter()
        prefix = self._encode([self._prefix_text] * len(windows), windows)
        if not bool(prefix["attention_mask"].all()):
            # Left padding would shift the positions the cache is computed with: never batch such prefixes.
            raise UnequalPrefixes("windows of a shared-prefix batch must have prompts of equal length")
        prefix_len = int(prefix["input_ids"].shape[1])
        with torch.inference_mode():
            out = self.model(**prefix, use_cache=True)
        cache = out.past_key_values
        suffix_ids = [
            self.tokenizer(p + self._suffix_tail, add_special_tokens=False)["input_ids"] for p in prompts
        ]
        width = max(len(s) for s in suffix_ids)
        k, b = len(prompts), len(windows)
        # Row w * k + j is window w, prompt j. Padding sits between the shared prefix and each suffix,
        # masked out, so every row's prefix keeps the positions the cache was computed with.
        ids = torch.full((b * k, prefix_len + width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((b * k, prefix_len + width), dtype=torch.long, device=self.device)
        ids[:, :prefix_len] = prefix["input_ids"].repeat_interleave(k, dim=0)
        mask[:, :prefix_len] = 1
        for j, s in enumerate(suffix_ids):
            ids[j::k, prefix_len + width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[j::k, prefix_len + width - len(s) :] = 1
        branched = copy.deepcopy(cache)  # never reuse the prefix cache itself: generate mutates it
        if k > 1:
            branched.batch_repeat_interleave(k)
        with torch.inference_mode():
            seq = self.model.generate(
                input_ids=ids, attention_mask=mask, past_key_values=branched, **self._gen_kwargs()
            )
        latency = time.perf_counter() - start
        prompt_tokens = [prefix_len + len(s) for _ in windows for s in suffix_ids]
        flat = self._decode_outputs(seq, prefix_len + width, prompt_tokens, latency)
        return [flat[w * k : (w + 1) * k] for w in range(b)]

    @staticmethod
    def _prefix_group(window: WindowInput) -> tuple[Any, ...]:
        """Windows with equal keys give prompts of equal length (same frame count and size, same frame
        times relative to the window start: the time labels are part of the prompt)."""
        rel = np.round(np.asarray(window.frame_times, dtype=np.float64) - window.t_start, 1)
        return (tuple(window.frames.shape), tuple(rel.tolist()))

    def answer_windows(self, windows: Sequence[WindowInput], tasks: Sequence[Task]) -> list[list[Answer]]:
        """Answers[i][j] for window i and task j, splitting the batch on out-of-memory errors."""
        prompts = [t.prompt for t in tasks]
        if len(prompts) == 1 or not self.settings.prefix_reuse:
            flat_windows = [w for w in windows for _ in prompts]
            flat_prompts = [p for _ in windows for p in prompts]
            flat = self._with_oom_split(flat_windows, flat_prompts)
            return [flat[i * len(prompts) : (i + 1) * len(prompts)] for i in range(len(windows))]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, w in enumerate(windows):
            groups.setdefault(self._prefix_group(w), []).append(i)
        results: dict[int, list[Answer]] = {}
        for members in groups.values():
            answers = self._shared_prefix_with_oom_split([windows[i] for i in members], prompts)
            results.update(zip(members, answers, strict=True))
        return [results[i] for i in range(len(windows))]

    def _shared_prefix_with_oom_split(self, windows: Sequence[WindowInput], prompts: Sequence[str]) -> list[list[Answer]]:
        """`answer_shared_prefix_batch`, halving the windows on out-of-memory; one window that still does not
        fit falls back to one question at a time (the prefix alone may fit where K branches did not)."""
        try:
            self._inject_oom(len(windows) * len(prompts))
            return self.answer_shared_prefix_batch(windows, prompts)
        except Exception as exc:
            if not _is_oom(exc) and not isinstance(exc, UnequalPrefixes):
                raise
            _free_memory()
            if len(windows) > 1:
                half = len(windows) // 2
                return self._shared_prefix_with_oom_split(windows[:half], prompts) + self._shared_prefix_with_oom_split(
                    windows[half:], prompts
                )
            return [self._with_oom_split([windows[0]] * len(prompts), prompts)]

    def _inject_oom(self, batch: int) -> None:
        """TEST-ONLY (pipeline.faults): raise MemoryError as a too-large batch would on a real device."""
        hooks = getattr(self.settings, "test_hooks", ())
        above = faults.get("OOM_ABOVE", hooks)
        if faults.get("OOM_ALWAYS", hooks) or (above is not None and batch > int(above)):
            raise MemoryError(f"injected out-of-memory for a batch of {batch} (MOLMO_BATCH_TEST_OOM_*)")

    def _with_oom_split(self, windows: Sequence[WindowInput], prompts: Sequence[str]) -> list[Answer]:
        """`answer_batch`, halving the batch on out-of-memory until it fits; a single window that still
        does not fit becomes an error answer. Depth is log2(batch): it always ends."""
        try:
            self._inject_oom(len(windows))
            return self.answer_batch(windows, prompts)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            _free_memory()
            log.warning("out of memory on a batch of %d; %s", len(windows), "giving up on it" if len(windows) == 1 else "splitting it")
            if len(windows) == 1:
                message = redact(f"out of memory even alone: {exc}")[:2000]
                return [Answer("", 0, 0, False, 0.0, type(exc).__name__, message)]
            half = len(windows) // 2
            return self._with_oom_split(windows[:half], prompts[:half]) + self._with_oom_split(
                windows[half:], prompts[half:]
            )


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
