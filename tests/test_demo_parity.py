"""The demo model through our whole stack (tokenizer → encoder → decoder) equals the HF
token-classification pipeline for every aggregation strategy, long documents included."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from models import load_model, load_tokenizer
from pipeline.ner_decode import AGGREGATIONS, NerWindow, decode_entities
from tests.conftest import REPO

MODEL = REPO / "examples" / "demo-ner-model"
MAX_LENGTH, STRIDE = 128, 32


@pytest.fixture(scope="module")
def texts() -> list[str]:
    table = pads.dataset(REPO / "examples" / "sample_corpus", format="parquet").to_table(columns=["text"])
    all_texts = table.column("text").to_pylist()
    longest = sorted(all_texts, key=len)[-3:]      # several windows of 128 tokens each
    return all_texts[:25] + longest


@pytest.fixture(scope="module")
def ours(texts):
    tokenizer, model = load_tokenizer(MODEL), load_model(MODEL, "ner")
    documents = []
    for windows in tokenizer.encode_windows(texts, max_length=MAX_LENGTH, stride=STRIDE):
        ner_windows = []
        for w in windows:
            ids = torch.from_numpy(w.ids.astype(np.int64))[None]
            with torch.inference_mode():
                logits = model(ids, torch.ones_like(ids), torch.from_numpy(w.type_ids.astype(np.int64))[None])
            ner_windows.append(NerWindow(w.ids, w.offsets, w.sequence_ids == -1, logits[0].numpy()))
        documents.append(ner_windows)
    return tokenizer, documents


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_demo_model_entities_equal_the_hf_pipeline(texts, ours, aggregation):
    import transformers

    tokenizer, documents = ours
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL, model_max_length=MAX_LENGTH)
    hf_model = transformers.AutoModelForTokenClassification.from_pretrained(MODEL)
    pipe = transformers.pipeline("token-classification", model=hf_model, tokenizer=hf_tokenizer,
                                 aggregation_strategy=aggregation,
                                 **({} if aggregation == "none" else {"stride": STRIDE}))
    labels = hf_model.config.id2label
    found = 0
    for text, windows in zip(texts, documents):
        if aggregation == "none" and len(windows) > 1:
            continue  # the HF pipeline refuses stride without aggregation
        got = decode_entities(text, windows, labels, aggregation, ("O",), tokenizer.id_to_token,
                              tokenizer.continuing_subword_prefix, tokenizer.unk_id)
        want = pipe(text)
        key = "entity" if aggregation == "none" else "entity_group"
        assert [(e["label"], e["start"], e["end"]) for e in got] == [(e[key], e["start"], e["end"]) for e in want]
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want], atol=1e-4)
        found += len(got)
    assert found > 20   # the demo model really finds entities in the sample corpus
