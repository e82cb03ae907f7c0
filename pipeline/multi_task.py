"""Several tasks in one pass over a corpus, as one `Task` that `run_job` runs like any other.

    python jobs/multi_corpus.py --config examples/multi.yaml

The YAML names the shared options (input, output, text column, device, ...) and `tasks`: result
column -> {task, model, that task's options}. Each task's stages are built exactly as its own
job builds them (`Task.feed`, `Task.decode`), then combined (`multi_stage.combine`): one read,
tokenizations shared between models with the same tokenizer files and windowing, one model
actor holding every model, and one write with one struct column per task whose fields are that
task's result columns. `bertbatch.model_sha256` (and the restart identity) is a sha256 over each
task's column, task, model fingerprint and options, so changing any of them is a different job; the
restart identity also keeps those descriptions (`ModelInfo.tasks`), so a refusal names what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from pipeline.classify_task import CLASSIFY_TASK
from pipeline.cli import UsageError
from pipeline.config import JobConfig, MultiConfig
from pipeline.embed_task import EMBED_TASK
from pipeline.infer import InferConfig
from pipeline.job import Feed, ModelInfo, Task, inspect_model, settings_with
from pipeline.multi_stage import TaskStages, combine, struct_field
from pipeline.ner_task import NER_TASK
from pipeline.qa_task import QA_TASK
from pipeline.restart import result_options
from pipeline.storage import configure
from schemas.results import task_fields

TASKS: dict[str, Task] = {t.name: t for t in (NER_TASK, CLASSIFY_TASK, QA_TASK, EMBED_TASK)}


@dataclasses.dataclass(frozen=True)
class _Built:
    """Everything `build_plan` asks a Task for, computed once."""

    model: ModelInfo
    feed: Feed
    decode: object
    fields: tuple


def multi_task(config: MultiConfig) -> tuple[JobConfig, Task]:
    """(the run's shared config, a Task running every task of `config.tasks`) for `run_job`."""
    configure(config.storage)   # before any model is opened: --storage-options reach every model's URL
    entries = config.task_configs()
    stages, descriptions, max_lengths, columns, max_tokens, weight_bytes = [], [], {}, {}, [], []
    for column, name, task_config in entries:
        task = TASKS[name]
        try:
            model = inspect_model(task_config.model, task.model_task)
            feed = task.feed(task_config, model)
        except UsageError as error:   # its flags are this task's keys in the YAML file
            raise UsageError(f"tasks.{column}: {error}") from None
        fields = task.fields(task_config, model) if task.fields else task_fields(name)
        infer = InferConfig(model.folder, task.model_task, task_config.batch_tokens, task_config.device,
                            task_config.dtype, model_options=feed.model_options)
        stages.append(TaskStages(column, feed.tokenize, infer, task.decode(task_config, model), tuple(fields)))
        descriptions.append({"column": column, "task": name, "model_sha256": model.fingerprint,
                             "model_files_sha256": settings_with(model.settings_sha256, feed.identity),
                             "options": result_options(task_config)})
        max_lengths[column] = feed.max_length
        columns.update(dict.fromkeys(feed.columns))
        max_tokens.append(model.max_tokens)
        weight_bytes.append(model.weight_bytes)
    tokenize, infer, decode = combine(stages)
    fingerprint = hashlib.sha256(json.dumps(descriptions, sort_keys=True).encode()).hexdigest()
    models = ", ".join(task_config.model for _, _, task_config in entries)
    described = tuple({**d, "model": task_config.model} for d, (_, _, task_config) in zip(descriptions, entries))
    built = _Built(
        model=ModelInfo(models, (), fingerprint, min(max_tokens), sum(weight_bytes), tasks=described),
        feed=Feed(tokenize, max_lengths, tuple(columns), infer=infer),
        decode=decode,
        fields=tuple(struct_field(s.column, s.fields) for s in stages),
    )
    shared = config.model_dump(exclude={"tasks"}, exclude_unset=True)
    task = Task(name="multi", model_task="multi", decode=lambda _c, _m: built.decode,
                feed=lambda _c, _m: built.feed, fields=lambda _c, _m: built.fields,
                inspect=lambda _c: built.model)
    return JobConfig(**shared, model=models), task
