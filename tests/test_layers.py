"""models.layers.Linear: CPU bf16/fp16 matmuls see a bounded set of row counts, results unchanged."""

import pytest
import torch
import torch.nn.functional as F

from models.layers import ROW_CHUNK, ROW_STEP, Int8Linear, Linear


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_chunked_rows_are_bit_identical_to_one_call(dtype, bias):
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias).to(dtype)
    for shape in [(1, 1, 48), (3, 7, 48), (ROW_CHUNK, 48), (2, ROW_CHUNK + 5, 48), (0, 48)]:
        x = torch.randn(shape).to(dtype)
        with torch.inference_mode():
            got = layer(x)
        assert got.shape == (*shape[:-1], 80) and got.dtype == dtype
        assert torch.equal(got, F.linear(x, layer.weight, layer.bias))


def test_row_counts_seen_by_the_matmul_are_bounded(monkeypatch):
    seen = set()
    for name in ("addmm", "mm"):
        real = getattr(torch, name)

        def record(*args, _real=real, **kwargs):
            seen.add(args[-2].shape[0])
            return _real(*args, **kwargs)
        monkeypatch.setattr(torch, name, record)
    layer = Linear(16, 8).to(torch.bfloat16)
    with torch.inference_mode():
        for rows in range(1, 3 * ROW_CHUNK, 7):
            layer(torch.randn(rows, 16, dtype=torch.bfloat16))
    assert seen <= set(range(ROW_STEP, ROW_CHUNK + 1, ROW_STEP))
    assert len(seen) == ROW_CHUNK // ROW_STEP


def test_float32_and_int8_take_the_plain_path():
    from models.loading import quantize_int8

    layer = Linear(16, 8)
    x = torch.randn(5, 16)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Sequential(Linear(16, 8), torch.nn.Linear(8, 4))

    quantized = quantize_int8(Holder()).encoder
    assert [type(m) for m in quantized] == [Int8Linear, Int8Linear]


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
