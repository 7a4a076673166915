"""The crash ledger: how often each unit of work was started and never finished, across process deaths.

A native crash (segfault, OOM kill, CUDA fault) kills the process that would have reported it, so the
count lives in a Ray actor owned by the driver (run.driver pins it to the driver's node). Both stages use
it: the model host per batch and per window (`model.host.Molmo2Host`), the decode stage per video
(`video.decode._decode_guarded`). Past a bound, the unit becomes an error row instead of another crash.
"""

from __future__ import annotations

from typing import Any


class AttemptLedger:
    """Ray actor: per key, the number of starts since the last `done`."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def begin(self, key: str) -> int:
        self._open[key] = self._open.get(key, 0) + 1
        return self._open[key]

    def done(self, key: str) -> None:
        self._open.pop(key, None)


def begin(ledger: Any, key: str) -> int:
    """Record a start of `key` on the ledger actor; returns the starts so far (1 without a ledger)."""
    if ledger is None:
        return 1
    import ray

    return int(ray.get(ledger.begin.remote(key)))


def done(ledger: Any, key: str) -> None:
    """`key` finished: forget its starts (fire and forget)."""
    if ledger is not None:
        ledger.done.remote(key)
