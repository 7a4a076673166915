"""Where the model's files come from: a Hub id, a local directory, or an s3:// prefix.

A cluster without internet keeps the weights in its own bucket: `--model s3://bucket/models/Molmo2-8B/`
is copied once per node into a local cache (a file lock makes the second actor on a node wait for the
first one's copy instead of copying again), then loaded from there exactly like a local directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.io.storage import get_fs

log = logging.getLogger("pipeline")


HUB_VARIANTS = ("allenai/Molmo2-8B", "allenai/Molmo2-4B", "allenai/Molmo2-O-7B")


MOLMO2_MODEL_TYPE = "molmo2"  # config.json's model_type of every Molmo2 checkpoint (transformers' Molmo2Config)


_DONE_MARKER = ".molmo-batch-complete"


def default_cache_dir() -> Path:
    return Path(os.environ.get("MOLMO_BATCH_CACHE", Path.home() / ".cache" / "molmo-batch")) / "models"


def is_remote_prefix(model: str) -> bool:
    return "://" in model and not model.startswith("file://")


def resolve_model_path(model: str, *, cache_dir: str | None = None, endpoint_url: str | None = None) -> str:
    """Return what `from_pretrained` should load: a local directory, or the Hub id unchanged."""
    if model.startswith("file://"):
        model = model[len("file://") :]
    if is_remote_prefix(model):
        return str(copy_model_once(model, Path(cache_dir) if cache_dir else default_cache_dir(), endpoint_url))
    return model


def copy_model_once(url: str, cache_root: Path, endpoint_url: str | None = None) -> Path:
    """Copy the files under `url` to `cache_root/<hash>` once per node; safe for concurrent actors."""
    fs, prefix = get_fs(url, endpoint_url)
    prefix = prefix.rstrip("/")
    files = fs.find(prefix, detail=True)
    if not files:
        raise FileNotFoundError(f"no model files under {url}: check the prefix and your credentials")
    # The cache key includes every file's version, so new weights under the same prefix are copied anew.
    manifest = sorted((p, str(i.get("ETag") or i.get("size"))) for p, i in files.items())
    key = hashlib.sha256(json.dumps([url, manifest]).encode()).hexdigest()[:16]
    target = cache_root / key
    marker = target / _DONE_MARKER
    if marker.exists():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    lock_path = cache_root / f"{key}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another actor on this node copies
        try:
            if marker.exists():
                return target
            staging = cache_root / f"{key}.partial-{os.getpid()}-{int(time.time())}"
            staging.mkdir(parents=True)
            for path in files:
                rel = path[len(prefix) :].lstrip("/")
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(path, str(dest))
            (staging / _DONE_MARKER).write_text(json.dumps({"source": url, "files": len(files)}))
            if target.exists():  # a crashed earlier copy without marker
                import shutil

                shutil.rmtree(target)
            staging.rename(target)
            return target
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the Hub is never asked, only the local cache."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_molmo2_config(data: object, model: str) -> None:
    """Raise ConfigError unless `data` (a checkpoint's config.json) declares a Molmo2 model."""
    if not isinstance(data, dict):
        raise ConfigError(f"--model {model}: its config.json is not a JSON object; point --model at a Molmo2 checkpoint")
    model_type = str(data.get("model_type") or "")
    architectures = [str(a) for a in data.get("architectures") or []]
    if model_type == MOLMO2_MODEL_TYPE or any(a.startswith("Molmo2") for a in architectures):
        return
    declared = f"model_type {model_type!r}" if model_type else "no model_type"
    if architectures:
        declared += f", architectures {architectures}"
    raise ConfigError(f"--model {model}: its config.json declares {declared}, not a Molmo2 checkpoint "
                      f"(model_type {MOLMO2_MODEL_TYPE!r}); use {' / '.join(HUB_VARIANTS)} or a Molmo2 directory")


def _load_config_json(read: Callable[[], bytes], model: str) -> object:
    try:
        return json.loads(read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--model {model}: its config.json is not valid JSON ({exc}); re-copy the checkpoint") from None


def check_model_reachable(model: str, endpoint_url: str | None, *, revision: str | None = None) -> None:
    """Fail at start, with a fix, when the model cannot be found or is not a Molmo2 (before any actor
    starts): a local directory or s3:// prefix needs a config.json declaring a Molmo2; a Hub id, when
    HF_HUB_OFFLINE is set, must be in the local Hugging Face cache (with a Molmo2 config.json). Online,
    a Hub id is left to the actors' download (no network call here)."""
    if model.startswith("file://"):
        model = model[len("file://") :]
    if is_remote_prefix(model):
        try:
            fs, path = get_fs(model, endpoint_url)
            target = path.rstrip("/") + "/config.json"
            ok = fs.exists(target)
            data = _load_config_json(lambda: bytes(fs.cat_file(target)), model) if ok else None
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"--model {model}: cannot read it ({type(exc).__name__}: {exc})") from None
        if not ok:
            raise ConfigError(f"--model {model}: no config.json under that prefix; point it at a saved checkpoint")
        check_molmo2_config(data, model)
        return
    if os.path.isdir(model):
        config_path = os.path.join(model, "config.json")
        if not os.path.isfile(config_path):
            raise ConfigError(f"--model {model}: the directory has no config.json; build one with "
                              "`python -m pipeline build-tiny-model --out DIR` or download a checkpoint")
        check_molmo2_config(_load_config_json(Path(config_path).read_bytes, model), model)
        return
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ConfigError(f"--model {model}: not a directory and not a Hub id like allenai/Molmo2-8B")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json", revision=revision)
        if not isinstance(cached, str):
            at = f" at revision {revision}" if revision else ""
            raise ConfigError(f"--model {model}{at} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                              f"download it first (`hf download {model}`), unset HF_HUB_OFFLINE, or pass a local "
                              "directory")
        check_molmo2_config(_load_config_json(Path(cached).read_bytes, model), model)
