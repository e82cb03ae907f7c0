"""What every stage shares: the internal columns, the error marker, the chain check.

A stage is a small class built from one frozen config whose `__call__` maps a `pyarrow.Table`
(one row per document) to a `pyarrow.Table` with the same rows in the same order. It declares
the columns it reads (`requires`), adds (`adds`) and removes (`removes`), so a chain of stages
can be checked against the input columns before any cluster work.

Rows that failed carry a non-null `_error` struct; later stages pass them through untouched.
Columns named `_stat_*` are per-row counters (tokens, seconds) that the sink sums for the report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

FILE_INDEX = "_file"   # int32: index of the input file in the sorted file list (names output parts)
SOURCE = "_source"     # string: the input file the row came from
ROW = "_row"           # int64: row number inside that file
ERROR = "_error"       # struct<stage, error, message>, null for rows that are fine
WINDOWS = "_windows"   # list<struct<ids, type_ids, offsets, sequence_ids, word_ids>>: tokenizer output
OUTPUTS = "_outputs"   # list<list<fixed_size_list<float32>[W]>>: model output per window (per token or one)
STAT_PREFIX = "_stat_"

ERROR_TYPE = pa.struct([
    pa.field("stage", pa.string()),
    pa.field("error", pa.string()),
    pa.field("message", pa.string()),
])


class ChainError(ValueError):
    """A stage needs a column that nothing before it provides."""


class Stage:
    """Base class: subclasses set the three column tuples (or override `declare`) and implement `__call__`."""

    name: ClassVar[str] = "stage"
    requires: tuple[str, ...] = ()
    adds: tuple[str, ...] = ()
    removes: tuple[str, ...] = ()

    @classmethod
    def declare(cls, config) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(requires, adds, removes) for this config, known before the stage loads anything heavy."""
        return cls.requires, cls.adds, cls.removes

    def __call__(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A stage class and its frozen config: what travels to a worker, which builds the stage there."""

    cls: type[Stage]
    config: object

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def columns(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        return self.cls.declare(self.config)

    def build(self) -> Stage:
        return self.cls(self.config)


def check_chain(columns: Iterable[str], stages: Sequence[StageSpec]) -> list[str]:
    """Walk the stages over the input columns; return the final columns or raise naming the gap."""
    available = list(columns)
    for stage in stages:
        requires, adds, removes = stage.columns
        missing = [c for c in requires if c not in available]
        if missing:
            raise ChainError(f"stage {stage.name!r} needs columns {missing}; available: {available}")
        available = [c for c in available if c not in removes]
        available += [c for c in adds if c not in available]
    return available


def ok_mask(table: pa.Table) -> pa.ChunkedArray:
    """True for rows without an error (the rows a stage should work on)."""
    return pc.is_null(table.column(ERROR))


def with_errors(table: pa.Table, new_errors: dict[int, tuple[str, str, str]]) -> pa.Table:
    """Set `_error` for the given row positions (stage, error type, message); existing errors stay."""
    if not new_errors:
        return table
    errors = table.column(ERROR).to_pylist()
    for position, (stage, error, message) in new_errors.items():
        if errors[position] is None:
            errors[position] = {"stage": stage, "error": error, "message": message}
    return set_column(table, ERROR, pa.array(errors, type=ERROR_TYPE))


def set_column(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Replace the column if present, append it otherwise."""
    index = table.schema.get_field_index(name)
    if index >= 0:
        return table.set_column(index, name, values)
    return table.append_column(name, values)


def add_seconds(table: pa.Table, stage: str, seconds: float) -> pa.Table:
    """Spread a batch's busy time over its rows so the sink can sum busy seconds per stage."""
    share = seconds / max(table.num_rows, 1)
    return set_column(table, f"{STAT_PREFIX}seconds_{stage}", pa.array([share] * table.num_rows, pa.float64()))


class Timer:
    """`with Timer() as t: ...; t.seconds`: wall time of a stage's work on one batch."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
