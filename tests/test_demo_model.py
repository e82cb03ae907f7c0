"""The bundled demo model is a real Hugging Face checkpoint, and the sample corpus is what the demo needs."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "demo-ner-model"
CORPUS = REPO / "examples" / "sample_corpus"
sys.path.insert(0, str(REPO / "examples" / "demo_model"))
sys.path.insert(0, str(REPO / "examples"))
from synthetic import split_pools  # noqa: E402

# Names from the training pools, in a sentence shaped like the training templates.
SENTENCES = [
    ("Angela Merkel met Tim Cook in Paris.", {("PER", "Angela Merkel"), ("PER", "Tim Cook"), ("LOC", "Paris")}),
    ("Maria García works for Acme Corporation in Berlin.",
     {("PER", "Maria García"), ("ORG", "Acme Corporation"), ("LOC", "Berlin")}),
]


@pytest.fixture(scope="module")
def hf_model() -> transformers.PreTrainedModel:
    model, info = transformers.AutoModelForTokenClassification.from_pretrained(MODEL, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}, info
    return model.eval()


def test_checkpoint_loads_in_transformers_without_missing_or_unexpected_keys(hf_model) -> None:
    assert type(hf_model).__name__ == "BertForTokenClassification"
    assert hf_model.config.id2label == dict(enumerate(["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]))
    assert (MODEL / "model.safetensors").stat().st_size <= 15_000_000


def test_test_sentences_use_training_names() -> None:
    train, _ = split_pools()
    names = set(train.first_names) | set(train.last_names) | set(train.orgs) | set(train.locations)
    for _, expected in SENTENCES:
        for _, text in expected:
            assert text in names or all(part in names for part in text.split()), text


def test_pipeline_finds_persons_organisations_and_places(hf_model) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL)
    assert tokenizer.is_fast
    ner = transformers.pipeline("token-classification", model=hf_model, tokenizer=tokenizer, aggregation_strategy="simple")
    for text, expected in SENTENCES:
        found = {(e["entity_group"], e["word"]) for e in ner(text)}
        assert expected <= found, (text, found)


def test_our_loader_gives_the_same_logits_as_transformers(hf_model) -> None:
    from models import load_model

    ours = load_model(MODEL, "ner")
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL)
    batch = tokenizer([text for text, _ in SENTENCES], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = hf_model(**batch).logits
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-4, rtol=0)


def test_sample_corpus_is_reproducible_and_has_long_documents(tmp_path: Path) -> None:
    from make_sample_corpus import SCHEMA, make_corpus, write_parts

    committed = ds.dataset(CORPUS, format="parquet").to_table()
    assert committed.schema.remove_metadata() == SCHEMA
    assert len(set(committed.column("id").to_pylist())) == committed.num_rows >= 300
    write_parts(make_corpus(committed.num_rows), tmp_path)
    assert ds.dataset(tmp_path, format="parquet").to_table().equals(committed)

    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL)
    lengths = [len(ids) for ids in tokenizer(committed.column("text").to_pylist())["input_ids"]]
    assert sum(n > 512 for n in lengths) >= 3
    assert 40 <= sorted(lengths)[len(lengths) // 2] <= 200


def test_cpu_fast_modes_keep_the_demo_models_entities() -> None:
    """bfloat16 and int8 (dynamic quantisation) against float32 on the sample corpus: ≥ 99% of documents identical."""
    from bench.contenders import entity_keys, stages

    def entities(dtype: str) -> dict:
        return {row["id"]: entity_keys(row["entities"])
                for table in stages("ner", str(REPO / "examples" / "sample_corpus"),
                                    str(REPO / "examples" / "demo-ner-model"), dtype)
                for row in table.select(["id", "entities"]).to_pylist()}

    reference = entities("float32")
    assert len(reference) == 300 and sum(len(v) for v in reference.values()) > 300
    for dtype in ("bfloat16", "int8"):
        found = entities(dtype)
        assert sum(found[i] == want for i, want in reference.items()) >= 0.99 * len(reference), dtype
