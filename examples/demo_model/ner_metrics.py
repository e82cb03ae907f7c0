"""Token-level and entity-level (exact span, seqeval/conlleval style) precision, recall and F1."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

Entity = tuple[int, int, str]  # (first token, last token + 1, type)


def entities(tags: Sequence[str]) -> set[Entity]:
    """Spans of a BIO tag sequence, as conlleval reads them: an entity starts at B-X, or at I-X
    after anything but X; it ends where the next tag is not I-X."""
    found: set[Entity] = set()
    start, kind = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, tag_kind = tag.partition("-")
        continues = prefix == "I" and tag_kind == kind
        if start is not None and not continues:
            found.add((start, i, kind))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, tag_kind
    return found


def _scores(tp: int, predicted: int, gold: int) -> dict[str, float]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": gold}


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """Micro-averaged exact-span scores under "all", and per entity type."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sequences but {len(predicted)} predicted ones")
    tp, n_pred, n_gold = Counter(), Counter(), Counter()
    for gold_tags, pred_tags in zip(gold, predicted):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"sequence lengths differ: gold {len(gold_tags)}, predicted {len(pred_tags)}")
        g, p = entities(gold_tags), entities(pred_tags)
        for kind_counter, spans in ((n_gold, g), (n_pred, p), (tp, g & p)):
            for _, _, kind in spans:
                kind_counter[kind] += 1
                kind_counter["all"] += 1
    return {kind: _scores(tp[kind], n_pred[kind], n_gold[kind]) for kind in sorted(n_gold | n_pred)}


def token_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], outside: str = "O") -> dict[str, float]:
    """Micro scores over tokens whose tag is not `outside`: a hit needs the exact tag (B-/I- included)."""
    tp = n_pred = n_gold = 0
    for gold_tags, pred_tags in zip(gold, predicted, strict=True):
        for g, p in zip(gold_tags, pred_tags, strict=True):
            n_gold += g != outside
            n_pred += p != outside
            tp += g == p != outside
    return _scores(tp, n_pred, n_gold)
