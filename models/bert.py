"""BERT: the reference layout. Absolute (or relative) positions, token types, pooler-based classifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.config import EncoderConfig, get, read_common
from models.registry import BERT_ENCODER_RENAMES, BUFFERS, Family


def bert_style_config(raw: Mapping[str, Any], family: str, pad_token_id: int, **extra: Any) -> EncoderConfig:
    """BERT's config keys and seed defaults; RoBERTa and ConvBERT share them."""
    hidden = get(raw, "hidden_size", 768)
    fields = dict(
        family=family,
        vocab_size=get(raw, "vocab_size", 30522),
        hidden_size=hidden,
        num_layers=get(raw, "num_hidden_layers", 12),
        num_heads=get(raw, "num_attention_heads", 12),
        intermediate_size=get(raw, "intermediate_size", 3072),
        hidden_act=get(raw, "hidden_act", "gelu"),
        max_position_embeddings=get(raw, "max_position_embeddings", 512),
        type_vocab_size=get(raw, "type_vocab_size", 2),
        layer_norm_eps=get(raw, "layer_norm_eps", 1e-12),
        pad_token_id=get(raw, "pad_token_id", pad_token_id),
        position_embedding_type=get(raw, "position_embedding_type", "absolute") or "none",
        embedding_size=hidden,
        **read_common(raw),
    )
    fields.update(extra)
    return EncoderConfig(**fields)


def parse_config(raw: Mapping[str, Any]) -> EncoderConfig:
    return bert_style_config(raw, "bert", pad_token_id=0)


FAMILY = Family(
    name="bert",
    model_types=("bert",),
    prefix="bert.",
    architectures=("Bert",),
    parse_config=parse_config,
    renames=BERT_ENCODER_RENAMES + (
        ("pooler.dense.", "head.pooler."),
        ("classifier.", "head.classifier."),
        ("qa_outputs.", "head.qa."),
    ),
    qkv_names=("query", "key", "value"),
    droppable=(r"^pooler\.", r"^cls\.", *BUFFERS),
    classifier="PoolerClassifier",
)
