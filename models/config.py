"""EncoderConfig: one frozen, validated description of a checkpoint, parsed once from config.json.

Each family module turns its own `config.json` keys into this dataclass (DistilBERT says `dim`,
BERT says `hidden_size`); the encoder skeleton only ever reads EncoderConfig.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A config.json value we cannot honour; the message names the field and the value."""


ACTIVATIONS = (
    "gelu", "gelu_python", "gelu_new", "gelu_accurate", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast",
    "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "leaky_relu", "silu", "swish", "mish", "tanh",
    "sigmoid", "linear", "laplace",
)
# "none": `position_embedding_type: null` in config.json, which transformers reads as no position information.
POSITION_TYPES = ("absolute", "relative_key", "relative_key_query", "sinusoidal", "none")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    family: str                     # "bert" | "roberta" | "distilbert" | "convbert"
    model_type: str                 # as written in config.json
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    max_position_embeddings: int
    type_vocab_size: int            # 0: no token-type embedding (DistilBERT)
    layer_norm_eps: float
    pad_token_id: int | None
    position_embedding_type: str    # absolute | relative_key | relative_key_query | sinusoidal
    embedding_size: int             # == hidden_size except ConvBERT checkpoints with a projection
    classifier_act: str = "tanh"    # activation inside the sequence-classification head, if it has one
    head_ratio: int = 1             # ConvBERT: attention heads are num_heads // head_ratio
    conv_kernel_size: int = 0       # ConvBERT span-based dynamic convolution width; 0 elsewhere
    num_groups: int = 1             # ConvBERT grouped feed-forward
    id2label: Mapping[int, str] = dataclasses.field(default_factory=dict)
    problem_type: str | None = None
    architectures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "embedding_size", "head_ratio", "num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: expected a positive integer")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act={self.hidden_act!r}: expected one of {', '.join(ACTIVATIONS)}")
        if self.position_embedding_type not in POSITION_TYPES:
            raise ConfigError(
                f"position_embedding_type={self.position_embedding_type!r}: expected one of {', '.join(POSITION_TYPES)}"
            )
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type={self.problem_type!r}: expected one of {', '.join(PROBLEM_TYPES)}")
        heads = max(self.num_heads // self.head_ratio, 1)   # ConvBERT's attention keeps num_heads // head_ratio
        if self.hidden_size % heads:
            raise ConfigError(f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_heads}"
                              + (f" // head_ratio={self.head_ratio}" if self.head_ratio > 1 else ""))
        if self.intermediate_size % self.num_groups or self.hidden_size % self.num_groups:
            raise ConfigError(f"num_groups={self.num_groups} must divide hidden_size and intermediate_size")
        if not isinstance(self.layer_norm_eps, (int, float)) or not 0 < self.layer_norm_eps < 1:
            raise ConfigError(f"layer_norm_eps={self.layer_norm_eps!r}: expected a small positive number")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]


def read_common(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Fields every family shares: labels, problem type, and refusals of decoder-only settings."""
    for key in ("is_decoder", "add_cross_attention"):
        if raw.get(key):
            raise ConfigError(f"{key}={raw[key]!r}: bertbatch runs encoders only")
    id2label = raw.get("id2label")
    if id2label is None:
        num_labels = int(raw.get("num_labels", 2))
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    try:
        labels = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"id2label={id2label!r}: keys must be integers") from exc
    if sorted(labels) != list(range(len(labels))):
        raise ConfigError(f"id2label keys {sorted(labels)} must be 0..{len(labels) - 1}")
    return {
        "model_type": str(raw.get("model_type", "")),
        "id2label": labels,
        "problem_type": raw.get("problem_type"),
        "architectures": tuple(raw.get("architectures") or ()),
    }


def get(raw: Mapping[str, Any], key: str, default: Any, aliases: tuple[str, ...] = ()) -> Any:
    """config.json value, or the documented default when the key is absent (never when it is null: a
    null stays None, as transformers keeps it). An alias present wins, as transformers' attribute_map."""
    for name in (*aliases, key):
        if name in raw:
            return raw[name]
    return default
