"""Mark input rows that cannot be annotated, so they reach `_errors` with a reason instead of vanishing.

Valid input, annotated normally: empty and whitespace-only texts (they yield empty results),
control characters, CJK, right-to-left scripts and emoji. Duplicate ids are annotated like any
other row (ids are copied, never used as keys: `_source` + `_row` identify a row).

Error rows (`error` in `_errors`): `null_text`; `text_type` (the text column is neither string
nor binary); `invalid_utf8` (bytes that are not UTF-8, lone surrogates included: Arrow strings
are UTF-8, so a lone surrogate can only arrive as invalid bytes); `text_too_long` (more than
`max_chars` code points); `null_id`. A binary text column holding valid UTF-8 is annotated, and so
are dictionary-encoded (a pandas Categorical) and view columns. The second texts of a task (a
classifier's text pair, QA's question column) are decoded the same way; a null one is `null_text`
naming its column (their length is the tokenizer's to judge).
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.stage import ERROR, Stage, set_column, with_errors


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    id_column: str = "id"
    text_column: str = "text"
    max_chars: int = 100_000
    second_texts: tuple[str, ...] = ()      # text pair / question columns


class ValidateText(Stage):
    name = "validate"

    def __init__(self, config: ValidateConfig):
        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)

    @classmethod
    def declare(cls, config: ValidateConfig):
        return (config.id_column, config.text_column, *config.second_texts, ERROR), (), ()

    def __call__(self, table: pa.Table) -> pa.Table:
        column = self.config.text_column
        text = table.column(column)
        errors: dict[int, tuple[str, str, str]] = {}
        if is_text_type(text.type):
            text, errors = _as_utf8(text, column, self.name)
            table = set_column(table, column, text)
            for i in _positions(pc.is_null(text)):
                errors.setdefault(i, (self.name, "null_text", f"{column!r} is null"))
            lengths = pc.utf8_length(text).to_numpy(zero_copy_only=False)
            for i in _positions(pc.greater(pc.utf8_length(text), self.config.max_chars)):
                errors.setdefault(i, (self.name, "text_too_long", f"{column!r} has {int(lengths[i])} characters; "
                                      f"--max-chars is {self.config.max_chars}"))
        else:
            message = f"text column {column!r} has type {text.type}; expected string"
            errors = {i: (self.name, "text_type", message) for i in range(table.num_rows)}
        for second in self.config.second_texts:   # the plan checked their types
            text, bad = _as_utf8(table.column(second), second, self.name)
            table = set_column(table, second, text)
            for i in _positions(pc.is_null(text)):
                bad.setdefault(i, (self.name, "null_text", f"{second!r} is null"))
            for i, error in bad.items():
                errors.setdefault(i, error)
        for i in _positions(pc.is_null(table.column(self.config.id_column))):
            errors.setdefault(i, (self.name, "null_id", f"{self.config.id_column!r} is null"))
        texts = [c for c in (column, *self.config.second_texts) if c != self.config.id_column]   # the id goes to _errors
        return _without_texts(with_errors(table, errors), texts) if errors else table


def _without_texts(table: pa.Table, columns: list[str]) -> pa.Table:
    """Error rows' texts are null from here on: no later stage reads them and `_errors` does not hold them, while a
    text refused as too long would otherwise travel through every stage (a 10 MB text, hundreds of them in a batch)."""
    failed = pc.is_valid(table.column(ERROR))
    for column in dict.fromkeys(columns):
        kind = table.schema.field(column).type
        table = set_column(table, column, pc.if_else(failed, pa.scalar(None, kind), table.column(column)))
    return table


def check_text_column(schema: pa.Schema, column: str, flag: str = "--text-column") -> None:
    """A text column that is neither string nor binary is a configuration error, found before any cluster work."""
    if column in schema.names and not is_text_type(schema.field(column).type):
        raise ValueError(f"{flag} {column!r} has type {schema.field(column).type}; "
                         "expected string (or binary holding UTF-8)")


def is_text_type(kind: pa.DataType) -> bool:
    """String or binary, of any width or view, or dictionary-encoded, or null-typed (every value null: pandas writes
    such a column so): what validation turns into `string`."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return any(check(kind) for check in (pa.types.is_null, pa.types.is_string, pa.types.is_large_string,
                                         pa.types.is_string_view, pa.types.is_binary, pa.types.is_large_binary,
                                         pa.types.is_binary_view))


def _as_utf8(text: pa.ChunkedArray, column: str, stage: str) -> tuple[pa.ChunkedArray, dict]:
    """A string column whose bytes are valid UTF-8; rows that are not become null plus an error."""
    if pa.types.is_dictionary(text.type):
        text = text.cast(text.type.value_type)
    if pa.types.is_string_view(text.type) or pa.types.is_binary_view(text.type):
        text = text.cast(pa.binary())
    binary = text.cast(pa.large_binary()) if pa.types.is_large_string(text.type) or \
        pa.types.is_large_binary(text.type) else text.cast(pa.binary())
    try:  # the fast path: Arrow checks the whole column at once
        strings = pc.cast(binary, pa.string())
        strings.validate(full=True)
        return strings, {}
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    values, errors = [], {}
    for i, raw in enumerate(binary.to_pylist()):
        try:
            values.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            values.append(None)
            errors[i] = (stage, "invalid_utf8", f"{column!r} is not valid UTF-8: {error.reason} at byte {error.start}")
    return pa.chunked_array([pa.array(values, pa.string())]), errors


def _positions(mask: pa.ChunkedArray | pa.Array) -> list[int]:
    return pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()
