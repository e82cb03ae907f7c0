"""Per-window sequence-classification logits of one document -> label, score, top-k scores.

For a document that fits one window, `classify` returns what transformers 4.57's
`pipeline("text-classification", top_k=..., function_to_apply=...)` returns for the same
logits (`TextClassificationPipeline.postprocess`):

1. `function_to_apply="default"` is chosen from the model config exactly as HF does, in this
   order: `problem_type == "regression"` -> none; `"multi_label_classification"` or one label ->
   sigmoid; `"single_label_classification"` or several labels -> softmax. (So a one-label model
   without `problem_type` gets a sigmoid, and only an explicit `"regression"` keeps raw logits.)
2. softmax / sigmoid in float32 with HF's formulas, so scores and tie order match bit for bit;
3. labels sorted by score, best first; equal scores keep label-id order (HF's stable sort), and
   the first `top_k` are kept (`None`: all labels).

HF's legacy paths are not copied: `return_all_scores`, the unsorted list it produces, the bare
dict returned when no `top_k` is passed, and `config.function_to_apply` (unreachable in HF for
any model with at least one label). Here the result always has the same shape.

Documents longer than one window get one label from all their windows
(`window_aggregation`), applied to the scores after the function, never to raw logits:

- `mean` (default): the mean of the windows' probabilities. Every window counts the same unless
  `window_weights` is given (e.g. tokens per window), which makes it a weighted mean; the plain
  mean is the default because it is what the job documents (`--window-aggregation mean`).
- `max`: per label, the highest score over the windows ("does any part say X").
- `first`: the first window only (what a truncating classifier sees).

With one window every aggregation returns that window's scores unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

FUNCTIONS = ("default", "softmax", "sigmoid", "none")
WINDOW_AGGREGATIONS = ("mean", "max", "first")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def resolve_function(function_to_apply: str, problem_type: str | None, num_labels: int) -> str:
    """`softmax`, `sigmoid` or `none`: the function the HF pipeline would apply for this model."""
    function = _check_choice("function_to_apply", function_to_apply, FUNCTIONS)
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type={problem_type!r}: expected None or one of {', '.join(PROBLEM_TYPES)}")
    if function != "default":
        return function
    # Same order of tests as TextClassificationPipeline.postprocess: a one-label model marked
    # single_label_classification still gets a sigmoid.
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    if problem_type == "single_label_classification" or num_labels > 1:
        return "softmax"
    return "none"


def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    """Scores from logits `float32[..., L]` with HF's float32 formulas (`softmax`/`sigmoid`/`none`)."""
    logits = np.asarray(logits, dtype=np.float32)
    if function == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if function == "sigmoid":
        # exp overflows to inf for very negative logits; 1 / inf = 0 is the right limit.
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-logits))
    if function == "none":
        return logits
    raise ValueError(f"function={function!r}: expected one of softmax, sigmoid, none")


def aggregate_windows(
    window_scores: np.ndarray, window_aggregation: str = "mean", window_weights: Sequence[float] | None = None
) -> np.ndarray:
    """One score per label `float32[L]` from per-window scores `float32[W, L]` (see the module doc).

    `window_weights` (one non-negative number per window, e.g. its token count) is used by `mean`
    only; `max` and `first` ignore it.
    """
    aggregation = _check_choice("window_aggregation", window_aggregation, WINDOW_AGGREGATIONS)
    scores = np.asarray(window_scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"window_scores has shape {scores.shape}: expected (windows >= 1, num_labels)")
    weights = None if window_weights is None else _check_weights(window_weights, scores.shape[0])
    if scores.shape[0] == 1 or aggregation == "first":
        return scores[0]
    if aggregation == "max":
        return scores.max(axis=0)
    if weights is None:
        return scores.mean(axis=0, dtype=np.float64).astype(np.float32)
    return np.average(scores.astype(np.float64), axis=0, weights=weights).astype(np.float32)


def classify(
    window_logits: np.ndarray,
    id2label: Mapping[int, str],
    problem_type: str | None,
    function_to_apply: str = "default",
    top_k: int | None = 1,
    window_aggregation: str = "mean",
    window_weights: Sequence[float] | None = None,
) -> dict:
    """Label of one document from its windows' logits `float32[W, L]` (a 1-D `[L]` is one window).

    Returns `dict(label, score, scores)`: the best label and its score, and `scores`, a list of
    `dict(label, score)` best first — `top_k` of them, or every label when `top_k` is None.
    `function_to_apply` is `default|softmax|sigmoid|none` (case-insensitive, as in HF);
    `window_aggregation` is `mean|max|first`; `window_weights` turns `mean` into a weighted mean.
    """
    logits = np.asarray(window_logits, dtype=np.float32)
    if logits.ndim == 1:
        logits = logits[None, :]
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"window_logits has shape {logits.shape}: expected (windows >= 1, num_labels)")
    labels = _label_names(id2label, logits.shape[1])
    top_k = _check_top_k(top_k)
    function = resolve_function(function_to_apply, problem_type, len(labels))
    scores = aggregate_windows(apply_function(logits, function), window_aggregation, window_weights)
    # HF: Python's stable sort with reverse=True, so equal scores stay in label-id order.
    order = np.argsort(-scores, kind="stable")[:top_k]
    ranked = [{"label": labels[i], "score": float(scores[i])} for i in order]
    return {"label": ranked[0]["label"], "score": ranked[0]["score"], "scores": ranked}


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    lowered = value.lower() if isinstance(value, str) else value
    if lowered not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return lowered


def _check_top_k(top_k: int | None) -> int | None:
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k={top_k!r}: expected a positive integer, or None for every label")
    return int(top_k)


def _check_weights(window_weights: Sequence[float], windows: int) -> np.ndarray:
    weights = np.asarray(window_weights, dtype=np.float64)
    if weights.shape != (windows,):
        raise ValueError(f"window_weights has shape {weights.shape}: expected ({windows},), one per window")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(
            f"window_weights={weights.tolist()}: expected finite values >= 0 with a positive sum"
        )
    return weights


def _label_names(id2label: Mapping[int, str], num_labels: int) -> list[str]:
    if len(id2label) != num_labels or set(id2label) != set(range(num_labels)):
        raise ValueError(
            f"id2label has keys {sorted(id2label, key=str)}; the logits have {num_labels} labels, "
            f"so expected the integer keys 0..{num_labels - 1}"
        )
    return [id2label[i] for i in range(num_labels)]
