"""8. Scale: how soon a run starts working, and what its driver holds, at 10k and 100k videos.

A real S3 server (SeaweedFS, `pipeline.devtools.seaweed`) behind a loopback proxy that adds 20 ms to
every request (`pipeline.devtools.latency_proxy`: about real S3's first-byte latency), and the real CLI
(`python -m pipeline run`, the tiny Molmo2, its own embedded Ray) for each input form:

- a prefix of N objects, 1,000 a folder (`prefix-N/dNNNN/cNNNNNNN.mp4`);
- a manifest of N rows (`manifest-N.parquet`, a `uri` column only: the case that needs a lookup per row);
- WebDataset shards, 500 members a shard (200 shards at 100k), each video with a JSON sidecar.

Every object is the same tiny real mp4 (1 s, 64x48), so the first window comes as soon as the first
video is fetched. Measured from the CLI's start, per run:

- time to the first decoded window (the `window-decoded` event of `MOLMO_BATCH_TEST_EVENTS`; a checkout
  without that event gets it from a launcher that wraps its decode stage the same way);
- time until the run says how many videos it listed ("N video(s) listed under ..."),
- requests made, counted at the proxy by kind (LIST, HEAD, GET, GET-range), at both moments;
- the driver's peak RSS (the CLI process, sampled every 50 ms), and its growth over a 1k run of the
  same form.

A run is stopped (SIGKILL of its process group, Ray included) once it has done both, or at `--timeout`.
`--baseline-worktree PATH` runs another checkout's CLI (e.g. `main`) on the same corpus, in the same
run, for the side-by-side figures. The corpus is generated once into `<workdir>/scale/` (SeaweedFS's own
data folder, with its keys) and reused; 100k objects take a few minutes to upload the first time.

    python -m benchmarks.bench_scale                                   # 1k, 10k, 100k of each form
    python -m benchmarks.bench_scale --baseline-worktree /work/main    # and main's CLI beside it
    python -m benchmarks.bench_scale --quick                           # 200 and 1k: checks the script runs

Not part of `run_all` (minutes per run, hours with a baseline), nor of CI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    Result,
    at_most,
    base_parser,
    ensure_tiny_model,
    machine_summary,
    prepare_environment,
    print_results,
    write_json,
)

BENCH = "8 scale"
BUCKET = "scale"
FORMS = ("prefix", "manifest", "shards")
PER_FOLDER = 1000
DELAY_S = 0.020
LISTED = re.compile(r"(\d+) video\(s\) listed under \S+, (\d+) to process")
RAY_READY = re.compile(r"^cluster: \d+ node", re.MULTILINE)
LISTING_KINDS = ("LIST", "HEAD", "GET-range")  # what listing costs (GET-range: also a shard member's fetch)
TAG_VAR = "MOLMO_BATCH_BENCH_TAG"

# A checkout without the `window-decoded` event: its decode stage wrapped by a launcher. The wrapper is
# a module of its own (workers import it by name), touching the event file as the event hook does.
HOOK_MODULE = '''
import os
from pipeline.run import graph
from pipeline.video import decode

_decode_batch = decode.decode_batch


def decode_batch_with_event(batch, settings):
    for out in _decode_batch(batch, settings):
        if int(out["window_index"][0]) >= 0:
            folder = os.environ.get("MOLMO_BATCH_TEST_EVENTS")
            if folder:
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, "window-decoded"), "a") as fh:
                    fh.write(f"{os.getpid()}\\n")
        yield out


graph.decode_batch = decode_batch_with_event
'''
LAUNCHER = '''
import runpy
import scale_hooks  # noqa: F401  (wraps the decode stage)
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
'''


# ---------------------------------------------------------------------------------------------------
# The corpus


def _tiny_mp4(workdir: Path) -> bytes:
    from pipeline.devtools.samples import SampleSpec, write_video

    path = workdir / "tiny-1s-64x48.mp4"
    if not path.exists():
        write_video(path, SampleSpec("tiny", seconds=1.0, fps=4.0, width=64, height=48, seed=3))
    return path.read_bytes()


def _key(n: int, i: int) -> str:
    return f"prefix-{n}/d{i // PER_FOLDER:04d}/c{i:07d}.mp4"


def _shard(video: bytes, first: int, count: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(first, first + count):
            for name, data in ((f"c{i:07d}.mp4", video), (f"c{i:07d}.json", json.dumps({"caption": f"clip {i}"}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _put_all(client: Any, items: Iterator[tuple[str, bytes]], what: str) -> None:
    t0, done = time.monotonic(), 0
    with ThreadPoolExecutor(32) as pool:
        for _ in pool.map(lambda kv: client.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), items):
            done += 1
            if done % 10_000 == 0:
                print(f"  {what}: {done} objects in {time.monotonic() - t0:.0f} s", flush=True)


def ensure_corpus(server: Any, workdir: Path, sizes: list[int], members: int, forms: tuple[str, ...]) -> None:
    """Upload what `sizes` x `forms` need, unless a marker says it is there from an earlier run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    client = server._client()
    server.create_bucket(BUCKET)
    video = _tiny_mp4(workdir)

    def have(marker: str) -> bool:
        try:
            client.head_object(Bucket=BUCKET, Key=f".done/{marker}")
            return True
        except Exception:
            return False

    def mark(marker: str) -> None:
        client.put_object(Bucket=BUCKET, Key=f".done/{marker}", Body=b"")

    for n in sizes:
        if ("prefix" in forms or "manifest" in forms) and not have(f"prefix-{n}"):
            print(f"corpus: uploading {n} objects to s3://{BUCKET}/prefix-{n}/ (once; kept in {server.data_dir})", flush=True)
            _put_all(client, ((_key(n, i), video) for i in range(n)), f"prefix-{n}")
            mark(f"prefix-{n}")
        if "manifest" in forms and not have(f"manifest-{n}"):
            buf = io.BytesIO()
            pq.write_table(pa.table({"uri": [f"s3://{BUCKET}/{_key(n, i)}" for i in range(n)]}), buf)
            client.put_object(Bucket=BUCKET, Key=f"manifest-{n}.parquet", Body=buf.getvalue())
            mark(f"manifest-{n}")
        if "shards" in forms and not have(f"shards-{n}-{members}"):
            count = max(1, n // members)
            print(f"corpus: uploading {count} shards x {members} members to s3://{BUCKET}/shards-{n}/", flush=True)
            _put_all(client, ((f"shards-{n}/{s:05d}.tar", _shard(video, s * members, members)) for s in range(count)),
                     f"shards-{n}")
            mark(f"shards-{n}-{members}")


def input_url(form: str, n: int, members: int) -> str:
    if form == "prefix":
        return f"s3://{BUCKET}/prefix-{n}/"
    if form == "manifest":
        return f"s3://{BUCKET}/manifest-{n}.parquet"
    return f"s3://{BUCKET}/shards-{n}/{{00000..{max(1, n // members) - 1:05d}}}.tar"


HISTORY_PART = 64  # videos a commit part (the default --flush-videos): 100k done videos = 1,563 parts


def ensure_done_history(server: Any, n: int, model: Path) -> str:
    """`s3://scale/done-N/`: an output whose commit parts (64 videos each, as nightly runs leave them) say
    every video of prefix-N is done for the benchmark's task. The video ids and work keys come from this
    checkout's own listing and work identity, as its CLI computes them; written once, directly to the
    server (not through the proxy)."""
    import pyarrow.parquet as pq

    from pipeline.cli import build_parser, config_from_args
    from pipeline.config import VIDEO_GLOBS
    from pipeline.results.work import work_keys
    from pipeline.run import settings
    from pipeline.source.listing import list_videos
    from pipeline.tables import layout
    from pipeline.tables.schemas import COMMIT_TABLE, to_table

    client = server._client()
    output = f"s3://{BUCKET}/done-{n}"
    with contextlib.suppress(Exception):
        client.head_object(Bucket=BUCKET, Key=f".done/done-{n}")
        return output
    os.environ.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
                      AWS_DEFAULT_REGION="us-east-1")
    config = config_from_args(build_parser().parse_args(["run", *cli_args(input_url("prefix", n, 1), output, model,
                                                                             server.endpoint)]))
    keys = work_keys(settings.tasks_of(config), settings.work_settings(config, settings.frame_size_of(config)))
    refs = list_videos(input_url("prefix", n, 1), include=list(VIDEO_GLOBS), endpoint_url=server.endpoint)
    token = layout.writer_token("bench-history")
    print(f"history: {len(refs)} done videos in parts of {HISTORY_PART} under {output}/ (once)", flush=True)

    def part(first: int) -> tuple[str, bytes]:
        chunk = refs[first:first + HISTORY_PART]
        rows = [{"video_id": r.video_id, "uri": r.uri, "size_bytes": r.size_bytes, "status": "ok", "run_id": "history",
                 "tasks": "caption", "model_id": str(model), "work_keys": keys} for r in chunk]
        buf = io.BytesIO()
        pq.write_table(to_table(COMMIT_TABLE, rows), buf)
        key = layout.new_part_key([r.video_id for r in chunk], token)
        path = layout.part_path(f"{BUCKET}/done-{n}", COMMIT_TABLE, "2026-01-01", key)
        return path.removeprefix(f"{BUCKET}/"), buf.getvalue()

    _put_all(client, (part(i) for i in range(0, len(refs), HISTORY_PART)), f"done-{n}")
    client.put_object(Bucket=BUCKET, Key=f".done/done-{n}", Body=b"")
    return output


def drop_done_index(server: Any, n: int) -> None:
    """Remove `done-N/_done/` (derived data): the next branch run compacts the history from scratch."""
    client = server._client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"done-{n}/_done/"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])


# ---------------------------------------------------------------------------------------------------
# One run of the CLI


@dataclass
class RunFigures:
    code: str  # "branch" (this checkout) or "baseline"
    form: str
    size: int
    first_window_s: float | None = None
    ray_ready_s: float | None = None  # the driver printed the cluster (Ray is up)
    listed_s: float | None = None
    listed: int | None = None
    requests_at_first_window: dict[str, int] = field(default_factory=dict)
    requests_at_listed: dict[str, int] = field(default_factory=dict)
    requests_total: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    elapsed_s: float = 0.0
    timed_out: bool = False
    exit_code: int | None = None
    log_tail: str = ""


def _tagged(tag: str) -> list[int]:
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


def _has_event(checkout: Path) -> bool:
    return "window-decoded" in (checkout / "pipeline" / "video" / "decode.py").read_text()


def cli_args(input_url_: str, output: str, model: Path, endpoint: str) -> list[str]:
    """The benchmark's `pipeline run` arguments (a caption of 2 frames: the listing, not the model, is measured)."""
    return [
        "--input", input_url_, "--output", output, "--model", str(model),
        "--s3-endpoint-url", endpoint, "--tasks", "caption", "--window-s", "10", "--overlap-s", "1",
        "--num-frames", "2", "--max-fps", "1", "--max-new-tokens", "4", "--batch-size", "1", "--progress", "off",
    ]


def run_cli(checkout: Path, code: str, form: str, n: int, members: int, *, server: Any, proxy: Any,
            model: Path, workdir: Path, timeout_s: float, output: str | None = None,
            cluster: Any = None) -> RunFigures:
    """The CLI of `checkout` on one input, until the first window and the listing count (or timeout).
    With `output` (an all-done rerun: nothing to decode), until the CLI exits."""
    import psutil

    run_dir = workdir / "runs" / f"{code}-{form}-{n}-{uuid.uuid4().hex[:6]}"
    events = run_dir / "events"
    if cluster is not None:  # the workers' environment is the head's: one events folder, emptied per run
        events = cluster.events
        shutil.rmtree(events, ignore_errors=True)
    run_dir.mkdir(parents=True)
    tag = uuid.uuid4().hex
    python_path = [str(checkout)]
    command = [sys.executable, "-m", "pipeline", "run"]
    if not _has_event(checkout):
        hooks = run_dir / "hooks"
        hooks.mkdir()
        (hooks / "scale_hooks.py").write_text(HOOK_MODULE)
        (hooks / "scale_launch.py").write_text(LAUNCHER)
        python_path.append(str(hooks))
        command = [sys.executable, str(hooks / "scale_launch.py"), "run"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOLMO_BATCH_TEST_", "RAY_ADDRESS"))}
    env.update(
        PYTHONPATH=os.pathsep.join(python_path), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
        TOKENIZERS_PARALLELISM="false", MOLMO_BATCH_TEST_EVENTS=str(events), AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_DEFAULT_REGION="us-east-1", **{TAG_VAR: tag},
    )
    args = cli_args(input_url("prefix" if output else form, n, members), output or str(run_dir / "tables"), model,
                    proxy.endpoint) + (["--address", cluster.gcs_address] if cluster is not None else [])
    if cluster is not None:
        # The cluster's workers import what this checkout's driver does (and its hooks), not the venv's copy.
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": {"env_vars": {"PYTHONPATH": env["PYTHONPATH"]}}})
    log = run_dir / "cli.log"
    figures = RunFigures(code, form, n)
    proxy.reset()
    with open(log, "w") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen([*command, *args], cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            driver = psutil.Process(proc.pid)
            while proc.poll() is None:
                now = time.monotonic() - t0
                with contextlib.suppress(psutil.Error):
                    figures.peak_rss_mb = max(figures.peak_rss_mb, driver.memory_info().rss / 2**20)
                if figures.first_window_s is None and (events / "window-decoded").exists():
                    figures.first_window_s, figures.requests_at_first_window = now, proxy.counts()
                text = log.read_text(errors="replace") if figures.listed_s is None or figures.ray_ready_s is None else ""
                if figures.ray_ready_s is None and RAY_READY.search(text):
                    figures.ray_ready_s = now
                if figures.listed_s is None:
                    found = LISTED.search(text)
                    if found:
                        figures.listed_s, figures.requests_at_listed = now, proxy.counts()
                        figures.listed = int(found.group(1))
                if figures.first_window_s is not None and figures.listed_s is not None and not output:
                    break
                if now > timeout_s:
                    figures.timed_out = True
                    break
                time.sleep(0.05)
            figures.exit_code = proc.poll()
        finally:
            figures.elapsed_s = time.monotonic() - t0
            figures.requests_total = proxy.counts()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            deadline = time.monotonic() + 30
            while _tagged(tag) and time.monotonic() < deadline:
                time.sleep(0.2)
            for pid in _tagged(tag):  # a Ray process that left the group: never outlive the benchmark
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    figures.log_tail = "\n".join(log.read_text(errors="replace").splitlines()[-6:])
    return figures


# ---------------------------------------------------------------------------------------------------
# Figures


def _fmt_requests(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _describe(f: RunFigures) -> str:
    first = "never" if f.first_window_s is None else f"{f.first_window_s:.1f} s"
    ray = "" if f.ray_ready_s is None else f" (Ray up at {f.ray_ready_s:.1f} s)"
    listed = "not yet" if f.listed_s is None else f"{f.listed_s:.1f} s ({f.listed} videos)"
    stop = f"stopped at {f.elapsed_s:.0f} s" + (" (timeout)" if f.timed_out else "")
    ended = "" if f.exit_code is None else f"; the CLI exited {f.exit_code}"
    return (
        f"{f.code} {f.form} {f.size}: first window {first}{ray}; listing counted {listed}; driver peak RSS "
        f"{f.peak_rss_mb:.0f} MB; requests at first window [{_fmt_requests(f.requests_at_first_window)}], "
        f"at listing [{_fmt_requests(f.requests_at_listed)}], in all [{_fmt_requests(f.requests_total)}]; {stop}{ended}"
    )


def listing_requests_per_1000(f: RunFigures) -> float | None:
    """LIST + HEAD + GET-range requests until the listing was counted, per 1,000 videos listed.

    A prefix's listing is paced by decode (it streams: a run does not list ahead of its work), so within the
    timeout it may not be counted yet: then its LIST requests by the end, per 1,000 videos of the prefix (a
    prefix's other requests are the decode's whole-object GETs)."""
    if f.listed_s is None or not f.listed:
        if f.form == "prefix" and f.requests_total.get("LIST"):
            return 1000 * f.requests_total["LIST"] / f.size
        return None
    return 1000 * sum(f.requests_at_listed.get(k, 0) for k in LISTING_KINDS) / f.listed


def results_of(runs: list[RunFigures], sizes: list[int], timeout_s: float) -> list[Result]:
    """Targets: the first window within 20 s; driver RSS growth over the smallest size under 300 MB at the
    largest; each figure (first window, listing requests per video, driver peak RSS) growing less than
    1.5x from the second largest size to the largest."""
    out: list[Result] = []
    big, mid, small = sizes[-1], (sizes[-2] if len(sizes) > 1 else sizes[-1]), sizes[0]
    by = {(r.code, r.form, r.size): r for r in runs}
    for code in ("branch", "baseline"):
        for form in FORMS:
            at_big, at_mid, at_small = by.get((code, form, big)), by.get((code, form, mid)), by.get((code, form, small))
            if at_big is None:
                continue
            label = f"{code} {form}"
            first = at_big.first_window_s
            out.append(Result(BENCH, f"{label} {big}: seconds to the first decoded window", first, "<= 20 s",
                              first is not None and at_most(first, 20.0), " s",
                              f"none within {at_big.elapsed_s:.0f} s" if first is None else
                              f"Ray up at {at_big.ray_ready_s} s; requests before it: {_fmt_requests(at_big.requests_at_first_window)}"))
            if at_small is not None and big != small:
                growth = at_big.peak_rss_mb - at_small.peak_rss_mb
                out.append(Result(BENCH, f"{label} {big}: driver peak RSS growth over {small}", growth, "<= 300 MB",
                                  at_most(growth, 300.0), " MB",
                                  f"peak {at_big.peak_rss_mb:.0f} MB at {big}, {at_small.peak_rss_mb:.0f} MB at {small}"
                                  + ("" if at_big.listed_s is not None else " (listing not finished: a lower bound)")))
            if at_mid is not None and big != mid:
                for what, a, b in (
                    ("first window", at_big.first_window_s, at_mid.first_window_s),
                    ("listing requests per 1,000 videos", listing_requests_per_1000(at_big), listing_requests_per_1000(at_mid)),
                    ("driver peak RSS", at_big.peak_rss_mb, at_mid.peak_rss_mb),
                ):
                    ratio = (a / b) if a is not None and b else None
                    shown = ", ".join(f"{v:.3g} at {n}" if v is not None else f"none at {n}" for v, n in ((a, big), (b, mid)))
                    out.append(Result(BENCH, f"{label}: {what}, {big} / {mid}", ratio, "< 1.5x",
                                      ratio is not None and ratio < 1.5, "x", shown))
    for code in ("branch", "baseline"):
        for scenario in ("all-done first", "all-done"):
            at_big, at_mid, at_small = by.get((code, scenario, big)), by.get((code, scenario, mid)), by.get((code, scenario, small))
            if at_big is None:
                continue
            label = f"{code} {scenario} rerun"

            def exited(f: RunFigures | None) -> float | None:
                return f.elapsed_s if f is not None and f.exit_code == 0 and not f.timed_out else None

            t_big = exited(at_big)
            detail = (f"requests [{_fmt_requests(at_big.requests_total)}], driver peak RSS {at_big.peak_rss_mb:.0f} MB"
                      + ("" if t_big is not None else f"; did not finish ({at_big.log_tail[-200:]!r})"))
            steady = scenario == "all-done"
            out.append(Result(BENCH, f"{label} {big}: seconds from start to exit", t_big, "<= 15 s" if steady else "",
                              (t_big is not None and at_most(t_big, 15.0)) if steady else None, " s", detail))
            if at_small is not None and big != small:
                growth = at_big.peak_rss_mb - at_small.peak_rss_mb
                out.append(Result(BENCH, f"{label} {big}: driver peak RSS growth over {small}", growth, "<= 300 MB",
                                  at_most(growth, 300.0), " MB",
                                  f"peak {at_big.peak_rss_mb:.0f} MB at {big}, {at_small.peak_rss_mb:.0f} MB at {small}"))
            if at_mid is not None and big != mid:
                t_mid = exited(at_mid)
                ratio = t_big / t_mid if t_big is not None and t_mid else None
                out.append(Result(BENCH, f"{label}: seconds to exit, {big} / {mid}", ratio, "< 1.5x" if steady else "",
                                  (ratio is not None and ratio < 1.5) if steady else None, "x",
                                  f"{t_big} s at {big}, {t_mid} s at {mid}"))
    return out


@contextlib.contextmanager
def _cluster(wanted: bool, workdir: Path, server: Any) -> Iterator[Any]:
    """With --cluster: a local Ray head the runs join (`--address`), as nightly jobs join a running cluster,
    so Ray's own start is not in the figures; its workers get the storage keys and the events folder."""
    if not wanted:
        yield None
        return
    from pipeline.devtools.ray_head import RayHead

    events = workdir / "cluster-events"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "MOLMO_BATCH_TEST_"))}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MOLMO_BATCH_TEST_EVENTS=str(events),
               AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
               AWS_DEFAULT_REGION="us-east-1")
    head = RayHead(env, num_cpus=4, object_store_mb=1000)
    head.events = events  # type: ignore[attr-defined]
    head.start()
    print(f"cluster: a local Ray head at {head.gcs_address} (the runs join it)", flush=True)
    try:
        yield head
    finally:
        head.stop()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("Scale: time to the first window, requests and driver memory at 10k and 100k videos.")
    parser.add_argument("--sizes", default="", help="Comma-separated corpus sizes (default 1000,10000,100000; quick 200,1000).")
    parser.add_argument("--forms", default=",".join((*FORMS, "done")),
                        help="Input forms to run: prefix, manifest, shards; done: an all-done rerun over the prefix.")
    parser.add_argument("--baseline-worktree", type=Path, default=None,
                        help="Another checkout (e.g. /work/main) whose CLI runs on the same corpus, for comparison.")
    parser.add_argument("--timeout", type=float, default=0.0, help="Seconds before a run is stopped (default 900; quick 240).")
    parser.add_argument("--cluster", action="store_true",
                        help="Start a local Ray head once and have every run join it (Ray's start left out of the figures).")
    parser.add_argument("--delay-ms", type=float, default=DELAY_S * 1000, help="Latency the proxy adds per request.")
    args = parser.parse_args(argv)
    prepare_environment()
    # Stopped (SIGTERM): unwind, so the run in progress is killed and SeaweedFS stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))
    from pipeline.devtools.latency_proxy import LatencyProxy
    from pipeline.devtools.seaweed import SeaweedServer

    quick: bool = args.quick
    sizes = [int(s) for s in args.sizes.split(",") if s] or ([200, 1000] if quick else [1000, 10_000, 100_000])
    sizes.sort()
    forms = tuple(f.strip() for f in args.forms.split(",") if f.strip())
    members = 100 if quick else 500
    timeout_s = args.timeout or (240.0 if quick else 900.0)
    workdir: Path = args.workdir / "scale"
    workdir.mkdir(parents=True, exist_ok=True)
    checkouts = [("branch", REPO_ROOT)] + ([("baseline", args.baseline_worktree.resolve())] if args.baseline_worktree else [])

    print(f"machine: {machine_summary()}")
    print(f"sizes {sizes}, forms {forms}, {members} members a shard, +{args.delay_ms:g} ms a request, "
          f"timeout {timeout_s:.0f} s; checkouts: " + ", ".join(f"{c} {p}" for c, p in checkouts))
    model = ensure_tiny_model(args.workdir, 112)
    cred_file = workdir / "seaweed-keys.json"  # the corpus is reused with the keys that wrote it
    if cred_file.exists():
        keys = json.loads(cred_file.read_text())
    else:
        from pipeline.devtools.seaweed import new_credentials

        access, secret = new_credentials()
        keys = {"access_key": access, "secret_key": secret}
        cred_file.write_text(json.dumps(keys))
        cred_file.chmod(0o600)
    runs: list[RunFigures] = []
    with SeaweedServer(workdir / "seaweed", access_key=keys["access_key"], secret_key=keys["secret_key"]) as server:
        t0 = time.monotonic()
        ensure_corpus(server, workdir, sizes, members, forms)
        print(f"corpus ready ({time.monotonic() - t0:.0f} s)", flush=True)
        with LatencyProxy(server.endpoint, delay_s=args.delay_ms / 1000) as proxy, \
                _cluster(args.cluster, workdir, server) as cluster:
            for form in [f for f in forms if f in FORMS]:
                for n in sizes:
                    for code, checkout in checkouts:
                        figures = run_cli(checkout, code, form, n, members, server=server, proxy=proxy, model=model,
                                          workdir=workdir, timeout_s=timeout_s, cluster=cluster)
                        runs.append(figures)
                        print(_describe(figures), flush=True)
                        if figures.first_window_s is None and not figures.timed_out:
                            print(f"  the CLI ended early:\n{figures.log_tail}", flush=True)
            # All done: a rerun over prefix-N whose output already holds every video. Baseline first (it reads
            # the history), then this checkout twice: building the done index from the history, then with it.
            for n in sizes if "done" in forms else []:
                output = ensure_done_history(server, n, model)
                for code, checkout in reversed(checkouts):
                    scenarios = ["all-done first", "all-done"] if code == "branch" else ["all-done"]
                    for scenario in scenarios:
                        if scenario == "all-done first":
                            drop_done_index(server, n)
                        figures = run_cli(checkout, code, scenario, n, members, server=server, proxy=proxy,
                                          model=model, workdir=workdir, timeout_s=timeout_s, output=output,
                                          cluster=cluster)
                        runs.append(figures)
                        print(_describe(figures), flush=True)
    results = results_of(runs, sizes, timeout_s)
    print_results(f"{BENCH} ({'quick: figures meaningless' if quick else 'full'})", results)
    out = args.json_path or (workdir / ("results-quick.json" if quick else "results.json"))
    write_json(out, results, {"machine": machine_summary(), "runs": [asdict(r) for r in runs], "sizes": sizes,
                              "members_per_shard": members, "delay_ms": args.delay_ms, "quick": quick})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
