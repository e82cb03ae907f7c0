"""Find the input Parquet files (fsspec: local paths, s3://, globs, folders with hive partitions) and read them.

The unit of reading is one file: `ReadFile` streams it in blocks of at most `block_rows` rows and
about `block_bytes`, and every row carries `_file` (index in the sorted file list), `_source`
(its path) and `_row` (its row number in that file), so any output or error row can be traced
back to its input.
Hive folder names (`date=2026-01-01/`) become string columns unless the file has that column; their
values are URL-decoded and `__HIVE_DEFAULT_PARTITION__` is null, as pyarrow and DuckDB read them.
A folder's files are all its files below it but `_`- and `.`-prefixed ones (whatever their suffix,
as Spark and `pyarrow.dataset` take them: Hive writes `000000_0`); one that is not Parquet becomes
an `unreadable_file` error row, never a silent skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ledger import JOB_COPY, JOB_FILE, PROGRESS_DIR, committed_mask
from pipeline.stage import ERROR, ERROR_TYPE, FILE_INDEX, ROW, SOURCE
from pipeline.storage import thread_safe
from pipeline.validate import is_text_type

GLOB_CHARS = "*?["
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"   # Hive's folder name for a null value
READ_ATTEMPTS = 3           # reads of a row group before its rows become `corrupt_data` error rows
# Footers read at once while planning: on an object store each is a GET whose time is nearly all waiting.
# 1,000 footers behind tests/s3_server.py's proxy (≈ 44 ms a GET): 44 s one at a time, 6.2 s 8 at a time,
# 5.4 s 16 or 32 at a time (botocore keeps 10 connections to a store by default).
FOOTER_THREADS = 16


class InputError(ValueError):
    """The input cannot be used as configured (no files, a missing column); raised before any cluster work."""


@dataclasses.dataclass(frozen=True)
class InputFiles:
    """The sorted Parquet files below `uri`, with the filesystem that reads them."""

    uri: str
    fs: fsspec.AbstractFileSystem
    root: str                       # the folder the paths are relative to (hive keys are read below it)
    paths: tuple[str, ...]

    def display(self, path: str) -> str:
        """The path as a user would write it: with its protocol for remote filesystems."""
        return path if _is_local(self.fs) else self.fs.unstrip_protocol(path)

    def partition_values(self, path: str) -> dict[str, str | None]:
        """`key=value` folder names between the input root and the file (values URL-decoded)."""
        relative = path[len(self.root):] if path.startswith(self.root) else path
        parts = relative.strip("/").split("/")[:-1]
        pairs = (part.split("=", 1) for part in parts if "=" in part and not part.startswith("="))
        return {unquote(key): None if value == NULL_PARTITION else unquote(value) for key, value in pairs}

    def schema(self, index: int = 0) -> pa.Schema:
        """A file's schema (the first file's by default) plus its hive partition keys (as strings)."""
        return self.footer(index)[0]

    def footer(self, index: int, texts: frozenset[str] = frozenset()) -> tuple[pa.Schema, int, int]:
        """A file's schema plus its hive partition keys (as strings), its row count and the uncompressed bytes of its
        `texts` columns: one read of its footer."""
        with self.fs.open(self.paths[index], "rb") as handle:
            parquet = open_parquet(handle)
            schema, metadata = parquet.schema_arrow, parquet.metadata
        text_bytes = sum(column_bytes(metadata.row_group(g), texts) for g in range(metadata.num_row_groups))
        for key in self.partition_values(self.paths[index]):
            if key not in schema.names:
                schema = schema.append(pa.field(key, pa.string()))
        return schema, metadata.num_rows, text_bytes


def column_bytes(group: pq.RowGroupMetaData, columns) -> int:
    """The uncompressed size of these (top-level) columns in a row group, from the footer."""
    paths = [group.column(c).path_in_schema for c in range(group.num_columns)]   # a.list.element: column a
    return sum(group.column(c).total_uncompressed_size for c, path in enumerate(paths)
               if any(path == name or path.startswith(f"{name}.") for name in columns))


def open_parquet(handle) -> pq.ParquetFile:
    """A Parquet file whose INT96 timestamps (Spark's and Hive's default) read as microseconds, what they hold
    from Spark: as nanoseconds (pyarrow's default) a kept timestamp would make the results unreadable to Spark."""
    return pq.ParquetFile(handle, coerce_int96_timestamp_unit="us")


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _output_places(fs: fsspec.AbstractFileSystem, output: str) -> tuple[str, ...]:
    """The output folder as paths of the input's filesystem `fs`, none when it is on another filesystem (or on
    none: the output's own checks say so, later)."""
    try:
        out_fs, path = fsspec.core.url_to_fs(output)
    except (ValueError, ImportError):
        return ()
    protocols = [{f.protocol} if isinstance(f.protocol, str) else set(f.protocol) for f in (fs, out_fs)]
    return _places(fs, path) if protocols[0] == protocols[1] else ()


def _places(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, ...]:
    """A path as written and, on a local disk, with its links resolved: a path is under a folder if any of its
    places is under any of the folder's (a linked input file counts where the link is and where it points)."""
    if not _is_local(fs):
        return (path.rstrip("/"),)
    return tuple({os.path.abspath(path), os.path.realpath(path)})


def _under(places: tuple[str, ...], folders: tuple[str, ...]) -> bool:
    return any(p == f or p.startswith(f.rstrip("/") + "/") for p in places for f in folders)


def _hidden(path: str, root: str) -> bool:
    """Spark/Hive convention: `_`- and `.`-prefixed entries (`_SUCCESS`, `_errors/`, `.tmp`) are not data."""
    relative = path[len(root):] if path.startswith(root) else path
    return any(part.startswith(("_", ".")) for part in relative.strip("/").split("/"))


def list_input_files(uri: str, output: str | None = None) -> InputFiles:
    """Expand a file (read even when named like a hidden one), a folder (recursively: every file not hidden)
    or a glob into sorted files.

    The files of `output` (a job's --output) are never input: an output folder inside the input folder
    is left out once a run made it (its ledger is there); an output folder that holds input files (or is
    the input's folder) is refused otherwise, as a run would read its own results and --overwrite would
    delete the input.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):      # before the glob characters: a folder may be named `corpus [v2]`
        root = path
        found = fs.find(path)
    elif any(ch in path for ch in GLOB_CHARS):
        first_glob = min(path.index(ch) for ch in GLOB_CHARS if ch in path)
        root = path[:first_glob].rsplit("/", 1)[0]
        found = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.exists(path):
        root, found = path.rsplit("/", 1)[0], [path]
    else:
        raise InputError(f"--input {uri!r}: no such file or folder")
    named = found == [path]   # one file, named by the user
    paths = [p for p in found if named or not _hidden(p, root)]
    outs = _output_places(fs, output) if output else ()
    ours = [p for p in paths if _under(_places(fs, p), outs)] if outs else []   # no output here: nothing to resolve
    # Files under the output are an earlier run's results (its ledger says so) or input the output would delete.
    ledger = bool(ours) and any(fs.exists(f"{outs[0]}/{PROGRESS_DIR}/{name}") for name in (JOB_FILE, JOB_COPY))
    if _under(_places(fs, root), outs) or (ours and not ledger):
        raise InputError(f"--output {output!r} holds the input {uri!r}: a run would read its own results and "
                         "--overwrite would delete the input; choose an output folder outside it")
    paths = tuple(sorted(p for p in paths if p not in ours))
    if not paths:
        raise InputError(f"--input {uri!r}: no input files found (`_`- and `.`-prefixed ones are not data)")
    return InputFiles(uri=uri, fs=fs, root=root.rstrip("/"), paths=paths)


def check_columns(schema: pa.Schema, required: list[tuple[str, str]]) -> None:
    """`required`: (flag, column it names) pairs; raise one line naming the first missing column."""
    for flag, column in required:
        if column not in schema.names:
            split = [name for name in schema.names if column in (part.strip() for part in name.split(","))]
            hint = (f" ({split[0]!r} holds a comma, at which {flag} splits its names: put it in double quotes, "
                    f"'\"{split[0]}\"')") if split and flag == "--keep-columns" else ""
            raise InputError(f"{flag} {column!r}: no such column in the input{hint}; columns: "
                             f"{', '.join(schema.names)}")


@dataclasses.dataclass(frozen=True)
class Footers:
    """Per input file its row count, or None when its footer cannot be read (with the reason)."""

    rows: tuple[int | None, ...]
    unreadable: tuple[tuple[int, str], ...]
    first_readable: int             # the first readable file with rows (its schema is the plan's), else the first readable
    schema: pa.Schema               # first_readable's, hive keys included (read with the rest: no second GET)
    text_bytes: tuple[int | None, ...]   # per file, the uncompressed bytes of its text columns


def scan_footers(files: InputFiles, columns: tuple[str, ...], texts: frozenset[str] = frozenset()) -> Footers:
    """Read every footer on the driver: row counts, unreadable shards, and shards disagreeing on a column's type.

    Each footer is read once, `FOOTER_THREADS` at a time; the checks then go through them in file order, so the
    error raised is the first in that order, as when they were read one by one (planning 1,000 shards on S3, a
    local moto server behind tests/s3_server.py's proxy: 2,003 GETs in 94 s read twice and one by one, 1,002 in 6 s).

    Shards may differ in how they store a text column (`texts`: string, large_string as pandas 3 writes it,
    dictionary, view, binary; null-typed when every value is null): validation makes each `string`.
    """
    rows, text_bytes, unreadable, types = [], [], [], {}
    schemas = {}   # True: the first readable shard with rows' schema, False: the first without (Footers.schema)
    threads = FOOTER_THREADS if thread_safe(files.fs) else 1
    pool = ThreadPoolExecutor(max(1, min(threads, len(files.paths))), thread_name_prefix="bertbatch-footer")
    try:
        read = functools.partial(_footer_or_reason, files, texts=texts)
        for index, footer in enumerate(pool.map(read, range(len(files.paths)))):
            if isinstance(footer, str):
                rows.append(None)
                text_bytes.append(None)
                unreadable.append((index, footer))
                continue
            schema, count, size = footer
            rows.append(count)
            text_bytes.append(size)
            _check_types(files, files.paths[index], schema, count, columns, texts, types)
            schemas.setdefault(count > 0, schema)
    finally:   # an error raised: the footers not read yet are not waited for
        pool.shutdown(cancel_futures=True)
    if len(unreadable) == len(files.paths):
        raise InputError(f"--input {files.uri!r}: no readable Parquet file ({unreadable[0][1]})")
    first = next((i for i, n in enumerate(rows) if n), next(i for i, n in enumerate(rows) if n is not None))
    return Footers(tuple(rows), tuple(unreadable), first, schemas.get(True, schemas.get(False)), tuple(text_bytes))


def _footer_or_reason(files: InputFiles, index: int, texts: frozenset[str]) -> tuple[pa.Schema, int, int] | str:
    """`files.footer(index, texts)`, or why it cannot be read (the file becomes an `unreadable_file` error)."""
    try:
        return files.footer(index, texts)
    except (OSError, pa.ArrowException) as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _check_types(files: InputFiles, path: str, schema: pa.Schema, rows: int, columns: tuple[str, ...],
                 texts: frozenset[str], types: dict[str, tuple[str, str]]) -> None:
    """Raise InputError for a column named twice, or typed otherwise than in an earlier shard (`types`: column ->
    (type, the first shard that had it), filled as shards are checked in file order)."""
    twice = sorted({c for c in columns if schema.names.count(c) > 1})
    if twice:
        raise InputError(f"{files.display(path)} has more than one column named {twice[0]!r}: rewrite the file "
                         "with one column per name")
    for column in columns:
        kind = str(schema.field(column).type) if column in schema.names else "missing"
        if column in texts and kind != "missing" and is_text_type(schema.field(column).type):
            kind = "text"
        if kind == "null" and rows == 0:
            continue   # pandas writes an empty frame's object columns as null: no type to disagree with
        seen = types.setdefault(column, (kind, path))
        if seen[0] != kind:
            raise InputError(f"input shards disagree on column {column!r}: {files.display(seen[1])} has "
                             f"{seen[0]}, {files.display(path)} has {kind}")


@dataclasses.dataclass(frozen=True)
class ReadFile:
    """Read one input file (given by its index) as blocks of rows with provenance columns."""

    files: InputFiles
    columns: tuple[str, ...]        # id, text and passthrough columns, in output order
    block_rows: int = 4096
    block_bytes: int = 64 * 2**20     # at most about this many bytes per block (Ray's own blocks aim at 128 MiB)
    schema: pa.Schema | None = None     # the plan's types: an empty file's (possibly null-typed) columns take them
    # (file index, merged [start, end) ranges) already in the output: a restart leaves these rows out
    committed: tuple[tuple[int, tuple[tuple[int, int], ...]], ...] = ()

    name = "read"

    def __call__(self, file_index: int) -> Iterator[pa.Table]:
        path = self.files.paths[file_index]
        source = self.files.display(path)
        partitions = self.files.partition_values(path)
        done = list(dict(self.committed).get(file_index, ()))
        with self.files.fs.open(path, "rb") as handle:
            parquet = open_parquet(handle)
            in_file = [c for c in self.columns if c in parquet.schema_arrow.names]
            first_row, buffered = 0, []
            groups = (t for g in range(parquet.num_row_groups) for t in self._row_group(parquet, path, g, in_file))
            for table in itertools.chain(groups, [None]):   # small row groups are joined up to a block
                if table is not None:
                    buffered.append(table)
                full = sum(t.num_rows for t in buffered) >= self.block_rows or \
                    sum(t.nbytes for t in buffered) >= self.block_bytes
                if buffered and (table is None or full):
                    table = pa.concat_tables(buffered)
                    buffered = []
                    block = self._with_provenance(table, partitions, file_index, source, first_row)
                    first_row += table.num_rows
                    if done:
                        block = block.filter(~committed_mask(block.column(ROW).to_numpy(), done))
                    if block.num_rows or not done:
                        yield block
            if first_row == 0:  # an empty file still has a schema downstream stages can rely on
                empty = (self.schema or parquet.schema_arrow).empty_table().select(in_file)
                yield self._with_provenance(empty, partitions, file_index, source, 0)

    def _row_group(self, parquet: pq.ParquetFile, path: str, group: int, columns: list[str]) -> Iterator[pa.Table]:
        """The row group in blocks; pages that cannot be decoded after READ_ATTEMPTS become error rows.

        Storage errors are retried by the filesystem (pipeline/storage.py) and again here with a fresh
        handle, so only a failure that repeats (corrupt pages) turns the group's remaining rows into
        `corrupt_data` error rows; the file's other row groups are still read.
        """
        rows, read, failure = parquet.metadata.row_group(group).num_rows, 0, None
        reopened = contextlib.ExitStack()
        for attempt in range(READ_ATTEMPTS):
            if attempt:
                time.sleep(0.5 * attempt)
                parquet = open_parquet(reopened.enter_context(self.files.fs.open(path, "rb")))
            try:
                skip = read
                batch_rows = self._batch_rows(parquet.metadata.row_group(group), columns)
                for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
                    table = pa.Table.from_batches([batch]).slice(min(skip, batch.num_rows))
                    skip -= batch.num_rows - table.num_rows
                    read += table.num_rows
                    if table.num_rows:
                        yield table.append_column(ERROR, pa.nulls(table.num_rows, ERROR_TYPE))
                reopened.close()
                return
            except (OSError, pa.ArrowException) as error:
                failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        with reopened:
            yield self._unreadable_rows(parquet, group, columns, read, rows, failure)

    def _batch_rows(self, group: pq.RowGroupMetaData, columns: list[str]) -> int:
        """Rows per read batch: `block_rows`, fewer where the row group's rows are large (its columns' uncompressed
        size per row, from the footer), so that a block stays near `block_bytes` (300 rows of 10 MB were one 3 GB
        block)."""
        per_row = column_bytes(group, columns) / max(group.num_rows, 1)
        return max(1, min(self.block_rows, math.ceil(self.block_bytes / per_row) if per_row else self.block_rows))

    def _unreadable_rows(self, parquet: pq.ParquetFile, group: int, columns: list[str], start: int, rows: int,
                         failure: str) -> pa.Table:
        """Rows start..rows of a row group that cannot be decoded: their ids when those still decode, else null."""
        schema = parquet.schema_arrow
        table = pa.table({c: pa.nulls(rows - start, schema.field(c).type) for c in columns})
        try:
            ids = parquet.read_row_group(group, columns=[self.columns[0]]).column(0).slice(start)
            table = table.set_column(table.schema.get_field_index(self.columns[0]), self.columns[0], ids)
        except (OSError, pa.ArrowException, KeyError):
            pass
        message = (f"row group {group} (its rows {start}-{rows - 1}) cannot be decoded after {READ_ATTEMPTS} "
                   f"attempts: {failure}")
        error = pa.array([{"stage": "read", "error": "corrupt_data", "message": message}] * table.num_rows,
                         ERROR_TYPE)
        return table.append_column(ERROR, error)

    def _with_provenance(self, table: pa.Table, partitions: dict[str, str | None], file_index: int,
                         source: str, first_row: int) -> pa.Table:
        n = table.num_rows
        for column in self.columns:
            if column not in table.column_names:
                if column not in partitions:
                    raise InputError(f"column {column!r} missing in {source}")
                table = table.append_column(column, pa.array([partitions[column]] * n, pa.string()))
        error = table.column(ERROR) if ERROR in table.column_names else pa.nulls(n, ERROR_TYPE)  # read errors
        table = table.select(list(self.columns))
        return (
            table.append_column(FILE_INDEX, pa.array([file_index] * n, pa.int32()))
            .append_column(SOURCE, pa.array([source] * n, pa.string()))
            .append_column(ROW, pa.array(np.arange(first_row, first_row + n, dtype=np.int64)))
            .append_column(ERROR, error)
        )
