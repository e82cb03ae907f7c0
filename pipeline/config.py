"""The typed job configuration: what flags and YAML files are validated into (pydantic, at the user boundary).

`JobConfig` holds the flags every job shares (DESIGN.md, "Job command line"); each task adds its
own options in a subclass. Field descriptions are the `--help` texts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.infer import DEVICES, DTYPES
from pipeline.ner_decode import AGGREGATIONS


class JobConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(description="input Parquet: file, folder (hive partitions ok), glob or fsspec URL (s3://...)")
    output: str = Field(description="output folder (local or fsspec URL)")
    model: str = Field(description="folder with a Hugging Face checkpoint (config.json, weights, tokenizer)")
    text_column: str = Field("text", description="column holding the text to annotate")
    id_column: str = Field("id", description="column identifying each row; copied into results and errors")
    keep_columns: tuple[str, ...] = Field((), description="input columns copied unchanged into the results")
    max_length: int | None = Field(
        None, ge=8, description="tokens per window, special tokens included (default: the model's maximum)")
    stride: int = Field(0, ge=0, description="tokens shared by consecutive windows of a long text")
    batch_tokens: int = Field(16384, ge=1, description="padded tokens per model micro-batch (rows × longest row)")
    device: Literal[DEVICES] = Field("auto", description="auto: CUDA when available, else CPU")
    dtype: Literal[DTYPES] = Field("auto", description="auto: bfloat16 (else float16) on CUDA, float32 on CPU")
    tokenizer_actors: int = Field(1, ge=1, description="tokenizer actors (CPU)")
    model_actors: int = Field(1, ge=1, description="model actors (one GPU each on CUDA)")
    docs_per_batch: int = Field(256, ge=1, description="documents per batch handed to a tokenizer/model actor")
    rows_per_file: int = Field(100_000, ge=1, description="target result rows per output Parquet file")
    partition_by: str | None = Field(None, description="write hive folders COLUMN=value/ (a kept input column)")
    overwrite: bool = Field(False, description="replace an existing output folder")

    @field_validator("keep_columns", mode="before")
    @classmethod
    def _split_commas(cls, value):
        return _comma_list(value)

    @model_validator(mode="after")
    def _check(self):
        if self.max_length is not None and self.stride >= self.max_length:
            raise ValueError(f"stride={self.stride} must be smaller than max_length={self.max_length}")
        internal = [c for c in (self.text_column, self.id_column, *self.keep_columns) if c.startswith("_")]
        if internal:
            raise ValueError(f"column names starting with '_' are reserved for the pipeline: {internal}")
        if self.id_column in self.keep_columns:
            raise ValueError(f"keep_columns: {self.id_column!r} is the id column, always kept")
        return self

    @property
    def result_columns(self) -> tuple[str, ...]:
        """Input columns copied to the results: id, kept columns (the partition column included)."""
        kept = list(self.keep_columns)
        if self.partition_by and self.partition_by not in kept:
            kept.append(self.partition_by)
        return (self.id_column, *kept)


class NerConfig(JobConfig):
    aggregation: Literal[AGGREGATIONS] = Field(
        "simple", description="how token tags become entities, as the HF token-classification pipeline")
    ignore_labels: tuple[str, ...] = Field(("O",), description="labels never reported as entities")

    @field_validator("ignore_labels", mode="before")
    @classmethod
    def _split_commas(cls, value):
        return _comma_list(value)


def _comma_list(value):
    """Accept `a,b`, ["a", "b"] and ["a,b"] alike."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        return tuple(part.strip() for item in value for part in str(item).split(",") if part.strip())
    return value
