"""The done index answers exactly what reading every commit part would, from a few files: lookups by URI
range, compaction over generations, two writers compacting at once, superseded generations removed, and
the sink reading only what the index does not cover."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.results.tasks import build_tasks
from pipeline.results.work import DoneQuery, DoneRow, work_done
from pipeline.tables import done_index
from pipeline.tables.done_index import DoneIndexError, DoneLookup, IndexFile, compact, latest_generation
from pipeline.tables.schemas import COMMIT_TABLE
from pipeline.tables.sink import TableSink

TASKS = tuple(build_tasks(["caption", "count:person"]))
KEYS = ("k-caption", "k-count")
QUERY = DoneQuery(KEYS, TASKS, "m")
RETRYING = DoneQuery(KEYS, TASKS, "m", ("ok", "partial"))  # --retry-statuses failed


# -- pure: which files hold a URI, what rows mean ---------------------------------------------------------


@given(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=40), st.integers(1, 6), st.sampled_from("abcdefghz"))
def test_files_for_finds_every_file_whose_range_holds_the_uri(uris: list[str], per_file: int, probe: str) -> None:
    uris.sort()  # equal URIs (a video's several rows) may straddle two files
    chunks = [uris[i:i + per_file] for i in range(0, len(uris), per_file)]
    files = tuple(IndexFile(f"f{i}", c[0], c[-1], len(c)) for i, c in enumerate(chunks))
    lookup = DoneLookup(output="/nowhere", endpoint_url=None, files=tuple(reversed(files)), query=QUERY)
    expected = {f.path for f in files if f.first <= probe <= f.last}
    assert {f.path for f in lookup.files_for([probe])} == expected


def test_work_done_counts_statuses_and_reads_rows_made_before_work_keys() -> None:
    rows = [
        DoneRow("v1", "ok", ["k-caption"], "caption", "m"),
        DoneRow("v2", "failed", ["k-caption", "k-count"], "caption,count:person", "m"),
        DoneRow("v3", "ok", None, "caption,count:person", "m"),  # legacy: names its tasks, same model
        DoneRow("v4", "ok", None, "caption", "other-model"),  # legacy of another model: stands for nothing
    ]
    assert work_done(rows, QUERY) == {"v1": {"k-caption"}, "v2": set(KEYS), "v3": set(KEYS), "v4": set()}
    assert work_done(rows, RETRYING) == {"v1": {"k-caption"}, "v3": set(KEYS), "v4": set()}
    assert work_done(rows, RETRYING, any_status=True) == work_done(rows, QUERY)


def test_a_lookup_reads_only_the_row_groups_its_uris_fall_in(tmp_path: Path) -> None:
    """An index file of 1,000 rows sorted by URI in groups of 100: a batch of consecutive URIs reads the
    one or two groups that hold them (not the file), and every batch's answer is what all rows say."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(5)
    uris = sorted(f"s3://b/v/{i:05d}.mp4" for i in range(1000))
    rows = [{"uri": u, "video_id": f"id{u[-9:-4]}", "status": rng.choice(["ok", "failed"]),
             "work_keys": rng.choice([["k-caption"], list(KEYS), []]), "tasks": "caption", "model_id": "m"} for u in uris]
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=done_index.INDEX_SCHEMA), path, row_group_size=100)
    lookup = DoneLookup(output=str(tmp_path), endpoint_url=None, query=QUERY,
                        files=(IndexFile(str(path), uris[0], uris[-1], len(uris)),))
    every = work_done([DoneRow(r["video_id"], r["status"], r["work_keys"], r["tasks"], r["model_id"]) for r in rows], QUERY)
    done_index._FILE_CACHE.clear()
    done_index._GROUP_CACHE.clear()
    batch = list(range(230, 290))  # within the third group (200-299)
    done, _ = lookup.work_done([rows[i]["video_id"] for i in batch], [uris[i] for i in batch])
    assert done == {rows[i]["video_id"]: every[rows[i]["video_id"]] for i in batch if rows[i]["video_id"] in every}
    assert list(done_index._GROUP_CACHE) == [(str(path), 2)]
    for start in range(0, 1000, 70):  # batches straddling groups, and the last one short
        batch = list(range(start, min(start + 70, 1000)))
        done, _ = lookup.work_done([rows[i]["video_id"] for i in batch], [uris[i] for i in batch])
        assert done == {rows[i]["video_id"]: every[rows[i]["video_id"]] for i in batch if rows[i]["video_id"] in every}
    assert len(done_index._GROUP_CACHE) == 10  # each group read once


# -- with Ray: compaction and lookups against the commit parts themselves ----------------------------------


def _commit(out: Path, writer: str, videos: dict[str, tuple[str, list[str]]]) -> None:
    """One writer commits `videos` (id -> (status, work keys)), one part per two videos."""
    sink = TableSink(str(out), run_date="2026-01-05", writer_id=writer)
    sink.start()
    for i, (vid, (status, keys)) in enumerate(sorted(videos.items())):
        sink.add_video(vid, {COMMIT_TABLE: [_videos_row(vid, status, keys)]})
        if i % 2:
            sink.flush()
    sink.flush()
    sink.close()


def _videos_row(vid: str, status: str, keys: list[str]) -> dict[str, Any]:
    return {"video_id": vid, "uri": f"s3://corpus/{vid[:2]}/{vid}.mp4", "status": status, "run_id": "r",
            "work_keys": keys, "tasks": "caption,count:person", "model_id": "m", "size_bytes": 1}


def _history(seed: int, n: int) -> dict[str, tuple[str, list[str]]]:
    rng = random.Random(seed)
    return {f"v{rng.randrange(10 * n):04d}": (rng.choice(["ok", "partial", "failed"]),
                                                rng.sample(KEYS, rng.randint(0, 2))) for _ in range(n)}


def _all_rows(out: Path, query: DoneQuery, any_status: bool = False) -> dict[str, set[str]]:
    """What the run's driver read before the index: every commit part."""
    return TableSink(str(out), run_date="2026-01-05").done_work(query, any_status=any_status)


def _lookup(out: Path, query: DoneQuery, generation: Any) -> DoneLookup:
    return DoneLookup(output=str(out), endpoint_url=None, files=generation.files, query=query,
                      recent_committed={} if query.statuses else None, generation=generation.number)


def _uri(vid: str) -> str:
    return _videos_row(vid, "ok", [])["uri"]


@pytest.mark.integration
def test_compacted_index_answers_what_every_commit_part_says(ray_local: None, tmp_path: Path, monkeypatch: Any) -> None:
    out = tmp_path / "out"
    for night in range(3):  # videos recommitted across nights: several rows per video, across files
        _commit(out, f"night{night}", _history(night, 12))
    fs, root = TableSink(str(out), run_date="x").fs, str(out)
    messages: list[str] = []
    first = compact(fs, root, output=str(out), endpoint_url=None, commit_table=COMMIT_TABLE, rows_per_file=4,
                    echo=messages.append)
    assert first is not None and first.number == 1 and len(first.files) > 3
    parts = {p.name for p in out.glob("videos/*/part-*.parquet")}
    assert len(first.covers) == len(parts) and messages[-1].startswith("done index: generation 1")

    listed = sorted(_all_rows(out, QUERY, any_status=True))
    for query in (QUERY, RETRYING):
        done, committed = _lookup(out, query, first).work_done(listed, [_uri(v) for v in listed])
        assert done == {v: k for v, k in _all_rows(out, query).items() if v in listed}
        if query.statuses:
            assert committed == _all_rows(out, query, any_status=True)

    # A later night: the sink reads only the parts the index does not cover; a new generation holds all.
    _commit(out, "night3", _history(3, 6))
    reader = TableSink(str(out), run_date="2026-01-05")
    reader.skip_indexed(first.covers)
    recent = reader.done_work(QUERY)
    assert set(recent) == set(_history(3, 6))  # only the videos of the uncovered parts
    second = compact(fs, root, output=str(out), endpoint_url=None, commit_table=COMMIT_TABLE, rows_per_file=4)
    assert second is not None and second.number == 2 and second.covers > first.covers
    listed = sorted(_all_rows(out, QUERY, any_status=True))
    done, _ = _lookup(out, QUERY, second).work_done(listed, [_uri(v) for v in listed])
    assert done == _all_rows(out, QUERY)
    assert compact(fs, root, output=str(out), endpoint_url=None, commit_table=COMMIT_TABLE) == second  # nothing new

    # Two writers compacting at once: one publishes generation 3 first; the other's files go, its result is
    # the winner's generation.
    _commit(out, "night4", _history(4, 4))
    third = compact(fs, root, output=str(out), endpoint_url=None, commit_table=COMMIT_TABLE)
    assert third is not None and third.number == 3
    _commit(out, "night5", _history(5, 4))
    stale = iter([second])  # the other writer read generation 2, before generation 3 was published
    real = done_index.latest_generation
    monkeypatch.setattr(done_index, "latest_generation", lambda *a, **k: next(stale, None) or real(*a, **k))
    raced = compact(fs, root, output=str(out), endpoint_url=None, commit_table=COMMIT_TABLE)
    monkeypatch.undo()
    assert raced == latest_generation(fs, root) and raced is not None and raced.number == 3
    folders = sorted(p.name for p in (out / "_done").iterdir() if p.is_dir())
    assert len(folders) == 3 and all(f.startswith(f"gen-0000000{i}-") for i, f in zip((1, 2, 3), folders, strict=True))

    # Superseded generations go once their successor is older than the keep time (the newest two stay).
    assert done_index._remove_superseded(fs, root, done_index.DEFAULT_POLICY, keep_s=3600) == 0
    assert done_index._remove_superseded(fs, root, done_index.DEFAULT_POLICY, keep_s=0) == 1
    assert sorted(p.name for p in (out / "_done").glob("*.json")) == ["gen-00000002.json", "gen-00000003.json"]
    stale_lookup = _lookup(out, QUERY, first)
    done_index._FILE_CACHE.clear()
    with pytest.raises(DoneIndexError, match=r"generation 1 .* was removed"):
        stale_lookup.work_done(listed, [_uri(v) for v in listed])


def test_manifest_names_its_files_and_the_parts_it_covers(tmp_path: Path) -> None:
    """The manifest is plain JSON a person (or another tool) can read."""
    (tmp_path / "_done").mkdir()
    blob = {"generation": 4, "created_at": 1.0, "folder": "gen-00000004-abc", "covers": ["k1", "k2"],
            "files": [{"name": "part-1.parquet", "first": "a", "last": "c", "rows": 3}]}
    (tmp_path / "_done" / "gen-00000004.json").write_text(json.dumps(blob))
    (tmp_path / "_done" / "gen-00000002.json").write_text(json.dumps({**blob, "generation": 2, "files": []}))
    fs = TableSink(str(tmp_path), run_date="x").fs
    got = latest_generation(fs, str(tmp_path))
    assert got is not None and (got.number, got.covers, got.rows) == (4, frozenset({"k1", "k2"}), 3)
    assert got.files[0].path == f"{tmp_path}/_done/gen-00000004-abc/part-1.parquet"


@pytest.mark.integration
def test_a_start_from_the_index_reads_only_the_commits_since_its_lock_generation(
    ray_local: None, tmp_path: Path, monkeypatch: Any
) -> None:
    """The commit table grows every night; a run that starts from the done index reads the commit lock's
    generations after the index's (they name their commit records) and lists nothing, and the compaction at
    its end folds in what it knows, again without a listing."""
    from pipeline.tables import layout
    from pipeline.tables.leases import CommitLock

    out = tmp_path / "out"
    for night in range(2):
        _commit(out, f"night{night}", _history(night, 8))
    fs, root = TableSink(str(out), run_date="x").fs, str(out)
    first = compact(fs, root, output=str(out), endpoint_url=None, commit_table=COMMIT_TABLE)
    assert first is not None and first.lock_generation == CommitLock(fs, root, "t").settled_generation() > 0
    _commit(out, "night2", _history(2, 6))
    every_key = {p.stem.removeprefix("part-") for p in out.glob("videos/*/part-*.parquet")}
    listings: list[str] = []
    real_list_parts = layout.list_parts
    monkeypatch.setattr(layout, "list_parts", lambda fs, root, table: listings.append(table) or real_list_parts(fs, root, table))

    sink = TableSink(str(out), run_date="2026-01-06", writer_id="run-x")
    started = sink.list_commits(since=first.lock_generation)
    assert set(started.values()) == every_key - first.covers and listings == []
    sink.skip_indexed(first.covers)
    assert set(sink.done_work(QUERY, any_status=True)) == set(_history(2, 6)) and listings == []
    known, lock = sink.known_commits()
    sink.close()
    second = compact(fs, root, output=str(out), endpoint_url=None, commit_table=COMMIT_TABLE, parts=known,
                     lock_generation=lock)
    assert listings == [] and second is not None and second.covers == every_key and second.lock_generation == lock
    listed = sorted(_all_rows(out, QUERY, any_status=True))
    done, _ = _lookup(out, QUERY, second).work_done(listed, [_uri(v) for v in listed])
    assert done == _all_rows(out, QUERY)

    # A generation after the index's that does not say what it committed (its writer failed mid-commit, or
    # it was pruned): the start lists the commit table instead, and misses nothing.
    writer = TableSink(str(out), run_date="2026-01-07", writer_id="night3")
    writer.add_video("v9999", {COMMIT_TABLE: [_videos_row("v9999", "ok", KEYS[:1])]})
    real_release = writer.lock.release
    monkeypatch.setattr(writer.lock, "release", lambda ticket, committed=None: real_release(ticket, None))
    writer.flush()
    writer.close()
    listings.clear()
    again = TableSink(str(out), run_date="2026-01-07", writer_id="run-y")
    assert set(again.list_commits(since=second.lock_generation).values()) == every_key | {
        p.stem.removeprefix("part-") for p in out.glob("videos/run_date=2026-01-07/part-*.parquet")}
    assert listings == ["videos"]
    again.close()
