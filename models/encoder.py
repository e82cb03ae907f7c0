"""The one encoder skeleton: embeddings → optional projection → N post-LN blocks of mixer + FFN.

Families differ only in what they hand to it: how position ids are counted, which mixer a block
uses (self-attention, or ConvBERT's attention + span convolution) and their config/weight names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.config import EncoderConfig
from models.layers import ROW_CHUNK, ROW_CHUNK_FP32, Linear, by_rows, dense, embedding

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

    def forward(self, x: Tensor, batches: list[Batch]) -> Tensor:
        """`x`: the rows (tokens) of every batch, one after the other, (N, H). The mixer's attention sees each
        batch on its own; its q/k/v projection and what follows it work token by token, over all of them at once."""
        sizes = [b.rows for b in batches]
        qkv = self.mixer.qkv(x)   # projected over every token of the pass at once: one matmul, not one per batch
        parts = [self.mixer(rows.view(*b.shape, -1), projected.view(*b.shape, -1), b.attn_bias, b.keep)
                 .reshape(rows.shape[0], -1) for rows, projected, b in zip(x.split(sizes), qkv.split(sizes), batches)]
        mixed = parts[0] if len(parts) == 1 else torch.cat(parts)
        if x.device.type != "cpu":
            return self.rowwise(mixed, x)
        # on CPU a chunk's intermediates stay in cache (a pass of 16,384 tokens: 200 MB of FFN activations in fp32)
        blocked = getattr(self.mixer_out, "blocked", None) is not None   # int8 layers have none either
        return by_rows(self.rowwise, mixed, x, chunk=ROW_CHUNK if blocked else ROW_CHUNK_FP32)

    def rowwise(self, mixed: Tensor, x: Tensor) -> Tensor:
        x = self.mixer_norm(self.mixer_out(mixed, residual=x))
        return self.ffn_norm(self.ffn_down(self.ffn_up(x), residual=x))


class Batch:
    """One right-padded batch of a forward pass: its shape (B, T), padding as a multiplier and as an attention bias."""

    def __init__(self, attention_mask: Tensor, dtype: torch.dtype):
        self.shape = attention_mask.shape
        self.rows = attention_mask.numel()
        self.keep = attention_mask.to(dtype)[:, :, None]                                        # (B, T, 1)
        self.attn_bias = (1.0 - self.keep.transpose(1, 2)[:, None]) * torch.finfo(dtype).min  # (B, 1, 1, T)


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, make_mixer: MixerFactory, position_offset: int | None = None):
        super().__init__()
        self.embeddings = Embeddings(cfg, position_offset)
        self.layers = nn.ModuleList(Block(cfg, make_mixer(cfg)) for _ in range(cfg.num_layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        return self.forward_batches([(input_ids, attention_mask, token_type_ids)])[0]

    def forward_batches(self, batches: list[tuple[Tensor, Tensor, Tensor | None]]) -> list[Tensor]:
        """Several right-padded batches (input_ids, attention_mask, token_type_ids) of any widths in one pass:
        the linear layers see all their tokens at once. On CPU a pass of the bench corpus's length-sorted
        windows, each batch padded by at most 5%, held ≈ 600 tokens, where BERT-base's bf16 matmuls ran 1.4×
        slower than with 2,000 or more (bench/NOTES.md). Returns each batch's last hidden state (B, T, H)."""
        for input_ids, _, _ in batches:
            if input_ids.shape[1] > self.embeddings.max_tokens:
                raise ValueError(f"sequence of {input_ids.shape[1]} tokens: this model takes at most "
                                 f"{self.embeddings.max_tokens}")
        hidden = [self.embeddings(input_ids, token_type_ids) for input_ids, _, token_type_ids in batches]
        layout = [Batch(mask, hidden[0].dtype) for _, mask, _ in batches]
        x = torch.cat([h.flatten(0, 1) for h in hidden]) if len(hidden) > 1 else hidden[0].flatten(0, 1)
        for layer in self.layers:
            x = layer(x, layout)
        return [rows.view(*b.shape, -1) for rows, b in zip(x.split([b.rows for b in layout]), layout)]
