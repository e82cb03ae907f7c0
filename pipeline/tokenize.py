"""Tokenize each document into windows of at most `max_length` tokens (with `stride` overlap), unpadded.

The windows stay nested in their document's row (`_windows`), so every later stage is a map.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from pipeline.arrow_nested import nest, ragged
from pipeline.stage import (
    ERROR,
    STAT_PREFIX,
    WINDOWS,
    Stage,
    Timer,
    add_seconds,
    ok_mask,
    set_column,
    with_errors,
)

WINDOW_TYPE = pa.struct([
    pa.field("ids", pa.list_(pa.int32())),
    pa.field("type_ids", pa.list_(pa.int8())),
    pa.field("offsets", pa.list_(pa.list_(pa.int32(), 2))),  # code point (start, end) per token
    pa.field("sequence_ids", pa.list_(pa.int8())),            # -1 special token, 0 first text, 1 second text
    pa.field("word_ids", pa.list_(pa.int32())),               # -1 special token
])
WINDOW_FIELDS = ("ids", "type_ids", "offsets", "sequence_ids", "word_ids")


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    model: str                      # folder holding the tokenizer files
    text_column: str = "text"
    pair_column: str | None = None  # second text (text pairs, QA contexts)
    max_length: int = 512
    stride: int = 0
    lowercase: bool = False         # a Lowercase normalizer first (sentence_bert_config.json's do_lower_case)
    prefix: str = ""                # put before every text (an embedding model's prompt)


class Tokenize(Stage):
    name = "tokenize"
    adds = (WINDOWS, f"{STAT_PREFIX}windows", f"{STAT_PREFIX}tokens")

    def __init__(self, config: TokenizeConfig):
        from models import load_tokenizer  # imported here: the stage is built inside the worker

        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)
        from models.remote import local_model_folder

        self.tokenizer = load_tokenizer(local_model_folder(config.model), lowercase=config.lowercase)

    @classmethod
    def declare(cls, config: TokenizeConfig):
        pair = (config.pair_column,) if config.pair_column else ()
        return (config.text_column, ERROR, *pair), cls.adds, ()

    def __call__(self, table: pa.Table) -> pa.Table:
        with Timer() as timer:
            ok = ok_mask(table).to_numpy(zero_copy_only=False)
            positions = np.flatnonzero(ok)
            texts = table.column(self.config.text_column).take(positions).to_pylist()
            pairs = None
            if self.config.pair_column:
                pairs = table.column(self.config.pair_column).take(positions).to_pylist()
            if self.config.prefix:
                texts = [self.config.prefix + t if isinstance(t, str) else t for t in texts]
            per_doc, failures = self._encode(texts, pairs)
            docs: list[list] = [[] for _ in range(table.num_rows)]
            for position, windows in zip(positions, per_doc):
                docs[position] = windows
            valid = ok.copy()
            valid[[int(positions[i]) for i in failures]] = False
            table = with_errors(table, {int(positions[i]): (self.name, type(e).__name__, str(e))
                                        for i, e in failures.items()})
            table = self._append(table, docs, valid)
        return add_seconds(table, self.name, timer.seconds)

    def _encode(self, texts: list[str], pairs: list[str] | None) -> tuple[list[list], dict[int, Exception]]:
        """Encode the batch; if that fails, encode one by one so only the bad documents fail.

        An empty second text is dropped, as HF's tokenizer drops it (`tokenizer(text, "")` encodes the
        text alone, and so do the pipelines, which call it one input at a time).
        """
        if pairs is not None and "" in pairs:
            alone = [i for i, pair in enumerate(pairs) if pair == ""]
            paired = [i for i, pair in enumerate(pairs) if pair != ""]
            per_doc: list[list] = [[] for _ in texts]
            failures: dict[int, Exception] = {}
            for group, group_pairs in ((alone, None), (paired, [pairs[i] for i in paired])):
                docs, failed = self._encode([texts[i] for i in group], group_pairs)
                for i, windows in zip(group, docs):
                    per_doc[i] = windows
                failures.update({group[j]: error for j, error in failed.items()})
            return per_doc, failures
        kwargs = dict(max_length=self.config.max_length, stride=self.config.stride)
        try:
            return self.tokenizer.encode_windows(texts, pairs=pairs, **kwargs), {}
        except Exception:  # noqa: BLE001 - narrowed below, per document
            pass
        per_doc, failures = [], {}
        for i, text in enumerate(texts):
            try:
                pair = None if pairs is None else [pairs[i]]
                per_doc.append(self.tokenizer.encode_windows([text], pairs=pair, **kwargs)[0])
            except Exception as error:  # noqa: BLE001 - becomes an error row with the reason
                per_doc.append([])
                failures[i] = error
        return per_doc, failures

    def _append(self, table: pa.Table, docs: list[list], valid: np.ndarray) -> pa.Table:
        windows = [w for doc in docs for w in doc]
        fields = [
            ragged([w.ids for w in windows], pa.int32()),
            ragged([w.type_ids for w in windows], pa.int8()),
            ragged([np.asarray(w.offsets).reshape(-1, 2) for w in windows], pa.list_(pa.int32(), 2)),
            ragged([w.sequence_ids for w in windows], pa.int8()),
            ragged([w.word_ids for w in windows], pa.int32()),
        ]
        flat = pa.StructArray.from_arrays(fields, fields=list(WINDOW_TYPE))
        per_doc = nest(flat, [len(doc) for doc in docs], valid)
        n_tokens = [sum(len(w.ids) for w in doc) for doc in docs]
        table = set_column(table, WINDOWS, per_doc)
        table = set_column(table, f"{STAT_PREFIX}windows", pa.array([len(d) for d in docs], pa.int32()))
        return set_column(table, f"{STAT_PREFIX}tokens", pa.array(n_tokens, pa.int64()))
