"""Retrying transient storage errors: exponential backoff with jitter, within a budget.

Transient: the store could not be reached or asked us to slow down (connection refused/reset,
timeouts, HTTP 5xx, throttling: SlowDown, Throttling, RequestLimitExceeded, 429, 503). Everything else
(missing object, access denied, bad request, our own bugs) fails at once: retrying cannot help, and a
`ValueError` is never retried. Past the budget, `StorageUnavailable` says how long and how often we
tried, and the caller turns it into an error row (reads) or fails the flush (writes; the commit
protocol in `pipeline.tables.sink` keeps the tables whole).
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pipeline.errors import MolmoBatchError
from pipeline.io.secrets import redact

log = logging.getLogger(__name__)


T = TypeVar("T")


class StorageUnavailable(MolmoBatchError, OSError):
    """A storage operation kept failing with transient errors past the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry one storage operation."""

    attempts: int = 6  # tries in all (1 = no retry)
    base_delay_s: float = 0.5  # first backoff; doubles each time, with +-50% jitter
    max_delay_s: float = 10.0
    budget_s: float = 60.0  # give up once this much time has passed since the first try

    def delay(self, attempt: int) -> float:
        """Backoff before retry number `attempt` (0-based), jittered to spread a thundering herd."""
        return min(self.max_delay_s, self.base_delay_s * 2**attempt) * (0.5 + random.random())


DEFAULT_POLICY = RetryPolicy()


_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
    errno.EAGAIN,
    errno.EBUSY,
}


_TRANSIENT_WORDS = (
    "slowdown",
    "slow down",
    "throttl",
    "requestlimitexceeded",
    "toomanyrequests",
    "too many requests",
    "serviceunavailable",
    "service unavailable",
    "internalerror",
    "internal error",
    "bad gateway",
    "gateway timeout",
    "connection refused",
    "connection reset",
    "connection aborted",
    "could not connect",
    "timed out",
    "timeout",
    "temporarily unavailable",
    "endpointconnectionerror",
    "read timeout",
    "connect timeout",
)


_TRANSIENT_TYPES = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ServerTimeoutError",
    "IncompleteRead",
    "ResponseStreamingError",
)


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return int(status) if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying `exc` later may succeed."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)):
        return False
    if isinstance(exc, StorageUnavailable):
        return False
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # s3fs wraps botocore errors: look at the causes too
        seen.add(id(cur))
        if isinstance(cur, (ConnectionError, TimeoutError)):
            return True
        if isinstance(cur, OSError) and cur.errno in _TRANSIENT_ERRNOS:
            return True
        if type(cur).__name__ in _TRANSIENT_TYPES:
            return True
        status = _http_status(cur)
        if status is not None and (status >= 500 or status == 429):
            return True
        text = f"{type(cur).__name__} {cur}".lower()
        if any(w in text for w in _TRANSIENT_WORDS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def retry_call(
    fn: Callable[[], T],
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    *,
    deadline: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn`, retrying transient errors per `policy` (and never past the monotonic `deadline`).

    Raises:
        StorageUnavailable: transient errors outlasted the budget (its message says how long, how often).
        Exception: any non-transient error, at once and unchanged.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            elapsed = time.monotonic() - start
            pause = policy.delay(attempt - 1)
            out_of_time = elapsed + pause > policy.budget_s or (deadline is not None and time.monotonic() + pause > deadline)
            if attempt >= policy.attempts or out_of_time:
                raise StorageUnavailable(
                    f"{what}: storage kept failing after {attempt} attempt(s) over {elapsed:.1f}s "
                    f"(last error {type(exc).__name__}: {redact(exc)[:500]})"
                ) from None
            log.warning("%s failed (%s); retry %d in %.2fs", what, redact(f"{type(exc).__name__}: {exc}")[:300], attempt, pause)
            sleep(pause)
