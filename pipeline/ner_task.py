"""NER as a pipeline task: turn each document's per-window token logits into its `entities` column."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from pipeline.arrow_nested import flat_lengths, flatten, split_rows
from pipeline.job import ModelInfo, Task
from pipeline.ner_decode import AGGREGATIONS, NerWindow, decode_entities
from pipeline.stage import (
    ERROR,
    OUTPUTS,
    WINDOWS,
    Stage,
    StageSpec,
    Timer,
    add_seconds,
    ok_mask,
    set_column,
    with_errors,
)
from schemas.results import task_fields

ENTITIES = "entities"
ENTITIES_TYPE = task_fields("ner")[0].type


@dataclasses.dataclass(frozen=True)
class NerDecodeConfig:
    model: str                          # folder holding the tokenizer (word boundaries for first/average/max)
    id2label: tuple[str, ...]           # label name per label id
    text_column: str = "text"
    aggregation: str = "simple"
    ignore_labels: tuple[str, ...] = ("O",)

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")


class NerDecode(Stage):
    name = "decode"
    adds = (ENTITIES,)
    removes = (WINDOWS, OUTPUTS)

    def __init__(self, config: NerDecodeConfig):
        from models import load_tokenizer

        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)
        from models.remote import local_model_folder

        self.tokenizer = load_tokenizer(local_model_folder(config.model))

    @classmethod
    def declare(cls, config: NerDecodeConfig):
        return (config.text_column, WINDOWS, OUTPUTS, ERROR), cls.adds, cls.removes

    def __call__(self, table: pa.Table) -> pa.Table:
        with Timer() as timer:
            ok = ok_mask(table).to_numpy(zero_copy_only=False)
            texts = table.column(self.config.text_column).to_pylist()
            windows = list(self._windows(table))
            entities: list[list[dict] | None] = [None] * table.num_rows
            failures = {}
            for i in np.flatnonzero(ok):
                try:
                    entities[i] = decode_entities(
                        texts[i], windows[i], list(self.config.id2label), self.config.aggregation,
                        self.config.ignore_labels, self.tokenizer.id_to_token,
                        self.tokenizer.continuing_subword_prefix, self.tokenizer.unk_id,
                    )
                except Exception as error:  # noqa: BLE001 - becomes an error row with the reason
                    failures[int(i)] = (self.name, type(error).__name__, str(error))
            table = with_errors(table, failures)
            rows = [_typed(e) if e is not None else None for e in entities]
            table = set_column(table, ENTITIES, pa.array(rows, type=ENTITIES_TYPE))
            table = table.drop_columns(list(self.removes))
        return add_seconds(table, self.name, timer.seconds)

    def _windows(self, table: pa.Table):
        """Per document: its NerWindows (empty for error rows)."""
        windows_column, outputs_column = table.column(WINDOWS), table.column(OUTPUTS)
        per_doc = flat_lengths(windows_column)
        windows = flatten(windows_column)
        token_counts = flat_lengths(windows.field("ids"))
        ids = split_rows(flatten(windows.field("ids")).to_numpy(), token_counts)
        offsets = split_rows(flatten(flatten(windows.field("offsets"))).to_numpy().reshape(-1, 2), token_counts)
        specials = split_rows(flatten(windows.field("sequence_ids")).to_numpy() < 0, token_counts)
        outputs = flatten(outputs_column)
        width = outputs.type.value_type.list_size
        logits = split_rows(flatten(flatten(outputs)).to_numpy().reshape(-1, width), flat_lengths(outputs))
        start = 0
        for count in per_doc:
            yield [NerWindow(ids[w], offsets[w], specials[w], logits[w]) for w in range(start, start + count)]
            start += count


def _decode_spec(config, model: ModelInfo) -> StageSpec:
    return StageSpec(NerDecode, NerDecodeConfig(model.folder, model.id2label, config.text_column,
                                                config.aggregation, config.ignore_labels))


NER_TASK = Task(name="ner", model_task="ner", decode=_decode_spec)


def _typed(entities: list[dict]) -> list[dict]:
    return [
        {"label": e["label"], "text": e["text"], "start": int(e["start"]), "end": int(e["end"]),
         "score": float(e["score"])}
        for e in entities
    ]
