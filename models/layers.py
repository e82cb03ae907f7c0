"""Building blocks shared by every family: activations, linear layers, fused self-attention."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_tanh(x: Tensor) -> Tensor:
    # the "gelu_new" formula of the original BERT/GPT code (not torch's tanh kernel: last-bit parity)
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3.0))))


def _laplace(x: Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> Tensor:
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


# Names as Hugging Face's ACT2FN spells them: "gelu" is the exact erf GELU, "gelu_new" the tanh one.
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_python": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10.0, 10.0),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
    "laplace": _laplace,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation {name!r}: expected one of {', '.join(_ACTIVATIONS)}") from None


# Rows per oneDNN matmul call for bf16/fp16 on CPU, and the step the last chunk's rows are padded to.
ROW_CHUNK, ROW_STEP = 2048, 128
# Rows per chunk of an encoder block's row-wise part on CPU in fp32 and int8 (MKL, fbgemm): its FFN's
# intermediate (rows × 3,072 floats for BERT-base) stays in cache.
ROW_CHUNK_FP32 = 512

# Activations oneDNN applies inside the matmul, on its fp32 result (name → torch's mkldnn post-op, algorithm).
_FUSED = {"gelu": ("gelu", "none"), "gelu_python": ("gelu", "none"), "gelu_pytorch_tanh": ("gelu", "tanh"),
          "relu": ("relu", "")}


def by_rows(fn: Callable[..., Tensor], x: Tensor, *others: Tensor | None, chunk: int = ROW_CHUNK) -> Tensor:
    """`fn` over the rows (tokens) of `x` and of `others` (same leading shape, or None), in chunks of at most
    `chunk` rows, the last one zero-padded to a multiple of ROW_STEP; `fn` maps rows to rows.

    oneDNN keeps, for every row count it meets, state it never frees: with variable-length batches a long
    job's memory grew by GBs. Chunks bound the row counts to ROW_CHUNK / ROW_STEP. A row's output does not
    depend on the other rows; in bf16 the kernel oneDNN picks for a row count may round it differently.
    """
    lead = x.shape[:-1]
    rows = [t if t is None else t.reshape(-1, t.shape[-1]) for t in (x, *others)]
    n = rows[0].shape[0]
    if n <= chunk and n % ROW_STEP == 0:
        out = fn(*rows)
    else:
        out = None
        for start in range(0, n, chunk):
            y = fn(*[t if t is None else _pad_rows(t[start:start + chunk]) for t in rows])
            out = y.new_empty(n, y.shape[-1]) if out is None else out
            out[start:start + chunk] = y[:min(chunk, n - start)]
    return out.view(*lead, out.shape[-1])


def _epilogue(y: Tensor, act: Callable[[Tensor], Tensor] | None, residual: Tensor | None) -> Tensor:
    """A linear layer's `act(y) + residual`, either of them optional."""
    y = y if act is None else act(y)
    return y if residual is None else y + residual


def _pad_rows(rows: Tensor) -> Tensor:
    short = -rows.shape[0] % ROW_STEP
    return torch.cat([rows, rows.new_zeros(short, rows.shape[1])]) if short else rows


class Linear(nn.Linear):
    """`nn.Linear` with an optional activation after it and residual added to its output:
    `act(x @ W.T + b) + residual`.

    On CPU in bf16/fp16 (`pack`), oneDNN runs it from weights reordered once into its blocked layout, and
    applies GELU/ReLU or the residual add inside the matmul (`torch.ops.mkldnn._linear_pointwise`, the kernels
    torch.compile's CPU backend emits): BERT-base's forward ran 1.4–1.5× faster than an `addmm` per linear
    followed by GELU and add, which spent ≈ 30% of the time in a separate GELU and in copying the bias
    into the output (bench/NOTES.md). Rows go through `by_rows`. fp32 (MKL), CUDA and CPUs without bf16/fp16 units
    take the plain path.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, act: str | None = None):
        super().__init__(in_features, out_features, bias=bias)
        self.act = activation(act) if act else None
        self.fused_act = _FUSED.get(act or "")
        self.blocked: Tensor | None = None   # the weights in oneDNN's layout, once `pack`ed

    def pack(self) -> None:
        self.blocked = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), ROW_CHUNK)
        self.weight = nn.Parameter(self.weight.new_empty(0), requires_grad=False)   # only `blocked` is read now

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if self.blocked is not None:
            return by_rows(self._blocked_forward, x, residual)
        return _epilogue(super().forward(x), self.act, residual)

    def _blocked_forward(self, x: Tensor, residual: Tensor | None) -> Tensor:
        mkldnn = torch.ops.mkldnn
        if self.act is None and residual is not None:
            return mkldnn._linear_pointwise.binary(x, residual, self.blocked, self.bias, "add")
        post_op, algorithm = self.fused_act or ("none", "")
        y = mkldnn._linear_pointwise(x, self.blocked, self.bias, post_op, [], algorithm)
        return _epilogue(y, None if self.fused_act else self.act, residual)


def half_units(dtype: torch.dtype) -> bool | None:
    """Whether this CPU has bf16/fp16 matrix units oneDNN uses (AVX-512 BF16/FP16, AMX, Arm's), None where
    torch cannot tell (no probe, or built without oneDNN)."""
    name = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    probe = getattr(torch.ops.mkldnn, name, None) if name else None
    try:
        return None if probe is None else bool(probe())
    except RuntimeError:
        return None


def pack_for_cpu(model: nn.Module, dtype: torch.dtype) -> None:
    """CPU bf16/fp16 on a CPU with units for it: every `Linear` from oneDNN's blocked weights (`Linear.pack`)."""
    if torch.backends.mkldnn.is_available() and half_units(dtype):
        for module in model.modules():
            if isinstance(module, Linear):
                module.pack()


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and per-batch int8 activations (CPU dynamic quantisation).

    torch's dynamic quantisation kernels (fbgemm) with one weight scale per output feature: the
    same outputs as `torch.ao.quantization.quantize_dynamic` with its per-channel qconfig, the
    weights packed once (torch's module first packs placeholder weights twice: 1.8 s of every
    BERT-base model actor's start). Per-channel scales cost nothing in speed and keep models whose
    rows differ in scale usable: all-MiniLM-L6-v2's lowest embedding cosine against fp32 went from
    0.74–0.77 with one scale per matrix to 0.90–0.91 (bench/NOTES.md). Activations keep torch's 7-bit range
    (`reduce_range`), which CPUs without VNNI need against 16-bit overflow. torch marks its quantised
    tensor types deprecated (pytorch#184982), but they are its only int8 CPU kernels in 2.13, which
    the project pins.
    """

    def __init__(self, linear: nn.Linear):
        from torch.ao.nn.quantized.modules.utils import _quantize_weight
        from torch.ao.quantization.qconfig import per_channel_dynamic_qconfig

        super().__init__()
        observer = per_channel_dynamic_qconfig.weight()
        observer(linear.weight)
        weight = _quantize_weight(linear.weight.float(), observer)
        self.packed = torch.ops.quantized.linear_prepack(weight, linear.bias)
        self.act = getattr(linear, "act", None)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True).to(x.dtype)
        return _epilogue(y, self.act, residual)


class GroupedLinear(nn.Module):
    """ConvBERT's grouped dense layer: weight (groups, in/groups, out/groups), applied as x @ W (no transpose)."""

    def __init__(self, in_features: int, out_features: int, groups: int, act: str | None = None):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, in_features // groups, out_features // groups))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.act = activation(act) if act else None

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.groups, x.shape[-1] // self.groups).transpose(0, 1)  # (G, N, in/G)
        x = torch.bmm(x, self.weight).transpose(0, 1)                                 # (N, G, out/G)
        return _epilogue(x.reshape(*lead, -1) + self.bias, self.act, residual)


def embedding(num_embeddings: int, dim: int) -> nn.Embedding:
    """An embedding table left uninitialised: its weights always come from the checkpoint.

    Models are built on the meta device; the random init `nn.Embedding` would do there imports
    torch._dynamo (1.6 s of every model actor's start).
    """
    return nn.Embedding(num_embeddings, dim, _weight=torch.empty(num_embeddings, dim))


def dense(in_features: int, out_features: int, groups: int = 1, act: str | None = None) -> nn.Module:
    if groups == 1:
        return Linear(in_features, out_features, act=act)
    return GroupedLinear(in_features, out_features, groups, act)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused q/k/v and SDPA; optional relative-position scores.

    `relative` is "relative_key" or "relative_key_query" (Shaw et al.; Huang et al.) or None.
    Returns the per-head context concatenated, (B, T, heads * head_size), before the output dense.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_size: int, relative: str | None = None,
                 max_positions: int = 0):
        super().__init__()
        self.num_heads, self.head_size, self.relative = num_heads, head_size, relative
        self.qkv = Linear(hidden_size, 3 * num_heads * head_size)
        if relative:
            self.max_positions = max_positions
            self.distance_embedding = embedding(2 * max_positions - 1, head_size)

    def heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k and v, each (B, h, T, d), from a batch's `qkv` projection (B, T, 3 * h * d)."""
        b, t, _ = qkv.shape
        q, k, v = qkv.view(b, t, 3, self.num_heads, self.head_size).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: Tensor, qkv: Tensor, attn_bias: Tensor, keep: Tensor | None = None) -> Tensor:
        """One batch: its rows `x` (B, T, H) and their `self.qkv(x)`, which the caller projects over every
        batch of a pass at once (one matmul of all its tokens; `Block.forward`)."""
        return self.attend(*self.heads(qkv), attn_bias)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_bias: Tensor) -> Tensor:
        if self.relative:
            attn_bias = attn_bias + self._relative_scores(q, k) / math.sqrt(self.head_size)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)          # (B, h, T, d)
        b, h, t, d = ctx.shape
        return ctx.transpose(1, 2).reshape(b, t, h * d)

    def _relative_scores(self, q: Tensor, k: Tensor) -> Tensor:
        t = q.shape[2]
        pos = torch.arange(t, device=q.device)
        table = self.distance_embedding(pos[:, None] - pos[None, :] + self.max_positions - 1).to(q.dtype)  # (T, T, d)
        scores = torch.einsum("bhld,lrd->bhlr", q, table)
        if self.relative == "relative_key_query":
            scores = scores + torch.einsum("bhrd,lrd->bhlr", k, table)
        return scores
