"""Write annotated documents: results to `OUTPUT/part-*.parquet`, failures to `OUTPUT/_errors/`.

Every batch is checked against the declared schemas before it is written. Part names are
deterministic: `part-{file:05d}-{row:012d}.parquet` after the first input row they hold, so a
rerun of the same input writes the same names. Each file is written under a hidden temporary
name and renamed when complete, so readers never see half a file; then one ledger entry
(`pipeline/ledger.py`) commits the batch's files and input rows (docs/restart.md).
`_run.json` and `_SUCCESS` are written by `finish_output` on the driver.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.kill_hooks import kill_point
from pipeline.lease import CLOCK_PROBE, LEASE_FILE, LOCK_FILE, check_held
from pipeline.ledger import JOB_FILE, PROGRESS_DIR, commit, row_ranges
from pipeline.stage import ERROR, FILE_INDEX, ROW, SOURCE, STAT_PREFIX, Stage, with_errors
from pipeline.storage import is_object_store
from schemas import results

ERRORS_DIR = "_errors"
RUN_FILE = "_run.json"
SUCCESS_FILE = "_SUCCESS"
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # Hive's name for a null partition value
EMPTY_RESULTS = "part-00000-empty.parquet"    # the one result file of an output where every row is an error
FOLDER_NAME_BYTES = 255     # the longest file name of common filesystems (ext4, XFS, APFS, NTFS in UTF-16 units)
OBJECT_KEY_BYTES = 1024     # an object store's longest key (S3, GCS), which has no folder names to limit
MAX_RUNS = 10_000           # runs of consecutive rows a write slices into input order; more: Arrow sorts
PART_NAME_BYTES = 40        # part-00000-000000000000.parquet and room for a temporary name's prefix
FENCE_SECONDS = 1.0         # a write checks that its run still holds the lease at most this often before placing files


@dataclasses.dataclass(frozen=True)
class SinkConfig:
    output: str                                 # folder URI (local path or fsspec URL)
    result_schema: pa.Schema                    # id, passthrough columns, task columns
    errors_schema: pa.Schema
    id_column: str = "id"
    partition_by: str | None = None             # hive-style folders COL=value/, column left out of the files
    rows_per_file: int | None = 100_000         # a job's: None until ray_plan.preflight
    metadata: tuple[tuple[str, str], ...] = ()  # Parquet key-value metadata (bertbatch.*)
    run: int = 1                                # which run of this output writes (the ledger counts per run)
    lease: str | None = None                    # that run's lease token: writes place and commit only while it holds


class ResultWriter(Stage):
    """The last stage: writes one batch (one or a few files) and returns its counters, not a table."""

    name = "sink"

    def __init__(self, config: SinkConfig):
        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)
        self.fs, self.root = fsspec.core.url_to_fs(config.output)
        self._fenced = -FENCE_SECONDS

    @classmethod
    def declare(cls, config: SinkConfig):
        results_columns = [n for n in config.result_schema.names if n != config.id_column]
        return (config.id_column, FILE_INDEX, SOURCE, ROW, ERROR, *results_columns), (), ()

    def __call__(self, table: pa.Table) -> dict:
        table = input_order(table)
        if self.config.partition_by:
            table = self._unfit_partitions(table)
        failed = pc.is_valid(table.column(ERROR))
        if pc.any(failed).as_py():
            errors, ok = table.filter(failed), table.filter(pc.invert(failed))
        else:   # the common batch: no copy of its rows
            errors, ok = table.slice(0, 0), table
        files = []
        if ok.num_rows:
            files += self._write_results(ok)
        if errors.num_rows:
            files += self._write(self._errors_table(errors), ERRORS_DIR, self.config.errors_schema, errors)
        counters = {"rows": ok.num_rows, "errors": errors.num_rows, **_stat_sums(table),
                    "unreadable_rows": _count_errors(errors, UNREADABLE_ERRORS)}
        kill_point("write")
        if table.num_rows:  # the ledger entry is the commit: files renamed before it are orphans until then
            relative = [f[len(self.root.rstrip("/")):].lstrip("/") for f in files]
            ranges = row_ranges(table.column(FILE_INDEX).to_numpy(), table.column(ROW).to_numpy())
            self._fence(always=True)
            commit(self.fs, self.root, relative, ranges, counters, self.config.run)
        kill_point("commit")
        return {**counters, "files": files}

    def _fence(self, always: bool = False) -> None:
        """Place files and commit only while this run holds the output's lease (`lease.check_held`): before the
        commit always, before placing a file at most every FENCE_SECONDS (a check is a GET on an object store,
        and a write into 5,000 partition folders places 5,000 files)."""
        now = time.monotonic()
        if always or now - self._fenced >= FENCE_SECONDS:
            check_held(self.fs, self.root, self.config.lease)
            self._fenced = now

    def _unfit_partitions(self, table: pa.Table) -> pa.Table:
        """Rows whose partition value makes a folder name too long for the filesystem (an object key too long
        for the object store) become error rows."""
        column = self.config.partition_by
        keys = _partition_keys(table.column(column))
        errors = {}
        for value in pc.unique(keys).to_pylist():
            if why := self._too_long(self._folder(value)):
                message = f"--partition-by {column}: the value ({len(value or '')} characters) makes {why}"
                match = pc.is_null(keys) if value is None else pc.fill_null(pc.equal(keys, value), False)
                errors.update(dict.fromkeys(pc.indices_nonzero(match).to_pylist(),
                                            ("write", "partition_value_too_long", message)))
        return with_errors(table, errors)

    def _too_long(self, folder: str) -> str | None:
        if is_object_store(self.fs):
            key = len(f"{self.root.rstrip('/')}/{folder}/".encode()) + PART_NAME_BYTES
            return f"object keys of {key} bytes, past the {OBJECT_KEY_BYTES} a key may have" \
                if key > OBJECT_KEY_BYTES else None
        size = len(folder.encode())
        return f"a folder name of {size} bytes, past the {FOLDER_NAME_BYTES} a file name may have" \
            if size > FOLDER_NAME_BYTES else None

    def _folder(self, value: str | None) -> str:
        return f"{self.config.partition_by}={NULL_PARTITION if value is None else hive_escape(value)}"

    def _write_results(self, ok: pa.Table) -> list[str]:
        schema = self.config.result_schema
        table = ok.select(schema.names)
        results.validate(table, schema)
        column = self.config.partition_by
        if column is None:
            return self._write(table, "", schema, ok)
        # Each value's rows together (a stable sort keeps them in input order), then one slice per value: a filter
        # of the whole batch per value cost values × rows (50,000 values in a write of 100,000 rows: minutes).
        keys = _partition_keys(table.column(column))
        values = pc.unique(keys)
        codes = pc.index_in(keys, value_set=values, skip_nulls=False).to_numpy(zero_copy_only=False)
        order = np.argsort(codes, kind="stable")
        grouped = ok.take(order)
        starts = np.searchsorted(codes[order], np.arange(len(values) + 1))
        files, written = [], schema.remove(schema.get_field_index(column))
        for value, start, end in zip(values.to_pylist(), starts[:-1], starts[1:]):
            part = grouped.slice(start, end - start)
            files += self._write(part.select(written.names), self._folder(value), written, part)
        return files

    def _errors_table(self, errors: pa.Table) -> pa.Table:
        error = errors.column(ERROR).combine_chunks()
        columns = {
            self.config.id_column: errors.column(self.config.id_column),
            "source": errors.column(SOURCE), "row": errors.column(ROW),
            "stage": error.field("stage"), "error": error.field("error"), "message": error.field("message"),
        }
        table = pa.table(columns, schema=self.config.errors_schema)
        results.validate(table, self.config.errors_schema)
        return table

    def _write(self, table: pa.Table, folder: str, schema: pa.Schema, provenance: pa.Table) -> list[str]:
        """Split into files of about rows_per_file rows; name each after its first input row.

        `provenance` is row-aligned with `table` and holds the `_file` and `_row` columns.
        """
        n_files = max(1, round(table.num_rows / self.config.rows_per_file))
        bounds = np.linspace(0, table.num_rows, n_files + 1).astype(int)
        schema = schema.with_metadata(dict(self.config.metadata))
        directory = "/".join(p for p in (self.root.rstrip("/"), folder) if p)
        self.fs.makedirs(directory, exist_ok=True)
        written = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            first_file = provenance.column(FILE_INDEX)[int(start)].as_py()
            first_row = provenance.column(ROW)[int(start)].as_py()
            name = f"part-{first_file:05d}-{first_row:012d}.parquet"
            final, temporary = f"{directory}/{name}", f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
            # On object stores (no rename; `mv` is copy + delete) one PUT under the final name is the
            # atomic commit: the object appears only when complete, and a rerun replaces it.
            target = final if is_object_store(self.fs) else temporary
            if target == final:
                self._fence()
            with self.fs.open(target, "wb") as handle:
                pq.write_table(table.slice(start, end - start).cast(schema), handle)
            if target != final:
                self._fence()
                self.fs.mv(temporary, final)
            written.append(final)
        return written


def input_order(table: pa.Table) -> pa.Table:
    """The rows in input order (`_file`, `_row`), as slices of `table` where they already follow each other.

    A write gets whole blocks, each in input order, so the sorted rows are a few runs of consecutive rows: sliced,
    they share the blocks' buffers. Arrow's sort would concatenate each column's chunks first, which fails past
    2 GiB in one string column (`offset overflow while concatenating arrays`: a kept column of 100 KB values
    in a write of 25,000 rows) and copies every value on the way.
    """
    order = pc.sort_indices(table, sort_keys=[(FILE_INDEX, "ascending"), (ROW, "ascending")]).to_numpy()
    starts = np.flatnonzero(np.diff(order, prepend=-2) != 1)
    if len(starts) > MAX_RUNS:
        return table.take(order)
    ends = np.append(starts[1:], len(order))
    return pa.concat_tables([table.slice(order[s], e - s) for s, e in zip(starts, ends)]) if len(order) else table


# What Hive and Spark escape in a partition folder name (FileUtils.escapePathName), as %XX; they read %XX back as one
# character, so other characters stay as they are (percent-encoded UTF-8 came back garbled in Spark: café → cafÃ©).
_HIVE_ESCAPED = frozenset(map(chr, range(0x20))) | frozenset('"#%\'*/:=?\\\x7f{[]^')


def hive_escape(value: str) -> str:
    return "".join(f"%{ord(c):02X}" if c in _HIVE_ESCAPED else c for c in value)


def _partition_keys(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Folder values as text; an empty one is null, as Spark writes it (Spark refuses to read a folder `COL=`)."""
    keys = column.cast(pa.string())
    return pc.if_else(pc.equal(keys, ""), pa.scalar(None, pa.string()), keys)


def _count_errors(errors: pa.Table, kinds: tuple[str, ...]) -> int:
    if not errors.num_rows:
        return 0
    kind = pc.struct_field(errors.column(ERROR), "error")
    return pc.sum(pc.is_in(kind, pa.array(kinds))).as_py() or 0


def _stat_sums(table: pa.Table) -> dict:
    """Sum each `_stat_*` counter over the batch (missing when a stage never ran on these rows)."""
    sums = {}
    for name in table.column_names:
        if name.startswith(STAT_PREFIX):
            total = pc.sum(table.column(name)).as_py()
            sums[name[len(STAT_PREFIX):]] = total or 0
    return sums


# Error rows whose input could not be read: an output holding any is never complete (no _SUCCESS).
UNREADABLE_ERRORS = ("corrupt_data",)

# What a previous run may have left: the only entries --overwrite deletes (never a user's other files).
OUR_ENTRIES = re.compile(r"^(part-.*\.parquet|_errors|_progress|_run\.json|_SUCCESS|\..*\.tmp|[^/=]+=[^/]*)$")


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse to mix runs in one folder: an existing non-empty output needs --overwrite (which empties it).

    The run's own lease (taken before the output is touched) and its lock file are neither content nor deleted; a clock
    probe another run left (`lease.CLOCK_PROBE`) is no content. The ledger's identity goes first: an --overwrite cut
    short leaves a folder that refuses to resume."""
    fs, root = fsspec.core.url_to_fs(output)
    root = root.rstrip("/")
    progress = f"{root}/{PROGRESS_DIR}"
    lease, lock = f"{progress}/{LEASE_FILE}", f"{progress}/{LOCK_FILE}"
    entries = [e.rstrip("/") for e in fs.ls(root, detail=False)] if fs.exists(root) else []
    entries = [e for e in entries if e != progress or any(
        p not in (lease, lock) and not p.rsplit("/", 1)[-1].startswith(CLOCK_PROBE) for p in fs.find(progress))]
    if entries:
        if not overwrite:
            raise FileExistsError(f"--output {output!r} exists and is not empty; pass --overwrite to replace it")
        foreign = [e for e in entries if not OUR_ENTRIES.match(e.rsplit("/", 1)[-1])]
        if foreign:
            raise FileExistsError(f"--output {output!r} holds files a run did not write ({foreign[0]}, ...); "
                                  "refusing to delete them, choose another output")
        if fs.exists(f"{progress}/{JOB_FILE}"):
            fs.rm(f"{progress}/{JOB_FILE}")
        for entry in entries:
            keep = entry == progress and fs.exists(lease)
            for path in [e.rstrip("/") for e in fs.ls(progress, detail=False)] if keep else [entry]:
                if path not in (lease, lock):
                    fs.rm(path, recursive=True)
    fs.makedirs(root, exist_ok=True)


def write_empty_results(config: SinkConfig) -> None:
    """A finished output without a result row still gets a result file (no rows) where readers look: readers
    find its columns (DuckDB's read_parquet('OUT/*.parquet') fails on no file); partitioned, in the null value's
    folder. Written at the end, never in the ledger: a run killed before `_SUCCESS` leaves it as an orphan the
    resume deletes and writes again."""
    fs, root = fsspec.core.url_to_fs(config.output)
    schema, folder = config.result_schema.with_metadata(dict(config.metadata)), root.rstrip("/")
    if config.partition_by:
        schema = schema.remove(schema.get_field_index(config.partition_by))
        folder = f"{folder}/{config.partition_by}={NULL_PARTITION}"
    fs.makedirs(folder, exist_ok=True)
    with fs.open(f"{folder}/{EMPTY_RESULTS}", "wb") as handle:
        pq.write_table(schema.empty_table(), handle)


def finish_output(output: str, run: dict, complete: bool) -> None:
    """`_run.json` first, then `_SUCCESS` only when every input row is in results or errors."""
    fs, root = fsspec.core.url_to_fs(output)
    with fs.open(f"{root.rstrip('/')}/{RUN_FILE}", "w") as handle:
        json.dump(run, handle, indent=2, default=str)
    kill_point("finish")
    if complete:
        with fs.open(f"{root.rstrip('/')}/{SUCCESS_FILE}", "w") as handle:
            handle.write("")
