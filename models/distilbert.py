"""DistilBERT: its own config and weight names, no token types, optional sinusoidal positions.

LayerNorm eps is fixed at 1e-12 (the config has no key for it); the classifier is
pre_classifier → ReLU → classifier on the first token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from models.config import ConfigError, EncoderConfig, get, read_common
from models.registry import BUFFERS, Family

if TYPE_CHECKING:
    import torch


def parse_config(raw: Mapping[str, Any]) -> EncoderConfig:
    sinusoidal = get(raw, "sinusoidal_pos_embds", False)
    if not isinstance(sinusoidal, bool):
        raise ConfigError(f"sinusoidal_pos_embds={sinusoidal!r}: expected true or false")
    return EncoderConfig(
        family="distilbert",
        vocab_size=get(raw, "vocab_size", 30522),
        hidden_size=get(raw, "dim", 768, aliases=("hidden_size",)),
        num_layers=get(raw, "n_layers", 6, aliases=("num_hidden_layers",)),
        num_heads=get(raw, "n_heads", 12, aliases=("num_attention_heads",)),
        intermediate_size=get(raw, "hidden_dim", 3072),
        hidden_act=get(raw, "activation", "gelu"),
        max_position_embeddings=get(raw, "max_position_embeddings", 512),
        type_vocab_size=0,
        layer_norm_eps=1e-12,
        pad_token_id=get(raw, "pad_token_id", 0),
        position_embedding_type="sinusoidal" if sinusoidal else "absolute",
        embedding_size=get(raw, "dim", 768, aliases=("hidden_size",)),
        **read_common(raw),
    )


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    """PE[pos, j] = sin/cos(pos / 10000^(2*(j//2)/dim)): sin on even columns, cos on odd ones."""
    import torch

    pos = torch.arange(positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def fill_sinusoidal(state: dict, cfg: EncoderConfig) -> None:
    """The table is usually saved with the weights; generate it only when a checkpoint left it out."""
    key = "encoder.embeddings.position.weight"
    if cfg.position_embedding_type == "sinusoidal" and key not in state:
        state[key] = sinusoidal_table(cfg.max_position_embeddings, cfg.embedding_size)


FAMILY = Family(
    name="distilbert",
    model_types=("distilbert",),
    prefix="distilbert.",
    architectures=("DistilBert",),
    parse_config=parse_config,
    renames=(
        ("embeddings.word_embeddings.", "encoder.embeddings.word."),
        ("embeddings.position_embeddings.", "encoder.embeddings.position."),
        ("embeddings.LayerNorm.", "encoder.embeddings.norm."),
        ("transformer.layer.{n}.attention.out_lin.", "encoder.layers.{n}.mixer_out."),
        ("transformer.layer.{n}.attention.", "encoder.layers.{n}.mixer."),
        ("transformer.layer.{n}.sa_layer_norm.", "encoder.layers.{n}.mixer_norm."),
        ("transformer.layer.{n}.ffn.lin1.", "encoder.layers.{n}.ffn_up."),
        ("transformer.layer.{n}.ffn.lin2.", "encoder.layers.{n}.ffn_down."),
        ("transformer.layer.{n}.output_layer_norm.", "encoder.layers.{n}.ffn_norm."),
        ("pre_classifier.", "head.pre_classifier."),
        ("classifier.", "head.classifier."),
        ("qa_outputs.", "head.qa."),
    ),
    qkv_names=("q_lin", "k_lin", "v_lin"),
    droppable=(r"^vocab_(transform|layer_norm|projector)\.", *BUFFERS),
    classifier="PreClassifier",
    uses_token_type_ids=False,
    fill_missing=fill_sinusoidal,
)
