"""Task heads. Each takes the encoder's last hidden state (B, T, H) and the attention mask (B, T)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import EncoderConfig
from models.layers import Linear, activation


class NoHead(nn.Module):
    """Task "base": the last hidden state itself."""

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return hidden


class TokenClassifier(nn.Module):
    """NER: one logit vector per token, (B, T, num_labels)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.classifier = Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.classifier(hidden)


class SpanPredictor(nn.Module):
    """Extractive QA: start and end logits per token, (B, T, 2)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.qa = Linear(cfg.hidden_size, 2)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.qa(hidden)


class PoolerClassifier(nn.Module):
    """BERT: tanh(pooler(h[CLS])) → classifier."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.pooler = Linear(cfg.hidden_size, cfg.hidden_size)
        self.classifier = Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.classifier(torch.tanh(self.pooler(hidden[:, 0])))


class DenseClassifier(nn.Module):
    """RoBERTa (tanh) and ConvBERT (hidden_act): out_proj(act(dense(h[CLS]))); no pooler."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = Linear(cfg.hidden_size, cfg.num_labels)
        self.act = activation(cfg.classifier_act)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.out_proj(self.act(self.dense(hidden[:, 0])))


class PreClassifier(nn.Module):
    """DistilBERT: classifier(relu(pre_classifier(h[CLS])))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.pre_classifier = Linear(cfg.hidden_size, cfg.hidden_size)
        self.classifier = Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.classifier(F.relu(self.pre_classifier(hidden[:, 0])))


POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")   # sentence-transformers' names


class Pooling(nn.Module):
    """Embeddings as sentence-transformers computes them (in float32): modes concatenated in the given order,
    its Dense layers, L2, then the first `truncate_dim` values when set. `skip` first tokens (the [CLS] and a prompt's
    tokens: its `include_prompt=False`) are left out of every mode."""

    def __init__(self, modes: tuple[str, ...], normalize: bool, skip: int = 0, truncate_dim: int | None = None,
                 dense: tuple[tuple[int, int, bool, str], ...] = ()):
        super().__init__()
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown or not modes:
            raise ValueError(f"pooling {list(modes)!r}: expected one or more of {', '.join(POOLING_MODES)}")
        self.modes, self.normalize, self.skip, self.truncate_dim = tuple(modes), normalize, skip, truncate_dim
        self.dense = nn.ModuleList(Dense(*layer) for layer in dense)   # (in, out, bias, activation) each

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = hidden.float()   # in float32: float16 sums of position weights overflow past ≈ 360 tokens
        if self.skip:
            attention_mask = attention_mask.clone()
            attention_mask[:, : self.skip] = 0
        keep = attention_mask.to(hidden.dtype)[:, :, None]                            # (B, T, 1)
        count = keep.sum(1).clamp(min=1e-9)                                           # (B, 1)
        pooled = []
        for mode in self.modes:
            if mode == "cls":       # the first token pooled: [CLS], or the first after a skipped prompt
                first = attention_mask.to(torch.int32).argmax(1)
                pooled.append(hidden[torch.arange(len(hidden), device=hidden.device), first])
            elif mode == "max":
                pooled.append(hidden.masked_fill(keep == 0, torch.finfo(hidden.dtype).min).max(1).values)
            elif mode == "weightedmean":   # position t (from 1) weighs t
                weights = keep * torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)[:, None]
                pooled.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9))
            elif mode == "lasttoken":     # the last token pooled (right padding): [SEP]
                last = (attention_mask.shape[1] - 1 - attention_mask.flip(1).to(torch.int32).argmax(1))
                pooled.append(hidden[torch.arange(len(hidden), device=hidden.device), last] * keep.amax(1))
            else:
                total = (hidden * keep).sum(1)
                pooled.append(total / (count if mode == "mean" else count.sqrt()))
        out = torch.cat(pooled, dim=-1)
        for layer in self.dense:
            out = layer(out)
        out = F.normalize(out, p=2, dim=1) if self.normalize else out
        return out[:, : self.truncate_dim] if self.truncate_dim else out


class Dense(nn.Module):
    """A sentence-transformers Dense module: activation(linear(x)), in float32 whatever the model's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool, act: str):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.linear.bias.float() if self.linear.bias is not None else None
        return self.activation(F.linear(x, self.linear.weight.float(), bias))
