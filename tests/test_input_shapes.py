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
from pipeline.job import build_plan
from pipeline.ner_task import NER_TASK
from pipeline.qa_task import QA_TASK
from pipeline.read import ReadFile, list_input_files
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
    options = {"output": str(tmp_path / "out"), **options}
    return annotate(NerConfig(input=str(folder), model=str(model), max_length=32, **options), NER_TASK)


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


def test_a_column_whose_name_holds_a_comma_is_kept_in_double_quotes(tmp_path, ner_checkpoint):
    corpus = tmp_path / "corpus"
    write(corpus / "0.parquet", **{"id": ["a"], "text": TEXTS[:1], "lat, lon": ["48.85, 2.35"], "src": ["web"]})
    rows = ner(corpus, ner_checkpoint, tmp_path, keep_columns='"lat, lon",src')
    assert {k: (r["lat, lon"], r["src"]) for k, r in rows.items()} == {"a": ("48.85, 2.35", "web")}


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


@pytest.mark.parametrize("output", ["corpus", ".", "corpus/../corpus"])
def test_an_output_that_holds_the_input_is_refused_before_anything_is_deleted(output, tmp_path, ner_checkpoint):
    """--output equal to --input (or above it) with --overwrite deleted a Spark-written corpus: its
    part-*.parquet and _SUCCESS are names a run writes. Refused before the output is touched."""
    from pipeline.job import run_job

    corpus = tmp_path / "corpus"
    write(corpus / "part-00000-4f1c.snappy.parquet", id=["a"], text=TEXTS[:1])
    (corpus / "_SUCCESS").touch()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UsageError, match=r"holds the input .*: a run would read its own results and --overwrite "
                                         r"would delete the input; choose an output folder outside it"):
        run_job(NerConfig(input=str(corpus), output=str(tmp_path / output), model=str(ner_checkpoint),
                          overwrite=True), NER_TASK)
    assert sorted(tmp_path.rglob("*")) == before
    single = str(corpus / "part-00000-4f1c.snappy.parquet")
    with pytest.raises(UsageError, match="holds the input"):
        ner(Path(single), ner_checkpoint, tmp_path, output=str(corpus))
    linked = tmp_path / "linked" / "part-00000.parquet"   # a DVC / git-annex style link into a store
    linked.parent.mkdir()
    linked.symlink_to(single)
    with pytest.raises(UsageError, match="holds the input"):
        ner(linked, ner_checkpoint, tmp_path, output=str(linked.parent), overwrite=True)


def test_an_output_inside_the_input_folder_is_not_read_as_input(tmp_path, ner_checkpoint):
    """A rerun read the first run's results as input: "made with other input files", or shards disagreeing.
    A folder inside the input that no run made is input: as --output it is refused (--overwrite would delete it)."""
    from pipeline.restart import job_identity

    corpus = tmp_path / "corpus"
    write(corpus / "a.parquet", id=["a", "b"], text=TEXTS[:2])
    output = corpus / "annotated"
    config = NerConfig(input=str(corpus), output=str(output), model=str(ner_checkpoint), keep_columns=("text",))
    plan, info, _ = build_plan(config, NER_TASK)
    first = job_identity("ner", config, info, plan.files, ("float32",))
    write(output / "part-00000-000000000000.parquet", id=["a"], text=TEXTS[:1], entities=["x"])
    write(output / "lang=en" / "part-00001-000000000000.parquet", id=["b"], text=TEXTS[1:2])
    with pytest.raises(UsageError, match="holds the input"):   # Spark's part files of another corpus, say
        build_plan(config, NER_TASK)
    (output / "_progress").mkdir()
    (output / "_progress" / "_job.json").write_text("{}")      # a run's ledger: these are its results
    again, info, _ = build_plan(config, NER_TASK)
    assert again.files.paths == plan.files.paths == (str(corpus / "a.parquet"),)
    assert job_identity("ner", config, info, again.files, ("float32",)) == first
    via_link = tmp_path / "link"
    via_link.symlink_to(corpus)   # the same folder by another name
    assert list_input_files(str(via_link), str(output)).paths == (str(via_link / "a.parquet"),)


def test_a_dangling_link_a_doubled_column_and_a_folder_named_like_a_glob(tmp_path, ner_checkpoint):
    """A dangling link is an unreadable file (it was a traceback from the input's identity); a column named twice
    in a file is one line naming it (it was "KeyError: Column id does not exist"); `corpus [v2]` is a folder,
    not a glob (it was "no input files found")."""
    from pipeline.restart import job_identity

    corpus = tmp_path / "corpus [v2]"
    write(corpus / "a.parquet", id=["a"], text=TEXTS[:1])
    (corpus / "gone.parquet").symlink_to(tmp_path / "nowhere.parquet")
    config = NerConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(ner_checkpoint))
    plan, info, _ = build_plan(config, NER_TASK)
    assert [p.rsplit("/", 1)[-1] for p in plan.files.paths] == ["a.parquet", "gone.parquet"]
    assert plan.footers.rows == (1, None) and "FileNotFoundError" in plan.footers.unreadable[0][1]
    assert job_identity("ner", config, info, plan.files, ("float32",))["inputs"][1]["size"] is None
    doubled = tmp_path / "doubled"
    doubled.mkdir()
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(TEXTS[:1]), pa.array(["b"])],
                                        names=["id", "text", "id"]), doubled / "a.parquet")
    with pytest.raises(UsageError, match=r"a.parquet has more than one column named 'id': rewrite the file"):
        ner(doubled, ner_checkpoint, tmp_path)


def test_a_view_typed_text_column_is_kept_as_a_string(tmp_path, ner_checkpoint):
    """The docs say so; it was refused ("string_view, which the output cannot take")."""
    corpus = tmp_path / "corpus"
    write(corpus / "part.parquet", id=["a"], text=pa.array(TEXTS[:1], pa.string_view()))
    assert ner(corpus, ner_checkpoint, tmp_path, keep_columns=("text",))["a"]["text"] == TEXTS[0]


@pytest.mark.parametrize("options", [{"keep_columns": ("Entities",)}, {"id_column": "ENTITIES"}])
def test_names_that_differ_only_in_case_clash(options, tmp_path, ner_checkpoint):
    """DuckDB reads `Label` and `label` of one file as one name (the prediction became label_1 and `SELECT label`
    gave the kept column); Spark refuses the file."""
    corpus = tmp_path / "corpus"
    write(corpus / "part.parquet", id=["a"], ENTITIES=["b"], text=TEXTS[:1], Entities=["gold"])
    with pytest.raises(UsageError, match=r"would appear twice \(names are compared ignoring case"):
        ner(corpus, ner_checkpoint, tmp_path, **options)


@pytest.mark.parametrize("family, cls", [("bert", "[CLS]"), ("roberta", "<s>")])
def test_an_empty_context_answers_nothing_even_when_the_question_holds_the_cls_token(family, cls, tmp_path):
    """An empty (or whitespace) context is "no answer" (the HF pipeline refuses it). A question holding the literal
    CLS token answered with that token's offsets in the question: end 5 in a context of length 0."""
    corpus = tmp_path / "corpus"
    write(corpus / "part.parquet", id=["a", "b", "c"], text=["", "", " \n "],
          question=["Who works here?", f"{cls} who? {cls}", f"{cls} who?"])
    qa, _ = make_checkpoint(tmp_path / "qa", family, "qa")
    for impossible, answer, score in ((False, "", 0.0), (True, None, 1.0)):
        rows = annotate(QaConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(qa), max_length=48,
                                 doc_stride=16, question_column="question", handle_impossible_answer=impossible),
                        QA_TASK)
        for doc_id, row in rows.items():
            if doc_id == "c" and family == "roberta":   # byte-level BPE keeps whitespace as tokens: a context
                assert 0 <= row["start"] <= row["end"] <= 3
                continue
            assert (row["answer"], row["start"], row["end"]) == (answer, 0, 0)
            assert row["score"] == pytest.approx(score, abs=1e-6)


def mixed_text_corpus(folder: Path) -> Path:
    """One shard per way of storing a text column (pandas 3 writes large_string, Spark string, pandas a
    Categorical as dictionary), and one whose texts are all null (pandas writes that column as null-typed)."""
    kinds = {"string": pa.string(), "large": pa.large_string(), "view": pa.string_view(), "binary": pa.binary()}
    for name, kind in kinds.items():
        write(folder / f"{name}.parquet", id=[f"{name}-{i}" for i in range(3)], text=pa.array(TEXTS, kind))
    write(folder / "dictionary.parquet", id=[f"dictionary-{i}" for i in range(3)],
          text=pa.array(TEXTS).dictionary_encode())
    write(folder / "a-nulls.parquet", id=[f"null-{i}" for i in range(4)], text=pa.nulls(4))   # the first shard
    return folder


def test_shards_that_store_the_text_column_differently_are_one_corpus(tmp_path, ner_checkpoint):
    """They were refused ("input shards disagree on column 'text': … has string, … has large_string")."""
    corpus = mixed_text_corpus(tmp_path / "corpus")
    rows = ner(corpus, ner_checkpoint, tmp_path, keep_columns=("text",))
    assert sorted(rows) == sorted(f"{k}-{i}" for k in ("string", "large", "view", "binary", "dictionary")
                                  for i in range(3))   # the null texts are error rows
    for doc_id, row in rows.items():
        want = rows[f"string-{doc_id.rsplit('-', 1)[1]}"]
        assert (row["text"], row["entities"]) == (want["text"], want["entities"])


@pytest.mark.ray
def test_shards_that_store_the_text_column_differently_run_as_one_job(ray_session, tmp_path, ner_checkpoint):
    import pyarrow.dataset as pads

    from pipeline.job import run_job

    corpus = mixed_text_corpus(tmp_path / "corpus")
    output = tmp_path / "out"
    run = run_job(NerConfig(input=str(corpus), output=str(output), model=str(ner_checkpoint),
                            keep_columns=("text",), docs_per_batch=2), NER_TASK)   # null texts fill whole batches
    assert run["complete"] and (run["report"]["results"], run["report"]["errors"]) == (15, 4)
    errors = pa.concat_tables(pq.read_table(p) for p in sorted((output / "_errors").glob("*.parquet")))
    assert set(errors.column("error").to_pylist()) == {"null_text"}
    table = pads.dataset(output, format="parquet").to_table()
    assert table.schema.field("text").type == pa.string() and sorted(set(table.column("text").to_pylist())) == \
        sorted(TEXTS)


def test_spark_int96_timestamps_read_as_microseconds(tmp_path):
    """Spark and Hive write timestamps as INT96, which pyarrow reads as nanoseconds by default: kept as such, they
    made the results unreadable to Spark (Illegal Parquet type: INT64 (TIMESTAMP(NANOS,false)))."""
    import datetime

    from pipeline.read import scan_footers

    when = [datetime.datetime(2026, 1, 2, 3, 4, 5, 123456), None]
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"], "at": pa.array(when, pa.timestamp("us"))}),
                   tmp_path / "spark.parquet", use_deprecated_int96_timestamps=True)
    assert pq.read_schema(tmp_path / "spark.parquet").field("at").type == pa.timestamp("ns")   # pyarrow's default
    files = list_input_files(str(tmp_path / "spark.parquet"))
    assert files.schema().field("at").type == pa.timestamp("us")
    assert scan_footers(files, ("id", "text", "at")).rows == (2,)
    table = pa.concat_tables(ReadFile(files, ("id", "text", "at"))(0))
    assert table.schema.field("at").type == pa.timestamp("us") and table.column("at").to_pylist() == when
