"""models.layers: oneDNN's blocked weights on CPU bf16/fp16, bounded row counts, fused activation and residual."""

import pytest
import torch
import torch.nn.functional as F

from models.layers import (
    ROW_CHUNK,
    ROW_STEP,
    Int8Linear,
    Linear,
    activation,
    by_rows,
    half_units,
    pack_for_cpu,
)


def _native(dtype: torch.dtype) -> bool:
    return torch.backends.mkldnn.is_available() and bool(half_units(dtype))


def test_by_rows_sees_a_bounded_set_of_row_counts_and_keeps_every_row():
    seen = []

    def fn(x, residual, absent):
        assert absent is None and x.shape[0] == residual.shape[0]
        seen.append(x.shape[0])
        return torch.cat([x * 2 + residual, x.sum(-1, keepdim=True)], dim=-1)

    for shape in [(0, 3, 4), (5, 3, 4), (2, ROW_CHUNK + 1, 4), *((rows, 4) for rows in range(1, 2 * ROW_CHUNK, 7))]:
        x, residual = torch.randn(shape), torch.randn(shape)
        got = by_rows(fn, x, residual, None)
        assert torch.equal(got, torch.cat([x * 2 + residual, x.sum(-1, keepdim=True)], dim=-1))
    assert set(seen) - {0} <= set(range(ROW_STEP, ROW_CHUNK + 1, ROW_STEP))
    assert len(set(seen) - {0}) == ROW_CHUNK // ROW_STEP


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", [None, "gelu", "gelu_pytorch_tanh", "relu", "gelu_new"])
@pytest.mark.parametrize("bias", [True, False])
def test_blocked_linear_computes_act_of_linear_plus_residual(dtype, act, bias):
    """The oneDNN path (activation fused, or applied after; residual fused) against the plain formula in fp32."""
    if not _native(dtype):
        pytest.skip(f"this CPU has no {dtype} units: CPU {dtype} takes the plain path")
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias, act=act).to(dtype)
    weight, b = layer.weight.float(), layer.bias.float() if bias else None
    pack_for_cpu(layer, dtype)
    assert layer.blocked is not None and layer.weight.numel() == 0   # the weights are kept once
    for shape in [(1, 1, 48), (3, 7, 48), (ROW_CHUNK, 48), (2, ROW_CHUNK + 5, 48), (0, 48)]:
        x = torch.randn(shape).to(dtype)
        residual = torch.randn(*shape[:-1], 80).to(dtype)
        plain = F.linear(x.float(), weight, b)
        plain = plain if act is None else activation(act)(plain)
        with torch.inference_mode():
            for got, want in ((layer(x), plain), (layer(x, residual=residual), plain + residual.float())):
                assert got.shape == (*shape[:-1], 80) and got.dtype == dtype
                torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.02)


def test_only_cpu_half_precision_is_packed():
    layer = Linear(16, 8)
    pack_for_cpu(layer, torch.float32)
    assert layer.blocked is None
    for dtype in (torch.bfloat16, torch.float16):
        half = Linear(16, 8).to(dtype)
        pack_for_cpu(half, dtype)
        assert (half.blocked is not None) == _native(dtype)


def test_float32_and_int8_take_the_plain_path():
    from models.loading import quantize_int8

    layer = Linear(16, 8, act="gelu")
    x, residual = torch.randn(5, 16), torch.randn(5, 8)
    assert torch.equal(layer(x, residual=residual), F.gelu(F.linear(x, layer.weight, layer.bias)) + residual)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Sequential(Linear(16, 8, act="relu"), torch.nn.Linear(8, 4))

    quantized = quantize_int8(Holder()).encoder
    assert [type(m) for m in quantized] == [Int8Linear, Int8Linear]
    assert quantized[0](x).min() >= 0 and quantized[1].act is None   # the activation is kept


def test_int8_linear_equals_torch_dynamic_quantisation():
    """The same scales, kernels and outputs as torch's `quantize_dynamic` with per-channel weights, bit for bit."""
    import warnings

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(2, 7, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
        reference = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear: per_channel},
                                                           dtype=torch.qint8)
        ours = Int8Linear(layer)
    assert torch.equal(ours(x), reference(x))
    assert not torch.equal(ours(x), layer(x))
