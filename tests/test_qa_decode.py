"""decode_answers against transformers' question-answering pipeline (4.57, the test extra's pin).

The windows are the HF fast tokenizer's own encodings, called as the pipeline's `preprocess`
calls it, and the logits the HF model's on each window, so any difference comes from the decoding
alone. The QA head's weights are scaled up so that random models spread their probabilities, and
the parity test asserts that the answers it compares are no near-ties (`_assert_clear_order`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import transformers

from pipeline.qa_decode import QaWindow, decode_answers, window_params
from tests.checkpoints import make_checkpoint

QUESTION = "Where does John Smith work?"
SHORT_CONTEXT = "John Smith works at Acme Corp in Paris."
LONG_CONTEXT = (
    "John Smith works at Acme Corp in Paris. Mary Jones visited the Bank of London yesterday. "
    "Hello world, this is a small document about the big city and the old river. "
    "Who lives in New York? The company was in Berlin. PARIS is a city, and paris is old. "
    "Café naïve résumé über Straße: 東京 and 北京 are cities 😀."
)
CASES = [  # (question, context, max_seq_len, doc_stride)
    (QUESTION, SHORT_CONTEXT, 128, None),
    (QUESTION, LONG_CONTEXT, 48, 16),
    ("Who visited the Bank of London?", LONG_CONTEXT, 40, 8),
    ("what city?", LONG_CONTEXT, 128, 32),
]
# Every pair of values of any two options occurs at least once (a covering array), in five calls.
OPTIONS = [
    dict(top_k=top_k, max_answer_len=max_answer_len, handle_impossible_answer=impossible, align_to_words=align)
    for top_k, max_answer_len, impossible, align in [
        (1, 15, False, True),  # the pipeline's defaults
        (1, 2, True, False),
        (3, 15, True, False),
        (3, 2, False, False),
        (3, 2, True, True),
    ]
]
HEAD_SCALE = 30.0


@dataclass
class Family:
    name: str
    model: torch.nn.Module
    tokenizer: transformers.PreTrainedTokenizerFast
    pipe: transformers.Pipeline

    def windows(self, question: str, context: str, max_length: int, stride: int) -> list[QaWindow]:
        """Encodings and logits exactly as QuestionAnsweringPipeline.preprocess / _forward make them."""
        enc = self.tokenizer(
            text=question,
            text_pair=context,
            padding="do_not_pad",
            truncation="only_second",
            max_length=max_length,
            stride=stride,
            return_token_type_ids=True,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        windows = []
        for index in range(len(enc["input_ids"])):
            inputs = {k: torch.tensor([enc[k][index]]) for k in self.tokenizer.model_input_names}
            with torch.no_grad():
                out = self.model(**inputs)
            encoding = enc[index]
            ids = np.array(encoding.ids)
            windows.append(
                QaWindow(
                    start_logits=out.start_logits[0].numpy(),
                    end_logits=out.end_logits[0].numpy(),
                    offsets=np.array(encoding.offsets, dtype=np.int32).reshape(-1, 2),
                    sequence_ids=np.array([-1 if s is None else s for s in encoding.sequence_ids], np.int8),
                    word_ids=np.array([-1 if w is None else w for w in encoding.word_ids], np.int32),
                    cls_mask=ids == self.tokenizer.cls_token_id,
                )
            )
        return windows

    def reference(self, question: str, context: str, max_seq_len: int | None, doc_stride: int | None, **options):
        given = dict(max_seq_len=max_seq_len, doc_stride=doc_stride)
        kwargs = {**{k: v for k, v in given.items() if v is not None}, **options}
        out = self.pipe(question=question, context=context, **kwargs)
        return [out] if isinstance(out, dict) else out


def _family(tmp_path_factory, name: str) -> Family:
    folder, model = make_checkpoint(tmp_path_factory.mktemp(f"qa-{name}"), name, "qa")
    with torch.no_grad():
        model.qa_outputs.weight.mul_(HEAD_SCALE)
        model.qa_outputs.bias.mul_(HEAD_SCALE)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    pipe = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    return Family(name, model, tokenizer, pipe)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def family(request, tmp_path_factory) -> Family:
    return _family(tmp_path_factory, request.param)


def _ours(answers: list[dict]) -> list[tuple]:
    # HF spells the null answer "" (at 0, 0); ours is None.
    return [("" if a["answer"] is None else a["answer"], a["start"], a["end"]) for a in answers]


def _assert_same(ours: list[dict], expected: list[dict]) -> None:
    assert _ours(ours) == [(a["answer"], a["start"], a["end"]) for a in expected]
    np.testing.assert_allclose([a["score"] for a in ours], [a["score"] for a in expected], rtol=0, atol=1e-4)


def _assert_clear_order(expected: list[dict]) -> None:
    """No near-ties among the answers with a score (zero-score fillers tie by nature).

    A logit error of 1e-6 moves a probability by about 1e-6 of itself; gaps of 1e-3 of the score
    keep the order meaningful for a model that reproduces the logits only to float precision.
    """
    for better, worse in zip(expected, expected[1:]):
        if worse["score"] > 0:
            assert better["score"] - worse["score"] > 1e-3 * better["score"], (better, worse)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seq{c[2]}-stride{c[3]}-{c[0][:12]}")
def test_equals_hf_pipeline(family: Family, case) -> None:
    question, context, max_seq_len, doc_stride = case
    max_length, stride = window_params(max_seq_len, doc_stride, model_max_length=family.tokenizer.model_max_length)
    windows = family.windows(question, context, max_length, stride)
    if max_seq_len < 64:
        assert len(windows) > 2, "the long cases must span several windows"
    for options in OPTIONS:
        expected = family.reference(question, context, max_seq_len, doc_stride, **options)
        _assert_clear_order(expected)
        _assert_same(decode_answers(context, windows, **options), expected)


def test_merges_answers_across_windows_and_case(family: Family) -> None:
    """The overlap of two windows yields the same span twice: HF sums the scores; so do we."""
    max_length, stride = window_params(48, 24)
    windows = family.windows(QUESTION, LONG_CONTEXT, max_length, stride)
    options = dict(top_k=5, max_answer_len=4)
    expected = family.reference(QUESTION, LONG_CONTEXT, 48, 24, **options)
    _assert_same(decode_answers(LONG_CONTEXT, windows, **options), expected)
    single = [decode_answers(LONG_CONTEXT, [w], top_k=50, max_answer_len=4) for w in windows]
    texts = [{a["answer"].lower() for a in answers} for answers in single]
    assert any(texts[i] & texts[i + 1] for i in range(len(texts) - 1)), "no answer found in two windows"


def test_cls_token_inside_the_question(family: Family) -> None:
    """HF keeps every CLS-id token out of the mask, also a literal "[CLS]" / "<s>" in the question."""
    question = f"Who is {family.tokenizer.cls_token} here?"
    max_length, stride = window_params(48, 16)
    windows = family.windows(question, LONG_CONTEXT, max_length, stride)
    assert all(w.cls_mask.sum() == 2 for w in windows)
    for options in OPTIONS:
        expected = family.reference(question, LONG_CONTEXT, 48, 16, **options)
        _assert_same(decode_answers(LONG_CONTEXT, windows, **options), expected)
    # without cls_mask only position 0 is kept: the softmax then differs
    position_zero = [dataclasses.replace(w, cls_mask=None) for w in windows]
    assert decode_answers(LONG_CONTEXT, position_zero)[0]["score"] != decode_answers(LONG_CONTEXT, windows)[0]["score"]


# Tiny contexts where the null answer wins, for one family or the other (found by search).
NULL_CASES = [("Who?", "yes"), (QUESTION, "corp corp"), (QUESTION, "Paris."), ("Who?", "in Berlin")]


def test_null_answer_and_fillers_match_hf(family: Family) -> None:
    """Tiny contexts: the null answer competes, and top_k exceeds the real spans (zero-score fillers)."""
    max_length, stride = window_params(None, None, model_max_length=family.tokenizer.model_max_length)
    assert (max_length, stride) == (384, 128)
    null_wins = 0
    for question, context in NULL_CASES:
        windows = family.windows(question, context, max_length, stride)
        for top_k, align in ((1, True), (8, False), (8, True)):
            options = dict(top_k=top_k, handle_impossible_answer=True, align_to_words=align)
            expected = family.reference(question, context, None, None, **options)
            ours = decode_answers(context, windows, **options)
            _assert_same(ours, expected)
            null_wins += ours[0]["answer"] is None
    assert null_wins, "no case where the null answer wins"


def test_windows_from_our_tokenizer(family: Family, tmp_path) -> None:
    """End to end on the decoding side: our tokenizer's windows, the HF model's logits."""
    from models.tokenizer import load_tokenizer

    family.tokenizer.save_pretrained(tmp_path)
    ours = load_tokenizer(tmp_path)
    max_length, stride = window_params(48, 16)
    windows = []
    for window in ours.encode_windows([QUESTION], pairs=[LONG_CONTEXT], max_length=max_length, stride=stride)[0]:
        inputs = {"input_ids": torch.from_numpy(window.ids[None].astype(np.int64))}
        if "token_type_ids" in family.tokenizer.model_input_names:
            inputs["token_type_ids"] = torch.from_numpy(window.type_ids[None].astype(np.int64))
        with torch.no_grad():
            out = family.model(**inputs)
        windows.append(
            QaWindow(
                out.start_logits[0].numpy(), out.end_logits[0].numpy(), window.offsets,
                window.sequence_ids, window.word_ids, cls_mask=window.ids == family.tokenizer.cls_token_id,
            )
        )
    options = dict(top_k=3, handle_impossible_answer=True)
    expected = family.reference(QUESTION, LONG_CONTEXT, 48, 16, **options)
    _assert_same(decode_answers(LONG_CONTEXT, windows, **options), expected)


# --- unit tests, no model -------------------------------------------------------------------


def _window(start, end, sequence_ids, word_ids, offsets) -> QaWindow:
    return QaWindow(
        np.array(start, np.float32), np.array(end, np.float32), np.array(offsets, np.int32),
        np.array(sequence_ids, np.int8), np.array(word_ids, np.int32),
    )


# [CLS] q [SEP] "New" "York" "yo" "##rk" [SEP] over the context "New York york"
_CONTEXT = "New York york"
_LAYOUT = dict(
    sequence_ids=[-1, 0, -1, 1, 1, 1, 1, -1],
    word_ids=[-1, 0, -1, 0, 1, 2, 2, -1],
    offsets=[[0, 0], [0, 5], [0, 0], [0, 3], [4, 8], [9, 11], [11, 13], [0, 0]],
)


def test_null_answer_is_none_at_zero() -> None:
    window = _window([9, 0, 0, 1, 1, 1, 1, 0], [9, 0, 0, 1, 1, 1, 1, 0], **_LAYOUT)
    best = decode_answers(_CONTEXT, [window], handle_impossible_answer=True)
    assert best[0]["answer"] is None and best[0]["start"] == best[0]["end"] == 0
    assert decode_answers(_CONTEXT, [window])[0]["answer"] is not None


def test_align_to_words_and_case_insensitive_merge() -> None:
    # best start on "##rk" (word 2): aligned, the whole word "york"
    window = _window([0, 9, 0, 0, 4, 0, 5, 9], [0, 9, 0, 0, 5, 0, 6, 9], **_LAYOUT)
    aligned = decode_answers(_CONTEXT, [window], top_k=2)
    assert (aligned[0]["answer"], aligned[0]["start"], aligned[0]["end"]) == ("york", 9, 13)
    assert decode_answers(_CONTEXT, [window], align_to_words=False)[0]["answer"] == "rk"
    # "York" and "york" are one answer for HF: the first one seen keeps its offsets, scores add up
    spans = {a["answer"]: a for a in decode_answers(_CONTEXT, [window], top_k=5, max_answer_len=1)}
    assert "York" not in spans and (spans["york"]["start"], spans["york"]["end"]) == (9, 13)


def test_window_params_follow_hf_defaults() -> None:
    assert window_params() == (384, 128)
    assert window_params(model_max_length=128) == (128, 64)
    assert window_params(48, 16) == (48, 16)
    with pytest.raises(ValueError, match="doc_stride"):
        window_params(32, 40)
    with pytest.raises(ValueError, match="max_question_len"):
        window_params(max_question_len=0)


def test_bad_arguments_name_the_value() -> None:
    window = _window([0] * 8, [0] * 8, **_LAYOUT)
    with pytest.raises(ValueError, match="top_k=0"):
        decode_answers(_CONTEXT, [window], top_k=0)
    with pytest.raises(ValueError, match="max_answer_len=0"):
        decode_answers(_CONTEXT, [window], max_answer_len=0)
    with pytest.raises(ValueError, match="at least one window"):
        decode_answers(_CONTEXT, [])
    with pytest.raises(ValueError, match="offsets"):
        QaWindow(np.zeros(3), np.zeros(3), np.zeros((2, 2)), np.zeros(3), np.zeros(3))
