"""decode_entities against transformers' token-classification pipeline (4.57).

The windows are the HF fast tokenizer's own encodings and the logits the HF model's, so any
difference comes from the decoding alone. The classifier weights are scaled up so that random
models predict real B-/I- groups rather than a sea of `O`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers.pipelines.token_classification import AggregationStrategy

from pipeline.ner_decode import AGGREGATIONS, HEURISTIC_WARNING, NerWindow, decode_entities
from tests.checkpoints import make_checkpoint

pytestmark = pytest.mark.filterwarnings(f"ignore:{HEURISTIC_WARNING}")

SHORT_TEXTS = [
    "John Smith works at Acme Corp in Paris.",
    "Mary Jones visited the Bank of London yesterday!  Who lives in New York?",
    "Café naïve résumé über Straße, said Jöhn O'Neil-Smith (Zürich).",
    "東京 and 北京 are cities in 日本 and 中国. 😀 emoji 😀😀 text",
    "Hello   world,\tmultiple   spaces and\nnewlines; Ωmega жук xyzzyplughfoo.",
    "  leading and trailing spaces  ",
    "",
]
LONG_TEXTS = [
    " ".join(SHORT_TEXTS[:5]),
    "The company was in Berlin. " * 6 + "John Smith met Mary Jones in 東京 😀 yesterday, said the old Bank of London.",
]
MAX_LENGTH, STRIDE = 32, 8
IGNORE_SETS = [("O",), (), ("O", "ORG", "B-PER", "I-LOC")]


@dataclass
class Family:
    name: str
    model: torch.nn.Module
    tokenizer: transformers.PreTrainedTokenizerFast
    short_pipe: transformers.Pipeline  # model_max_length 512: every short text is one window
    long_pipe: transformers.Pipeline  # model_max_length 32: long texts span several windows

    def windows(self, text: str, max_length: int, stride: int = 0) -> list[NerWindow]:
        enc = self.tokenizer(
            text,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_overflowing_tokens=True,
            truncation=True,
            max_length=max_length,
            stride=stride,
        )
        windows = []
        for ids, offsets, special in zip(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]):
            with torch.no_grad():
                logits = self.model(input_ids=torch.tensor([ids])).logits[0].numpy()
            windows.append(
                NerWindow(
                    ids=np.array(ids, dtype=np.int32),
                    offsets=np.array(offsets, dtype=np.int32).reshape(-1, 2),
                    special_mask=np.array(special, dtype=bool),
                    logits=logits,
                )
            )
        return windows

    def decode(self, text: str, windows: list[NerWindow], aggregation: str, ignore_labels) -> list[dict]:
        backend = self.tokenizer._tokenizer.model
        return decode_entities(
            text,
            windows,
            self.model.config.id2label,
            aggregation=aggregation,
            ignore_labels=ignore_labels,
            id_to_token=self.tokenizer.convert_ids_to_tokens,
            subword_prefix=getattr(backend, "continuing_subword_prefix", None),
            unk_id=self.tokenizer.unk_token_id,
        )


# "roberta-untrimmed": offsets that keep the leading space (trim_offsets=False), which is what
# the second half of HF's no-prefix heuristic (`" " not in text[start - 1 : start + 1]`) is for.
@pytest.fixture(scope="module", params=["bert", "roberta", "roberta-untrimmed"])
def family(request, tmp_path_factory) -> Family:
    folder = tmp_path_factory.mktemp(request.param)
    _, model = make_checkpoint(folder, request.param.split("-")[0], "ner")
    with torch.no_grad():
        model.classifier.weight.mul_(20)  # confident, varied labels instead of near-uniform ones
    options = {"trim_offsets": False} if request.param.endswith("untrimmed") else {}
    short_tok = transformers.AutoTokenizer.from_pretrained(folder, **options)
    long_tok = transformers.AutoTokenizer.from_pretrained(folder, model_max_length=MAX_LENGTH, **options)
    return Family(
        name=request.param,
        model=model,
        tokenizer=short_tok,
        short_pipe=transformers.pipeline("token-classification", model=model, tokenizer=short_tok),
        long_pipe=transformers.pipeline("token-classification", model=model, tokenizer=long_tok),
    )


def assert_same_entities(ours: list[dict], theirs: list[dict], text: str, aggregation: str) -> None:
    key = "entity" if aggregation == "none" else "entity_group"
    assert [(e["label"], e["start"], e["end"]) for e in ours] == [(t[key], t["start"], t["end"]) for t in theirs]
    np.testing.assert_allclose([e["score"] for e in ours], [float(t["score"]) for t in theirs], atol=1e-4, rtol=0)
    for entity in ours:
        assert entity["text"] == text[entity["start"] : entity["end"]]
        assert type(entity["score"]) is float and type(entity["start"]) is int and type(entity["end"]) is int


@pytest.mark.parametrize("ignore_labels", IGNORE_SETS, ids=lambda s: "+".join(s) or "nothing")
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_one_window_matches_hf_pipeline(family, aggregation, ignore_labels):
    for text in SHORT_TEXTS:
        windows = family.windows(text, max_length=512)
        assert len(windows) == 1
        theirs = family.short_pipe(text, aggregation_strategy=aggregation, ignore_labels=list(ignore_labels))
        ours = family.decode(text, windows, aggregation, ignore_labels)
        assert_same_entities(ours, theirs, text, aggregation)


@pytest.mark.parametrize("ignore_labels", IGNORE_SETS, ids=lambda s: "+".join(s) or "nothing")
@pytest.mark.parametrize("aggregation", ["simple", "first", "average", "max"])
def test_strided_windows_match_hf_pipeline(family, aggregation, ignore_labels):
    for text in LONG_TEXTS:
        windows = family.windows(text, max_length=MAX_LENGTH, stride=STRIDE)
        assert len(windows) >= 3
        theirs = family.long_pipe(
            text, aggregation_strategy=aggregation, ignore_labels=list(ignore_labels), stride=STRIDE
        )
        ours = family.decode(text, windows, aggregation, ignore_labels)
        assert_same_entities(ours, theirs, text, aggregation)


@pytest.mark.parametrize("ignore_labels", IGNORE_SETS, ids=lambda s: "+".join(s) or "nothing")
def test_strided_windows_without_aggregation_match_hf_postprocess(family, ignore_labels):
    # The pipeline refuses stride with aggregation "none"; its own chunking and postprocess
    # steps, called directly, are the reference for what several windows give under "none".
    pipe = family.long_pipe
    tokenizer_params = {"return_overflowing_tokens": True, "padding": True, "stride": STRIDE}
    for text in LONG_TEXTS:
        chunks = pipe.preprocess(text, is_split_into_words=False, tokenizer_params=tokenizer_params)
        outputs = [pipe.forward(chunk) for chunk in chunks]
        theirs = pipe.postprocess(outputs, AggregationStrategy.NONE, ignore_labels=list(ignore_labels))
        ours = family.decode(text, family.windows(text, MAX_LENGTH, STRIDE), "none", ignore_labels)
        assert_same_entities(ours, theirs, text, "none")


def test_random_model_forms_real_groups(family):
    """Guards the parity tests against comparing trivial outputs."""
    text = LONG_TEXTS[0]
    windows = family.windows(text, max_length=128)[:1]  # the tiny models have 128 positions
    tokens = family.decode(text, windows, "none", ())
    groups = family.decode(text, windows, "simple", ())
    words = family.decode(text, windows, "first", ())
    entities = family.decode(text, windows, "simple", ("O",))
    assert len(groups) < len(tokens) and len(words) < len(tokens)
    assert sum(e["end"] - e["start"] > 6 for e in entities) >= 2
    assert {e["label"] for e in entities} >= {"PER", "ORG", "LOC"}


@pytest.mark.skipif(
    not (Path(__file__).parents[1] / "models" / "tokenizer.py").exists(), reason="models/tokenizer.py not written yet"
)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_our_tokenizer_windows_match_hf_pipeline(family, aggregation, tmp_path):
    from models.tokenizer import load_tokenizer

    folder = tmp_path / "tokenizer"
    family.tokenizer.save_pretrained(folder)
    tok = load_tokenizer(folder)
    # HF refuses stride under "none": that case runs one window per (short) text.
    strided = aggregation != "none"
    stride, max_length = (STRIDE, MAX_LENGTH) if strided else (0, 128)
    pipe = family.long_pipe if strided else family.short_pipe
    for text in (LONG_TEXTS if strided else []) + SHORT_TEXTS:
        (our_windows,) = tok.encode_windows([text], max_length=max_length, stride=stride)
        windows = []
        for window in our_windows:
            with torch.no_grad():
                ids = torch.tensor(np.asarray(window.ids, dtype=np.int64))[None]
                logits = family.model(input_ids=ids).logits[0].numpy()
            windows.append(NerWindow(window.ids, window.offsets, window.sequence_ids == -1, logits))
        ours = decode_entities(
            text,
            windows,
            family.model.config.id2label,
            aggregation=aggregation,
            id_to_token=tok.id_to_token,
            subword_prefix=tok.continuing_subword_prefix,
            unk_id=getattr(tok, "unk_id", family.tokenizer.unk_token_id),
        )
        kwargs = {"stride": stride} if stride else {}
        theirs = pipe(text, aggregation_strategy=aggregation, **kwargs)
        assert_same_entities(ours, theirs, text, aggregation)


def test_overlap_resolution_matches_hf_on_ties():
    # Windows 1 and 2 both see "abcd" with the same score: HF keeps the first (stable sort, strict >).
    # The other labels' logits underflow in exp, so both scores are exactly 1.0.
    def window(label: int, runner_up_logit: float) -> NerWindow:
        logits = np.full((3, 4), -200.0, dtype=np.float32)
        logits[1, label] = 0.0
        logits[1, 0] = runner_up_logit
        return NerWindow(
            ids=np.array([0, 9, 2], dtype=np.int32),
            offsets=np.array([[0, 0], [0, 4], [0, 0]], dtype=np.int32),
            special_mask=np.array([True, False, True]),
            logits=logits,
        )

    labels = ["O", "B-PER", "B-LOC", "B-ORG"]
    windows = [window(1, -200.0), window(2, -200.0), window(3, -1.0)]
    ours = decode_entities("abcd", windows, labels, aggregation="simple")
    theirs = transformers.TokenClassificationPipeline.aggregate_overlapping_entities(
        None,
        [{"entity_group": "PER", "score": 1.0, "start": 0, "end": 4},
         {"entity_group": "LOC", "score": 1.0, "start": 0, "end": 4},
         {"entity_group": "ORG", "score": 0.7, "start": 0, "end": 4}],
    )
    assert [e["label"] for e in ours] == [t["entity_group"] for t in theirs] == ["PER"]
    assert ours[0]["score"] == 1.0


def test_word_aggregation_without_subword_prefix_warns_like_hf():
    window = NerWindow(
        ids=np.array([0, 5, 6, 2], dtype=np.int32),
        offsets=np.array([[0, 0], [0, 2], [2, 4], [0, 0]], dtype=np.int32),
        special_mask=np.array([True, False, False, True]),
        logits=np.array([[0, 0], [0, 3], [0, 1], [0, 0]], dtype=np.float32),
    )
    with pytest.warns(UserWarning, match=HEURISTIC_WARNING):
        (entity,) = decode_entities("abcd", [window], {0: "O", 1: "B-PER"}, aggregation="first")
    assert (entity["label"], entity["text"], entity["start"], entity["end"]) == ("PER", "abcd", 0, 4)


def test_rejects_bad_arguments():
    window = NerWindow(
        ids=np.array([7], dtype=np.int32),
        offsets=np.array([[0, 1]], dtype=np.int32),
        special_mask=np.array([False]),
        logits=np.zeros((1, 3), dtype=np.float32),
    )
    with pytest.raises(ValueError, match="none, simple, first, average, max"):
        decode_entities("a", [window], ["O", "B-X", "I-X"], aggregation="longest")
    with pytest.raises(ValueError, match="2 labels but id2label has 3"):
        decode_entities("a", [NerWindow(window.ids, window.offsets, window.special_mask, np.zeros((1, 2)))],
                        ["O", "B-X", "I-X"])
    with pytest.raises(ValueError, match="needs id_to_token"):
        decode_entities("a", [window], ["O", "B-X", "I-X"], aggregation="max", subword_prefix="##")
    with pytest.raises(ValueError, match="missing"):
        decode_entities("a", [window], {0: "O", 2: "B-X", 3: "I-X"})
    with pytest.raises(ValueError, match="shapes disagree"):
        NerWindow(window.ids, window.offsets, window.special_mask, np.zeros((2, 3)))
    assert decode_entities("", [], ["O"]) == []
