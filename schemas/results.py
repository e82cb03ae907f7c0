"""Explicit Arrow schemas of the job outputs, and the check every batch passes before it is written.

A result file holds `id` (typed as in the input), the passthrough columns the user asked for
(typed as in the input) and the task's own columns, in that order. Schemas are never inferred
from data and nothing is cast silently: a batch that does not match raises.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"

NER_ENTITY = pa.struct([
    pa.field("label", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("start", pa.int32(), nullable=False),
    pa.field("end", pa.int32(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
])

# The task's own result columns (DESIGN.md, "Result schemas"); issue 7 adds classify/qa/embed here.
TASK_COLUMNS: dict[str, tuple[pa.Field, ...]] = {
    "ner": (pa.field("entities", pa.list_(pa.field("item", NER_ENTITY, nullable=False)), nullable=False),),
}

ERROR_COLUMNS = (
    pa.field("source", pa.string(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
)


class SchemaMismatch(ValueError):
    """A batch whose columns or types differ from the declared schema."""


def task_fields(task: str) -> tuple[pa.Field, ...]:
    if task not in TASK_COLUMNS:
        raise ValueError(f"task={task!r}: expected one of {', '.join(TASK_COLUMNS)}")
    return TASK_COLUMNS[task]


def result_schema(task: str, id_field: pa.Field, keep_fields: tuple[pa.Field, ...] = ()) -> pa.Schema:
    """`id`, then the passthrough columns, then the task's columns."""
    return pa.schema([id_field, *keep_fields, *task_fields(task)])


def errors_schema(id_field: pa.Field) -> pa.Schema:
    """Error rows: the input id (nullable: a null id is itself a reason to fail), then where and why."""
    return pa.schema([id_field.with_nullable(True), *ERROR_COLUMNS])


def validate(table: pa.Table, schema: pa.Schema) -> None:
    """Raise SchemaMismatch naming each differing column; nullability of declared non-null fields is checked."""
    problems = []
    names, expected_names = table.schema.names, schema.names
    if names != expected_names:
        problems.append(f"columns {names} != expected {expected_names}")
    for field in schema:
        if field.name not in names:
            continue
        actual = table.schema.field(field.name)
        if not actual.type.equals(field.type):
            problems.append(f"{field.name}: {actual.type} != expected {field.type}")
        elif not field.nullable and table.column(field.name).null_count:
            problems.append(f"{field.name}: {table.column(field.name).null_count} nulls in a non-null column")
    if problems:
        raise SchemaMismatch("; ".join(problems))
