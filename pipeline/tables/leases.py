"""Many writers on one output: a lease per writer, and a commit lock that serialises commits.

Any number of runs and jobs may write to one output at the same time (a nightly job still running when an
ad-hoc run starts; nightly captions and retail counting sharing a table root). Two things keep every video's
rows there exactly once:

1. **A lease per writer** (`WriterLease`): `<output>/_writers/leases/<writer_id>.json`, created exclusively
   when the writer starts (a reused run id is refused: history is never overwritten), rewritten by a
   heartbeat thread every `heartbeat_s`, valid until `expires_at` (`ttl_s` after the last heartbeat), deleted
   when the writer closes (a writer on the same machine whose process is gone counts as expired at once).
   Every part file a writer makes starts with its token (`layout.writer_token`), so
   start-up recovery deletes an uncommitted part only when its writer holds no live lease: it never touches
   a live run's files, and a crashed run's parts (and its videos' GPU work) are redone once its lease
   expires. A writer stops committing once it could not renew its lease for `ttl_s - margin` (it may be
   presumed dead by then), so a presumed-dead writer never commits a part whose files were cleaned up.
2. **A commit lock** (`CommitLock`): generation files `<output>/_writers/commit/<generation>.json`, each
   created exclusively; holding generation G+1 means having created it while G was released or expired.
   Under the lock a writer re-reads the commit records that appeared since it started and drops from its
   part every video another writer committed meanwhile, then writes the part (data files, then commit
   record) and releases the generation. Nothing is ever deleted to take the lock, so two contenders cannot
   both win; old generations are pruned.

Exclusive create is a local hard link, or an S3 PUT with `If-None-Match: *` (AWS S3, SeaweedFS, MinIO). A
store that cannot do it is refused at start (`layout.probe_conditional_create`) with a message naming the
way out: one writer at a time.

Wall clocks: expiry compares the writers' clocks; keep them in sync (NTP) to well under `ttl_s`. An operator
who knows a run is dead can end its lease at once: `pipeline writers --output OUT --end RUN_ID`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import MolmoBatchError
from pipeline.tables import layout

log = logging.getLogger(__name__)

WRITERS_DIR = "_writers"
LEASES = "leases"
COMMIT = "commit"
# Commit-lock generations kept before pruning: each says which commit record it wrote, so a writer reads
# what others committed since its last flush from them instead of listing the whole commit table.
KEEP_GENERATIONS = 256


class LeaseError(MolmoBatchError, RuntimeError):
    """A writer cannot start (its id is taken) or has lost its lease (it must not commit any more)."""


def _now() -> float:
    return time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def leases_folder(root: str) -> str:
    return f"{root.rstrip('/')}/{WRITERS_DIR}/{LEASES}"


def commit_folder(root: str) -> str:
    return f"{root.rstrip('/')}/{WRITERS_DIR}/{COMMIT}"


def _safe(writer_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", writer_id)


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease file says."""

    writer_id: str
    token: str
    host: str
    pid: int
    started_at: float
    expires_at: float
    purpose: str = ""
    # The run-date partition its parts go to and the commit table of its group of tables: recovery after
    # its death, by a writer of the same group, lists only its own files there (empty in leases of older
    # versions: then recovery sweeps the whole output).
    partition: str = ""
    commit_table: str = ""
    ended: bool = False  # by an operator (`end_lease`): dead whatever its expiry says

    def live(self, now: float | None = None) -> bool:
        """Not expired, and, when the writer ran on this machine, its process still exists (a run killed
        here and rerun at once need not wait for the lease to expire)."""
        if self.ended or (now if now is not None else _now()) >= self.expires_at:
            return False
        return not (self.host == socket.gethostname() and not _pid_alive(self.pid))

    def describe(self) -> str:
        state = "live" if self.live() else "expired"
        return (f"{self.writer_id} ({self.purpose or 'writer'}, {self.host} pid {self.pid}, started "
                f"{_iso(self.started_at)}, {state} until {_iso(self.expires_at)})")


def _read_json(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_leases(fs: Any, root: str) -> list[LeaseInfo]:
    """Every writer's lease under the output (live and expired), oldest first."""
    folder = leases_folder(root)
    with contextlib.suppress(FileNotFoundError):
        fs.invalidate_cache(folder)
    try:
        paths = [p for p in fs.ls(folder, detail=False) if str(p).endswith(".json")]
    except FileNotFoundError:
        return []
    out = []
    for path in paths:
        data = _read_json(fs, path)
        if data is None:
            continue
        try:
            out.append(LeaseInfo(**{k: data[k] for k in LeaseInfo.__dataclass_fields__ if k in data}))
        except TypeError:
            log.warning("ignoring unreadable lease %s", path)
    return sorted(out, key=lambda info: info.started_at)


def end_lease(fs: Any, root: str, writer_id: str) -> bool:
    """Operator override: end `writer_id`'s lease now (its uncommitted parts become deletable). The lease
    stays, marked ended and expired, so the next writer's recovery finds where the dead writer's files are,
    deletes them and then the lease; a writer that was alive after all sees it ended and commits nothing.
    True if found."""
    path = f"{leases_folder(root)}/{_safe(writer_id)}.json"
    data = _read_json(fs, path)
    if data is None:
        return False
    layout.atomic_write(fs, path, json.dumps({**data, "expires_at": 0.0, "ended": True}).encode())
    return True


def remove_lease(fs: Any, root: str, writer_id: str) -> None:
    """Delete a dead writer's lease (recovery, once the files it left are gone)."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm(f"{leases_folder(root)}/{_safe(writer_id)}.json")


class WriterLease:
    """One writer's lease: acquire, keep alive from a daemon thread, release (see the module docstring)."""

    def __init__(
        self, fs: Any, root: str, writer_id: str, *, ttl_s: float = 300.0, heartbeat_s: float | None = None,
        purpose: str = "",
        partition: str = "",
        commit_table: str = "",
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.fs, self.root, self.writer_id, self.ttl_s = fs, root.rstrip("/"), writer_id, ttl_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.5, ttl_s / 6)
        self.purpose = purpose
        self.partition = partition
        self.commit_table = commit_table
        self.token = layout.writer_token(writer_id)
        self.path = f"{leases_folder(self.root)}/{_safe(writer_id)}.json"
        self.started_at = _now()
        self._renewed = 0.0  # time.monotonic() of the last successful write of the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False  # once presumed dead, always: a late renewal must not revive a cleaned-up writer
        self.held = False

    def _payload(self, expires_at: float | None = None) -> bytes:
        info = LeaseInfo(self.writer_id, self.token, socket.gethostname(), os.getpid(), self.started_at,
                         _now() + self.ttl_s if expires_at is None else expires_at, self.purpose, self.partition,
                         self.commit_table)
        return json.dumps(info.__dict__).encode()

    def acquire(self) -> None:
        """Create the lease; a writer id in use (or used before and not cleaned up) is refused."""
        folder = leases_folder(self.root)
        layout.probe_conditional_create(self.fs, folder)
        t0 = time.monotonic()
        if not layout.create_exclusive(self.fs, self.path, self._payload()):
            other = _read_json(self.fs, self.path) or {}
            raise LeaseError(
                f"writer id {self.writer_id!r} already holds a lease on this output (started "
                f"{_iso(float(other.get('started_at', 0)))}, host {other.get('host', '?')}): give this run its own "
                "--run-id, or end that lease with `pipeline writers --output OUT --end ID` if it is dead"
            )
        self._renewed = t0
        self.held = True
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.token}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.valid() or not self._still_mine():
                log.warning("lease %s lost (not renewed in time, or ended by an operator); this writer commits "
                            "nothing more", self.writer_id)
                return
            t0 = time.monotonic()
            try:
                layout.atomic_write(self.fs, self.path, self._payload())
                self._renewed = t0
            except Exception as exc:  # the store is down: keep trying; `valid()` turns False at the margin
                log.warning("could not renew lease %s: %s", self.writer_id, exc)

    def valid(self, margin_s: float | None = None) -> bool:
        """True while others cannot yet presume this writer dead (renewed within `ttl_s - margin_s`)."""
        margin = self.ttl_s / 4 if margin_s is None else margin_s
        if self.held and not self._lost and time.monotonic() - self._renewed >= self.ttl_s - margin:
            self._lost = True
        return self.held and not self._lost

    def _still_mine(self) -> bool:
        """False once an operator ended the lease (`end_lease`) or a recovery removed it."""
        try:
            with self.fs.open(self.path, "rb") as fh:
                data = json.loads(fh.read())
            mine = not (isinstance(data, dict) and data.get("ended"))
        except FileNotFoundError:
            mine = False
        except Exception:  # the store is down (or a write in progress): only the time margin decides
            return True
        if not mine:
            self._lost = True
        return mine

    def check(self) -> None:
        """Raise LeaseError unless this writer may still commit (called right before each commit record)."""
        if not self._still_mine():
            raise LeaseError(f"writer {self.writer_id}'s lease was ended by another process; it stops committing. "
                             "What it committed stays; rerun to finish the rest")
        if not self.valid():
            raise LeaseError(
                f"writer {self.writer_id} could not renew its lease for over {self.ttl_s * 0.75:.0f}s (store "
                "unreachable?); it stops committing, as other writers may now presume it dead. What it "
                "committed stays; rerun to finish the rest"
            )

    def release(self, *, left_files: bool = False) -> None:
        """Stop the heartbeat and delete the lease (the writer's parts are all committed). `left_files`: a
        flush failed after writing some data files: the lease stays, expired at once, so the next writer's
        recovery finds this writer dead and deletes them (recovery looks for leftovers of leases only)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        if self.held:
            with contextlib.suppress(FileNotFoundError, OSError):
                if left_files:
                    layout.atomic_write(self.fs, self.path, self._payload(expires_at=_now()))
                else:
                    self.fs.rm(self.path)
        self.held = False


@dataclass
class CommitTicket:
    generation: int
    path: str
    acquired: float  # time.monotonic()
    ttl_s: float

    def valid(self) -> bool:
        """Still well inside the lock's expiry: others will not take the next generation yet."""
        return time.monotonic() - self.acquired < self.ttl_s * 0.75


class CommitLock:
    """Mutual exclusion for commits to one output, built from exclusive creates only (never a delete race)."""

    def __init__(self, fs: Any, root: str, writer_id: str, *, ttl_s: float = 120.0) -> None:
        self.fs, self.root, self.writer_id, self.ttl_s = fs, root.rstrip("/"), writer_id, ttl_s
        self.folder = commit_folder(self.root)

    def _path(self, generation: int) -> str:
        return f"{self.folder}/{generation:012d}.json"

    def _generations(self) -> list[int]:
        with contextlib.suppress(FileNotFoundError):
            self.fs.invalidate_cache(self.folder)
        try:
            names = [str(p).rsplit("/", 1)[-1] for p in self.fs.ls(self.folder, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[:12]) for n in names if re.fullmatch(r"\d{12}\.json", n))

    def _free(self, generation: int) -> tuple[bool, str]:
        """Whether `generation` is released or expired, and who holds it otherwise."""
        data = _read_json(self.fs, self._path(generation))
        if data is None:  # vanished (pruned): a later one exists
            return True, ""
        if data.get("released") or _now() >= float(data.get("expires_at", 0)):
            return True, ""
        if data.get("host") == socket.gethostname() and not _pid_alive(int(data.get("pid", 0) or 0)):
            return True, ""  # its holder was killed on this machine: no need to wait for the expiry
        return False, str(data.get("writer_id", "?"))

    def acquire(self, *, timeout_s: float = 600.0, on_wait: Callable[[str], None] | None = None) -> CommitTicket:
        """Take the next generation, waiting while another writer holds the current one."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        told = False
        while True:
            gens = self._generations()
            current = gens[-1] if gens else 0
            free, holder = (True, "") if not gens else self._free(current)
            if free:
                t0 = time.monotonic()
                body = {"writer_id": self.writer_id, "acquired_at": _now(), "expires_at": _now() + self.ttl_s,
                        "released": False, "host": socket.gethostname(), "pid": os.getpid()}
                if layout.create_exclusive(self.fs, self._path(current + 1), json.dumps(body).encode()):
                    return CommitTicket(current + 1, self._path(current + 1), t0, self.ttl_s)
                continue  # another writer took it first: look again
            if time.monotonic() > deadline:
                raise LeaseError(f"waited {timeout_s:.0f}s for writer {holder}'s commit lock on {self.root}")
            if on_wait is not None and not told:
                on_wait(holder)
                told = True
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def release(self, ticket: CommitTicket, committed: Sequence[str] | None = None) -> None:
        """Give the lock back, saying which commit records (paths) this generation wrote; None: unknown (a
        failed commit), so later readers list the commit table instead of trusting this generation."""
        body: dict[str, Any] = {"writer_id": self.writer_id, "released": True, "expires_at": 0}
        if committed is not None:
            body["committed"] = list(committed)
        layout.atomic_write(self.fs, ticket.path, json.dumps(body).encode())
        for old in self._generations():
            if old < ticket.generation - KEEP_GENERATIONS:
                with contextlib.suppress(FileNotFoundError, OSError):
                    self.fs.rm(self._path(old))

    def settled_generation(self) -> int:
        """The newest generation whose commit is over (released): every commit record it or an earlier one
        wrote exists now. A writer reads what later generations committed (`committed_since`)."""
        gens = self._generations()
        if not gens:
            return 0
        data = _read_json(self.fs, self._path(gens[-1]))
        return gens[-1] if data is not None and data.get("released") else gens[-1] - 1

    def committed_since(self, after: int, before: int) -> list[str] | None:
        """The commit records generations after..before (exclusive) wrote, or None when that is not known
        for one of them (pruned, taken over from a writer that died, written by an older version): then
        the caller lists the commit table."""
        paths: list[str] = []
        for generation in range(after + 1, before):
            data = _read_json(self.fs, self._path(generation))
            if data is None or not data.get("released") or not isinstance(data.get("committed"), list):
                return None
            paths.extend(str(p) for p in data["committed"])
        return paths

    @contextlib.contextmanager
    def held(self, **kwargs: Any) -> Iterator[CommitTicket]:
        ticket = self.acquire(**kwargs)
        try:
            yield ticket
        finally:
            self.release(ticket)
