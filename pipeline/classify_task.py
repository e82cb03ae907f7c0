"""Sequence classification as a pipeline task: each document's window logits -> `label`, `score`, `scores`.

Text pairs (`--text-pair-column`) are windowed with the first text repeated in every window and
the second one cut into windows (`truncation="only_second"`); a pair that fits one window is
encoded exactly as the HF text-classification pipeline encodes it, and an empty second text is
dropped as HF drops it (the first text is classified alone). A document longer than one window
gets one label from all its windows (`--window-aggregation`, see `classify_decode`). One
difference from the HF pipeline: a pair whose first text leaves no room for the second becomes an
error row (HF truncates both texts).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.classify_decode import WINDOW_AGGREGATIONS, classify, resolve_function
from pipeline.doc_decode import DecodeWindow, DocumentDecode
from pipeline.job import Feed, ModelInfo, Task, resolve_max_length
from pipeline.stage import StageSpec
from pipeline.tokenize import Tokenize, TokenizeConfig
from schemas.results import task_fields


@dataclasses.dataclass(frozen=True)
class ClassifyDecodeConfig:
    id2label: tuple[str, ...]
    problem_type: str | None
    text_column: str = "text"
    function_to_apply: str = "default"
    top_k: int | None = 1                # None: every label
    window_aggregation: str = "mean"

    def __post_init__(self) -> None:
        # resolve_function checks function_to_apply and problem_type, naming the allowed values
        resolve_function(self.function_to_apply, self.problem_type, len(self.id2label))
        if self.window_aggregation not in WINDOW_AGGREGATIONS:
            raise ValueError(f"window_aggregation={self.window_aggregation!r}: expected one of "
                             f"{', '.join(WINDOW_AGGREGATIONS)}")


class ClassifyDecode(DocumentDecode):
    fields = task_fields("classify")

    def decode(self, text: str, windows: list[DecodeWindow]) -> dict:
        logits = np.stack([w.outputs[0] for w in windows])  # (W, L): one row per window
        config = self.config
        return classify(logits, dict(enumerate(config.id2label)), config.problem_type, config.function_to_apply,
                        config.top_k, config.window_aggregation)


def _problem_type(folder: str) -> str | None:
    from models.checkpoint import read_config

    return read_config(Path(folder))[1].problem_type


def _feed(config, model: ModelInfo) -> Feed:
    max_length = resolve_max_length(config, model)
    pair = config.text_pair_column
    tokenize = TokenizeConfig(model.folder, config.text_column, pair, max_length, config.stride)
    return Feed(StageSpec(Tokenize, tokenize), max_length, (("--text-pair-column", pair),) if pair else ())


def _decode_spec(config, model: ModelInfo) -> StageSpec:
    return StageSpec(ClassifyDecode, ClassifyDecodeConfig(
        model.id2label, _problem_type(model.local), config.text_column, config.function_to_apply,
        config.effective_top_k, config.window_aggregation))


CLASSIFY_TASK = Task(name="classify", model_task="classify", decode=_decode_spec, feed=_feed)
