"""The typed job configuration: what flags and YAML files are validated into (pydantic, at the user boundary).

`JobConfig` holds the flags every job shares (DESIGN.md, "Job command line"); each task adds its
own options in a subclass. Field descriptions are the `--help` texts.
"""

from __future__ import annotations

import csv
import json
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model, field_validator, model_validator

from pipeline.classify_decode import FUNCTIONS, WINDOW_AGGREGATIONS
from pipeline.cli import without_none
from pipeline.embed_decode import LONG_TEXT_MODES
from pipeline.infer import DEVICES, DTYPES
from pipeline.ner_decode import AGGREGATIONS
from pipeline.storage import StorageOptions

INT64_MAX = 2**63 - 1   # what Arrow compute and torch take as an integer
# Paths and column names: an empty one would silently mean the current folder, or no column.
NAMES = ("input", "output", "model", "text_column", "id_column", "text_pair_column", "question_column", "prompt_name")


class _SharedChecks(BaseModel):
    """Checks of options a multi-task config shares with JobConfig (create_model copies fields, not validators)."""

    @field_validator("*", mode="wrap")
    @classmethod
    def _no_loose_values(cls, value, handler, info):
        """pydantic would read YAML's `true` as the number 1 and "yes" as true; a number past int64 fails in Arrow."""
        kind = without_none(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and kind in (int, float):
            raise ValueError("expected a number, got a boolean")
        if kind is bool and value is not None and not isinstance(value, bool):
            raise ValueError("expected true or false")
        if info.field_name in NAMES and isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        value = handler(value)
        if kind is int and isinstance(value, int) and abs(value) > INT64_MAX:
            raise ValueError(f"at most {INT64_MAX}")
        return value

    @field_validator("keep_columns", mode="before", check_fields=False)
    @classmethod
    def _split_commas(cls, value):
        return _comma_list(value)

    @field_validator("storage_options", mode="before", check_fields=False)
    @classmethod
    def _options_as_json(cls, value):
        return json.dumps(value) if isinstance(value, dict) else value  # a mapping in the YAML file

    @field_validator("storage_options", check_fields=False)
    @classmethod
    def _valid_options(cls, value: SecretStr | None):
        if value is not None:
            StorageOptions.parse(value.get_secret_value())  # its ValueError never quotes the value
        return value

    @property
    def storage(self) -> StorageOptions:
        """The storage options for this job's URLs (--input, --output and every --model)."""
        text = self.storage_options.get_secret_value() if self.storage_options else None
        return StorageOptions.parse(text, self.urls())


class JobConfig(_SharedChecks):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(description="input Parquet: file, folder (hive partitions ok), glob or fsspec URL (s3://...)")
    output: str = Field(description="output folder (local or fsspec URL)")
    model: str = Field(description="folder with a Hugging Face checkpoint (config.json, weights, tokenizer)")
    text_column: str = Field("text", description="column holding the text to annotate")
    id_column: str = Field("id", description="column identifying each row; copied into results and errors")
    keep_columns: tuple[str, ...] = Field(
        (), description="input columns copied unchanged into the results (space- or comma-separated; '\"a, b\"' for a name holding a comma)")
    max_chars: int = Field(100_000, ge=1, description="texts longer than this many characters (code points) become "
                                                     "error rows (text_too_long) instead of being annotated")
    max_length: int | None = Field(
        None, ge=8, description="tokens per window, special tokens included (default: the model's maximum)")
    stride: int = Field(0, ge=0, description="tokens shared by consecutive windows of a long text")
    batch_tokens: int = Field(16384, ge=1, description="padded tokens per model micro-batch (rows × longest row)")
    device: Literal[DEVICES] = Field("auto", description="auto: CUDA when available, else CPU")
    dtype: Literal[DTYPES] = Field("auto", description="auto: bfloat16 (else float16) on CUDA, float32 on CPU; "
                                   "bfloat16 or int8 (dynamic quantisation of the encoder's linear layers): "
                                   "the CPU fast modes (bfloat16/float16 on CPU need AVX-512 or AMX: refused on a "
                                   "CPU without)")
    tokenizer_actors: int | None = Field(
        None, ge=1, description="tokenizer actors (CPU); default: 1 on a CPU cluster, with GPUs enough to feed "
                                "them (one per 2 CPUs, at most 6 per GPU)")
    model_actors: int | None = Field(
        None, ge=1, description="model actors (one GPU each on CUDA); default: one per GPU, on CPU one "
                                "single-threaded actor per core (fewer when the node's memory or the corpus "
                                "is small, each then with more threads)")
    wait_for_gpus: float = Field(
        600, ge=0, description="on a joined cluster, seconds to wait for GPUs the run needs and lacks (--device "
                               "cuda, or more --model-actors than GPUs up) while its autoscaler brings them up; "
                               "a minute without a node launched ends the wait. A Ray the job started itself "
                               "refuses at once")
    docs_per_batch: int | None = Field(
        None, ge=1, description="documents per batch handed to a tokenizer/model actor; default: 256 on CPU, "
                                "2048 on GPU (a GPU runs 256 documents in milliseconds), fewer for long documents (about 8 MiB "
                                "of text a batch)")
    rows_per_file: int | None = Field(
        None, ge=1, description="target result rows per output Parquet file; a file also ends at about 256 MiB of "
                                "rows in memory (wide kept columns). Each write is committed on its own, so this is "
                                "also the work a kill can cost. Default: 10,000 on CPU, 100,000 on GPU")
    progress_seconds: float = Field(
        60, ge=0, description="seconds between progress lines while the run executes (rows committed of the input's, "
                              "rate, time left; 0: none); where stdout is no terminal (ray job submit, Airflow logs) "
                              "they replace Ray Data's progress log")
    partition_by: str | None = Field(None, description="write hive folders COLUMN=value/ (a kept input column)")
    overwrite: bool = Field(False, description="replace an existing output folder: what earlier runs wrote there "
                                                "is deleted (a folder holding other files is refused)")
    storage_options: SecretStr | None = Field(
        None, description="JSON object of fsspec options for --input/--output/--model (endpoint_url, key, "
                          "secret, ...); overrides the AWS environment/profile chain; never logged")

    def urls(self) -> tuple[str, ...]:
        return self.input, self.output, getattr(self, "model", "")

    @model_validator(mode="after")
    def _check(self):
        if self.max_length is not None and self.stride >= self.max_length:
            raise ValueError(f"stride={self.stride} must be smaller than max_length={self.max_length}")
        internal = [c for c in (self.text_column, self.id_column, *self.keep_columns) if c.startswith("_")]
        if internal:
            raise ValueError(f"column names starting with '_' are reserved for the pipeline: {internal}")
        if self.id_column in self.keep_columns:
            raise ValueError(f"keep_columns: {self.id_column!r} is the id column, always kept")
        twice = sorted({c for c in self.keep_columns if self.keep_columns.count(c) > 1})
        if twice:
            raise ValueError(f"keep_columns: {twice} named twice")
        if self.dtype == "int8" and self.device == "cuda":
            raise ValueError("dtype int8 (dynamic quantisation) runs on CPU only; use --device cpu or --dtype bfloat16")
        texts = {self.text_column, getattr(self, "text_pair_column", None), getattr(self, "question_column", None)}
        if self.partition_by is not None and self.partition_by in texts | {self.id_column}:
            raise ValueError(f"partition_by={self.partition_by!r}: the text or id column would make a folder per "
                             "document; partition by a column of few values (a date, a language, a source)")
        if self.partition_by is not None and (not self.partition_by or self.partition_by.startswith(("_", "."))
                                              or "/" in self.partition_by or "=" in self.partition_by):
            # its folders would be hidden from readers ('_', '.'), nested ('/') or misread ('=')
            raise ValueError(f"partition_by={self.partition_by!r}: a partition column's name cannot be empty, start "
                             "with '_' or '.', nor hold '/' or '='")
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
        "simple", description="how token tags become entities, as the HF token-classification pipeline "
        "(whose default is none: per-token tags, which it refuses for windowed long texts)")
    ignore_labels: tuple[str, ...] = Field(
        ("O",), description="labels never reported as entities (space- or comma-separated)")

    @field_validator("ignore_labels", mode="before")
    @classmethod
    def _split_label_commas(cls, value):   # its own name: JobConfig's _split_commas splits --keep-columns
        return _comma_list(value)


class ClassifyConfig(JobConfig):
    function_to_apply: Literal[FUNCTIONS] = Field(
        "default", description="scores from logits; default: as the HF text-classification pipeline "
        "(regression: none; multi-label or one label: sigmoid; else softmax)")
    top_k: int | None = Field(1, ge=1, description="labels kept in `scores`, best first (YAML null: all labels)")
    all_labels: bool = Field(False, description="keep every label in `scores` (top_k = all)")
    text_pair_column: str | None = Field(None, description="second text of each pair (NLI, cross-encoder reranking)")
    window_aggregation: Literal[WINDOW_AGGREGATIONS] = Field(
        "mean", description="one label per long document: mean of window probabilities, max per label, "
        "or the first window only")

    @model_validator(mode="after")
    def _top_k_or_all(self):
        if self.all_labels and "top_k" in self.model_fields_set and self.top_k is not None:
            raise ValueError(f"give one of --top-k {self.top_k} and --all-labels")
        return self

    @property
    def effective_top_k(self) -> int | None:
        return None if self.all_labels else self.top_k


class QaConfig(JobConfig):
    ALTERNATIVES: ClassVar = (("question", "question_column"),)   # a flag replaces the YAML's other (cli.py)
    max_length: int | None = Field(
        None, ge=8, description="tokens per window, question and special tokens included (default: the model's "
                                "maximum, at most 384, as the HF question-answering pipeline)")
    stride: int = Field(0, ge=0, json_schema_extra={"hidden": True},   # one JobConfig option; QA has --doc-stride
                        description="not used: question answering windows with --doc-stride")
    question: str | None = Field(None, description="one question asked of every row's text (the context)")
    question_column: str | None = Field(None, description="column holding each row's question")
    top_k: int = Field(1, ge=1, description="answers kept in `answers`, best first")
    doc_stride: int | None = Field(
        None, ge=0, description="context tokens shared by consecutive windows (default: min(max_length // 2, 128))")
    max_answer_len: int = Field(15, ge=1, description="longest answer, in tokens")
    max_question_len: int = Field(64, ge=1, description="in tokens; accepted for HF compatibility: fast tokenizers "
                                  "reject a question that leaves no room for the context")
    handle_impossible_answer: bool = Field(False, description="allow 'no answer' (answer null) to win")

    @model_validator(mode="after")
    def _one_question(self):
        if (self.question is None) == (self.question_column is None):
            raise ValueError("give exactly one of --question TEXT and --question-column COLUMN")
        if self.question == "":
            raise ValueError("--question '': the question is empty (the HF pipeline refuses one too)")
        if self.stride:
            raise ValueError(f"stride={self.stride}: question answering windows with --doc-stride")
        if self.question_column is not None and self.question_column.startswith("_"):
            raise ValueError(f"question_column={self.question_column!r}: names starting with '_' are reserved")
        return self


class EmbedConfig(JobConfig):
    max_length: int | None = Field(
        None, ge=8, description="tokens per window, special tokens included (default: the model's "
                                "sentence-transformers max_seq_length, else the model's maximum)")
    pooling: Literal["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"] | None = Field(
        None, description="pooling of token vectors (default: the model's sentence-transformers config, else mean)")
    normalize: bool | None = Field(
        None, description="L2-normalise embeddings (default: as the model's sentence-transformers modules)")
    long_text: Literal[LONG_TEXT_MODES] = Field(
        "truncate", description="truncate: first window only, as sentence-transformers; mean: token-weighted "
        "mean of all windows")
    embedding_dtype: Literal["float32", "float16"] = Field(
        "float32", description="type of the stored embedding; float16 halves the storage, but Spark cannot read "
                               "Parquet's float16 (DuckDB, pyarrow and pandas can)")
    prompt_name: str | None = Field(
        None, description="put the model's prompt of that name (config_sentence_transformers.json) before every "
                          "text, as sentence-transformers' encode(prompt_name=...) (default: its default_prompt_name)")
    prompt: str | None = Field(
        None, description="put this text before every text, as encode(prompt=...); '' for none (with --long-text "
                          "mean a prompt is in each document's first window only)")
    truncate_dim: int | None = Field(
        None, ge=1, description="keep the first N values of each embedding (Matryoshka models), as "
                                "encode(truncate_dim=N); at most the embedding's width (default: the model's "
                                "truncate_dim, else all)")
    ALTERNATIVES: ClassVar = (("prompt", "prompt_name"),)

    @model_validator(mode="after")
    def _one_prompt(self):
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError("give at most one of --prompt TEXT and --prompt-name NAME")
        if self.stride and self.long_text == "truncate":
            raise ValueError(f"stride={self.stride}: --long-text truncate embeds each text's first window only; "
                             "windows that share tokens are for --long-text mean")
        return self


# Task name (`task:` in a multi-task YAML) -> its config class.
TASK_CONFIGS: dict[str, type[JobConfig]] = {
    "ner": NerConfig, "classify": ClassifyConfig, "qa": QaConfig, "embed": EmbedConfig,
}
# Options a task of a multi-task run may set for itself; every other option is shared by the run.
PER_TASK_OPTIONS = ("model", "max_length", "stride", "batch_tokens")


def _multi_fields() -> dict:
    fields = {name: (f.annotation, f) for name, f in JobConfig.model_fields.items() if name != "model"}
    fields["tasks"] = (dict[str, dict], Field(
        description="result column -> {task: ner|classify|qa|embed, model: FOLDER, its options} (YAML only)"))
    return fields


class _MultiBase(_SharedChecks):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def urls(self) -> tuple[str, ...]:
        return self.input, self.output, *(str((entry or {}).get("model", "")) for entry in self.tasks.values())

    @model_validator(mode="after")
    def _check_tasks(self):
        self.task_configs()
        return self

    def task_configs(self) -> list[tuple[str, str, JobConfig]]:
        """(result column, task name, the task's full config) per entry of `tasks`, in YAML order."""
        from pydantic import ValidationError

        if not self.tasks:
            raise ValueError("tasks: name at least one task")
        shared = self.model_dump(exclude={"tasks"}, exclude_unset=True)
        taken = {self.id_column, *self.keep_columns, *([self.partition_by] if self.partition_by else [])}
        configs = []
        for column, entry in self.tasks.items():
            if not column.strip() or column.startswith("_") or column in taken:
                raise ValueError(f"tasks.{column!r}: result column names must not start with '_' nor repeat an input "
                                 f"column kept in the results ({sorted(taken)}), nor be empty")
            entry = underscored(entry or {}, f"tasks.{column}")
            kind = entry.pop("task", None)
            if kind not in TASK_CONFIGS:
                raise ValueError(f"tasks.{column}.task={kind!r}: expected one of {', '.join(TASK_CONFIGS)}")
            config_cls = TASK_CONFIGS[kind]
            own = set(config_cls.model_fields) - set(JobConfig.model_fields) | set(PER_TASK_OPTIONS)
            foreign = sorted(set(entry) - own)
            if foreign:
                raise ValueError(f"tasks.{column}: options {foreign} are not per-task; allowed: {sorted(own)}")
            try:
                configs.append((column, kind, config_cls(**{**shared, **entry})))
            except ValidationError as error:
                from pipeline.cli import validation_message

                raise ValueError(f"tasks.{column}: {validation_message(error)}") from None
        return configs


MultiConfig = create_model("MultiConfig", __base__=_MultiBase, **_multi_fields())
MultiConfig.__doc__ = "Several tasks over one read and one write of the corpus: shared options + `tasks`."


def underscored(options: dict, where: str) -> dict:
    """Option names with dashes as underscores (YAML takes both); one option given both ways is refused."""
    names = {}
    for key in options:
        name = str(key).replace("-", "_")
        if name in names:
            raise ValueError(f"{where}: {names[name]!r} and {key!r} are the same option")
        names[name] = key
    return {name: options[key] for name, key in names.items()}


def _comma_list(value):
    """Accept `a,b`, ["a", "b"] and ["a,b"] alike; a name holding a comma in double quotes, as in CSV
    (`'"lat, lon",date'`; a quote inside one doubled)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        return tuple(part.strip() for item in value for part in next(csv.reader([str(item)], skipinitialspace=True), [])
                     if part.strip())
    return value
