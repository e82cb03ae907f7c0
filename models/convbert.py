"""ConvBERT: mixed attention = self-attention heads + span-based dynamic convolution heads.

Unlike Hugging Face's implementation, padded positions are zeroed before both convolutions, so a
text's output does not depend on what it was batched with: a pad next to a real token contributes
exactly what the zero padding at the end of an unpadded text contributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.bert import bert_style_config
from models.config import ConfigError, EncoderConfig, get
from models.heads import DenseClassifier
from models.layers import Linear, SelfAttention
from models.registry import BERT_ENCODER_RENAMES, BUFFERS, DENSE_HEAD_RENAMES, Family


def parse_config(raw: Mapping[str, Any]) -> EncoderConfig:
    kernel = get(raw, "conv_kernel_size", 9)
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"conv_kernel_size={kernel!r}: expected a positive odd integer")
    if raw.get("position_embedding_type", "absolute") != "absolute":
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


class SeparableConv(nn.Module):
    """Depthwise conv over time, pointwise 1x1 conv, then a bias of shape (out, 1)."""

    def __init__(self, channels: int, out_channels: int, kernel: int):
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel, groups=channels, padding=kernel // 2, bias=False)
        self.pointwise = nn.Conv1d(channels, out_channels, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:                                           # (B, C, T)
        return self.pointwise(self.depthwise(x)) + self.bias


class MixedAttention(SelfAttention):
    def __init__(self, cfg: EncoderConfig):
        heads = max(cfg.num_heads // cfg.head_ratio, 1)
        if cfg.hidden_size % heads:
            raise ConfigError(f"hidden_size={cfg.hidden_size} is not a multiple of {heads} attention heads "
                              f"(num_attention_heads={cfg.num_heads} // head_ratio={cfg.head_ratio})")
        head_size = cfg.hidden_size // heads // 2
        super().__init__(cfg.hidden_size, heads, head_size)
        width, self.kernel = heads * head_size, cfg.conv_kernel_size
        self.key_conv_attn_layer = SeparableConv(cfg.hidden_size, width, self.kernel)
        self.conv_kernel_layer = Linear(width, heads * self.kernel)
        self.conv_out_layer = Linear(cfg.hidden_size, width)

    def forward(self, x: Tensor, attn_bias: Tensor, keep: Tensor) -> Tensor:
        b, t, _ = x.shape
        h, d, k = self.num_heads, self.head_size, self.kernel
        q, key, v = self.project(x)
        context = self.attend(q, key, v, attn_bias).view(b, t, h, d)

        x = x * keep                                                                  # pads → 0
        key_conv = self.key_conv_attn_layer(x.transpose(1, 2)).transpose(1, 2)        # (B, T, h*d)
        query = q.transpose(1, 2).reshape(b, t, h * d)
        weights = self.conv_kernel_layer(key_conv * query).view(b, t, h, k, 1).softmax(dim=3)
        values = (self.conv_out_layer(x) * keep).transpose(1, 2)                     # (B, h*d, T)
        spans = F.pad(values, (k // 2, k // 2)).unfold(2, k, 1)                       # (B, h*d, T, k)
        spans = spans.permute(0, 2, 1, 3).reshape(b, t, h, d, k)
        conv = torch.matmul(spans, weights).view(b, t, h, d)                         # (B, T, h, d)
        return torch.cat([context, conv], dim=2).reshape(b, t, 2 * h * d)


FAMILY = Family(
    name="convbert",
    model_types=("convbert",),
    prefix="convbert.",
    architectures=("ConvBert",),
    parse_config=parse_config,
    renames=BERT_ENCODER_RENAMES + DENSE_HEAD_RENAMES,
    qkv_names=("query", "key", "value"),
    droppable=(r"^generator_predictions\.", r"^generator_lm_head\.", r"^discriminator_predictions\.", *BUFFERS),
    classifier=DenseClassifier,
    make_mixer=MixedAttention,
)
