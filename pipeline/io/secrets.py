"""Keep credentials out of every table, log line, error message, summary and printed config.

Three functions, one policy:
- `public_uri(uri)`: a URI as it may be stored and shown (the `uri` columns, `video_id`, messages):
  presigned-URL signature and credential query parameters removed, `user:password@` masked. The
  signed URL itself is only ever used to read the object (`VideoRef.source_url`, never written).
  Removing (not masking) the parameters keeps `video_id` the same when the same object is signed anew.
- `redact(text)`: free text (error messages, log lines, command lines) with every credential masked;
  each URL in it goes through `public_uri`.
- `redact_data(obj)`: nested plain data (a config printed or written to the `runs` table): strings
  redacted, and the value of any key that names a secret (`secret_key:`, `token:`, ...) masked whole.

Error messages are data here (they land in the `errors` and `videos` tables), and storage clients
sometimes echo what they were given: a URL with `user:password@`, a presigned URL's signature, an
access key id, a header. Every message the pipeline builds from an exception goes through `redact`.

What `redact` removes:
- the values of credential-like environment variables (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
  AWS_ACCESS_KEY_ID, *_TOKEN, *_SECRET*, *_PASSWORD, *_API_KEY, ...), wherever they appear;
- in URLs, what `public_uri` removes;
- presigned-URL and header fields outside a URL (X-Amz-Signature, X-Amz-Credential,
  X-Amz-Security-Token, X-Goog-Signature, X-Goog-Credential, GoogleAccessId, Signature=, sig=,
  AWSAccessKeyId=, Authorization: ..., Credential=...);
- `key=value` pairs whose key names a secret (secret_key=..., aws_secret_access_key: ..., token=...);
- AWS access key ids (AKIA/ASIA + 16 characters).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

MASK = "***"


# Query parameters that carry a signature or a credential, in lower case: always removed.
# AWS SigV2 (AWSAccessKeyId, Signature, x-amz-security-token), GCS V2 (GoogleAccessId, Signature),
# Azure SAS (sig), CloudFront (Signature, Key-Pair-Id), token auth (token, access_token, Akamai's
# __token__/hdnts/hdnea).
_SIGNATURE_PARAMS = frozenset({
    "awsaccesskeyid", "signature", "googleaccessid", "sig", "key-pair-id",
    "token", "access_token", "id_token", "auth_token", "security_token", "__token__", "hdnts", "hdnea",
})
# Every SigV4 (X-Amz-Algorithm, -Credential, -Date, -Expires, -SignedHeaders, -Signature,
# -Security-Token) and GCS V4 (X-Goog-...) parameter belongs to the signature: removed, so that a URL
# signed again (new date, new expiry) names the same object the same way.
_SIGNATURE_PREFIXES = ("x-amz-", "x-goog-")
# Parameters that are part of a signature only beside one of the above: the expiry of SigV2/GCS/
# CloudFront URLs and Azure SAS fields (short names a plain URL may use for other things).
_SIGNED_WITH = frozenset({
    "expires", "policy",
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sr", "si", "sip", "sdd", "ses", "skoid", "sktid", "skt",
    "ske", "sks", "skv", "saoid", "suoid", "scid", "rscc", "rscd", "rsce", "rscl", "rsct",
})


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
            r"(?P<k>X-(?:Amz|Goog)-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|GoogleAccessId"
            r"|Credential|(?<![A-Za-z0-9_\-])sig)"
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


def _param_name(piece: str) -> str:
    return urllib.parse.unquote_plus(piece.split("=", 1)[0]).strip().lower()


def _is_signature_param(name: str) -> bool:
    return name in _SIGNATURE_PARAMS or name.startswith(_SIGNATURE_PREFIXES)


def public_uri(uri: str) -> str:
    """`uri` as it may be stored and shown: signature and credential query parameters removed,
    `user:password@` masked; every other part (host, path, other parameters, `#fragment`) unchanged.

    Plain paths and file:// URLs keep their query part (a local file name may contain `?`). The result
    is what `video_id` is derived from, so a presigned URL signed again keeps its id. Idempotent.
    """
    text = str(uri)
    scheme, sep, rest = text.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return text
    rest, fragment_sep, fragment = rest.partition("#")  # a fragment may hold `?` (a shard member's name)
    before_query, query_sep, query = rest.partition("?")
    authority, slash, path = before_query.partition("/")
    if "@" in authority:
        authority = MASK + "@" + authority.rsplit("@", 1)[1]
    out = f"{scheme}://{authority}{slash}{path}"
    if query_sep and scheme.lower() == "file":
        out += "?" + query
    elif query_sep:
        pieces = [p for p in query.split("&") if p]
        names = [_param_name(p) for p in pieces]
        signed = any(_is_signature_param(n) for n in names)
        kept = [p for p, n in zip(pieces, names, strict=True)
                if not _is_signature_param(n) and not (signed and n in _SIGNED_WITH)]
        if len(kept) == len(pieces):  # nothing signed: the query exactly as given (ids stay what they were)
            out += "?" + query
        elif kept:
            out += "?" + "&".join(kept)
    if fragment_sep:
        out += "#" + fragment
    return out


# A URL inside free text: up to whitespace or a quote, not ending in punctuation that closes a sentence.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*[^\s'\"<>),.;:\]]")


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
    out = _URL_IN_TEXT.sub(lambda m: public_uri(m.group(0)), out)
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    return out


def redact_or_none(text: object | None) -> str | None:
    return None if text is None else redact(text)


# A mapping key whose value is a secret however it looks (YAML `secret_key: abc`, `token: ...`).
_SECRET_KEY_NAME = re.compile(
    r"(secret|token|password|passwd|credential|api[_-]?key|access[_-]?key|private[_-]?key|session[_-]?key)",
    re.IGNORECASE,
)
# ...but not the counters and limits the config itself has (`max_new_tokens`, `generated_tokens`).
_NOT_SECRET_KEY = re.compile(r"(^max_|^min_|_tokens$|^num_|_count$)", re.IGNORECASE)


def redact_data(data: Any) -> Any:
    """A copy of nested plain data (dicts, lists, scalars) safe to print or store: every string goes
    through `redact`, and a key that names a secret has its (non-empty) value replaced by ***."""
    if isinstance(data, Mapping):
        out: dict[Any, Any] = {}
        for key, value in data.items():
            name = str(key)
            secret = _SECRET_KEY_NAME.search(name) and not _NOT_SECRET_KEY.search(name)
            out[key] = MASK if secret and value not in (None, "", [], {}) else redact_data(value)
        return out
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data


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
