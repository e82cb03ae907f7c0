"""Several tasks in one pass: composite stages that run each task's own stage in turn on the same batch.

A task's stages read and write the fixed internal columns (`_windows`, `_outputs`). Here each
task's windows and outputs get their own columns (`_windows_0`, `_outputs_1`, ...) and are put
under the fixed names only while that task's stage runs, so the single-task stages are reused
unchanged. Tasks whose tokenizer files and windowing are the same share one tokenization; tasks
with the same model, head and windows share one inference. Each task's result columns end up
as the fields of one struct column named by the user. A row that fails in any task is an error
row of the run (the results hold only rows every task annotated).
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.infer import Infer, InferConfig
from pipeline.stage import OUTPUTS, STAT_PREFIX, WINDOWS, Stage, StageSpec, ok_mask, set_column

# Files that define a tokenizer; two folders with the same bytes here tokenize alike.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


@dataclasses.dataclass(frozen=True)
class TaskStages:
    """One task of a multi-task run: its result column, stages, and the fields of its struct column."""

    column: str
    tokenize: StageSpec
    infer: InferConfig
    decode: StageSpec
    fields: tuple[pa.Field, ...]


@dataclasses.dataclass(frozen=True)
class MultiTokenizeConfig:
    parts: tuple[tuple[str, StageSpec], ...]                 # (windows column, tokenize stage)


@dataclasses.dataclass(frozen=True)
class MultiInferConfig:
    parts: tuple[tuple[str, str, InferConfig], ...]          # (windows column, outputs column, model)
    device: str = "auto"                                     # set for every part (ray_plan places actors)
    threads: int | None = None
    core_group: str | None = None
    node_threads: int | None = None

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The dtypes of the tasks' models (ray_plan checks them against the device)."""
        return tuple(sorted({infer.dtype for *_, infer in self.parts}))

    def with_auto_as(self, dtype: str) -> MultiInferConfig:
        return dataclasses.replace(self, parts=tuple((w, o, infer.with_auto_as(dtype)) for w, o, infer in self.parts))


@dataclasses.dataclass(frozen=True)
class MultiDecodeConfig:
    parts: tuple[tuple[str, str, str, StageSpec, tuple[pa.Field, ...]], ...]  # column, windows, outputs, decode, fields


def combine(tasks: list[TaskStages]) -> tuple[StageSpec, StageSpec, StageSpec]:
    """The tokenize, infer and decode stages of a multi-task run, sharing what can be shared."""
    tokenizations: dict[StageSpec, str] = {}
    inferences: dict[tuple[str, InferConfig], str] = {}
    canonical: dict[str, str] = {}                           # tokenizer fingerprint -> first folder
    decode_parts = []
    for task in tasks:
        folder = canonical.setdefault(tokenizer_fingerprint(task.tokenize.config.model), task.tokenize.config.model)
        tokenize = dataclasses.replace(task.tokenize, config=dataclasses.replace(task.tokenize.config, model=folder))
        windows = tokenizations.setdefault(tokenize, f"{WINDOWS}_{len(tokenizations)}")
        outputs = inferences.setdefault((windows, task.infer), f"{OUTPUTS}_{len(inferences)}")
        decode_parts.append((task.column, windows, outputs, task.decode, task.fields))
    return (
        StageSpec(MultiTokenize, MultiTokenizeConfig(tuple((w, s) for s, w in tokenizations.items()))),
        StageSpec(MultiInfer, MultiInferConfig(tuple((w, o, c) for (w, c), o in inferences.items()),
                                               device=tasks[0].infer.device)),
        StageSpec(MultiDecode, MultiDecodeConfig(tuple(decode_parts))),
    )


def tokenizer_fingerprint(folder: str) -> str:
    """Equal for folders that tokenize alike: their tokenizer files and the tokenizer class they load as (byte-equal
    files beside config.json's of BERT and of DistilBERT load as tokenizers that differ in token type ids)."""
    from models.checkpoint import settings_fingerprint
    from models.remote import local_model_folder
    from models.tokenizer import tokenizer_family

    local = local_model_folder(folder)   # a model on object storage: its copy here
    return f"{settings_fingerprint(local, TOKENIZER_FILES)}:{tokenizer_family(local)}"


def run_part(stage: Stage, table: pa.Table, inputs: dict[str, str], outputs: dict[str, str]) -> pa.Table:
    """Run a single-task stage on per-task columns: `inputs` maps its column name -> ours before it runs,
    `outputs` its column name -> ours after. `_stat_*` counters add up over the parts."""
    stats = {n: table.column(n) for n in table.column_names if n.startswith(STAT_PREFIX)}
    table = table.drop_columns(list(stats))
    for theirs, ours in inputs.items():
        table = set_column(table, theirs, table.column(ours))
    table = stage(table)
    for theirs, ours in outputs.items():
        table = set_column(table, ours, table.column(theirs)).drop_columns([theirs])
    for name, before in stats.items():
        table = set_column(table, name, pc.add(before, table.column(name)) if name in table.column_names else before)
    return table


class MultiTokenize(Stage):
    name = "tokenize"

    def __init__(self, config: MultiTokenizeConfig):
        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)
        self.parts = [(windows, spec.build()) for windows, spec in config.parts]

    @classmethod
    def declare(cls, config: MultiTokenizeConfig):
        requires, adds = {}, {}
        for windows, spec in config.parts:
            part_requires, part_adds, _ = spec.columns
            requires.update(dict.fromkeys(part_requires))
            adds.update(dict.fromkeys(windows if c == WINDOWS else c for c in part_adds))
        return tuple(requires), tuple(adds), ()

    def __call__(self, table: pa.Table) -> pa.Table:
        for windows, stage in self.parts:
            table = run_part(stage, table, {}, {WINDOWS: windows})
        return table


class MultiInfer(Stage):
    name = "infer"

    def __init__(self, config: MultiInferConfig):
        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)
        self.parts = [(windows, outputs, Infer(dataclasses.replace(infer, device=config.device, threads=config.threads,
                                                                   core_group=config.core_group,
                                                                   node_threads=config.node_threads)))
                      for windows, outputs, infer in config.parts]

    @classmethod
    def declare(cls, config: MultiInferConfig):
        return (tuple(dict.fromkeys(w for w, _, _ in config.parts)),
                (*(o for _, o, _ in config.parts), f"{STAT_PREFIX}padded_tokens"), ())

    def __call__(self, table: pa.Table) -> pa.Table:
        for windows, outputs, stage in self.parts:
            table = run_part(stage, table, {WINDOWS: windows}, {OUTPUTS: outputs})
            table = table.drop_columns([WINDOWS])
        return table


class MultiDecode(Stage):
    name = "decode"

    def __init__(self, config: MultiDecodeConfig):
        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)
        self.parts = [(column, windows, outputs, spec.build(), fields, spec.columns[0])
                      for column, windows, outputs, spec, fields in config.parts]

    @classmethod
    def declare(cls, config: MultiDecodeConfig):
        requires, removes = {}, {}
        for _, windows, outputs, spec, _ in config.parts:
            part_requires = spec.columns[0]
            mapped = (windows if c == WINDOWS else outputs if c == OUTPUTS else c for c in part_requires)
            requires.update(dict.fromkeys(mapped))
            removes.update(dict.fromkeys((windows, outputs)))
        return tuple(requires), tuple(column for column, *_ in config.parts), tuple(removes)

    def __call__(self, table: pa.Table) -> pa.Table:
        """Each part decodes with the input columns as they came, whatever the result columns and the parts'
        own result fields are named (a task called like the text column, a kept `label` beside a classifier's
        `label` field, a text column called `label`): columns named like a part's fields are kept aside while
        it runs (those it reads stay) and put back after, and the result columns are set after every part."""
        results = []
        for column, windows, outputs, stage, fields, reads in self.parts:
            names = [f.name for f in fields]
            aside = {n: table.column(n) for n in names if n in table.column_names}
            table = table.drop_columns([n for n in aside if n not in reads])
            table = run_part(stage, table, {WINDOWS: windows, OUTPUTS: outputs}, {})
            children = [table.column(n).combine_chunks() for n in names]
            table = table.drop_columns(names)
            for name, values in aside.items():
                table = table.append_column(name, values)
            # Rows that failed get a null struct; the sink writes them to _errors, not to the results.
            failed = pc.invert(ok_mask(table)).combine_chunks()
            results.append((column, pa.StructArray.from_arrays(children, fields=list(fields), mask=failed)))
        for column, values in results:
            table = set_column(table, column, values)
        return table.drop_columns([c for c in self.removes if c in table.column_names])


def struct_field(column: str, fields: tuple[pa.Field, ...]) -> pa.Field:
    """The result column of one task in a multi-task run."""
    return pa.field(column, pa.struct(list(fields)), nullable=False)

