"""The NER job end to end on a local Ray (session fixture, 2 CPUs) with a tiny random BERT checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.config import NerConfig
from pipeline.job import run_job
from pipeline.ner_task import NER_TASK
from schemas import results
from tests.conftest import REPO, make_texts, write_corpus

pytestmark = pytest.mark.ray
STRIDE = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def runs(ray_session, corpus, ner_checkpoint, tmp_path_factory):
    """The same corpus twice: defaults, then 2 model actors, another token budget, small files, partitions."""
    out = tmp_path_factory.mktemp("outputs")
    common = dict(input=str(corpus), model=str(ner_checkpoint), stride=STRIDE, keep_columns=("date",))
    first = NerConfig(output=str(out / "one"), **common)
    second = NerConfig(output=str(out / "two"), model_actors=2, batch_tokens=200, rows_per_file=5,
                       docs_per_batch=7, partition_by="lang", **common)
    return {"one": (first, run_job(first, NER_TASK)), "two": (second, run_job(second, NER_TASK))}


def input_table(corpus) -> pa.Table:
    return pads.dataset(corpus, format="parquet", partitioning="hive").to_table()


def by_id(table: pa.Table) -> dict:
    return {row["id"]: row for row in table.to_pylist()}


def test_output_schema_counts_ids_and_errors(runs, corpus):
    config, run = runs["one"]
    output = config.output
    table = pads.dataset(output, format="parquet").to_table()
    expected_schema = results.result_schema(
        "ner", pa.field("id", pa.string()), (pa.field("date", pa.string()),))
    assert table.schema.remove_metadata() == expected_schema
    inputs = input_table(corpus)
    null_text = [r["id"] for r in inputs.to_pylist() if r["text"] is None]
    assert sorted(table.column("id").to_pylist()) == sorted(set(inputs.column("id").to_pylist()) - set(null_text))
    errors = pq.read_table(f"{output}/_errors")
    assert errors.column("id").to_pylist() == null_text
    assert errors.column("error").to_pylist() == ["null_text"]
    metadata = pq.read_schema(next(iter(pads.dataset(output, format="parquet").files))).metadata
    assert metadata[b"bertbatch.task"] == b"ner" and metadata[b"bertbatch.model_sha256"].decode() == \
        run["model"]["sha256"]
    on_disk = json.loads(Path(output, "_run.json").read_text())
    assert on_disk["complete"] and on_disk["report"]["documents"] == inputs.num_rows
    assert on_disk["report"]["padded_tokens"] >= on_disk["report"]["real_tokens"] > 0
    assert on_disk["config"]["rows_per_file"] is None and on_disk["placement"]["rows_per_file"] == 10_000   # CPU's
    assert runs["two"][1]["placement"]["rows_per_file"] == 5
    assert Path(output, "_SUCCESS").exists()


def test_output_is_the_same_with_two_actors_other_budget_and_partitions(runs):
    one = by_id(pads.dataset(runs["one"][0].output, format="parquet").to_table())
    two_table = pads.dataset(runs["two"][0].output, format="parquet", partitioning="hive").to_table()
    two = by_id(two_table.drop_columns(["lang"]))
    assert len(list(pads.dataset(runs["two"][0].output, format="parquet").files)) > 2  # small files
    assert one.keys() == two.keys()
    for doc_id, row in one.items():
        other = two[doc_id]
        assert row["date"] == other["date"]
        assert [(e["label"], e["start"], e["end"], e["text"]) for e in row["entities"]] == \
               [(e["label"], e["start"], e["end"], e["text"]) for e in other["entities"]]
        np.testing.assert_allclose([e["score"] for e in row["entities"]],
                                   [e["score"] for e in other["entities"]], atol=1e-5)


def test_entities_equal_the_hf_pipeline(runs, corpus, ner_checkpoint):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(ner_checkpoint, model_max_length=128)
    model = transformers.AutoModelForTokenClassification.from_pretrained(ner_checkpoint)
    hf = transformers.pipeline("token-classification", model=model, tokenizer=tokenizer,
                               aggregation_strategy="simple", stride=STRIDE)
    ours = by_id(pads.dataset(runs["one"][0].output, format="parquet").to_table())
    texts = {r["id"]: r["text"] for r in input_table(corpus).to_pylist() if r["text"]}
    assert any(len(tokenizer(t)["input_ids"]) > 128 for t in texts.values())  # several windows are exercised
    for doc_id, text in texts.items():
        want = hf(text)
        got = ours[doc_id]["entities"]
        assert [(e["label"], e["start"], e["end"]) for e in got] == \
               [(e["entity_group"], e["start"], e["end"]) for e in want], doc_id
        assert all(e["text"] == text[e["start"]:e["end"]] for e in got)
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want], atol=1e-4)


def test_duckdb_unnests_entities_and_counts_by_label(runs):
    import duckdb

    output = runs["one"][0].output
    counts = dict(duckdb.sql(
        f"SELECT e.label, count(*) FROM (SELECT unnest(entities) AS e FROM read_parquet('{output}/*.parquet')) "
        "GROUP BY 1").fetchall())
    table = pads.dataset(output, format="parquet").to_table()
    expected = Counter(e["label"] for row in table.column("entities").to_pylist() for e in row)
    assert counts == dict(expected) and sum(counts.values()) > 0
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{output}/*.parquet')").fetchall()[0][0] == table.num_rows


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/ner_corpus.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_help_lists_the_ner_flags():
    done = run_cli("--help")
    assert done.returncode == 0
    for flag in ("--aggregation", "--ignore-labels", "--batch-tokens", "--keep-columns", "--partition-by"):
        assert flag in done.stdout


def test_missing_text_column_exits_with_one_line(corpus, ner_checkpoint, tmp_path):
    done = run_cli("--input", str(corpus), "--model", str(ner_checkpoint), "--output", str(tmp_path / "out"),
                   "--text-column", "body")
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0
    assert "--text-column 'body': no such column" in done.stderr
    assert not (tmp_path / "out").exists()


def test_half_precision_on_a_cpu_without_it_is_refused_before_any_work(ray_session, corpus, ner_checkpoint,
                                                                        tmp_path, monkeypatch):
    """A CPU without bf16/fp16 units (AVX2 only) runs them 40-400× slower than fp32: the job says so and stops
    before reading anything, when the model would run on the driver's own machine."""
    from pipeline import infer
    from pipeline.cli import UsageError

    monkeypatch.setattr(infer, "_native_on_cpu", lambda dtype: False)
    config = NerConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(ner_checkpoint),
                       device="cpu", dtype="bfloat16")
    with pytest.raises(UsageError, match="no bfloat16 matrix instructions.*use --dtype float32, or int8"):
        run_job(config, NER_TASK)
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_an_output_whose_rows_all_failed_still_has_its_columns(ray_session, ner_checkpoint, tmp_path):
    """Every row an error: the output had `_SUCCESS` but no result file, so DuckDB's read_parquet('OUT/*.parquet')
    failed ("No files found") and pyarrow saw no columns; one empty result file carries them."""
    import duckdb

    corpus = tmp_path / "in"
    corpus.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": pa.array([None, None], pa.string())}), corpus / "p.parquet")
    config = NerConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(ner_checkpoint))
    run = run_job(config, NER_TASK)
    assert run["complete"] and (run["report"]["results"], run["report"]["errors"]) == (0, 2)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{config.output}/*.parquet')").fetchall() == [(0,)]
    table = pads.dataset(config.output, format="parquet").to_table()
    assert table.num_rows == 0 and table.schema.names == ["id", "entities"]
    assert table.schema.metadata[b"bertbatch.task"] == b"ner"
    assert run_job(config, NER_TASK)["complete"]      # and the finished output stays as it is


def test_many_small_files_are_annotated_as_one_file_is(ray_session, ner_checkpoint, tmp_path):
    """200 files of 0-4 rows, read by a few tasks of many files each (ray_plan.read_groups): every row once, with
    the same results as the same rows in one file."""
    texts = make_texts(400, seed=3)
    texts[17] = None
    table = pa.table({"id": [f"doc-{i:03d}" for i in range(400)], "text": pa.array(texts, pa.string())})
    (tmp_path / "many").mkdir()
    (tmp_path / "one").mkdir()
    start = 0
    for i in range(200):
        pq.write_table(table.slice(start, i % 5), tmp_path / "many" / f"part-{i:03d}.parquet")
        start += i % 5
    pq.write_table(table.slice(0, start), tmp_path / "one" / "all.parquet")
    outputs = {}
    for name in ("many", "one"):
        config = NerConfig(input=str(tmp_path / name), output=str(tmp_path / f"out-{name}"), model=str(ner_checkpoint))
        run = run_job(config, NER_TASK)
        assert run["complete"] and run["report"]["documents"] == start
        outputs[name] = (by_id(pads.dataset(config.output, format="parquet").to_table()),
                         pq.read_table(f"{config.output}/_errors").column("id").to_pylist())
    (many, many_errors), (one, one_errors) = outputs["many"], outputs["one"]
    assert many_errors == one_errors == ["doc-017"]
    assert sorted(many) == sorted(one) == [f"doc-{i:03d}" for i in range(start) if i != 17]
    for doc_id, row in one.items():
        got = many[doc_id]["entities"]
        assert [(e["label"], e["start"], e["end"]) for e in got] == \
               [(e["label"], e["start"], e["end"]) for e in row["entities"]]
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in row["entities"]], atol=1e-5)
