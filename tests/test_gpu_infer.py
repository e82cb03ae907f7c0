"""The model stage on CUDA gives the CPU result (fp32) and close results in the auto dtype (bf16/fp16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.infer import Infer, InferConfig
from pipeline.tokenize import Tokenize, TokenizeConfig
from pipeline.validate import ValidateConfig, ValidateText
from tests.conftest import make_texts
from tests.test_stages import docs_table

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def flat_outputs(table) -> np.ndarray:
    return np.concatenate([np.asarray(w, np.float32) for doc in table.column("_outputs").to_pylist() for w in doc])


def test_cuda_infer_matches_cpu(ner_checkpoint):
    folder = str(ner_checkpoint)
    tokenized = Tokenize(TokenizeConfig(folder, max_length=64, stride=8))(
        ValidateText(ValidateConfig())(docs_table(make_texts(12))))
    cpu = flat_outputs(Infer(InferConfig(folder, "ner", batch_tokens=256, device="cpu"))(tokenized))
    cuda = flat_outputs(Infer(InferConfig(folder, "ner", batch_tokens=256, device="cuda", dtype="float32"))(tokenized))
    np.testing.assert_allclose(cuda, cpu, atol=1e-4)
    half = flat_outputs(Infer(InferConfig(folder, "ner", batch_tokens=256, device="cuda"))(tokenized))
    np.testing.assert_allclose(half, cpu, atol=5e-2)
