"""Keep credentials out of every table, log line, error message and summary: `redact(text)`.

Error messages are data here (they land in the `errors` and `videos` tables), and storage clients
sometimes echo what they were given: a URL with `user:password@`, a presigned URL's signature, an
access key id, a header. Every message the pipeline builds from an exception goes through `redact`.

What is removed:
- the values of credential-like environment variables (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
  AWS_ACCESS_KEY_ID, *_TOKEN, *_SECRET*, *_PASSWORD, *_API_KEY, ...), wherever they appear;
- `user:password@` in URLs;
- presigned-URL and header fields (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token,
  Signature=, AWSAccessKeyId=, Authorization: ..., Credential=...);
- `key=value` pairs whose key names a secret (secret_key=..., aws_secret_access_key: ..., token=...);
- AWS access key ids (AKIA/ASIA + 16 characters).
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"


_SECRET_ENV_NAME = re.compile(
    r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY|PRIVATE_KEY|SESSION_KEY)", re.IGNORECASE
)


_MIN_ENV_SECRET_LEN = 8  # shorter values would mask ordinary words


_NOT_SECRET_NAME = re.compile(r"(_PATH|_FILE|_DIR|_MODE|PARALLELISM)$", re.IGNORECASE)


_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host -> scheme://***@host
    (re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s:@]+:[^\s@]*@"), r"\g<scheme>" + MASK + "@"),
    # presigned URLs and SigV2/SigV4 fields
    (
        re.compile(
            r"(?P<k>X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|Credential)"
            r"(?P<sep>=)[^&\s,;\"']+",
            re.IGNORECASE,
        ),
        r"\g<k>\g<sep>" + MASK,
    ),
    (re.compile(r"(?P<k>Authorization)(?P<sep>\s*[:=]\s*)[^\n]+", re.IGNORECASE), r"\g<k>\g<sep>" + MASK),
    # key=value / key: value / "key": "value" whose key names a secret
    (
        re.compile(
            r"(?P<k>\b[A-Za-z0-9_\-]*(?:secret|token|password|passwd|api[_-]?key|access[_-]?key)(?:[_-]?(?:id|key))?"
            r"[\"']?)(?P<sep>\s*[:=]\s*)(?P<q>[\"']?)[^\s,;\"'&}]+",
            re.IGNORECASE,
        ),
        r"\g<k>\g<sep>\g<q>" + MASK,
    ),
    # AWS access key ids
    (re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}\b"), MASK),
]


def _env_secrets() -> list[str]:
    values = {
        v
        for k, v in os.environ.items()
        if v and len(v) >= _MIN_ENV_SECRET_LEN and _SECRET_ENV_NAME.search(k)
        and not _NOT_SECRET_NAME.search(k)
        and not k.startswith("MOLMO_BATCH_TEST_")
    }
    return sorted(values, key=len, reverse=True)  # longest first: a value containing another is masked whole


def redact(text: object) -> str:
    """`text` with every credential it may carry replaced by ***."""
    out = str(text)
    for value in _env_secrets():
        if value in out:
            out = out.replace(value, MASK)
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    return out


def redact_or_none(text: object | None) -> str | None:
    return None if text is None else redact(text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave the record alone
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are formatted from the exception; keep the type, redact the text.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Redact every record handled by the root logger's handlers (idempotent)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
