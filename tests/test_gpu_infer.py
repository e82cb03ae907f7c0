"""The model stage on CUDA gives the CPU result (fp32) and close results in the auto dtype (bf16/fp16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import load_model
from pipeline.infer import Infer, InferConfig
from pipeline.tokenize import Tokenize, TokenizeConfig
from pipeline.validate import ValidateConfig, ValidateText
from tests.checkpoints import HEADS, make_checkpoint, random_batch
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


def test_ner_job_on_the_gpu_equals_cpu(ray_session, ner_checkpoint, tmp_path):
    """The whole job with the GPU defaults (model actor on the GPU, tokenizer actors per CPU, batches
    of 2048, micro-batches pipelined) gives the CPU job's entities in fp32."""
    import pyarrow.dataset as pads

    from pipeline.config import NerConfig
    from pipeline.job import run_job
    from pipeline.ner_task import NER_TASK
    from tests.conftest import write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    common = dict(input=str(corpus), model=str(ner_checkpoint), stride=16, dtype="float32")
    runs = {device: run_job(NerConfig(output=str(tmp_path / device), device=device, **common), NER_TASK)
            for device in ("cpu", "cuda")}
    assert runs["cuda"]["placement"]["use_gpu"] and runs["cuda"]["placement"]["docs_per_batch"] == 2048
    entities = {}
    for device in runs:
        table = pads.dataset(tmp_path / device, format="parquet").to_table()
        entities[device] = {row["id"]: [(e["label"], e["start"], e["end"]) for e in row["entities"]]
                            for row in table.to_pylist()}
    assert entities["cuda"] == entities["cpu"]


def test_auto_dtype_is_resolved_once_on_a_gpu_and_recorded(ray_session, ner_checkpoint, tmp_path):
    """--dtype auto on CUDA: one GPU is asked (ray_plan.preflight); every actor and the ledger use its answer."""
    import json

    from pipeline.config import NerConfig
    from pipeline.job import run_job
    from pipeline.ner_task import NER_TASK
    from tests.conftest import write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    run = run_job(NerConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(ner_checkpoint),
                            device="cuda"), NER_TASK)
    expected = ["bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"]
    assert run["model"]["dtypes"] == expected and run["complete"]
    assert json.loads((tmp_path / "out" / "_progress" / "_job.json").read_text())["dtypes"] == expected


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "convbert"])
def test_every_family_and_head_on_cuda_matches_transformers(tmp_path, family, head):
    """float32 on the GPU within 1e-4 of `transformers` on the CPU; float16 and bfloat16 run and stay close."""
    from pipeline.infer import strict_float32
    from tests.test_model_parity import LENGTHS, reference

    folder, hf = make_checkpoint(tmp_path, family, head, tokenizer=False)
    ids, mask, types = random_batch(family, LENGTHS, hf.config.vocab_size)
    types = types if family in ("bert", "convbert") else None
    expected = reference(hf, family, head, ids, mask, types)
    strict_float32()
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
        model = load_model(folder, head, dtype=dtype, device="cuda")
        with torch.inference_mode():
            ours = model(ids.cuda(), mask.cuda(), None if types is None else types.cuda()).float().cpu()
        real = (lambda t: t) if head == "classify" else (lambda t: t[mask.bool()])
        scale = 1.0 if dtype == torch.float32 else 1.0 + float(expected.abs().max())
        assert (real(ours) - real(expected)).abs().max().item() <= tolerance * scale, (dtype, family, head)


@pytest.mark.parametrize("pooling", ["max", "mean", "cls"])
def test_embeddings_in_half_precision_on_cuda(tmp_path, pooling):
    """Max pooling filled the padding with -1e9, which float16 cannot hold (the actor failed to start)."""
    folder, _ = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    ids, mask, types = random_batch("bert", [9, 23, 4], 120)
    outputs = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        model = load_model(folder, "embed", dtype=dtype, device="cuda", pooling=pooling, normalize=True)
        with torch.inference_mode():
            outputs[dtype] = model(ids.cuda(), mask.cuda(), types.cuda()).float().cpu()
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.nn.functional.cosine_similarity(outputs[dtype], outputs[torch.float32]).min() > 0.99
