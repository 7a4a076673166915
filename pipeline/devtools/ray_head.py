"""A real local Ray head for tests and benchmarks: `ray start --head --block` on 127.0.0.1 with its own ports
and temp dir, a child process we own, stopped by the processes it started (never `ray stop`, which would
stop every Ray on the machine, other test runs' included)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from pipeline.devtools.seaweed import free_ports

RAY = str(Path(sys.executable).parent / "ray")


class RayHead:
    """`ray start --head --block` on 127.0.0.1 with its own ports and temp dir, as a child we own."""

    def __init__(self, env: dict[str, str], *, num_cpus: int = 4, object_store_mb: int = 300) -> None:
        self.env = env
        self.num_cpus, self.object_store_mb = num_cpus, object_store_mb
        self.temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths are limited
        names = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
                 "metrics-export-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                 "runtime-env-agent-port")
        ports = free_ports(len(names) + 40)
        self.ports = dict(zip(names, ports, strict=False))
        self.worker_ports = ports[len(names):]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(self.temp_dir) / "head.log"

    @property
    def address(self) -> str:
        """The dashboard's address: what `ray job submit --address` takes."""
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    @property
    def gcs_address(self) -> str:
        """The cluster's address: what a driver on this machine joins (`--address`, `ray.init(address=...)`)."""
        return f"127.0.0.1:{self.ports['port']}"

    def start(self) -> None:
        cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
               f"--num-cpus={self.num_cpus}", "--num-gpus=0", f"--object-store-memory={self.object_store_mb * 1024**2}",
               "--worker-port-list=" + ",".join(map(str, self.worker_ports)),
               *(f"--{k}={v}" for k, v in self.ports.items())]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not come up:\n{self.log.read_text()[-3000:]}")

    def _ours(self) -> list[psutil.Process]:
        """Every process of this head: its process group, and anything naming its temp dir."""
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                in_group = self.proc is not None and os.getpgid(p.pid) == self.proc.pid
                if in_group or any(self.temp_dir in a for a in p.info["cmdline"] or []):
                    found.append(p)
        return found

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        left = self._ours()
        _, alive = psutil.wait_procs(left, timeout=3)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def diagnostics(self) -> str:
        """The head's own log and the error lines of its session logs (for failure messages)."""
        out = [f"head log:\n{self.log.read_text(errors='replace')[-2000:]}" if self.log.exists() else "no head log"]
        for path in sorted(Path(self.temp_dir).glob("session_*/logs/*")):
            if path.suffix in (".log", ".out", ".err") and path.is_file():
                bad = [ln for ln in path.read_text(errors="replace").splitlines()
                       if " E " in ln or " C " in ln or "Error" in ln or "error while" in ln]
                if bad:
                    out.append(f"{path.name}:\n" + "\n".join(bad[-5:]))
        return "\n".join(out)[-6000:]

    def submit(self, *entrypoint: str, working_dir: Path, runtime_env: dict[str, Any] | None = None
               ) -> subprocess.CompletedProcess[str]:
        """`ray job submit` of `entrypoint` with `working_dir` shipped to the cluster; waits for its end."""
        cmd = [RAY, "job", "submit", "--address", self.address, "--working-dir", str(working_dir)]
        if runtime_env:
            cmd += ["--runtime-env-json", json.dumps(runtime_env)]
        cmd += ["--", *entrypoint]
        env = {k: v for k, v in self.env.items() if not k.startswith("AWS_")}  # the client needs no keys
        for _ in range(5):
            done = subprocess.run(cmd, cwd=working_dir, env=env, capture_output=True, text=True, timeout=400)
            if "No available agent" not in done.stdout + done.stderr:
                return done
            time.sleep(2)
        return done
