"""Helpers for the classification / QA / embedding / multi-task tests: checkpoints, a corpus, a Ray-free runner."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import transformers

from pipeline.job import build_plan
from schemas import results
from tests.checkpoints import make_checkpoint

SENTIMENT = {0: "negative", 1: "neutral", 2: "positive"}
TOPICS = {0: "sports", 1: "politics", 2: "science", 3: "arts"}
CLASSIFY_HEADS = {  # name -> config overrides
    "single": dict(id2label=SENTIMENT, label2id={v: k for k, v in SENTIMENT.items()}),
    "multi": dict(id2label=TOPICS, label2id={v: k for k, v in TOPICS.items()},
                  problem_type="multi_label_classification"),
    "regression": dict(num_labels=1, problem_type="regression"),
}
QUESTION = "Where does John Smith work?"
CONTEXT_SENTENCES = [
    "John Smith works at Acme Corp in Paris.", "Mary Jones visited the Bank of London yesterday.",
    "Hello world, this is a small document about the big city and the old river.",
    "Who lives in New York? The company was in Berlin.", "Café naïve résumé über Straße: 東京 and 北京 are cities 😀.",
]
PAIR_TEXTS = ["Mary Jones lives in New York.", "a small house by the old river", "the company", "", "東京 😀"]


def scaled_checkpoint(folder: Path, family: str, head: str, scale: float, **overrides) -> Path:
    """A tiny random checkpoint whose head weights are scaled up (random heads give near-uniform
    scores, where tiny float differences could reorder labels or answers), saved again."""
    folder, model = make_checkpoint(folder, family, head, **overrides)
    prefixes = ("classifier", "pre_classifier") if head == "classify" else ("qa_outputs",)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(prefixes):
                param.mul_(scale)
    model.save_pretrained(folder)
    return folder


def hf_tokenizer(folder: Path, family: str) -> transformers.PreTrainedTokenizerFast:
    # RoBERTa and DistilBERT take no token_type_ids; the tiny tokenizers would return them.
    names = ["input_ids", "attention_mask"] if family in ("roberta", "distilbert") else None
    return transformers.AutoTokenizer.from_pretrained(folder, **({"model_input_names": names} if names else {}))


def write_task_corpus(folder: Path) -> Path:
    """Two files: short texts with a text pair and a question per row, long contexts, one null text."""
    short = ["Café naïve résumé über Straße, 東京 and 北京 😀", "", "the big city", "John Smith works at Acme Corp",
             "Who lives in New York?", "hello world, this is a small document"]
    long = [" ".join(CONTEXT_SENTENCES[i:] + CONTEXT_SENTENCES[:i]) for i in range(len(CONTEXT_SENTENCES))]
    rows = [(t, PAIR_TEXTS[i % len(PAIR_TEXTS)], QUESTION if i % 2 else "Who visited the Bank of London?")
            for i, t in enumerate(short + long + [None])]
    folder.mkdir(parents=True, exist_ok=True)
    for part, chunk in enumerate((rows[:6], rows[6:])):
        offset = 0 if part == 0 else 6
        pq.write_table(pa.table({
            "id": pa.array([f"doc-{offset + i:02d}" for i in range(len(chunk))]),
            "text": pa.array([r[0] for r in chunk], pa.string()),
            "pair": pa.array([r[1] for r in chunk], pa.string()),
            "question": pa.array([r[2] for r in chunk], pa.string()),
        }), folder / f"part-{part}.parquet")
    return folder


def corpus_rows(folder: Path) -> list[dict]:
    return pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("*.parquet"))).to_pylist()


def annotate(config, task) -> dict[str, dict]:
    """Every stage of the job's plan on every input file, without Ray: id -> result row (ok rows), checked
    against the result schema exactly as the sink checks it."""
    plan = build_plan(config, task)[0]
    stages = [spec.build() for spec in (plan.validate, plan.tokenize, plan.infer, plan.decode)]
    tables = []
    for index in range(len(plan.files.paths)):
        for table in plan.read(index):
            for stage in stages:
                table = stage(table)
            tables.append(table)
    table = pa.concat_tables(tables, promote_options="permissive")   # shards may differ in nullability
    ok = table.filter(table.column("_error").is_null())
    schema = plan.sink.config.result_schema
    ok = ok.select(schema.names)
    results.validate(ok, schema)
    return {row[config.id_column]: row for row in ok.to_pylist()}
