"""Build a job from its config, check everything that can be checked before cluster work, run it, report.

A task (NER, and later classification, QA, embeddings) contributes only its decode stage and
its result columns (`Task`); reading, validation, tokenization, inference and writing are shared.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from importlib import metadata

import pyarrow as pa

from models.remote import seen as remote_models_seen
from pipeline.cli import UsageError
from pipeline.config import JobConfig
from pipeline.infer import Infer, InferConfig
from pipeline.lease import Lease, OutputBusy
from pipeline.progress_log import ProgressLog
from pipeline.read import (
    Footers,
    InputError,
    InputFiles,
    ReadFile,
    check_columns,
    list_input_files,
    scan_footers,
)
from pipeline.report import format_report, summarize
from pipeline.sink import ResultWriter, SinkConfig, finish_output, write_empty_results
from pipeline.stage import ERROR, FILE_INDEX, ROW, SOURCE, ChainError, StageSpec, check_chain
from pipeline.storage import StorageOptions, configure
from pipeline.tokenize import Tokenize, TokenizeConfig
from pipeline.validate import ValidateConfig, ValidateText, check_text_column
from schemas import results


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the driver reads from the checkpoint without loading weights."""

    folder: str                     # what the stages get: a local path, or the URL each node copies from
    id2label: tuple[str, ...]
    fingerprint: str
    max_tokens: int                 # longest window the position embeddings allow
    weight_bytes: int = 0           # size of the weight files (what one model actor holds, roughly)
    local: str = ""                 # the driver's local copy, for what the plan reads (tokenizer, configs)
    settings_sha256: str = ""       # config, tokenizer and sentence-transformers files (checkpoint.settings_fingerprint)
    # a multi-task job: each task's column, task, model (path, sha256, files) and options (JSON-ready; `fingerprint`
    # hashes them but the path)
    tasks: tuple = ()


@dataclasses.dataclass(frozen=True)
class Feed:
    """How a task's model gets its windows: the tokenize stage and what it needs besides id and text."""

    tokenize: StageSpec
    max_length: int | dict[str, int]                    # tokens per window (per result column: multi-task)
    columns: tuple[tuple[str, str], ...] = ()           # (flag, input column) the task reads besides the text
    model_options: tuple[tuple[str, object], ...] = ()  # extra `load_model` keywords (pooling, normalize)
    infer: StageSpec | None = None                      # None: `Infer` of the task's head on config.model
    # what the task took from the model's files beyond the settings fingerprint (embed: the prompt applied,
    # truncate_dim): part of a restart's identity, only when there is something (`settings_with`)
    identity: tuple[tuple[str, object], ...] = ()


def settings_with(settings_sha256: str, identity: tuple[tuple[str, object], ...]) -> str:
    """The model's settings fingerprint with what a task read from its files; unchanged when that is nothing."""
    if not identity:
        return settings_sha256
    return hashlib.sha256(json.dumps([settings_sha256, identity]).encode()).hexdigest()


def text_feed(config: JobConfig, model: ModelInfo) -> Feed:
    """The default: the text column alone, windows of --max-length with --stride."""
    max_length = resolve_max_length(config, model)
    return Feed(StageSpec(Tokenize, TokenizeConfig(model.folder, config.text_column, None, max_length,
                                                   config.stride)), max_length)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str                                               # result schema key, `bertbatch.task`
    model_task: str                                         # the head `models.load_model` builds
    decode: Callable[[JobConfig, ModelInfo], StageSpec]     # per-window outputs → result columns
    feed: Callable[[JobConfig, ModelInfo], Feed] = text_feed
    # The task's result columns when they depend on the model or options (embedding width); None:
    # the fixed columns of `schemas.results.TASK_COLUMNS[name]`.
    fields: Callable[[JobConfig, ModelInfo], tuple] | None = None
    inspect: Callable[[JobConfig], ModelInfo] | None = None  # None: inspect_model(config.model)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the Ray wiring needs, all frozen and picklable."""

    files: InputFiles
    read: ReadFile
    validate: StageSpec
    tokenize: StageSpec
    infer: StageSpec
    decode: StageSpec
    sink: StageSpec
    docs_per_batch: int | None      # None: ray_plan.place decides (CPU or GPU)
    tokenizer_actors: int | None    # None: ray_plan.place decides from the cluster
    model_actors: int | None        # None: ray_plan.place decides from the cluster, the model and the corpus
    rows_per_file: int | None       # None: ray_plan.preflight decides (CPU or GPU), here and in the sink
    footers: Footers                # rows per input file; shards whose footer cannot be read
    storage: StorageOptions = StorageOptions()   # configured in every worker (pipeline/storage.py)
    model_bytes: int = 0            # weight bytes of the model(s) each model actor loads
    wait_for_gpus: float = 0.0      # seconds a joined cluster may take to bring up missing GPUs


def inspect_model(folder: str, model_task: str = "base") -> ModelInfo:
    from models import CheckpointError, ConfigError
    from models.checkpoint import (
        check_architectures,
        fingerprint,
        read_config,
        settings_fingerprint,
        weight_files,
    )
    from models.remote import is_remote, local_model_folder

    try:  # a folder on object storage is copied once into this node's cache (models/remote.py)
        path = local_model_folder(folder)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {folder!r}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    try:
        family, config = read_config(path)
        check_architectures(config, model_task)
        files = weight_files(path)
    except (CheckpointError, ConfigError) as error:
        raise UsageError(f"--model {folder!r}: {error}") from None
    offset = config.pad_token_id + 1 if family.roberta_positions and config.pad_token_id is not None else 0
    # Stages get the URL of a remote model (each node resolves it to its own cached copy).
    return ModelInfo(folder if is_remote(folder) else str(path), tuple(config.labels), fingerprint(files),
                     config.max_position_embeddings - offset, sum(f.stat().st_size for f in files), str(path),
                     settings_fingerprint(path))


def plan_tokenizer(model: ModelInfo):
    """The model's tokenizer, for the plan's checks; a folder without a usable one is a UsageError."""
    try:
        return _tokenizer(model.local, model.settings_sha256)
    except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception on a corrupt tokenizer.json
        raise UsageError(f"--model {model.folder!r}: its tokenizer: {str(error).splitlines()[0]}") from None


@functools.lru_cache(maxsize=4)   # a plan asks several times (windows, decode); the hash keys the files' bytes
def _tokenizer(folder: str, settings_sha256: str):
    from models import load_tokenizer

    return load_tokenizer(folder)


def resolve_max_length(config: JobConfig, model: ModelInfo) -> int:
    """--max-length, else the tokenizer's model_max_length, never beyond the position embeddings."""
    tokenizer = plan_tokenizer(model)
    limit = min(tokenizer.model_max_length or model.max_tokens, model.max_tokens)
    max_length = config.max_length or limit
    if max_length > model.max_tokens:
        raise UsageError(f"--max-length {max_length}: this model takes at most {model.max_tokens} tokens")
    # The tokenizer's own check of max_length / stride against its special tokens, on no text: an encoding starts
    # its thread pool, and tokenizers then warns in every process Ray forks from the driver.
    try:
        tokenizer.encode_windows([], max_length=max_length, stride=config.stride)
    except ValueError as error:
        raise UsageError(f"--max-length/--stride: {error}") from None
    return max_length


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A job before any input footer is read: all its restart identity needs, so that a rerun of an output it
    already finished reads no footer (1,000 shards on S3: 94 s of footer reads for nothing)."""

    model: ModelInfo
    feed: Feed
    files: InputFiles
    infer: StageSpec


def prepare(config: JobConfig, task: Task) -> Prepared:
    """Inspect the model, make the task's feed, list the input files; raise UsageError with one line on a problem."""
    model = task.inspect(config) if task.inspect else inspect_model(config.model, task.model_task)
    feed = task.feed(config, model)
    model = dataclasses.replace(model, settings_sha256=settings_with(model.settings_sha256, feed.identity))
    try:
        files = list_input_files(config.input, config.output)
    except (InputError, ValueError) as error:
        raise UsageError(str(error)) from None
    infer = feed.infer or StageSpec(Infer, InferConfig(model.folder, task.model_task, config.batch_tokens,
                                                       config.device, config.dtype, model_options=feed.model_options))
    return Prepared(model, feed, files, infer)


def build_plan(config: JobConfig, task: Task, prepared: Prepared | None = None) -> tuple[Plan, ModelInfo, int]:
    """Check inputs (every footer), model and the stage chain; raise UsageError with one line on any problem.
    `prepared`: `prepare(config, task)` when the caller has it already."""
    prepared = prepared or prepare(config, task)
    model, feed, files = prepared.model, prepared.feed, prepared.files
    max_length = feed.max_length
    read_columns = tuple(dict.fromkeys((*config.result_columns, config.text_column, *(c for _, c in feed.columns))))
    texts = frozenset({config.text_column, *(c for _, c in feed.columns)})   # validated and kept as strings
    try:
        footers = scan_footers(files, read_columns, texts)
        schema = footers.schema
        required = [("--id-column", config.id_column), ("--text-column", config.text_column)]
        required += [("--keep-columns", c) for c in config.keep_columns]
        if config.partition_by:
            required.append(("--partition-by", config.partition_by))
        check_columns(schema, [*required, *feed.columns])
        check_text_column(schema, config.text_column)
        for flag, column in feed.columns:
            check_text_column(schema, column, flag)
        for flag, column in required[:1] + required[2:]:
            if column not in texts and "view" in str(schema.field(column).type):   # texts are kept as strings
                raise InputError(f"{flag} {column!r} has type {schema.field(column).type}, which the output cannot "
                                 "take; write it as string / binary / list")
        if config.partition_by and not partition_type(schema.field(config.partition_by).type):
            raise InputError(f"--partition-by {config.partition_by!r} has type {schema.field(config.partition_by).type}"
                             ": a folder name is one text value; partition by a string, number, date or bool column")
    except (InputError, ValueError) as error:
        raise UsageError(str(error)) from None

    # Kept columns are nullable: another shard may hold nulls where the first declares none.
    keep_fields = tuple((schema.field(c).with_type(pa.string()) if c in texts else schema.field(c)).with_nullable(True)
                        for c in config.result_columns[1:])
    task_fields = task.fields(config, model) if task.fields else None
    result_schema = results.result_schema(task.name, schema.field(config.id_column), keep_fields, task_fields)
    folded = [n.lower() for n in result_schema.names]   # DuckDB and Spark read `Label` and `label` as one
    clashes = sorted({n for n in result_schema.names if folded.count(n.lower()) > 1})
    if clashes:
        raise UsageError(f"result columns {clashes} would appear twice (names are compared ignoring case, as DuckDB "
                         "and Spark do): an input column kept (--id-column, --keep-columns, --partition-by) has the "
                         "name of a result column; rename it")
    if config.id_column.lower() in {f.name.lower() for f in results.ERROR_COLUMNS}:
        raise UsageError(f"--id-column {config.id_column!r} has the name of a column of _errors "
                         f"({', '.join(f.name for f in results.ERROR_COLUMNS)}); rename it")
    sink = SinkConfig(
        output=config.output, result_schema=result_schema,
        errors_schema=results.errors_schema(schema.field(config.id_column)), id_column=config.id_column,
        partition_by=config.partition_by, rows_per_file=config.rows_per_file,
        metadata=provenance(task, config.model, model.fingerprint),
    )
    plan = Plan(
        files=files,
        read=ReadFile(files, read_columns, schema=schema),
        validate=StageSpec(ValidateText, ValidateConfig(config.id_column, config.text_column, config.max_chars,
                                                        tuple(dict.fromkeys(c for _, c in feed.columns)))),
        tokenize=feed.tokenize,
        infer=prepared.infer,
        decode=task.decode(config, model),
        sink=StageSpec(ResultWriter, sink),
        docs_per_batch=config.docs_per_batch,
        tokenizer_actors=config.tokenizer_actors,
        model_actors=config.model_actors,
        rows_per_file=config.rows_per_file,
        footers=footers,
        storage=dataclasses.replace(config.storage, models=remote_models_seen()),   # workers load what was planned
        model_bytes=model.weight_bytes,
        wait_for_gpus=config.wait_for_gpus,
    )
    try:
        check_chain((*read_columns, FILE_INDEX, SOURCE, ROW, ERROR),
                    [plan.validate, plan.tokenize, plan.infer, plan.decode, plan.sink])
    except ChainError as error:
        raise UsageError(str(error)) from None
    return plan, model, max_length


def provenance(task: Task, model: str, fingerprint: str) -> tuple[tuple[str, str], ...]:
    return (
        ("bertbatch.task", task.name), ("bertbatch.model", model), ("bertbatch.model_sha256", fingerprint),
        ("bertbatch.version", version("bertbatch")), ("bertbatch.schema_version", results.SCHEMA_VERSION),
    )


def partition_type(kind: pa.DataType) -> bool:
    """Whether a column of this type can name hive folders: scalars with a text form (not bytes, lists, structs)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return not (pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                or pa.types.is_fixed_size_binary(kind) or pa.types.is_binary_view(kind))


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def plan_unless_finished(config: JobConfig, task: Task) -> tuple[Prepared, dict, tuple[Plan, ModelInfo, int] | None]:
    """The job, its restart identity and its plan (`build_plan`), None for an output this job looks to have
    finished (`restart.looks_finished`): its footers would be read for nothing. Otherwise the footers are read,
    and the input refused, before the output is touched."""
    from pipeline import restart

    prepared = prepare(config, task)
    identity = restart.job_identity(task.name, config, prepared.model, prepared.files, prepared.infer.config.dtypes)
    if restart.looks_finished(config.output, identity, config.overwrite):
        return prepared, identity, None
    return prepared, identity, build_plan(config, task, prepared)


def run_job(config: JobConfig, task: Task) -> dict:
    """Build, start or resume in the output (docs/restart.md), run on Ray, write `_run.json` (+ `_SUCCESS`)."""
    from pipeline import kill_hooks, ray_plan, restart

    if "://" not in config.output:  # workers must not resolve a relative output against their own cwd
        config = config.model_copy(update={"output": os.path.abspath(config.output)})
    configure(config.storage)   # before any URL is opened: retries + --storage-options for every filesystem
    prepared, identity, planned = plan_unless_finished(config, task)
    model = prepared.model
    if planned is None and (finished := restart.finished_output(config.output, identity, config.overwrite)):
        return _already_complete(config, task, finished)   # read only: not even the lease is taken
    try:
        lease = Lease(config.output).acquire()   # before open_output, which may clean or empty the folder
    except OutputBusy:
        raise
    except (OSError, ValueError) as error:    # a file, no permission, an unknown protocol
        raise UsageError(f"--output {config.output!r}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    try:
        finished = restart.finished_output(config.output, identity, config.overwrite)
        if finished is not None:   # finished since the look
            return _already_complete(config, task, finished)
        plan, _, max_length = planned or build_plan(config, task, prepared)   # or not finished since the look
        kill_hooks.arm()   # test hooks only: before Ray starts
        plan = ray_plan.preflight(plan)   # the cluster's refusals (device, dtype, actors) before the output is touched
        identity = restart.with_dtypes(identity, plan.infer.config.dtypes)
        start = restart.open_output(config.output, identity, config.overwrite, lease.token)
        return _run(config, task, plan, model, max_length, identity, start)
    finally:
        lease.release()


def _already_complete(config: JobConfig, task: Task, finished: dict) -> dict:
    print(f"bertbatch {task.name}: {config.output} is already complete (_SUCCESS, "
          f"{finished['report']['documents']} rows); nothing to do", flush=True)
    return finished


def _run(config: JobConfig, task: Task, plan: Plan, model, max_length: int, identity: dict, start) -> dict:
    """Run the rows earlier runs left, write `_run.json` and, when every row is accounted for, `_SUCCESS`."""
    from pipeline import kill_hooks, ledger, ray_plan, restart

    plan, pending = restart.resume_plan(plan, start)
    print(f"bertbatch {task.name}: {len(plan.files.paths)} input files under {config.input} -> {config.output} "
          f"(model {config.model}, sha256 {model.fingerprint[:12]}, max_length {max_length}; run {start.run}, "
          f"{len(pending)} files to do)", flush=True)
    restart.record_unreadable(plan)
    kill_hooks.kill_point("start")
    started = time.perf_counter()
    placement, failure = {}, None
    input_rows = sum(n for n in plan.footers.rows if n is not None)
    if pending:
        ray_plan.init_ray()
        ledger.clear_in_flight(config.output)   # markers of a killed earlier run
        if config.progress_seconds and not sys.stdout.isatty():
            ray_plan.without_ray_data_progress()   # our lines instead of its snapshots in a log
        done_before = sum(map(start.progress.rows_done, start.progress.committed))
        with ProgressLog(task.name, config.output, start.run, input_rows, done_before, config.progress_seconds,
                         plan.rows_per_file):
            try:
                placement = ray_plan.execute(plan, pending)[1]
            except Exception as error:
                restart.raise_unless_crash(error)
                failure = restart.isolate_crashes(plan, config.output, error, ray_plan.execute)
                print(f"bertbatch {task.name}: worker processes died beyond their retries; {failure['rows']} rows "
                      f"are worker_died errors in {config.output}/_errors", file=sys.stderr, flush=True)
    ray_plan.stop_ray()     # an embedded Ray: its work is done, the rest needs no cluster
    wall = time.perf_counter() - started
    progress = ledger.recover(config.output)
    report = summarize([{**e["counters"], "files": e["files"]} for e in progress.entries], input_rows, wall)
    report["unreadable_files"] = [plan.files.display(plan.files.paths[i]) for i, _ in plan.footers.unreadable]
    complete = report["documents"] == input_rows and not plan.footers.unreadable and not report["unreadable_rows"]
    run = {
        "task": task.name,
        "config": {**config.model_dump(), "max_length": max_length},
        "model": {"path": config.model, "sha256": model.fingerprint, "labels": list(model.id2label),
                  "dtypes": identity["dtypes"], **({"tasks": list(model.tasks)} if model.tasks else {})},
        "schema_version": results.SCHEMA_VERSION,
        "result_schema": str(plan.sink.config.result_schema.remove_metadata()),
        "versions": {p: version(p) for p in ("bertbatch", "ray", "torch", "pyarrow", "tokenizers")},
        "placement": placement,
        "inputs": identity["inputs"],
        "runs": restart.run_counts(config.output, progress),
        "worker_failure": failure,
        "report": report,
        "complete": complete,
    }
    if complete and not report["results"]:
        write_empty_results(plan.sink.config)
    finish_output(config.output, run, complete)
    print(format_report(report))
    if plan.footers.unreadable:
        print(f"unreadable input files (see {config.output}/_errors): {', '.join(report['unreadable_files'])}",
              file=sys.stderr, flush=True)
    return run
