"""TEST-ONLY fault-injection hooks, switched on by `MOLMO_BATCH_TEST_*` environment variables.

Never set these in production. They exist so the reliability tests can make real failures happen
inside real Ray workers (which is where the code under test runs):

- `MOLMO_BATCH_TEST_OOM_ABOVE=N`: the model engine raises `torch.cuda.OutOfMemoryError` (what a GPU
  raises; the class exists in CPU builds) for any generate batch of more than N windows (exercises the
  out-of-memory split).
- `MOLMO_BATCH_TEST_OOM_ALWAYS=1`: every generate raises `torch.cuda.OutOfMemoryError` (windows end as
  error rows).
- `MOLMO_BATCH_TEST_CRASH_ONCE=PATH`: the first model-actor call that finds PATH absent creates it and
  kills its own process with `os._exit(1)` (exercises actor replacement and bounded retries).
- `MOLMO_BATCH_TEST_CRASH_ON=SUBSTRING`: the model actor kills its process whenever it is about to
  run a window whose URI contains SUBSTRING (a deterministic crash: it must end as an error row).
- `MOLMO_BATCH_TEST_DECODE_CRASH_ON=SUBSTRING`: a decode task kills its process whenever it is about to
  decode a video whose URI contains SUBSTRING (a poison file: it must end as a `DecoderCrashed` row).
- `MOLMO_BATCH_TEST_EVENTS=DIR`: components append their process id to `DIR/<event>` when they reach a
  point a test waits for (`window-decoded`, `model-load`, `infer-call`, `flush-data-written`, `flush-committed`). While a file
  `DIR/<event>.hold-<pid>` exists, process <pid> stops at that event (after appending its id to
  `DIR/<event>.held`) until the test removes the file, at most `HOLD_LIMIT_S`; `DIR/<event>.hold`
  stops any process there. A test can keep a model call in flight, or the driver between two parts,
  for as long as it needs (e.g. until it has removed a node or cut the store off), instead of racing it.
- `MOLMO_BATCH_TEST_FLUSH_PAUSE_S=S[,S2,...]`: the sink sleeps S seconds between writing a part's data
  files and its `videos` commit file (S2 for the second part, ...; the last value repeats), so a test
  can kill the driver mid-flush.

The driver captures these variables (`capture()`) and hands them to the actors in their settings,
because a Ray cluster started earlier (the tests' session cluster) does not see variables set later.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

PREFIX = "MOLMO_BATCH_TEST_"

HOLD_LIMIT_S = 600.0  # a held process goes on after this long even if the test forgot to let it go


Hooks = tuple[tuple[str, str], ...]


def capture(environ: Mapping[str, str] | None = None) -> Hooks:
    """The test hooks set in the driver's environment, as a picklable tuple."""
    env = os.environ if environ is None else environ
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(PREFIX)))


def get(name: str, hooks: Hooks = ()) -> str | None:
    """Hook `name` (without the prefix) from `hooks`, else from this process's environment."""
    key = PREFIX + name
    for k, v in hooks:
        if k == key:
            return v
    return os.environ.get(key)


def _append_pid(path: str) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
    except OSError:
        pass


def event(name: str, hooks: Hooks = ()) -> None:
    """When `MOLMO_BATCH_TEST_EVENTS` is set (test-only observability): append this process's id to the
    event file `name`, then stay here while the test holds this process at this event."""
    folder = get("EVENTS", hooks)
    if not folder:
        return
    _append_pid(os.path.join(folder, name))
    holds = [os.path.join(folder, f"{name}.hold-{os.getpid()}"), os.path.join(folder, f"{name}.hold")]
    if not any(os.path.exists(h) for h in holds):
        return
    _append_pid(os.path.join(folder, f"{name}.held"))
    limit = time.monotonic() + HOLD_LIMIT_S
    while any(os.path.exists(h) for h in holds) and time.monotonic() < limit:
        time.sleep(0.05)
