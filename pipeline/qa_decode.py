"""Per-window start/end logits of one context -> answers, as the HF question-answering pipeline.

Contract (pure numpy: no Arrow, Ray, torch or transformers)::

    from pipeline.qa_decode import QaWindow, decode_answers, window_params

    QaWindow(start_logits: float32[T], end_logits: float32[T], offsets: int32[T, 2],
             sequence_ids: int8[T] (-1 special, 0 question, 1 context), word_ids: int32[T] (-1 special),
             cls_mask: bool[T] | None = None)
    decode_answers(context, windows, top_k=1, max_answer_len=15, handle_impossible_answer=False,
                   align_to_words=True)
    # -> list of dict(answer: str | None, score: float, start: int, end: int), best first, at most
    #    top_k; answer None (start = end = 0) is "no answer", when handle_impossible_answer wins.
    max_length, stride = window_params(max_seq_len, doc_stride, max_question_len, model_max_length)
    # -> the tokenizer's encode_windows([question], pairs=[context], max_length=..., stride=...)

The windows are those of a fast tokenizer called on (question, context) with
`truncation="only_second"`, `max_length`, `stride` and `return_overflowing_tokens=True`, in that
order; offsets index the context (code points). `cls_mask` marks the tokens whose id is the
tokenizer's CLS id; None means position 0 only, which differs from HF only when the question
itself contains the literal CLS token string ("[CLS]", "<s>"). Tokenizers that pad on the left
(HF then puts the context first) are not supported; BERT-family tokenizers pad on the right.

Mirrors `QuestionAnsweringPipeline.postprocess` of transformers 4.57 (fast tokenizer, question
first) step by step, in the same float32 numpy arithmetic, so that answers, offsets and scores
equal `pipeline("question-answering")(question=..., context=..., ...)`:

1. per window, tokens other than context tokens and CLS get logit -10000; softmax of the start
   and of the end logits over the window;
2. with `handle_impossible_answer`, the null score is the smallest start(0) * end(0) over windows;
   either way position 0 then gets probability 0;
3. span score = start(s) * end(e) for s <= e < s + max_answer_len, 0 for other (s, e); the best
   `top_k` pairs per window (`2 * top_k + 10` with `align_to_words`, as some collapse onto the
   same words), keeping those whose ends are context tokens or CLS (or position 0: HF's `np.isin`
   against the tuple from `nonzero()` lets index 0 through). A window with fewer real spans than
   asked for thus contributes zero-score pairs too, some with e < s: HF keeps them, so do we;
4. a span becomes characters: with `align_to_words`, from the first character of the start
   token's word to the last of the end token's word, within the window (`word_to_chars`: a word
   cut by the window's edge keeps only its part inside); if a token has no word in the context,
   both ends fall back to token offsets;
5. a span whose text equals (case-insensitively) an earlier answer's, in any window, adds its
   score to that answer (which keeps its offsets);
6. the null answer is appended, then all are sorted by score (stable) and cut to `top_k`.

HF returns `answer: ""` for the null answer; here it is None, so that an empty span (possible
only among zero-score fillers) stays distinguishable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# HF's starting value for the null score: "large and positive".
_NO_NULL_SCORE = 1000000
# What HF's pipeline uses when neither max_seq_len nor the tokenizer set a smaller limit.
_DEFAULT_MAX_SEQ_LEN = 384
_DEFAULT_MAX_DOC_STRIDE = 128


@dataclass(frozen=True)
class QaWindow:
    """One model window of a (question, context) pair; one entry per token, special tokens included."""

    start_logits: np.ndarray  # float32[T]
    end_logits: np.ndarray  # float32[T]
    offsets: np.ndarray  # int32[T, 2]: code point offsets into the context for context tokens
    sequence_ids: np.ndarray  # int8[T]: -1 special token, 0 question, 1 context
    word_ids: np.ndarray  # int32[T]: word index within its sequence, -1 for special tokens
    cls_mask: np.ndarray | None = None  # bool[T]: tokens with the CLS id; None: position 0

    def __post_init__(self) -> None:
        n = len(self.sequence_ids)
        shapes = {
            "start_logits": (np.shape(self.start_logits), (n,)),
            "end_logits": (np.shape(self.end_logits), (n,)),
            "offsets": (np.shape(self.offsets), (n, 2)),
            "word_ids": (np.shape(self.word_ids), (n,)),
        }
        if self.cls_mask is not None:
            shapes["cls_mask"] = (np.shape(self.cls_mask), (n,))
        wrong = [f"{name} {got} (expected {want})" for name, (got, want) in shapes.items() if got != want]
        if n == 0 or wrong:
            raise ValueError(f"QaWindow with {n} sequence_ids: " + (", ".join(wrong) or "no tokens"))


def window_params(
    max_seq_len: int | None = None,
    doc_stride: int | None = None,
    max_question_len: int = 64,
    model_max_length: int | None = None,
) -> tuple[int, int]:
    """(max_length, stride) for the tokenizer, as HF's pipeline derives them in `preprocess`.

    max_seq_len defaults to min(model_max_length, 384) and doc_stride to min(max_seq_len // 2, 128);
    doc_stride is the tokenizer's `stride` (overlap in context tokens between windows).
    `max_question_len` is checked but has no effect: HF uses it only with slow (Python) tokenizers;
    with fast ones a question that leaves no room for context is an error of the tokenizer.
    """
    for name, value in (("max_seq_len", max_seq_len), ("doc_stride", doc_stride), ("model_max_length", model_max_length)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name}={value!r}: expected a non-negative integer or None")
    if not isinstance(max_question_len, int) or max_question_len < 1:
        raise ValueError(f"max_question_len={max_question_len!r}: expected a positive integer")
    if max_seq_len is None:
        limit = model_max_length if model_max_length is not None else _DEFAULT_MAX_SEQ_LEN
        max_seq_len = min(limit, _DEFAULT_MAX_SEQ_LEN)
    if doc_stride is None:
        doc_stride = min(max_seq_len // 2, _DEFAULT_MAX_DOC_STRIDE)
    if doc_stride > max_seq_len:
        raise ValueError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
    return max_seq_len, doc_stride


def decode_answers(
    context: str,
    windows: Sequence[QaWindow],
    top_k: int = 1,
    max_answer_len: int = 15,
    handle_impossible_answer: bool = False,
    align_to_words: bool = True,
) -> list[dict]:
    """Answers for one context: dicts with answer (None = no answer), score, start, end; best first."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r}: expected an integer >= 1")
    if not isinstance(max_answer_len, int) or max_answer_len < 1:
        raise ValueError(f"max_answer_len={max_answer_len!r}: expected an integer >= 1")
    if not windows:
        raise ValueError("decode_answers needs at least one window")
    # Some candidates collapse onto the same words when aligned, so HF looks further down the list.
    per_window = top_k * 2 + 10 if align_to_words else top_k

    null_score = _NO_NULL_SCORE
    answers: list[dict] = []
    by_text: dict[str, dict] = {}  # lower-cased answer text -> the first answer with that text
    for window in windows:
        start, end, desired, null_score = _probabilities(window, handle_impossible_answer, null_score)
        starts, ends, scores = _best_spans(start, end, per_window, max_answer_len, desired)
        for s, e, score in zip(starts.tolist(), ends.tolist(), scores.tolist()):
            first, last = _char_span(window, s, e, align_to_words)
            text = context[first:last]
            seen = by_text.get(text.lower())
            if seen is not None:
                seen["score"] += score
            else:
                answer = {"answer": text, "score": score, "start": first, "end": last}
                answers.append(answer)
                by_text[text.lower()] = answer
    if handle_impossible_answer:
        answers.append({"answer": None, "score": null_score, "start": 0, "end": 0})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


def _probabilities(
    window: QaWindow, handle_impossible_answer: bool, null_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """HF's select_starts_ends up to decode_spans: (1, T) start/end probabilities, desired mask, null score."""
    sequence_ids = np.asarray(window.sequence_ids)
    if window.cls_mask is None:
        cls = np.zeros(len(sequence_ids), dtype=bool)
        cls[0] = True
    else:
        cls = np.asarray(window.cls_mask, dtype=bool)
    desired = ((sequence_ids == 1) | cls)[None].astype(np.int64)  # (1, T), HF's undesired_tokens
    masked = desired == 0
    # A Python float keeps float32 logits float32 (NEP 50), as in HF where the logits are torch float32.
    start = np.where(masked, -10000.0, np.asarray(window.start_logits, dtype=np.float32)[None])
    end = np.where(masked, -10000.0, np.asarray(window.end_logits, dtype=np.float32)[None])
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        null_score = min(null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    return start, end, desired, null_score


def _best_spans(
    start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int, desired: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HF's decode_spans, same numpy calls so that ties (zero scores) break the same way."""
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))  # (1, T, T)
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) <= topk:  # HF has `<` and then fails in argpartition when equal
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # HF tests membership in the (row, column) tuple of nonzero(): row indices are all 0, so
    # position 0 passes whenever anything does.
    allowed = desired.nonzero()
    keep = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


def _char_span(window: QaWindow, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """HF's get_indices: token span -> character span of the context."""
    offsets = window.offsets
    if align_to_words:
        start_word = _word_chars(window, int(window.word_ids[s]))
        end_word = _word_chars(window, int(window.word_ids[e]))
        if start_word is not None and end_word is not None:
            return start_word[0], end_word[1]
    return int(offsets[s][0]), int(offsets[e][1])


def _word_chars(window: QaWindow, word: int) -> tuple[int, int] | None:
    """`Encoding.word_to_chars(word, sequence_index=1)` within this window; None where HF raises."""
    if word < 0:
        return None
    context = np.flatnonzero(np.asarray(window.sequence_ids) == 1)
    words = np.asarray(window.word_ids)[context]
    # tokenizers scans the sequence while word ids are <= word (no word id sorts lowest).
    past = np.flatnonzero(words > word)
    if len(past):
        context, words = context[: past[0]], words[: past[0]]
    tokens = context[words == word]
    if len(tokens) == 0:
        return None
    return int(window.offsets[tokens[0]][0]), int(window.offsets[tokens[-1]][1])
