"""The one encoder skeleton: embeddings → optional projection → N post-LN blocks of mixer + FFN.

Families differ only in what they hand to it: how position ids are counted, which mixer a block
uses (self-attention, or ConvBERT's attention + span convolution) and their config/weight names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.config import EncoderConfig
from models.layers import Linear, by_rows, dense, embedding

MixerFactory = Callable[[EncoderConfig], nn.Module]


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig, position_offset: int | None):
        super().__init__()
        width = cfg.embedding_size
        self.position_offset = position_offset   # RoBERTa: positions count from padding_idx + 1
        self.adds_positions = cfg.position_embedding_type in ("absolute", "sinusoidal")
        self.word = embedding(cfg.vocab_size, width)
        self.position = embedding(cfg.max_position_embeddings, width)
        self.token_type = embedding(cfg.type_vocab_size, width) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.project = Linear(width, cfg.hidden_size) if width != cfg.hidden_size else None

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        x = self.word(input_ids)                                                      # (B, T, E)
        if self.token_type is not None:
            x = x + (self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids))
        if self.adds_positions:
            x = x + self.position(self.position_ids(input_ids))
        x = self.norm(x)
        return x if self.project is None else self.project(x)

    def position_ids(self, input_ids: Tensor) -> Tensor:
        t = input_ids.shape[1]
        if self.position_offset is None:
            return torch.arange(t, device=input_ids.device)
        # RoBERTa: real tokens get padding_idx+1, +2, ...; pads get padding_idx (from the ids, as HF does)
        real = input_ids.ne(self.position_offset).int()
        return (torch.cumsum(real, dim=1) * real).long() + self.position_offset

    @property
    def max_tokens(self) -> int:
        offset = 0 if self.position_offset is None else self.position_offset + 1
        return self.position.num_embeddings - offset


class Block(nn.Module):
    """Post-LN transformer block: LN(x + out(mixer(x))), then LN(x + down(act(up(x))))."""

    def __init__(self, cfg: EncoderConfig, mixer: nn.Module):
        super().__init__()
        h, i, g = cfg.hidden_size, cfg.intermediate_size, cfg.num_groups
        self.mixer = mixer
        self.mixer_out = Linear(h, h)
        self.mixer_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.ffn_up = dense(h, i, g, act=cfg.hidden_act)
        self.ffn_down = dense(i, h, g)
        self.ffn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, attn_bias: Tensor, keep: Tensor) -> Tensor:
        mixed = self.mixer(x, attn_bias, keep)
        if getattr(self.mixer_out, "blocked", None) is None:   # int8 layers have none either
            return self.rowwise(mixed, x)
        return by_rows(self.rowwise, mixed, x)   # oneDNN (CPU bf16/fp16): a chunk's intermediates stay in cache

    def rowwise(self, mixed: Tensor, x: Tensor) -> Tensor:
        """What follows the mixer works token by token."""
        x = self.mixer_norm(self.mixer_out(mixed, residual=x))
        return self.ffn_norm(self.ffn_down(self.ffn_up(x), residual=x))


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, make_mixer: MixerFactory, position_offset: int | None = None):
        super().__init__()
        self.embeddings = Embeddings(cfg, position_offset)
        self.layers = nn.ModuleList(Block(cfg, make_mixer(cfg)) for _ in range(cfg.num_layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        if input_ids.shape[1] > self.embeddings.max_tokens:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens: this model takes at most {self.embeddings.max_tokens}")
        x = self.embeddings(input_ids, token_type_ids)                               # (B, T, H)
        keep = attention_mask.to(x.dtype)[:, :, None]                                 # (B, T, 1)
        attn_bias = (1.0 - keep.transpose(1, 2)[:, None]) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, attn_bias, keep)
        return x
