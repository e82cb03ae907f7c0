"""ConvBERT's mixer: self-attention heads + span-based dynamic convolution heads (torch modules).

Unlike Hugging Face's implementation, padded positions are zeroed before both convolutions, so a
text's output does not depend on what it was batched with: a pad next to a real token contributes
exactly what the zero padding at the end of an unpadded text contributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ConfigError, EncoderConfig
from models.layers import Linear, SelfAttention


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

    def forward(self, x: Tensor, qkv: Tensor, attn_bias: Tensor, keep: Tensor) -> Tensor:
        b, t, _ = x.shape
        h, d, k = self.num_heads, self.head_size, self.kernel
        q, key, v = self.heads(qkv)
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
