"""What a family hands to the shared skeleton and loader, and the registries of families and tasks.

No torch here nor in the family modules: the driver reads and checks a checkpoint's config with
them without importing torch (≈ 1.5 s); the torch modules they name are imported when a model is built.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from models.config import EncoderConfig

if TYPE_CHECKING:
    from torch import nn

Rule = tuple[str, str]   # (checkpoint name prefix, our name prefix); "{n}" stands for a layer number


def attention_mixer(cfg: EncoderConfig) -> nn.Module:
    from models.layers import SelfAttention

    relative = cfg.position_embedding_type if cfg.position_embedding_type.startswith("relative") else None
    return SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.hidden_size // cfg.num_heads, relative,
                         cfg.max_position_embeddings)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    prefix: str                                   # base-model prefix in task checkpoints ("bert.")
    architectures: tuple[str, ...]                # class-name prefixes in config.json ("Bert", ...)
    parse_config: Callable[[Mapping[str, Any]], EncoderConfig]
    renames: tuple[Rule, ...]                     # checkpoint name (prefix stripped) ↔ ours; first match wins
    qkv_names: tuple[str, str, str]               # renamed q/k/v linears, fused into one "qkv"
    droppable: tuple[str, ...]                    # checkpoint names we knowingly ignore (MLM heads, ...)
    classifier: str                               # the sequence classifier: a class of models.heads
    make_mixer: Callable[[EncoderConfig], nn.Module] = attention_mixer
    roberta_positions: bool = False               # positions counted from padding_idx + 1
    uses_token_type_ids: bool = True
    fill_missing: Callable[[dict, EncoderConfig], None] | None = None  # weights a config defines

    def supported_architectures(self) -> list[str]:
        suffixes = ("Model", "ForMaskedLM", "ForPreTraining", "ForTokenClassification",
                    "ForSequenceClassification", "ForQuestionAnswering")
        return [p + s for p in self.architectures for s in suffixes]


# Renames of the BERT-style encoder, shared by BERT, RoBERTa and ConvBERT checkpoints.
BERT_ENCODER_RENAMES: tuple[Rule, ...] = (
    ("embeddings.word_embeddings.", "encoder.embeddings.word."),
    ("embeddings.position_embeddings.", "encoder.embeddings.position."),
    ("embeddings.token_type_embeddings.", "encoder.embeddings.token_type."),
    ("embeddings.LayerNorm.", "encoder.embeddings.norm."),
    ("embeddings_project.", "encoder.embeddings.project."),
    ("encoder.layer.{n}.attention.self.", "encoder.layers.{n}.mixer."),
    ("encoder.layer.{n}.attention.output.dense.", "encoder.layers.{n}.mixer_out."),
    ("encoder.layer.{n}.attention.output.LayerNorm.", "encoder.layers.{n}.mixer_norm."),
    ("encoder.layer.{n}.intermediate.dense.", "encoder.layers.{n}.ffn_up."),
    ("encoder.layer.{n}.output.dense.", "encoder.layers.{n}.ffn_down."),
    ("encoder.layer.{n}.output.LayerNorm.", "encoder.layers.{n}.ffn_norm."),
)
# Heads whose weights sit beside the base model; classifier.dense/out_proj before plain classifier.
DENSE_HEAD_RENAMES: tuple[Rule, ...] = (
    ("classifier.dense.", "head.dense."),
    ("classifier.out_proj.", "head.out_proj."),
    ("classifier.", "head.classifier."),
    ("qa_outputs.", "head.qa."),
)
BUFFERS = (r"(^|\.)position_ids$", r"(^|\.)token_type_ids$")


@functools.cache
def _by_model_type() -> dict[str, Family]:
    from models import bert, convbert, distilbert, roberta

    by_type: dict[str, Family] = {}
    for family in (bert.FAMILY, roberta.FAMILY, distilbert.FAMILY, convbert.FAMILY):
        for model_type in family.model_types:
            if model_type in by_type:
                raise RuntimeError(f"model_type {model_type!r} registered twice")
            by_type[model_type] = family
    return by_type


def family_for(model_type: str) -> Family:
    by_type = _by_model_type()
    if model_type not in by_type:
        raise ValueError(f"model_type={model_type!r}: supported are {', '.join(sorted(by_type))}")
    return by_type[model_type]
