"""Per-window token logits of one document -> entities, as the HF token-classification pipeline.

Mirrors `TokenClassificationPipeline.postprocess` of transformers 4.57 step by step, so that
`decode_entities` returns what `pipeline("token-classification", aggregation_strategy=...,
stride=...)` returns, key names aside:

1. per window: softmax over the labels, special tokens dropped;
2. `first` / `average` / `max`: tokens fused into words, one label per word;
3. `simple` and the word strategies: adjacent tokens/words with the same tag form a group
   unless the later one is a `B-` tag; the group score is the mean of its members' scores;
4. labels in `ignore_labels` dropped (the raw tag for `none`, the group label otherwise);
5. more than one window: entities sorted by start, overlapping ones reduced to the longest
   (equal length: the higher score).

HF refuses `stride` with `none`; here several windows under `none` go through step 5 as well,
which removes the tokens repeated in the overlap of two windows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

AGGREGATIONS = ("none", "simple", "first", "average", "max")
_WORD_AGGREGATIONS = ("first", "average", "max")
# HF's wording, so that users who filter the HF warning filter ours too.
HEURISTIC_WARNING = "Tokenizer does not support real words, using fallback heuristic"


@dataclass(frozen=True)
class NerWindow:
    """One model window of a document; arrays have one entry per token, special tokens included."""

    ids: np.ndarray  # int32[T]
    offsets: np.ndarray  # int32[T, 2]: code point offsets into the document, end exclusive
    special_mask: np.ndarray  # bool[T]: True for [CLS]/[SEP]/<s>/</s>/padding
    logits: np.ndarray  # float32[T, L]

    def __post_init__(self) -> None:
        n = len(self.ids)
        shapes_ok = (
            np.shape(self.offsets) == (n, 2)
            and np.shape(self.special_mask) == (n,)
            and np.ndim(self.logits) == 2
            and np.shape(self.logits)[0] == n
        )
        if not shapes_ok:
            raise ValueError(
                f"NerWindow shapes disagree: ids {np.shape(self.ids)}, offsets {np.shape(self.offsets)} "
                f"(expected ({n}, 2)), special_mask {np.shape(self.special_mask)} (expected ({n},)), "
                f"logits {np.shape(self.logits)} (expected ({n}, num_labels))"
            )


@dataclass(frozen=True)
class _Labels:
    """Per label id: what HF derives from the label name, as arrays indexable by label ids."""

    names: tuple[str, ...]
    tag_ids: np.ndarray  # equal ids <=> equal tag as HF's get_tag sees it ("B-PER", "I-PER", "PER")
    begins: np.ndarray  # name starts with "B-": never continues the previous group
    group_names: tuple[str, ...]  # HF names a group after its first member: name.split("-", 1)[-1]

    @classmethod
    def from_id2label(cls, id2label: Mapping[int, str] | Sequence[str]) -> _Labels:
        if isinstance(id2label, Mapping):
            missing = [i for i in range(len(id2label)) if i not in id2label]
            if missing:
                raise ValueError(f"id2label keys must be 0..{len(id2label) - 1}; missing {missing}")
            names = tuple(id2label[i] for i in range(len(id2label)))
        else:
            names = tuple(id2label)
        tags = [name[2:] if name.startswith(("B-", "I-")) else name for name in names]
        tag_index = {tag: i for i, tag in enumerate(dict.fromkeys(tags))}
        return cls(
            names=names,
            tag_ids=np.array([tag_index[t] for t in tags], dtype=np.int64),
            begins=np.array([name.startswith("B-") for name in names], dtype=bool),
            group_names=tuple(name.split("-", 1)[-1] for name in names),
        )


@dataclass(frozen=True)
class _Subwords:
    """How to tell a word's continuation tokens, as HF's gather_pre_entities does."""

    text: str
    id_to_token: Callable[[int], str] | None
    prefix: str | None
    unk_id: int | None

    def mask(self, ids: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        if self.prefix:
            # Word-aware tokenizer: a token is a continuation when its string ("##ing") is not
            # as long as the text it covers ("ing").
            token_lengths = np.fromiter((len(self.id_to_token(i)) for i in ids.tolist()), np.int64, len(ids))
            size = len(self.text)
            covered = np.maximum(np.minimum(ends, size) - np.minimum(starts, size), 0)
            is_subword = token_lengths != covered
        else:
            # HF's fallback for tokenizers without a subword prefix (byte-level BPE): a token
            # continues a word unless a plain space touches its start.
            text = self.text
            is_subword = np.array(
                [s > 0 and " " not in text[s - 1 : s + 1] for s in starts.tolist()], dtype=bool
            )
        if self.unk_id is not None:
            is_subword &= ids != self.unk_id
        return is_subword


def decode_entities(
    text: str,
    windows: Sequence[NerWindow],
    id2label: Mapping[int, str] | Sequence[str],
    aggregation: str = "simple",
    ignore_labels: Iterable[str] = ("O",),
    id_to_token: Callable[[int], str] | None = None,
    subword_prefix: str | None = None,
    unk_id: int | None = None,
) -> list[dict]:
    """Entities of one document: dicts with label, text (= text[start:end]), start, end, score.

    `id_to_token`, `subword_prefix` and `unk_id` describe the tokenizer; they matter only for
    `first` / `average` / `max`, which need `id_to_token` when `subword_prefix` is set.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")
    if aggregation in _WORD_AGGREGATIONS and subword_prefix and id_to_token is None:
        raise ValueError(f"aggregation={aggregation!r} with subword_prefix={subword_prefix!r} needs id_to_token")
    if aggregation in _WORD_AGGREGATIONS and not subword_prefix:
        warnings.warn(HEURISTIC_WARNING, UserWarning, stacklevel=2)
    labels = _Labels.from_id2label(id2label)
    ignored = {ignore_labels} if isinstance(ignore_labels, str) else set(ignore_labels)
    subwords = _Subwords(text, id_to_token, subword_prefix, unk_id)

    entities: list[tuple[str, float, int, int]] = []
    for window in windows:
        if window.logits.shape[1] != len(labels.names):
            raise ValueError(
                f"logits have {window.logits.shape[1]} labels but id2label has {len(labels.names)}"
            )
        entities.extend(_window_entities(window, labels, aggregation, ignored, subwords))
    if len(windows) > 1:
        entities = _drop_overlapping(entities)
    return [
        {"label": label, "text": text[start:end], "start": start, "end": end, "score": score}
        for label, score, start, end in entities
    ]


def _softmax(logits: np.ndarray) -> np.ndarray:
    # Same float32 arithmetic as the pipeline's postprocess.
    logits = logits.astype(np.float32, copy=False)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _window_entities(
    window: NerWindow, labels: _Labels, aggregation: str, ignored: set[str], subwords: _Subwords
) -> list[tuple[str, float, int, int]]:
    keep = ~np.asarray(window.special_mask, dtype=bool)
    if not keep.any():
        return []
    scores = _softmax(np.asarray(window.logits)[keep])  # (N, L)
    offsets = np.asarray(window.offsets, dtype=np.int64)[keep]
    starts, ends = offsets[:, 0], offsets[:, 1]

    if aggregation in _WORD_AGGREGATIONS:
        ids = np.asarray(window.ids, dtype=np.int64)[keep]
        scores, starts, ends = _fuse_words(scores, subwords.mask(ids, starts, ends), starts, ends, aggregation)
    label_ids = scores.argmax(axis=1)
    best = scores[np.arange(len(label_ids)), label_ids]

    if aggregation == "none":
        names = labels.names
        label_ids, scores_out = label_ids, best
    else:
        names = labels.group_names
        label_ids, scores_out, starts, ends = _group(label_ids, best, starts, ends, labels)
    dropped = np.array([name in ignored for name in names], dtype=bool)
    kept = np.flatnonzero(~dropped[label_ids])
    return [
        (names[label], score, start, end)
        for label, score, start, end in zip(
            label_ids[kept].tolist(), scores_out[kept].tolist(), starts[kept].tolist(), ends[kept].tolist()
        )
    ]


def _fuse_words(
    scores: np.ndarray, is_subword: np.ndarray, starts: np.ndarray, ends: np.ndarray, aggregation: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One score row per word (HF aggregate_word); a window's first token always opens a word."""
    opens = ~is_subword
    opens[0] = True
    firsts = np.flatnonzero(opens)
    lasts = np.append(firsts[1:], len(opens)) - 1
    if aggregation == "first":
        word_scores = scores[firsts]
    elif aggregation == "max":
        # The word takes the whole score row of its most confident token (the first one on ties).
        token_best = scores.max(axis=1)
        word_of_token = np.cumsum(opens) - 1
        word_best = np.maximum.reduceat(token_best, firsts)
        candidates = np.flatnonzero(token_best == word_best[word_of_token])
        _, first_candidate = np.unique(word_of_token[candidates], return_index=True)
        word_scores = scores[candidates[first_candidate]]
    else:  # average
        counts = (lasts - firsts + 1).astype(np.float32)
        word_scores = np.add.reduceat(scores, firsts, axis=0) / counts[:, None]
    return word_scores, starts[firsts], ends[lasts]


def _group(
    label_ids: np.ndarray, scores: np.ndarray, starts: np.ndarray, ends: np.ndarray, labels: _Labels
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HF group_entities: an item joins the previous group on the same tag unless it is a B- tag."""
    tags = labels.tag_ids[label_ids]
    joins = np.zeros(len(label_ids), dtype=bool)
    joins[1:] = (tags[1:] == tags[:-1]) & ~labels.begins[label_ids[1:]]
    firsts = np.flatnonzero(~joins)
    lasts = np.append(firsts[1:], len(joins)) - 1
    group_scores = np.add.reduceat(scores.astype(np.float64), firsts) / (lasts - firsts + 1)
    return label_ids[firsts], group_scores, starts[firsts], ends[lasts]


def _drop_overlapping(entities: list[tuple[str, float, int, int]]) -> list[tuple[str, float, int, int]]:
    """HF aggregate_overlapping_entities, for entities gathered from overlapping windows."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda entity: entity[2])
    kept = []
    previous = entities[0]
    for entity in entities:
        _, score, start, end = entity
        _, previous_score, previous_start, previous_end = previous
        if previous_start <= start < previous_end:
            length, previous_length = end - start, previous_end - previous_start
            if length > previous_length or (length == previous_length and score > previous_score):
                previous = entity
        else:
            kept.append(previous)
            previous = entity
    kept.append(previous)
    return kept
