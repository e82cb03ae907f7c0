"""RoBERTa, XLM-RoBERTa, CamemBERT: BERT's encoder with positions from padding_idx + 1 and a dense classifier.

The seeds' class defaults (512 positions, 2 token types, eps 1e-12) differ from real checkpoints
(514, 1, 1e-5); config.json always wins, defaults only fill absent keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.bert import bert_style_config
from models.config import EncoderConfig
from models.registry import BERT_ENCODER_RENAMES, BUFFERS, DENSE_HEAD_RENAMES, Family


def parse_config(raw: Mapping[str, Any]) -> EncoderConfig:
    return bert_style_config(raw, "roberta", pad_token_id=1, classifier_act="tanh")


FAMILY = Family(
    name="roberta",
    model_types=("roberta", "xlm-roberta", "camembert"),
    prefix="roberta.",
    architectures=("Roberta", "XLMRoberta", "Camembert"),
    parse_config=parse_config,
    renames=BERT_ENCODER_RENAMES + DENSE_HEAD_RENAMES,
    qkv_names=("query", "key", "value"),
    droppable=(r"^pooler\.", r"^lm_head\.", *BUFFERS),
    classifier="DenseClassifier",
    roberta_positions=True,
)
