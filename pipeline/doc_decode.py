"""What the classification, QA and embedding decode stages share: per-document windows out of the
nested Arrow columns, and a loop that turns each document's windows into its result columns.

A decode stage subclasses `DocumentDecode`, sets `fields` (its result columns) and implements
`decode(text, windows) -> {column: value}`; a document whose decoding raises becomes an error row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.arrow_nested import flat_lengths, flatten, split_rows
from pipeline.stage import (
    ERROR,
    OUTPUTS,
    WINDOWS,
    Stage,
    Timer,
    add_seconds,
    ok_mask,
    set_column,
    with_errors,
)


@dataclass(frozen=True)
class DecodeWindow:
    """One window of a document: its tokens and the model's output rows for it."""

    ids: np.ndarray           # int32[T]
    offsets: np.ndarray       # int32[T, 2]
    sequence_ids: np.ndarray  # int8[T]
    word_ids: np.ndarray      # int32[T]
    outputs: np.ndarray       # float32[T, W] per token (QA) or float32[1, W] per window (classify, embed)


def document_windows(table: pa.Table) -> Iterator[list[DecodeWindow]]:
    """Per row of `table`: the DecodeWindows of that document (empty for rows that failed earlier)."""
    windows_column, outputs_column = table.column(WINDOWS), table.column(OUTPUTS)
    per_doc = flat_lengths(windows_column)
    windows = flatten(windows_column)
    token_counts = flat_lengths(windows.field("ids"))
    ids = split_rows(flatten(windows.field("ids")).to_numpy(), token_counts)
    offsets = split_rows(flatten(flatten(windows.field("offsets"))).to_numpy().reshape(-1, 2), token_counts)
    sequence_ids = split_rows(flatten(windows.field("sequence_ids")).to_numpy(), token_counts)
    word_ids = split_rows(flatten(windows.field("word_ids")).to_numpy(), token_counts)
    outputs = flatten(outputs_column)
    width = outputs.type.value_type.list_size
    rows = split_rows(flatten(flatten(outputs)).to_numpy().reshape(-1, width), flat_lengths(outputs))
    start = 0
    for count in per_doc:
        yield [DecodeWindow(ids[w], offsets[w], sequence_ids[w], word_ids[w], rows[w])
               for w in range(start, start + count)]
        start += count


class DocumentDecode(Stage):
    name = "decode"
    removes = (WINDOWS, OUTPUTS)
    fields: tuple[pa.Field, ...] = ()

    def __init__(self, config):
        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)

    @classmethod
    def declare(cls, config):
        return (config.text_column, WINDOWS, OUTPUTS, ERROR), tuple(f.name for f in cls.result_fields(config)), \
            cls.removes

    @classmethod
    def result_fields(cls, config) -> tuple[pa.Field, ...]:
        return cls.fields

    def decode(self, text: str, windows: list[DecodeWindow]) -> dict:
        raise NotImplementedError

    def __call__(self, table: pa.Table) -> pa.Table:
        with Timer() as timer:
            fields = self.result_fields(self.config)
            ok = ok_mask(table).to_numpy(zero_copy_only=False)
            texts = table.column(self.config.text_column).to_pylist()
            values = {f.name: [None] * table.num_rows for f in fields}
            failures = {}
            for i, windows in enumerate(document_windows(table)):
                if not ok[i]:
                    continue
                try:
                    for name, value in self.decode(texts[i], windows).items():
                        values[name][i] = value
                except Exception as error:  # noqa: BLE001 - becomes an error row with the reason
                    failures[i] = (self.name, type(error).__name__, str(error))
            for i in failures:  # a document that failed half way must not keep partial results
                for column in values.values():
                    column[i] = None
            table = with_errors(table, failures)
            for field in fields:
                table = set_column(table, field.name, self.to_array(field, values[field.name]))
            table = table.drop_columns(list(self.removes))
        return add_seconds(table, self.name, timer.seconds)

    def to_array(self, field: pa.Field, values: list) -> pa.Array:
        return pa.array(values, type=field.type)
