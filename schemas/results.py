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

LABEL_SCORE = pa.struct([
    pa.field("label", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
])

QA_ANSWER = pa.struct([
    pa.field("answer", pa.string()),            # null: "no answer" (handle_impossible_answer)
    pa.field("score", pa.float32(), nullable=False),
    pa.field("start", pa.int32(), nullable=False),
    pa.field("end", pa.int32(), nullable=False),
])

EMBEDDING_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}

# The task's own result columns (DESIGN.md, "Result schemas"). Embeddings depend on the model's
# width and the chosen dtype: see `embedding_field`.
TASK_COLUMNS: dict[str, tuple[pa.Field, ...]] = {
    "ner": (pa.field("entities", pa.list_(pa.field("item", NER_ENTITY, nullable=False)), nullable=False),),
    "classify": (
        pa.field("label", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("scores", pa.list_(pa.field("item", LABEL_SCORE, nullable=False)), nullable=False),
    ),
    "qa": (
        *(pa.field(f.name, f.type, nullable=f.nullable) for f in QA_ANSWER),
        pa.field("answers", pa.list_(pa.field("item", QA_ANSWER, nullable=False)), nullable=False),
    ),
}


def embedding_field(dim: int, dtype: str = "float32") -> pa.Field:
    """`embedding: fixed_size_list<float32|float16>[dim]`, never null.

    The item field stays nullable: pyarrow 26 drops a fixed-size list's non-null item flag when the
    type is pickled (as it is on its way to Ray workers), which would make the schemas disagree.
    """
    if dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding dtype={dtype!r}: expected one of {', '.join(EMBEDDING_DTYPES)}")
    return pa.field("embedding", pa.list_(EMBEDDING_DTYPES[dtype], dim), nullable=False)

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


def result_schema(task: str, id_field: pa.Field, keep_fields: tuple[pa.Field, ...] = (),
                  columns: tuple[pa.Field, ...] | None = None) -> pa.Schema:
    """`id`, then the passthrough columns, then the task's columns (`columns`, else its fixed ones)."""
    return pa.schema([id_field, *keep_fields, *(task_fields(task) if columns is None else columns)])


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
