"""NER as a pipeline task: turn each document's per-window token logits into its `entities` column."""

from __future__ import annotations

import dataclasses

from pipeline.doc_decode import DecodeWindow, DocumentDecode
from pipeline.job import ModelInfo, Task
from pipeline.ner_decode import AGGREGATIONS, NerWindow, decode_entities
from pipeline.stage import StageSpec
from schemas.results import task_fields

ENTITIES = "entities"


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


class NerDecode(DocumentDecode):
    fields = task_fields("ner")

    def __init__(self, config: NerDecodeConfig):
        from models import load_tokenizer
        from models.remote import local_model_folder

        super().__init__(config)
        self.tokenizer = load_tokenizer(local_model_folder(config.model))

    def decode(self, text: str, windows: list[DecodeWindow]) -> dict:
        tok = self.tokenizer
        entities = decode_entities(
            text, [NerWindow(w.ids, w.offsets, w.sequence_ids < 0, w.outputs) for w in windows],
            list(self.config.id2label), self.config.aggregation, self.config.ignore_labels,
            tok.id_to_token, tok.continuing_subword_prefix, tok.unk_id)
        return {ENTITIES: [{"label": e["label"], "text": e["text"], "start": int(e["start"]),
                            "end": int(e["end"]), "score": float(e["score"])} for e in entities]}


def _decode_spec(config, model: ModelInfo) -> StageSpec:
    return StageSpec(NerDecode, NerDecodeConfig(model.folder, model.id2label, config.text_column,
                                                config.aggregation, config.ignore_labels))


NER_TASK = Task(name="ner", model_task="ner", decode=_decode_spec)

