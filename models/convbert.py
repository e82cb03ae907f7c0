"""ConvBERT: mixed attention = self-attention heads + span-based dynamic convolution heads.

Config and weight names here; the mixer's torch modules in `models.convbert_layers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.bert import bert_style_config
from models.config import ConfigError, EncoderConfig, get
from models.registry import BERT_ENCODER_RENAMES, BUFFERS, DENSE_HEAD_RENAMES, Family


def parse_config(raw: Mapping[str, Any]) -> EncoderConfig:
    kernel = get(raw, "conv_kernel_size", 9)
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"conv_kernel_size={kernel!r}: expected a positive odd integer")
    if get(raw, "position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"position_embedding_type={raw['position_embedding_type']!r}: ConvBERT has absolute positions only")
    hidden_act = get(raw, "hidden_act", "gelu")
    return bert_style_config(
        raw, "convbert", pad_token_id=1,
        embedding_size=get(raw, "embedding_size", 768),
        head_ratio=get(raw, "head_ratio", 2),
        conv_kernel_size=kernel,
        num_groups=get(raw, "num_groups", 1),
        classifier_act=hidden_act,
    )


def mixed_attention(cfg: EncoderConfig):
    from models.convbert_layers import MixedAttention  # torch: imported where a model is built

    return MixedAttention(cfg)


FAMILY = Family(
    name="convbert",
    model_types=("convbert",),
    prefix="convbert.",
    architectures=("ConvBert",),
    parse_config=parse_config,
    renames=BERT_ENCODER_RENAMES + DENSE_HEAD_RENAMES,
    qkv_names=("query", "key", "value"),
    droppable=(r"^generator_predictions\.", r"^generator_lm_head\.", r"^discriminator_predictions\.", *BUFFERS),
    classifier="DenseClassifier",
    make_mixer=mixed_attention,
)
