"""How an output folder is laid out, written and read: the one home of the part protocol's names.

    <output>/<table>/run_date=YYYY-MM-DD/part-<key>.parquet   one flush's file of `table` (`TableSink`)
    <output>/runs/run_date=YYYY-MM-DD/run-<run_id>.parquet    one run's record (`pipeline.run.record`)
    <folder>/.tmp-<name>-<nonce>                              a local write in progress (never read)
    <output>/_writers/...                                     writers' leases and the commit lock
                                                              (`pipeline.tables.leases`; readers skip it)

A flush writes one file per table of its group, all named with the same 24-hex-digit key, the group's
commit table last (`pipeline.tables.sink`). A part file is *committed* when the commit table of its
group has a part with the same key; any other part file is left by an interrupted flush: readers leave
it out and the next run's `TableSink.recover()` deletes it. Files that are not parts (the `runs`
records) are outside the protocol: always read, never deleted.

Every whole file appears atomically (`atomic_write`): a local file is written under a temporary name,
fsynced, renamed into place and its folder fsynced; a remote store gets one PUT, visible whole or not
at all. Nothing here retries: callers wrap storage calls in `pipeline.io.retry` where they need to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any

from pipeline.errors import MolmoBatchError
from pipeline.tables.schemas import TableGroup

PARTITION = "run_date"  # the Hive partition column of every table folder

KEY_LENGTH = 24  # hex digits of a part key

# The name `TableSink` gives a part's file in every table of one flush.
_PART_RE = re.compile(r"part-([0-9a-f]{24})\.parquet$")
_KEY_RE = re.compile(r"[0-9a-f]{24}")

TMP_PREFIX = ".tmp-"


# -- names -----------------------------------------------------------------------------------------


def table_folder(root: str, table: str, run_date: str) -> str:
    """The folder of one run date's files of `table` under the output `root`."""
    return f"{root.rstrip('/')}/{table}/{PARTITION}={run_date}"


WRITER_TOKEN_LENGTH = 8  # the first hex digits of a part key: which writer wrote it


def writer_token(writer_id: str) -> str:
    """The short token of a writer (a run, a job's post-processing) that starts each of its part keys."""
    return hashlib.sha256(writer_id.encode()).hexdigest()[:WRITER_TOKEN_LENGTH]


def new_part_key(video_ids: Iterable[str], token: str | None = None) -> str:
    """A fresh part key: the writer's token, then digits derived from the part's video ids and a nonce, so
    two writers never collide and a part file tells whose it is (`token_of_key`)."""
    text = "\n".join(sorted(video_ids)) + uuid.uuid4().hex
    digest = hashlib.sha256(text.encode()).hexdigest()
    if token is None:
        return digest[:KEY_LENGTH]
    if not re.fullmatch(f"[0-9a-f]{{{WRITER_TOKEN_LENGTH}}}", token):
        raise ValueError(f"writer token {token!r} is not {WRITER_TOKEN_LENGTH} lowercase hex digits")
    return token + digest[: KEY_LENGTH - WRITER_TOKEN_LENGTH]


def token_of_key(key: str) -> str:
    """The writer token a part key starts with (for keys written before tokens: random digits, no writer)."""
    return key[:WRITER_TOKEN_LENGTH]


def part_name(key: str) -> str:
    """`part-<key>.parquet`: the file name of a part in every table of its flush."""
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"part key {key!r} is not {KEY_LENGTH} lowercase hex digits")
    return f"part-{key}.parquet"


def part_path(root: str, table: str, run_date: str, key: str) -> str:
    return f"{table_folder(root, table, run_date)}/{part_name(key)}"


def sibling_part(path: str, table: str, other: str) -> str:
    """The path of the same part (same run date, same key) in table `other`."""
    head, marker, tail = path.rpartition(f"/{table}/{PARTITION}=")
    if not marker:
        raise ValueError(f"{path} is not a part file of table {table}")
    return f"{head}/{other}/{PARTITION}={tail}"


def part_key(path: str) -> str | None:
    """The key of a part file's path, or None when the file is not a part (e.g. a `runs` record)."""
    m = _PART_RE.search(path)
    return m.group(1) if m else None


def run_record_path(root: str, run_date: str, run_id: str) -> str:
    """Where a run's `runs` row goes: its own file, outside the part protocol (never a part name)."""
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    return f"{table_folder(root, 'runs', run_date)}/run-{safe_id}.parquet"


def is_hidden(name: str) -> bool:
    """Names readers skip: temporary files of a write in progress, `_SUCCESS` markers and the like."""
    return name.startswith((".", "_"))


def temporary_path(path: str) -> str:
    """A unique temporary name beside `path` (same folder, so the rename into place is atomic)."""
    folder, _, name = path.rpartition("/")
    stem = name.removesuffix(".parquet")  # never ends in .parquet: no glob over a table picks it up
    return f"{folder}/{TMP_PREFIX}{stem}-{uuid.uuid4().hex[:8]}"


def is_temporary(path: str) -> bool:
    return path.rstrip("/").rpartition("/")[2].startswith(TMP_PREFIX)


# -- listing ---------------------------------------------------------------------------------------


def list_parts(fs: Any, root: str, table: str) -> dict[str, str]:
    """Part files of `table` under `root`, path -> key ({} when the table has no folder yet)."""
    base = f"{root.rstrip('/')}/{table}"
    if not fs.exists(base):
        return {}
    return {path: key for path in fs.find(base) if (key := part_key(path)) is not None}


def list_table_files(fs: Any, root: str) -> dict[str, list[str]]:
    """Every table folder under `root` -> its Parquet files, sorted (hidden and temporary files left out)."""
    root = root.rstrip("/")
    out: dict[str, list[str]] = {}
    for entry in fs.ls(root, detail=True):
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") != "directory" or is_hidden(name):
            continue
        files = [p for p in fs.find(f"{root}/{name}") if p.endswith(".parquet") and not is_hidden(p.rsplit("/", 1)[-1])]
        out[name] = sorted(files)
    return out


def writer_parts(fs: Any, root: str, table: str, run_date: str, token: str) -> dict[str, str]:
    """The part files of `table` one writer (its token starts every key) made in one run-date partition,
    path -> key: a prefix listing of its own files, however many other writers' the partition holds."""
    folder = table_folder(root, table, run_date)
    if is_local(fs):
        if not fs.exists(folder):
            return {}
        paths = fs.glob(f"{folder}/part-{token}*.parquet")
    else:
        try:
            paths = fs.find(folder, prefix=f"part-{token}")
        except FileNotFoundError:
            return {}
    return {path: key for path in paths if (key := part_key(path)) is not None}


def temporary_files(fs: Any, root: str, *, older_than_s: float = 0.0, folders: Iterable[str] | None = None) -> list[str]:
    """Temporary files of interrupted local writes anywhere under `root` (or only in `folders`, each a
    folder below it), last changed over `older_than_s` ago (a live writer's temporary file exists for the
    seconds its write takes: never take it from it)."""
    if not fs.exists(root):
        return []
    now = time.time()
    found = []
    searched = [root] if folders is None else [f for f in folders if fs.exists(f)]
    for path in (p for folder in searched for p in fs.find(folder)):
        if not is_temporary(path):
            continue
        with contextlib.suppress(FileNotFoundError):
            if older_than_s <= 0 or now - os.path.getmtime(path) > older_than_s:
                found.append(path)
    return found


# -- committed parts -------------------------------------------------------------------------------


def is_uncommitted(path: str, committed_keys: Set[str]) -> bool:
    """True for a part file whose key has no commit record; a file that is not a part never is."""
    key = part_key(path)
    return key is not None and key not in committed_keys


def committed_parts(fs: Any, root: str, table: str, commit_table: str) -> list[str]:
    """The part files of `table` whose commit record (a part of `commit_table`) exists, sorted."""
    committed = set(list_parts(fs, root, commit_table).values())
    return sorted(path for path, key in list_parts(fs, root, table).items() if key in committed)


def drop_uncommitted(
    files: Mapping[str, Sequence[str]], groups: Iterable[TableGroup]
) -> tuple[dict[str, list[str]], int]:
    """Table -> files without the uncommitted parts (what `TableSink.recover()` deletes), and how many.

    `files` is a listing such as `list_table_files`; each group's commit keys come from its commit
    table's files in it. A table of no group keeps all its files.
    """
    commit_of = {t: g.commit_table for g in groups for t in g.schemas if t != g.commit_table}
    keys = {
        commit: {key for p in files.get(commit, []) if (key := part_key(p)) is not None}
        for commit in set(commit_of.values())
    }
    kept: dict[str, list[str]] = {}
    skipped = 0
    for table, paths in files.items():
        if table not in commit_of:
            kept[table] = list(paths)
            continue
        committed = keys[commit_of[table]]
        kept[table] = [p for p in paths if not is_uncommitted(p, committed)]
        skipped += len(paths) - len(kept[table])
    return kept, skipped


# -- writing ---------------------------------------------------------------------------------------


def _write_synced(path: str, payload: bytes) -> None:
    """Write a new local file (its folder created as needed) and fsync it: it is on disk before it is renamed
    or linked into place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


class ConditionalWriteUnsupported(MolmoBatchError, RuntimeError):
    """The store cannot create a file only when it is absent, so concurrent writers cannot be kept apart."""


def create_exclusive(fs: Any, path: str, payload: bytes) -> bool:
    """Create `path` with `payload` only if it does not exist: True when created, False when it existed.

    Local: the content is written to a temporary file and hard-linked into place (`link` fails when the
    name exists), so the file appears whole and exactly one creator wins. S3: one PUT with `If-None-Match:
    *` (AWS S3 since 2024, SeaweedFS, MinIO); a store that refuses the condition raises
    `ConditionalWriteUnsupported`, one that silently ignores it is caught by `probe_conditional_create`.
    """
    if is_local(fs):
        tmp = temporary_path(path)
        try:
            _write_synced(tmp, payload)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    try:
        fs.pipe_file(path, payload, mode="create")
    except FileExistsError:  # fsspec's own filesystems (memory, ...) say it this way
        return False
    except (TypeError, NotImplementedError) as exc:
        raise ConditionalWriteUnsupported(f"{type(fs).__name__} has no exclusive create: {exc}") from None
    except OSError as exc:
        text = str(exc).lower().replace("-", "")
        if "precondition" in text or "conditionalrequestconflict" in text:
            return False
        if "not implemented" in text or "notimplemented" in text:
            raise ConditionalWriteUnsupported(str(exc)) from None
        raise
    return True


def probe_conditional_create(fs: Any, folder: str) -> None:
    """Raise `ConditionalWriteUnsupported` unless a second exclusive create of one name is refused."""
    path = f"{folder.rstrip('/')}/probe-{uuid.uuid4().hex}"
    try:
        if not create_exclusive(fs, path, b"1"):
            raise ConditionalWriteUnsupported(f"a fresh name {path} was reported to exist")
        if create_exclusive(fs, path, b"2"):
            raise ConditionalWriteUnsupported("the store accepted a second exclusive create of the same name")
    finally:
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(path)


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def atomic_write(fs: Any, path: str, payload: bytes) -> None:
    """Write a whole file so readers see all of it or nothing, creating its folder as needed.

    Local: a temporary file beside it, fsynced, renamed into place, the folder fsynced (so the file
    survives a machine crash too); the temporary file is removed when anything fails. Remote: one PUT
    (or a multipart upload completed in one call), which the store makes visible only once complete.
    """
    if not is_local(fs):
        fs.pipe_file(path, payload)
        return
    folder = os.path.dirname(path)
    tmp = temporary_path(path)
    try:
        _write_synced(tmp, payload)
        os.replace(tmp, path)  # atomic on POSIX: readers see the whole file or none
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # only still there when the write or the rename failed
    # Make the rename itself durable, so a committed part survives a machine crash too.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
