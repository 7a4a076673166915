"""Listing a folder or prefix, split into units that can be listed in parallel, without caching.

A prefix is a tree of "levels" (S3: the keys and common prefixes under `prefix/` with delimiter `/`;
elsewhere: a directory's entries). `plan_units` explores the first levels on the driver, one request
per level (the first page only), until it has enough independent units; the Ray tasks of
`pipeline.source.stream` then list the units in parallel, page by page, and stream the refs on:

- `ObjectsUnit`: objects the driver's first pages already returned (at most one page per level);
- `LevelUnit`: the rest of a level after its first page (S3 continuation token), whose later folders
  are walked in the same task;
- `TreeUnit`: everything below a folder (S3: a flat listing, 1,000 keys a request, in key order).

No listing here goes through fsspec's directory cache (s3fs keeps every object's info in it: ~1.5 KB a
video on the driver): S3 is listed with `list_objects_v2` through the filesystem's own client, other
stores with `ls(refresh=True)` on a filesystem built with `use_listings_cache=False`.

`list_videos` is the same listing in this process, sorted by URI: what `pipeline plan`, the benchmarks
and the tests use on small inputs. `video_id` is derived from the URI and the object's version (ETag on
S3, else size and modification time; `pipeline.source.refs`), identical either way.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs

from pipeline.io.retry import DEFAULT_POLICY, RetryPolicy, StorageUnavailable, retry_call
from pipeline.io.storage import fast_s3_timestamps, full_url, storage_options
from pipeline.source import manifest, shards
from pipeline.source.refs import SourceError, VideoRef, error_ref, make_video_id, object_version

KEYS_PER_REQUEST = 1000  # S3's page size; also the chunk a local directory is cut into
PLAN_MAX_LEVELS = 64  # levels the driver explores (one request each) before handing the rest to tasks
PLAN_MAX_DEPTH = 4
PLAN_THREADS = 16


def _matches(rel_path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    name = rel_path.rsplit("/", 1)[-1]

    def hit(patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel_path, p) for p in patterns)

    return hit(include) and not hit(exclude)


@dataclass(frozen=True)
class ObjectInfo:
    """What listing keeps of one object: its path on the filesystem, size and version."""

    path: str
    size: int
    version: str


@dataclass(frozen=True)
class Page:
    """One listing request's answer for a level: its objects, its sub-folders, and where to go on."""

    objects: list[ObjectInfo]
    folders: list[str]
    token: str | None  # S3 continuation token; None when the level is complete


@dataclass(frozen=True)
class ObjectsUnit:
    objects: tuple[ObjectInfo, ...]


@dataclass(frozen=True)
class LevelUnit:
    folder: str
    token: str  # continue the level here (after the driver's first page)
    seen_upto: str  # folders at or before this one are units of their own


@dataclass(frozen=True)
class TreeUnit:
    folder: str


ListUnit = ObjectsUnit | LevelUnit | TreeUnit


# -- one filesystem's listing, without caches --------------------------------------------------------


class Lister:
    """Lists levels and trees of one filesystem. Picklable: it rebuilds its filesystem where it runs."""

    def __init__(
        self, url: str, endpoint_url: str | None = None, retry: RetryPolicy = DEFAULT_POLICY, *, page_size: int = KEYS_PER_REQUEST
    ) -> None:
        self.url = url
        self.endpoint_url = endpoint_url
        self.retry = retry
        self.page_size = page_size  # keys per listing request (S3's maximum is 1,000)
        self._fs: Any = None
        self._root = ""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, self._root = _uncached_fs(self.url, self.endpoint_url)
            if self.is_s3:
                fast_s3_timestamps(self._fs)  # most of a listed key's CPU was botocore's date parsing
        return self._fs

    @property
    def root(self) -> str:
        """The input's path on its filesystem, without a trailing slash."""
        self.fs  # noqa: B018  (builds fs and root)
        return self._root

    @property
    def is_s3(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol in ("s3", "s3a")

    def uri(self, path: str) -> str:
        return full_url(self.fs, path)

    # S3 -------------------------------------------------------------------------------------------

    def _s3_page(self, folder: str, token: str | None, delimiter: str) -> dict[str, Any]:
        from fsspec.asyn import sync

        bucket, _, key = folder.partition("/")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{key}/" if key else "", "MaxKeys": self.page_size}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        fs = self.fs
        return retry_call(
            lambda: sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs), f"list {self.uri(folder)}/", self.retry
        )

    def _s3_objects(self, bucket: str, answer: dict[str, Any]) -> list[ObjectInfo]:
        out = []
        for c in answer.get("Contents", []):
            key = c["Key"]
            if key.endswith("/"):  # a "folder marker" object some tools write
                continue
            out.append(ObjectInfo(f"{bucket}/{key}", int(c.get("Size") or 0), object_version(c)))
        return out

    # generic fsspec (local, gcs, ...) ------------------------------------------------------------------

    def _ls(self, folder: str) -> tuple[list[ObjectInfo], list[str]]:
        fs = self.fs
        entries = retry_call(lambda: fs.ls(folder, detail=True, refresh=True), f"list {self.uri(folder)}", self.retry)
        objects, folders = [], []
        for e in entries:
            name = str(e["name"]).rstrip("/")
            if e.get("type") == "directory":
                if name != folder:
                    folders.append(name)
            else:
                objects.append(ObjectInfo(name, int(e.get("size") or 0), object_version(e)))
        return objects, folders

    # the two operations the units need -------------------------------------------------------------

    def level(self, folder: str, token: str | None = None) -> Page:
        """One page of a level: the objects directly in `folder`, its sub-folders, the continuation."""
        if self.is_s3:
            answer = self._s3_page(folder, token, "/")
            bucket = folder.partition("/")[0]
            folders = [f"{bucket}/{p['Prefix'].rstrip('/')}" for p in answer.get("CommonPrefixes", [])]
            nxt = answer.get("NextContinuationToken") if answer.get("IsTruncated") else None
            return Page(self._s3_objects(bucket, answer), folders, nxt)
        objects, folders = self._ls(folder)
        return Page(objects, folders, None)

    def tree(self, folder: str) -> Iterator[list[ObjectInfo]]:
        """Every object below `folder`, in pages, in sorted path order (S3: one flat listing)."""
        if self.is_s3:
            bucket = folder.partition("/")[0]
            token: str | None = None
            while True:
                answer = self._s3_page(folder, token, "")
                yield self._s3_objects(bucket, answer)
                token = answer.get("NextContinuationToken") if answer.get("IsTruncated") else None
                if not token:
                    return
        else:
            yield from self._walk(folder)

    def _walk(self, folder: str) -> Iterator[list[ObjectInfo]]:
        objects, folders = self._ls(folder)
        # Sorted as full paths sort (a folder's contents sit where "name/" sorts among its siblings), so a
        # walk yields the same order as sorting every path: what `--max-videos` keeps.
        entries: list[tuple[str, ObjectInfo | None]] = [(o.path, o) for o in objects]
        entries += [(f + "/", None) for f in folders]
        entries.sort(key=lambda e: e[0])
        batch: list[ObjectInfo] = []
        for name, obj in entries:
            if obj is not None:
                batch.append(obj)
                if len(batch) >= self.page_size:
                    yield batch
                    batch = []
                continue
            if batch:
                yield batch
                batch = []
            yield from self._walk(name.rstrip("/"))
        if batch:
            yield batch

    def stat(self, path: str) -> ObjectInfo | str | None:
        """`path` as one object (the input names a file), "folder", or None when it does not exist."""
        fs = self.fs
        try:
            info = retry_call(lambda: fs.info(path), f"look up {self.uri(path)}", self.retry)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return "folder"
        return ObjectInfo(path, int(info.get("size") or 0), object_version(info))


def _uncached_fs(url: str, endpoint_url: str | None) -> tuple[Any, str]:
    """A filesystem for `url` that keeps no listing cache (local: the usual one), and the root path."""
    options = storage_options(url, endpoint_url)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol not in ("file", "local"):
        options["use_listings_cache"] = False
    fs, path = url_to_fs(url, **options)
    return fs, path.rstrip("/") or path


# -- planning on the driver ---------------------------------------------------------------------------


def plan_units(lister: Lister, *, max_levels: int = PLAN_MAX_LEVELS, max_depth: int = PLAN_MAX_DEPTH) -> list[ListUnit]:
    """Split the input into units: explore levels breadth first (the first page of each, in parallel)
    until there are enough units to keep the listing tasks busy.

    Raises:
        SourceError: the input does not exist or cannot be listed (a start-up failure).
    """
    root = lister.root
    try:
        # S3: the root's first page says whether it is a prefix (a HEAD only when it is not); elsewhere a
        # file must be told from a folder first (listing a local file lists the file itself).
        kind = "folder" if lister.is_s3 else lister.stat(root)
        if kind is None:
            raise SourceError(f"input {lister.url} does not exist: check the path/bucket and your credentials")
        if isinstance(kind, ObjectInfo):
            return [ObjectsUnit((kind,))]
        first = lister.level(root)
        if lister.is_s3 and not (first.objects or first.folders or first.token):
            kind = lister.stat(root)
            if kind is None:  # an empty prefix is no folder on S3 (a typo, most often)
                raise SourceError(f"input {lister.url} does not exist: check the path/bucket and your credentials")
            return [ObjectsUnit((kind,))] if isinstance(kind, ObjectInfo) else []  # an empty bucket
    except SourceError:
        raise
    except Exception as exc:  # permission, DNS, bad endpoint, store down past the budget: say so at start
        raise SourceError(f"cannot list input {lister.url}: {type(exc).__name__}: {exc}") from None

    units: list[ListUnit] = []
    explored = 0

    def take(folder: str, page: Page) -> list[str]:
        if page.objects:
            units.append(ObjectsUnit(tuple(page.objects)))
        if page.token:
            units.append(LevelUnit(folder, page.token, page.folders[-1] if page.folders else ""))
        return page.folders

    frontier = take(root, first)
    explored += 1
    depth = 1
    with ThreadPoolExecutor(PLAN_THREADS) as pool:
        while frontier and depth < max_depth and explored + len(frontier) <= max_levels and len(units) + len(frontier) < max_levels:
            pages = list(pool.map(_level_or_error(lister), frontier))
            explored += len(frontier)
            nxt: list[str] = []
            for folder, page in zip(frontier, pages, strict=True):
                nxt.extend(take(folder, page))
            frontier = nxt
            depth += 1
    units.extend(TreeUnit(f) for f in frontier)
    return units


def _level_or_error(lister: Lister) -> Any:
    def level(folder: str) -> Page:
        try:
            return lister.level(folder)
        except Exception:
            # Listed again (and reported as an error row if it still fails) by the task that walks it.
            return Page([], [folder], None)

    return level


# -- a unit's objects, as refs -------------------------------------------------------------------------


def unit_pages(lister: Lister, unit: ListUnit) -> Iterator[list[ObjectInfo] | VideoRef]:
    """The objects of one unit, a page at a time; a folder that cannot be listed (past the retry
    budget, or refused) yields one error ref instead of its objects, and the listing goes on."""
    if isinstance(unit, ObjectsUnit):
        yield list(unit.objects)
        return
    if isinstance(unit, TreeUnit):
        yield from _guarded(lister, unit.folder, lister.tree(unit.folder))
        return
    token: str | None = unit.token
    later: list[str] = []
    while token:
        try:
            page = lister.level(unit.folder, token)
        except Exception as exc:
            yield _listing_error(lister, unit.folder, exc)
            break
        yield page.objects
        later.extend(f for f in page.folders if f > unit.seen_upto)
        token = page.token
    for folder in later:
        yield from _guarded(lister, folder, lister.tree(folder))


def _guarded(lister: Lister, folder: str, pages: Iterator[list[ObjectInfo]]) -> Iterator[list[ObjectInfo] | VideoRef]:
    try:
        yield from pages
    except Exception as exc:
        yield _listing_error(lister, folder, exc)


def _listing_error(lister: Lister, folder: str, exc: BaseException) -> VideoRef:
    kind = "unavailable" if isinstance(exc, StorageUnavailable) else type(exc).__name__
    return error_ref(lister.uri(folder), "/", f"folder could not be listed ({kind}): {exc}")


def refs_of(
    lister: Lister, objects: list[ObjectInfo], *, base: str, include: Sequence[str], exclude: Sequence[str]
) -> list[VideoRef]:
    """The objects that pass include/exclude (matched on the name or the path below `base`), as refs."""
    out = []
    for o in objects:
        rel = o.path[len(base) :].lstrip("/") if o.path.startswith(base) else o.path
        if not _matches(rel, include, exclude):
            continue
        uri = lister.uri(o.path)
        out.append(VideoRef(make_video_id(uri, o.version), uri, o.size, o.version))
    return out


def without_unmatched(units: Sequence[ListUnit], *, base: str, include: Sequence[str], exclude: Sequence[str]) -> list[ListUnit]:
    """`units` with the objects the driver already holds filtered by include/exclude, and the units left
    empty dropped (no units at all: the input holds no video, known before anything starts)."""
    out: list[ListUnit] = []
    for unit in units:
        if isinstance(unit, ObjectsUnit):
            kept = tuple(
                o for o in unit.objects
                if _matches(o.path[len(base) :].lstrip("/") if o.path.startswith(base) else o.path, include, exclude)
            )
            if not kept:
                continue
            unit = ObjectsUnit(kept)
        out.append(unit)
    return out


def listing_base(lister: Lister, units: Sequence[ListUnit]) -> str:
    """What relative paths (for include/exclude) start from: the input folder, or a single file's folder."""
    root = lister.root
    if len(units) == 1 and isinstance(units[0], ObjectsUnit) and units[0].objects[0].path == root:
        return root.rsplit("/", 1)[0]
    return root


# -- in this process ------------------------------------------------------------------------------------


def list_videos(
    url: str,
    *,
    include: list[str],
    exclude: list[str] | None = None,
    endpoint_url: str | None = None,
    max_videos: int | None = None,
    manifest_uri_column: str = "uri",
    retry: RetryPolicy = DEFAULT_POLICY,
) -> list[VideoRef]:
    """List videos under `url` in this process: a folder/prefix or one object (sorted by URI), WebDataset
    tar shards (brace ranges and globs: `.../{00000..00099}.tar`), or a manifest (.parquet/.csv/.jsonl).

    For small inputs (tools, tests); a run streams the same listing through Ray
    (`pipeline.source.stream.video_dataset`).
    """
    exclude = exclude or []
    if manifest.is_manifest_input(url):
        return manifest.read_manifest(
            url, uri_column=manifest_uri_column, endpoint_url=endpoint_url, max_rows=max_videos, retry=retry
        )
    if shards.is_shard_input(url):
        suffixes = shards.video_suffixes(include)
        refs: list[VideoRef] = []
        urls = shards.expand_shards(url, endpoint_url)
        if not urls:
            raise SourceError(f"no shards match {url}")
        for shard in urls:
            refs.extend(shards.index_shard(shard, video_suffixes=suffixes, endpoint_url=endpoint_url, retry=retry))
            if max_videos and len(refs) >= max_videos:
                return refs[:max_videos]
        return refs
    lister = Lister(url, endpoint_url, retry)
    try:
        units = plan_units(lister, max_levels=1)
    except SourceError:
        raise
    base = listing_base(lister, units)
    out: list[VideoRef] = []
    for unit in units:
        for page in unit_pages(lister, unit):
            if isinstance(page, VideoRef):
                out.append(page)
            else:
                out.extend(refs_of(lister, page, base=base, include=include, exclude=exclude))
    out.sort(key=lambda r: r.uri)
    return out[:max_videos] if max_videos else out
