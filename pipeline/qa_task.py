"""Extractive question answering as a pipeline task: each (question, context) -> the best answer and `answers`.

The row's text is the context; the question comes from `--question-column` or is one
`--question` for the whole corpus. Windows are the (question, context) pairs the HF
question-answering pipeline makes: the question repeated in every window, the context cut
into windows of `--max-length` tokens overlapping by `--doc-stride` (defaults as HF's:
min(model maximum, 384) and min(max_length // 2, 128)). The best answer is chosen across all
windows of a context (`qa_decode`); answers are character spans of the context.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from pipeline.cli import UsageError
from pipeline.doc_decode import DecodeWindow, DocumentDecode
from pipeline.job import Feed, ModelInfo, Task, plan_tokenizer
from pipeline.qa_decode import QaWindow, decode_answers, window_params
from pipeline.stage import ERROR, Stage, StageSpec, with_errors
from pipeline.tokenize import Tokenize, TokenizeConfig
from schemas.results import task_fields

QUESTION = "_question"   # the constant --question, as a column while tokenizing


@dataclasses.dataclass(frozen=True)
class QaTokenizeConfig:
    model: str                          # folder holding the tokenizer files
    text_column: str                    # the context
    question_column: str | None         # exactly one of question_column and question
    question: str | None
    max_length: int
    stride: int                         # the doc stride


class QaTokenize(Stage):
    """Tokenize (question, context) pairs; a constant question is put in a column for the tokenizer only."""

    name = "tokenize"

    def __init__(self, config: QaTokenizeConfig):
        self.config = config
        self.requires, self.adds, self.removes = self.declare(config)
        self.inner = Tokenize(TokenizeConfig(config.model, config.question_column or QUESTION, config.text_column,
                                             config.max_length, config.stride))

    @classmethod
    def declare(cls, config: QaTokenizeConfig):
        question = (config.question_column,) if config.question_column else ()
        return (config.text_column, ERROR, *question), Tokenize.adds, ()

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.config.question_column:
            # The HF pipeline refuses an empty question; a null one fails in the tokenizer.
            questions = table.column(self.config.question_column).to_pylist()
            table = with_errors(table, {row: (self.name, "empty_question", "the question is empty")
                                        for row, question in enumerate(questions) if question == ""})
            return self.inner(table)
        table = table.append_column(QUESTION, pa.array([self.config.question] * table.num_rows, pa.string()))
        return self.inner(table).drop_columns([QUESTION])


@dataclasses.dataclass(frozen=True)
class QaDecodeConfig:
    cls_id: int | None                  # the tokenizer's CLS id: CLS tokens may hold the "no answer"
    text_column: str = "text"
    top_k: int = 1
    max_answer_len: int = 15
    handle_impossible_answer: bool = False


class QaDecode(DocumentDecode):
    fields = task_fields("qa")

    def decode(self, text: str, windows: list[DecodeWindow]) -> dict:
        config = self.config
        # A context without tokens (empty, whitespace) has no span: its windows hold the question alone, where a
        # literal "[CLS]" would pass as the CLS token (HF's rule) and answer with the question's offsets; only
        # position 0 may then answer.
        by_id = config.cls_id is not None and any((np.asarray(w.sequence_ids) == 1).any() for w in windows)
        qa_windows = [
            QaWindow(w.outputs[:, 0], w.outputs[:, 1], w.offsets, w.sequence_ids, w.word_ids,
                     np.asarray(w.ids) == config.cls_id if by_id else None)
            for w in windows
        ]
        answers = decode_answers(text, qa_windows, config.top_k, config.max_answer_len,
                                 config.handle_impossible_answer)
        answers = [{"answer": a["answer"], "score": float(a["score"]), "start": int(a["start"]),
                    "end": int(a["end"])} for a in answers]
        best = answers[0] if answers else {"answer": None, "score": 0.0, "start": 0, "end": 0}
        return {**best, "answers": answers}


def _feed(config, model: ModelInfo) -> Feed:
    tokenizer = plan_tokenizer(model)
    if tokenizer.padding_side == "left":
        raise UsageError(f"--model {config.model!r}: its tokenizer pads on the left (padding_side), for which the HF "
                         "question-answering pipeline puts the context before the question; not supported")
    limit = min(tokenizer.model_max_length or model.max_tokens, model.max_tokens)
    try:
        max_length, stride = window_params(config.max_length, config.doc_stride, config.max_question_len, limit)
    except ValueError as error:
        raise UsageError(f"--max-length/--doc-stride: {error}") from None
    if max_length > model.max_tokens:
        raise UsageError(f"--max-length {max_length}: this model takes at most {model.max_tokens} tokens")
    # A window must hold the question and more context tokens than the stride; the constant question (else the
    # shortest one) against a context that needs windows, as the rows would meet it.
    try:
        tokenizer.encode_windows([config.question or "x"], pairs=["x " * max_length], max_length=max_length,
                                 stride=stride)
    except ValueError as error:
        flags = "--max-length/--doc-stride" + ("/--question" if config.question else "")
        raise UsageError(f"{flags}: {error}") from None
    tokenize = QaTokenizeConfig(model.folder, config.text_column, config.question_column, config.question,
                                max_length, stride)
    columns = (("--question-column", config.question_column),) if config.question_column else ()
    return Feed(StageSpec(QaTokenize, tokenize), max_length, columns)


def _decode_spec(config, model: ModelInfo) -> StageSpec:
    return StageSpec(QaDecode, QaDecodeConfig(plan_tokenizer(model).cls_id, config.text_column,
                                              config.top_k, config.max_answer_len, config.handle_impossible_answer))


QA_TASK = Task(name="qa", model_task="qa", decode=_decode_spec, feed=_feed)
