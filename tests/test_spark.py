"""Spark reads what the jobs write: a real pyspark (in `.venv-spark/`, tests/side_venvs.py) against pyarrow.

One multi-task job holds every task's result types (NER entities, classification scores, QA answers,
embeddings) and a kept timestamp that Spark itself wrote as INT96; one NER job partitions by a column
whose values need escaping (`/`, non-ASCII, empty, null). Spark must read every output and `_errors`, and
see the same rows as pyarrow.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs import multi_corpus, ner_corpus
from tests.checkpoints import make_checkpoint
from tests.side_venvs import side_venv

pytestmark = [pytest.mark.spark, pytest.mark.ray, pytest.mark.timeout(1200)]

LANGS = ["café", "a/b=c", "", None, "東京", "en"]
# Run by .venv-spark/bin/python: each path's schema and rows as JSON lines (partition values kept as text).
READ = """
import json, sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
         .config("spark.sql.session.timeZone", "UTC")
         .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false").getOrCreate())
for path in sys.argv[1:]:
    frame = spark.read.parquet(path)
    rows = [row.asDict(recursive=True) for row in frame.collect()]
    print(json.dumps({"path": path, "schema": frame.schema.simpleString(), "rows": rows}, default=str))
"""


def java_major() -> int | None:
    if not shutil.which("java"):
        return None
    shown = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', shown)
    return int(match.group(1)) if match else None


@pytest.fixture(scope="module")
def outputs(ray_session, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spark")
    corpus = root / "corpus"
    corpus.mkdir()
    texts = ["John Smith works at Acme Corp in Paris.", "Who founded Acme?", "", "Berlin " * 40, "x", None]
    at = [datetime.datetime(2026, 1, 2, 3, 4, 5, 123456 + i) for i in range(len(texts))]
    table = pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts, "lang": LANGS,
                      "at": pa.array(at, pa.timestamp("us")), "question": ["Who?"] * len(texts)})
    pq.write_table(table, corpus / "part-0.parquet", use_deprecated_int96_timestamps=True)   # as Spark writes
    models = {head: str(make_checkpoint(root / head, "bert", head)[0]) for head in ("ner", "classify", "qa")}
    tasks = {"entities": {"task": "ner", "model": models["ner"], "stride": 8},
             "topic": {"task": "classify", "model": models["classify"], "all_labels": True},
             "answer": {"task": "qa", "model": models["qa"], "question_column": "question", "top_k": 2,
                        "max_length": 32, "doc_stride": 8},
             "vector": {"task": "embed", "model": models["ner"]}}
    config = root / "multi.yaml"
    config.write_text(json.dumps({"input": str(corpus), "output": str(root / "multi"), "keep_columns": ["at"],
                                  "max_length": 32, "tasks": tasks}))
    multi_corpus.main(["--config", str(config)])
    ner_corpus.main(["--input", str(corpus), "--output", str(root / "parted"), "--model", models["ner"],
                     "--max-length", "32", "--stride", "8", "--partition-by", "lang", "--keep-columns", "at"])
    return {"multi": root / "multi", "parted": root / "parted"}


def spark_read(paths: list[Path]) -> dict[str, dict]:
    major = java_major()
    if major is None or major < 17:
        pytest.skip(f"pyspark 4 needs Java 17 or later (found: {major or 'no java'})")
    try:
        bin_dir = side_venv("spark")
    except RuntimeError as error:
        pytest.fail(str(error))
    done = subprocess.run([str(bin_dir / "python"), "-c", READ, *map(str, paths)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    return {Path(read["path"]).name: read for read in map(json.loads, done.stdout.splitlines())}


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["id"]: row for row in rows}


def test_spark_reads_every_output_as_pyarrow_does(outputs):
    read = spark_read([outputs["multi"], outputs["parted"], outputs["multi"] / "_errors"])
    multi, parted, errors = read["multi"], read["parted"], read["_errors"]

    ours = by_id(pads.dataset(outputs["multi"], format="parquet").to_table().to_pylist())
    theirs = by_id(multi["rows"])
    assert sorted(theirs) == sorted(ours) and len(ours) == 5   # d5 (null text) is an error row
    for column in ("entities", "topic", "answer", "vector"):
        assert [theirs[i][column] for i in sorted(ours)] == [ours[i][column] for i in sorted(ours)], column
    # Spark's INT96 timestamps: microseconds (as nanoseconds Spark could not read the output), all digits kept
    assert "at:timestamp_ntz" in multi["schema"]
    assert [theirs[i]["at"] for i in sorted(ours)] == [str(ours[i]["at"]) for i in sorted(ours)]
    assert {row["id"] for row in errors["rows"]} == {"d5"}

    # Partition folders Spark decodes to the values written: `/` and `=` escaped, non-ASCII as is; an
    # empty value is null, as Spark writes it (it refuses a folder `lang=`)
    hive = pads.partitioning(pa.schema([("lang", pa.string())]), flavor="hive")
    ours = by_id(pads.dataset(outputs["parted"], format="parquet", partitioning=hive).to_table().to_pylist())
    theirs = by_id(parted["rows"])
    assert {i: row["lang"] for i, row in theirs.items()} == {i: row["lang"] for i, row in ours.items()} == {
        "d0": "café", "d1": "a/b=c", "d2": None, "d3": None, "d4": "東京"}
    assert [theirs[i]["entities"] for i in sorted(ours)] == [ours[i]["entities"] for i in sorted(ours)]
