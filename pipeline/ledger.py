"""The commit ledger: which input rows already reached the output, so a restart redoes only the rest.

Each write task, after its part files are renamed into place, writes one small entry
`OUTPUT/_progress/<first-file>-<first-row>.json` naming those files and the input row ranges they
hold (results and errors alike). The entry is the commit: a part file without an entry is an
orphan of a kill between rename and entry, and `recover` deletes it before the next run.
`_progress/_job.json` holds what the output was made from (task, model fingerprint, options,
input files with sizes and modification times) and one line per run. See docs/restart.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import fsspec
import numpy as np

from pipeline.storage import protocols, thread_safe

PROGRESS_DIR = "_progress"
JOB_FILE = "_job.json"
JOB_COPY = "._job.json"                 # written before _job.json where writes are in place (`write_job`)
IN_FLIGHT_DIR = ".in_flight"            # markers of batches an actor is working on (mark_in_flight)
ENTRY_THREADS = 16    # entries read at once by `recover` (each a GET on an object store; as read.FOOTER_THREADS)
# Files a write task may leave: results (also below hive folders), errors, and their temporary names.
PART_FILE = re.compile(r"(^|/)part-[^/]*\.parquet$")
TEMP_FILE = re.compile(r"(^|/)\.[^/]*\.tmp$")

Ranges = list[tuple[int, int]]           # sorted, merged, half-open [start, end) row ranges of one file


def row_ranges(file_index: np.ndarray, rows: np.ndarray) -> dict[int, Ranges]:
    """Compact (file, row) pairs into per-file runs of consecutive rows."""
    ranges: dict[int, Ranges] = {}
    order = np.lexsort((rows, file_index))
    file_index, rows = file_index[order], rows[order]
    breaks = np.flatnonzero((np.diff(file_index) != 0) | (np.diff(rows) != 1)) + 1
    for start, end in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        if end > start:
            ranges.setdefault(int(file_index[start]), []).append((int(rows[start]), int(rows[end - 1]) + 1))
    return ranges


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    merged: Ranges = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def committed_mask(rows: np.ndarray, ranges: Ranges) -> np.ndarray:
    """True for the rows inside one of the (merged) ranges."""
    if not ranges:
        return np.zeros(len(rows), dtype=bool)
    starts = np.array([r[0] for r in ranges])
    ends = np.array([r[1] for r in ranges])
    slot = np.searchsorted(starts, rows, side="right") - 1
    return (slot >= 0) & (rows < ends[np.maximum(slot, 0)])


def _fresh_fs(output: str):
    """The output's filesystem, its listings of the output dropped: other processes write the ledger (s3fs keeps
    listings). Only the output's: on the same store the input's listing holds each input file's size, which every
    open of an input file would otherwise ask for again (a HEAD per footer while planning)."""
    fs, root = fsspec.core.url_to_fs(output)
    folder = root.rstrip("/")
    for path in [p for p in fs.dircache if p == folder or p.startswith(f"{folder}/")]:
        fs.dircache.pop(path, None)
    fs.invalidate_cache(folder)   # and the listings of the folders above it, which list it
    return fs, root


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def in_place(fs) -> bool:
    """Writes on `fs` can be cut by a crash: not a local disk (temporary name + rename) nor an object store
    (one PUT is whole or absent). HDFS, SFTP: their rename does not always replace a file (WebHDFS RENAME
    onto an existing name fails without an error), so entries are written in place there."""
    return not protocols(fs) & {"file", "local", "s3", "s3a", "gs", "gcs", "abfs", "az", "adl", "oss", "memory"}


def put_json(fs, path: str, value: dict) -> None:
    """Whole or nothing on local disks (a temporary name, renamed over the old file) and object stores (one
    PUT); one write in place elsewhere (`in_place`), where readers take an entry a crash cut as never written."""
    data = json.dumps(value, default=str)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        fs.pipe_file(path, data.encode())
        return
    folder, name = path.rsplit("/", 1)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    with fs.open(temporary, "w") as handle:
        handle.write(data)
    fs.mv(temporary, path)


def commit(fs, root: str, files: list[str], ranges: dict[int, Ranges], counters: dict, run: int) -> None:
    """Record one write task's files (relative to root) and the input rows they hold."""
    first_file = min(ranges)
    name = f"{first_file:05d}-{ranges[first_file][0][0]:012d}.json"
    fs.makedirs(_join(root, PROGRESS_DIR), exist_ok=True)
    entry = {"run": run, "files": files, "ranges": {str(k): v for k, v in ranges.items()}, "counters": counters}
    put_json(fs, _join(root, PROGRESS_DIR, name), entry)


def mark_in_flight(output: str, stage: str, file_index: np.ndarray, rows: np.ndarray) -> str | None:
    """Note a batch's input rows before a model or tokenizer actor works on it; `done_in_flight` removes it.

    A marker left behind names rows whose batch never finished: after a worker crash that outlived
    its retries, these (not every uncommitted row) are the suspects (`in_flight`). The name is the
    stage and the batch's first row, so a retried batch finds its marker (and counts the attempt)
    and clears it when it finishes.
    """
    if not len(rows):
        return None
    fs, root = fsspec.core.url_to_fs(output)
    ranges = row_ranges(file_index, rows)
    first = min(ranges)
    path = _join(root, PROGRESS_DIR, IN_FLIGHT_DIR, f"{stage}-{first:05d}-{ranges[first][0][0]:012d}.json")
    fs.makedirs(_join(root, PROGRESS_DIR, IN_FLIGHT_DIR), exist_ok=True)
    attempts = 1
    with contextlib.suppress(FileNotFoundError, ValueError), fs.open(path, "r") as handle:
        attempts += json.load(handle)["attempts"]
    put_json(fs, path, {"ranges": {str(k): v for k, v in ranges.items()}, "attempts": attempts})
    return path


def done_in_flight(output: str, path: str | None) -> None:
    if path is not None:
        fs, _ = fsspec.core.url_to_fs(output)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)


def in_flight(output: str) -> dict[int, Ranges]:
    """The rows of the batches still marked in flight that were tried most often, merged per input file.

    A batch that killed its actor was retried, so it has more attempts than the batches that
    were merely interrupted when the failed execution stopped; all count when none was retried.
    """
    fs, root = _fresh_fs(output)
    folder = _join(root, PROGRESS_DIR, IN_FLIGHT_DIR)
    markers = []
    for path in fs.ls(folder, detail=False) if fs.exists(folder) else []:
        if path.endswith(".json") and not path.rsplit("/", 1)[-1].startswith("."):
            with contextlib.suppress(ValueError), fs.open(path, "r") as handle:   # a marker cut by a crash
                markers.append(json.load(handle))
    most = max((m["attempts"] for m in markers), default=1)
    found: dict[int, Ranges] = {}
    for marker in markers:
        if marker["attempts"] == most:
            for file_index, ranges in marker["ranges"].items():
                found.setdefault(int(file_index), []).extend(tuple(r) for r in ranges)
    return {k: merge(v) for k, v in found.items()}


def clear_in_flight(output: str) -> None:
    fs, root = _fresh_fs(output)
    folder = _join(root, PROGRESS_DIR, IN_FLIGHT_DIR)
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


@dataclasses.dataclass
class Progress:
    """What earlier runs committed: per input file the merged row ranges, plus every entry's counters."""

    committed: dict[int, Ranges]
    entries: list[dict]
    removed: list[str]              # orphans and temporary files deleted by `recover`

    def rows_done(self, file_index: int) -> int:
        return sum(end - start for start, end in self.committed.get(file_index, ()))


def recover(output: str) -> Progress:
    """Read the ledger and delete what no entry commits (orphan parts, temporary files). An entry one of
    whose files is gone (deleted by hand, by an --overwrite cut short) is dropped with its other
    files: its rows are done again instead of counted as written."""
    fs, root = _fresh_fs(output)
    root = root.rstrip("/")
    progress = _join(root, PROGRESS_DIR)
    found = [p[len(root):].lstrip("/") for p in fs.find(root)] if fs.exists(root) else []
    present, entries = set(found), []     # one set, not one per entry: entries × files (partitioned outputs)
    if fs.exists(progress):
        paths = entry_paths(fs, progress)
        with ThreadPoolExecutor(ENTRY_THREADS if thread_safe(fs) else 1) as pool:   # each a GET on an object store
            contents = list(pool.map(fs.cat_file, paths))
        for path, content in zip(paths, contents):
            entry = parse_entry(content)
            if entry is not None and set(entry["files"]) <= present:
                entries.append(entry)
            else:
                fs.rm(path)
    owned = {f for entry in entries for f in entry["files"]}
    removed = []
    for relative in found:
        path = _join(root, relative)
        orphan = PART_FILE.search(relative) and relative not in owned
        if orphan or TEMP_FILE.search(relative):
            fs.rm(path)
            removed.append(relative)
    committed: dict[int, Ranges] = {}
    for entry in entries:
        for file_index, ranges in entry["ranges"].items():
            committed.setdefault(int(file_index), []).extend(tuple(r) for r in ranges)
    return Progress({k: merge(v) for k, v in committed.items()}, entries, removed)


def entry_paths(fs, progress: str) -> list[str]:
    """The commit entries in the ledger folder `progress`, sorted: not `_job.json`, its copy, markers or the lease."""
    return [p for p in sorted(fs.ls(progress, detail=False))
            if (name := p.rsplit("/", 1)[-1]).endswith(".json") and name != JOB_FILE and not name.startswith(".")]


def parse_entry(content: bytes) -> dict | None:
    """A commit entry, or None for one a crash cut (written in place: `in_place`): its rows are done again."""
    try:
        entry = json.loads(content)
        return entry if isinstance(entry, dict) and {"files", "ranges"} <= entry.keys() else None
    except ValueError:   # JSONDecodeError, UnicodeDecodeError
        return None


def read_job(output: str) -> dict | None:
    """`_job.json`; where it is written in place, its copy when a crash cut it (`write_job`)."""
    fs, root = _fresh_fs(output)
    path, copy = _join(root, PROGRESS_DIR, JOB_FILE), _join(root, PROGRESS_DIR, JOB_COPY)
    try:
        with fs.open(path, "r") as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):   # a crash after the copy, or during the write of _job.json
        if not in_place(fs) or not fs.exists(copy):
            if fs.exists(path):
                raise
            return None
        with fs.open(copy, "r") as handle:
            return json.load(handle)


def write_job(output: str, job: dict) -> None:
    """Where writes are in place, a copy first: a crash cuts at most one of the two."""
    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(_join(root, PROGRESS_DIR), exist_ok=True)
    if in_place(fs):
        put_json(fs, _join(root, PROGRESS_DIR, JOB_COPY), job)
    put_json(fs, _join(root, PROGRESS_DIR, JOB_FILE), job)


def input_identity(fs, paths: Iterable[str]) -> list[dict]:
    """Path, size and modification time (or ETag on object stores) of every input file."""
    identity = []
    for path in paths:
        try:
            info = fs.info(path)
        except FileNotFoundError as error:   # a dangling link, a file gone since the listing: unreadable_file error row
            info = {"mtime": f"unreadable ({type(error).__name__})"}
        changed = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
        identity.append({"path": path, "size": info.get("size"),
                         "version": str(info.get("ETag") or info.get("etag") or changed)})
    return identity
