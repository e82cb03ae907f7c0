"""Input shapes real data has (Hive folders, pandas and polars types, shards that differ in nullability,
column names that clash): read as pyarrow and DuckDB read them, or refused in one line before any
cluster work. The jobs' stages run without Ray (`tests/task_runs.annotate`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.classify_task import CLASSIFY_TASK
from pipeline.cli import UsageError
from pipeline.config import ClassifyConfig, NerConfig, QaConfig
from pipeline.ner_task import NER_TASK
from pipeline.qa_task import QA_TASK
from pipeline.read import list_input_files
from pipeline.stage import ERROR, ERROR_TYPE
from pipeline.validate import ValidateConfig, ValidateText
from tests.checkpoints import make_checkpoint
from tests.task_runs import annotate

TEXTS = ["John Smith works at Acme Corp in Paris.", "Mary Jones visited London.", "hello world"]


def write(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def ner(folder: Path, model: Path, tmp_path: Path, **options) -> dict:
    return annotate(NerConfig(input=str(folder), output=str(tmp_path / "out"), model=str(model), max_length=32,
                              **options), NER_TASK)


def test_a_folder_is_every_file_not_hidden_and_hive_values_are_url_decoded(tmp_path, ner_checkpoint):
    corpus = tmp_path / "corpus"
    write(corpus / "lang=en%2Fus" / "000000_0", id=["a"], text=TEXTS[:1])          # as Hive names its files
    write(corpus / "lang=__HIVE_DEFAULT_PARTITION__" / "PART.PARQUET", id=["b"], text=TEXTS[1:2])
    write(corpus / "lang=fr" / "part-0.parquet", id=["c"], text=TEXTS[2:])
    write(corpus / "_tmp" / "part-9.parquet", id=["x"], text=["hidden"])
    (corpus / ".part-0.parquet.crc").write_bytes(b"checksum")
    files = list_input_files(str(corpus))
    assert [p.rsplit("/", 1)[-1] for p in files.paths] == ["PART.PARQUET", "000000_0", "part-0.parquet"]
    rows = ner(corpus, ner_checkpoint, tmp_path, keep_columns=("lang",))
    assert {k: r["lang"] for k, r in rows.items()} == {"a": "en/us", "b": None, "c": "fr"}


def test_text_types_pandas_and_polars_write_are_annotated_and_kept_as_strings(tmp_path, ner_checkpoint):
    corpus = tmp_path / "corpus"
    write(corpus / "large.parquet", id=["a", "b"], text=pa.array(TEXTS[:2], pa.large_string()))
    want = ner(corpus, ner_checkpoint, tmp_path / "want")
    got = ner(corpus, ner_checkpoint, tmp_path, keep_columns=("text",))
    assert {k: r["text"] for k, r in got.items()} == {"a": TEXTS[0], "b": TEXTS[1]}
    assert {k: r["entities"] for k, r in got.items()} == {k: r["entities"] for k, r in want.items()}
    categorical = tmp_path / "categorical"
    write(categorical / "part.parquet", id=["a", "b"], text=pa.array(TEXTS[:2]).dictionary_encode())
    assert {k: r["entities"] for k, r in ner(categorical, ner_checkpoint, tmp_path / "c").items()} == \
           {k: r["entities"] for k, r in want.items()}


def test_a_kept_column_with_nulls_in_a_later_shard_only(tmp_path, ner_checkpoint):
    corpus = tmp_path / "corpus"
    required = pa.schema([pa.field("id", pa.string()), pa.field("text", pa.string()), pa.field("src", pa.string(), False)])
    corpus.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": TEXTS[:1], "src": ["web"]}, schema=required), corpus / "0.parquet")
    write(corpus / "1.parquet", id=["b"], text=TEXTS[1:2], src=pa.array([None], pa.string()))
    assert {k: r["src"] for k, r in ner(corpus, ner_checkpoint, tmp_path, keep_columns=("src",)).items()} == \
           {"a": "web", "b": None}


@pytest.mark.parametrize("options, message", [
    ({"keep_columns": ("entities",)}, r"result columns \['entities'\] would appear twice"),
    ({"partition_by": "entities"}, r"result columns \['entities'\] would appear twice"),
    ({"id_column": "source"}, "--id-column 'source' has the name of a column of _errors"),
])
def test_columns_that_clash_with_the_outputs_are_refused(options, message, tmp_path, ner_checkpoint):
    corpus = tmp_path / "corpus"
    write(corpus / "part.parquet", id=["a"], source=["a"], text=TEXTS[:1], entities=["x"])
    with pytest.raises(UsageError, match=message):
        ner(corpus, ner_checkpoint, tmp_path, **options)


@pytest.mark.parametrize("values, message", [
    (pa.array([["a"]], pa.list_(pa.string())), "--partition-by 'grp' has type list<.*>: a folder name"),
    (pa.array([b"caf\xe9"], pa.binary()), "--partition-by 'grp' has type binary: a folder name"),
])
def test_a_partition_column_that_cannot_name_a_folder_is_refused(values, message, tmp_path, ner_checkpoint):
    """A list or bytes partition column failed the write of every batch, after all the inference."""
    corpus = tmp_path / "corpus"
    write(corpus / "part.parquet", id=["a"], text=TEXTS[:1], grp=values)
    with pytest.raises(UsageError, match=message):
        ner(corpus, ner_checkpoint, tmp_path, partition_by="grp")


@pytest.mark.parametrize("name", ["_grp", ".grp", "a=b", "x/y", ""])
def test_a_partition_column_name_that_would_hide_or_mislead_its_folders_is_refused(name):
    """`_grp=x/` folders are hidden from pyarrow and Spark; `a=b=v/` reads back as column a; `x/y=v/` nests."""
    from pipeline.config import NerConfig

    with pytest.raises(ValueError, match="a partition column's name cannot be empty, start with '_' or '.'"):
        NerConfig(input="in", output="out", model="m", partition_by=name)


def test_an_id_the_output_cannot_take_is_refused(tmp_path, ner_checkpoint):
    corpus = tmp_path / "corpus"
    write(corpus / "part.parquet", id=pa.array(["a"], pa.string_view()), text=TEXTS[:1])
    with pytest.raises(UsageError, match="--id-column 'id' has type string_view"):
        ner(corpus, ner_checkpoint, tmp_path)


def test_second_texts_are_checked_like_the_text(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "part.parquet", id=["a", "b", "c"], text=TEXTS, pair=[1, 2, 3],
          question=pa.array([b"Who works?", None, b"Where?"], pa.binary()))
    classify, _ = make_checkpoint(tmp_path / "classify", "bert", "classify")
    with pytest.raises(UsageError, match="--text-pair-column 'pair' has type int64"):
        annotate(ClassifyConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(classify),
                                text_pair_column="pair"), CLASSIFY_TASK)
    qa, _ = make_checkpoint(tmp_path / "qa", "bert", "qa")
    rows = annotate(QaConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(qa),
                             question_column="question", max_length=48, doc_stride=16), QA_TASK)
    assert sorted(rows) == ["a", "c"]   # binary questions decoded; the null one is an error row
    table = pa.table({"id": ["b"], "text": TEXTS[1:2], "question": pa.array([None], pa.binary()),
                      ERROR: pa.nulls(1, ERROR_TYPE)})
    error = ValidateText(ValidateConfig(second_texts=("question",)))(table).column(ERROR)[0].as_py()
    assert error["error"] == "null_text" and "'question' is null" in error["message"]


def test_an_empty_shard_pandas_wrote_with_null_typed_columns(tmp_path, ner_checkpoint):
    import pandas as pd

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    empty = pd.DataFrame({"id": pd.Series([], dtype=object), "text": pd.Series([], dtype=object)})
    empty.to_parquet(corpus / "0-empty.parquet")   # empty object columns are written as null-typed
    assert pq.read_schema(corpus / "0-empty.parquet").field("id").type == pa.null()
    write(corpus / "1.parquet", id=["a", "b"], text=TEXTS[:2])
    assert sorted(ner(corpus, ner_checkpoint, tmp_path)) == ["a", "b"]
