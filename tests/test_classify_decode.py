"""classify against transformers' text-classification pipeline (4.57), and window aggregation.

The logits given to `classify` are the HF model's own on the HF tokenizer's encoding (one
window), so any difference comes from the decoding alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from pipeline.classify_decode import (
    FUNCTIONS,
    WINDOW_AGGREGATIONS,
    aggregate_windows,
    classify,
    resolve_function,
)
from tests.checkpoints import make_checkpoint

FAMILIES = ("bert", "roberta", "distilbert", "convbert")
TEXTS = ["Café naïve résumé über Straße, 東京 and 北京 😀", ""]
PAIRS = [
    {"text": "Who lives in New York?", "text_pair": "Mary Jones lives in New York."},
    {"text": "the big city", "text_pair": "a small house by the old river"},
]
SENTIMENT = {0: "negative", 1: "neutral", 2: "positive"}
TOPICS = {0: "sports", 1: "politics", 2: "science", 3: "arts", 4: "travel"}
# name -> config overrides (problem_type / labels), and the function HF picks by default.
HEADS = {
    "single": (dict(id2label=SENTIMENT, label2id={v: k for k, v in SENTIMENT.items()}), "softmax"),
    "single-explicit": (dict(num_labels=2, problem_type="single_label_classification"), "softmax"),
    "multi": (
        dict(
            num_labels=len(TOPICS),
            id2label=TOPICS,
            label2id={v: k for k, v in TOPICS.items()},
            problem_type="multi_label_classification",
        ),
        "sigmoid",
    ),
    "regression": (dict(num_labels=1, problem_type="regression"), "none"),
    "one-label": (dict(num_labels=1), "sigmoid"),
}
TOP_KS = [1, 2, None]


class HfClassifier:
    """A tiny random checkpoint, its HF text-classification pipeline, and its raw logits."""

    def __init__(self, folder: Path, family: str, model: torch.nn.Module):
        # DistilBERT takes no token_type_ids; its own tokenizer class never returns them.
        names = ["input_ids", "attention_mask"] if family in ("roberta", "distilbert") else None
        kwargs = {"model_input_names": names} if names else {}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
        self.model = model
        self.pipe = transformers.pipeline(
            "text-classification", model=model, tokenizer=self.tokenizer, device="cpu"
        )

    def logits(self, inputs: str | dict) -> np.ndarray:
        encoding = self.tokenizer(**inputs) if isinstance(inputs, dict) else self.tokenizer(inputs)
        batch = {name: torch.tensor([values]) for name, values in encoding.items()}
        with torch.no_grad():
            return self.model(**batch).logits.numpy()  # (1 window, num_labels)

    def reference(self, inputs: str | dict, **kwargs) -> list[dict]:
        return self.pipe(inputs, **kwargs)

    def ours(self, inputs: str | dict, **kwargs) -> dict:
        config = self.model.config
        return classify(self.logits(inputs), config.id2label, config.problem_type, **kwargs)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict[tuple[str, str], HfClassifier]:
    built = {}
    for family in FAMILIES:
        for head, (overrides, _) in HEADS.items():
            folder = tmp_path_factory.mktemp(f"{family}-{head}")
            folder, model = make_checkpoint(folder, family, "classify", **overrides)
            with torch.no_grad():  # random heads give near-uniform scores; spread them out
                for name, param in model.named_parameters():
                    if name.startswith(("classifier", "pre_classifier")) and name.endswith("weight"):
                        param.mul_(8.0)
            built[family, head] = HfClassifier(folder, family, model)
    return built


def assert_same(ours: dict, reference: list[dict]) -> None:
    assert [s["label"] for s in ours["scores"]] == [r["label"] for r in reference]
    np.testing.assert_allclose(
        [s["score"] for s in ours["scores"]], [r["score"] for r in reference], atol=1e-4
    )
    assert ours["label"] == reference[0]["label"]
    assert ours["score"] == pytest.approx(reference[0]["score"], abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", list(HEADS))
def test_default_function_matches_pipeline(classifiers, family, head):
    clf = classifiers[family, head]
    for text in TEXTS:
        for top_k in TOP_KS:
            assert_same(clf.ours(text, top_k=top_k), clf.reference(text, top_k=top_k))


@pytest.mark.parametrize("family", FAMILIES)
def test_no_top_k_matches_pipeline_default_call(classifiers, family):
    clf = classifiers[family, "single"]
    for text in TEXTS:
        reference = clf.reference(text)  # legacy call: [{"label", "score"}] of the argmax
        assert_same(clf.ours(text), reference)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["single", "multi", "regression"])
def test_explicit_function_matches_pipeline(classifiers, family, head):
    clf = classifiers[family, head]
    for function in ("softmax", "sigmoid", "none"):
        reference = clf.reference(TEXTS[0], top_k=None, function_to_apply=function)
        assert_same(clf.ours(TEXTS[0], top_k=None, function_to_apply=function), reference)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["single", "multi"])
def test_text_pairs_match_pipeline(classifiers, family, head):
    clf = classifiers[family, head]
    for pair in PAIRS:
        for top_k in (1, None):
            assert_same(clf.ours(pair, top_k=top_k), clf.reference(pair, top_k=top_k))


@pytest.mark.parametrize("head", list(HEADS))
def test_resolve_function_follows_config(classifiers, head):
    config = classifiers["bert", head].model.config
    assert resolve_function("default", config.problem_type, config.num_labels) == HEADS[head][1]


# --- hand-made logits: function rules, ties, window aggregation, argument errors ---

LABELS = {0: "a", 1: "b", 2: "c"}


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_resolve_function_rules():
    assert (
        resolve_function("default", "single_label_classification", 1) == "sigmoid"
    )  # HF tests num_labels == 1 first
    assert resolve_function("default", None, 1) == "sigmoid"
    assert resolve_function("default", None, 3) == "softmax"
    assert resolve_function("default", "regression", 3) == "none"
    assert resolve_function("default", "multi_label_classification", 3) == "sigmoid"
    assert resolve_function("SoftMax", "regression", 1) == "softmax"


def test_ties_keep_label_order():
    result = classify(np.zeros((1, 3), np.float32), LABELS, None, top_k=None)
    assert [s["label"] for s in result["scores"]] == ["a", "b", "c"]
    assert result["label"] == "a"
    result = classify(np.array([[0.0, 2.0, 2.0]], np.float32), LABELS, None, top_k=2)
    assert [s["label"] for s in result["scores"]] == ["b", "c"]


def test_top_k_larger_than_labels_returns_all():
    result = classify(np.array([1.0, 3.0, 2.0], np.float32), LABELS, None, top_k=10)
    assert [s["label"] for s in result["scores"]] == ["b", "c", "a"]


def test_one_window_is_left_as_is_by_every_aggregation():
    logits = np.array([[0.3, -1.2, 2.5]], np.float32)
    reference = classify(logits, LABELS, None, top_k=None)
    for aggregation in WINDOW_AGGREGATIONS:
        assert (
            classify(logits, LABELS, None, top_k=None, window_aggregation=aggregation, window_weights=[7])
            == reference
        )


def test_mean_of_window_probabilities():
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0]], np.float32)
    probabilities = softmax(logits)
    result = classify(logits, LABELS, None, top_k=None)
    expected = probabilities.mean(axis=0)
    assert (
        result["label"] == "b"
    )  # the mean of logits would pick the same; the mean of probabilities is what counts
    np.testing.assert_allclose([s["score"] for s in result["scores"]], np.sort(expected)[::-1], rtol=1e-6)


def test_token_weighted_mean():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]], np.float32)
    weights = [30, 10]  # a full window then a short last one
    result = classify(logits, LABELS, None, top_k=None, window_weights=weights)
    expected = np.average(softmax(logits), axis=0, weights=weights)
    assert result["label"] == "a"
    np.testing.assert_allclose(sorted(s["score"] for s in result["scores"]), np.sort(expected), rtol=1e-6)
    unweighted = classify(logits, LABELS, None, top_k=None)
    assert unweighted["scores"][0]["score"] == pytest.approx(unweighted["scores"][1]["score"])


def test_max_and_first():
    logits = np.array([[2.0, 0.0, -2.0], [-3.0, 0.0, 3.0]], np.float32)
    scores = 1 / (1 + np.exp(-logits))
    result = classify(logits, LABELS, "multi_label_classification", top_k=None, window_aggregation="max")
    assert {s["label"]: s["score"] for s in result["scores"]} == pytest.approx(
        dict(zip("abc", scores.max(axis=0)))
    )
    assert result["label"] == "c"
    first = classify(logits, LABELS, "multi_label_classification", window_aggregation="first")
    assert (first["label"], first["score"]) == ("a", pytest.approx(scores[0, 0]))
    assert len(first["scores"]) == 1


def test_regression_aggregates_raw_values():
    logits = np.array([[1.5], [-0.5], [2.0]], np.float32)
    for aggregation, expected in (("mean", 1.0), ("max", 2.0), ("first", 1.5)):
        result = classify(logits, {0: "LABEL_0"}, "regression", window_aggregation=aggregation)
        assert (result["label"], result["score"]) == ("LABEL_0", pytest.approx(expected))
        assert result["scores"] == [{"label": "LABEL_0", "score": result["score"]}]


def test_aggregate_windows_weighted_mean_ignores_zero_weight_windows():
    scores = np.array([[0.2, 0.8], [0.9, 0.1]], np.float32)
    np.testing.assert_allclose(aggregate_windows(scores, "mean", [5, 0]), scores[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(function_to_apply="relu"), "function_to_apply='relu': expected one of " + ", ".join(FUNCTIONS)),
        (dict(window_aggregation="median"), "expected one of " + ", ".join(WINDOW_AGGREGATIONS)),
        (dict(top_k=0), "top_k=0"),
        (dict(top_k=True), "top_k=True"),
        (dict(window_weights=[1]), r"window_weights has shape \(1,\): expected \(2,\)"),
        (dict(window_weights=[0, 0]), "positive sum"),
        (dict(window_weights=[3, -1]), ">= 0"),
        (dict(problem_type="ranking"), "problem_type='ranking'"),
    ],
)
def test_argument_errors(kwargs, message):
    arguments = dict(window_logits=np.zeros((2, 3), np.float32), id2label=LABELS, problem_type=None) | kwargs
    with pytest.raises(ValueError, match=message):
        classify(**arguments)


def test_shape_and_label_errors():
    with pytest.raises(ValueError, match=r"expected the integer keys 0..2"):
        classify(np.zeros((1, 3), np.float32), {"0": "a", "1": "b", "2": "c"}, None)
    with pytest.raises(ValueError, match=r"expected the integer keys 0..3"):
        classify(np.zeros((1, 4), np.float32), LABELS, None)
    with pytest.raises(ValueError, match=r"shape \(0, 3\)"):
        classify(np.zeros((0, 3), np.float32), LABELS, None)
