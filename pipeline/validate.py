"""Mark input rows that cannot be annotated, so they reach `_errors` with a reason instead of vanishing.

Empty and whitespace-only texts are valid input (they simply yield empty results).
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.stage import ERROR, Stage, with_errors


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    id_column: str = "id"
    text_column: str = "text"


class ValidateText(Stage):
    name = "validate"

    def __init__(self, config: ValidateConfig):
        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)

    @classmethod
    def declare(cls, config: ValidateConfig):
        return (config.id_column, config.text_column, ERROR), (), ()

    def __call__(self, table: pa.Table) -> pa.Table:
        text = table.column(self.config.text_column)
        errors: dict[int, tuple[str, str, str]] = {}
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            message = f"text column {self.config.text_column!r} has type {text.type}; expected string"
            errors = {i: (self.name, "text_type", message) for i in range(table.num_rows)}
        else:
            for i in _positions(pc.is_null(text)):
                errors[i] = (self.name, "null_text", f"{self.config.text_column!r} is null")
        for i in _positions(pc.is_null(table.column(self.config.id_column))):
            errors.setdefault(i, (self.name, "null_id", f"{self.config.id_column!r} is null"))
        return with_errors(table, errors)


def _positions(mask: pa.ChunkedArray) -> list[int]:
    return pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()
