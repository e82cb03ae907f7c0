"""Each pipeline stage on tiny Arrow tables, without Ray (input-shape cases live in test_input_shapes.py,
micro-batching in test_micro_batches.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from models.layers import Int8Linear
from pipeline.infer import Infer, InferConfig
from pipeline.ner_decode import NerWindow, decode_entities
from pipeline.ner_task import NerDecode, NerDecodeConfig
from pipeline.read import InputError, ReadFile, check_columns, list_input_files
from pipeline.report import format_report, summarize
from pipeline.sink import ResultWriter, SinkConfig, prepare_output
from pipeline.stage import (
    ERROR,
    ERROR_TYPE,
    FILE_INDEX,
    OUTPUTS,
    ROW,
    SOURCE,
    WINDOWS,
    ChainError,
    StageSpec,
    check_chain,
)
from pipeline.tokenize import Tokenize, TokenizeConfig
from pipeline.validate import ValidateConfig, ValidateText
from schemas import results
from tests.checkpoints import NER_LABELS
from tests.conftest import make_texts, write_corpus


def docs_table(texts, ids=None) -> pa.Table:
    n = len(texts)
    return pa.table({
        "id": pa.array(ids if ids is not None else [f"d{i}" for i in range(n)]),
        "text": pa.array(texts, pa.string()),
        FILE_INDEX: pa.array([0] * n, pa.int32()),
        SOURCE: pa.array(["in.parquet"] * n),
        ROW: pa.array(range(n), pa.int64()),
        ERROR: pa.nulls(n, ERROR_TYPE),
    })


# --- read ---------------------------------------------------------------------------------------

def test_list_input_files_folder_glob_file_and_hidden_entries(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "_errors").mkdir()
    pq.write_table(pa.table({"x": [1]}), corpus / "_errors" / "part-0.parquet")
    (corpus / "_SUCCESS").write_text("")
    files = list_input_files(str(corpus))
    assert [p.rsplit("/", 2)[-2:] for p in files.paths] == [
        ["lang=en", "part-0.parquet"], ["lang=en", "part-2.parquet"], ["lang=fr", "part-1.parquet"]]
    globbed = list_input_files(str(corpus / "lang=*" / "*.parquet"))
    assert len(globbed.paths) == 3 and globbed.partition_values(globbed.paths[2]) == {"lang": "fr"}
    assert len(list_input_files(files.paths[0]).paths) == 1
    named = str(corpus / "_errors" / "part-0.parquet")   # a file the user names is read, whatever its name
    assert list_input_files(named).paths == (named,)
    assert files.partition_values(files.paths[2]) == {"lang": "fr"}
    assert "lang" in files.schema().names
    with pytest.raises(InputError, match="no such file"):
        list_input_files(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no input files found"):
        list_input_files(str(tmp_path / "empty"))


def test_read_file_adds_provenance_and_partition_columns(tmp_path):
    files = list_input_files(str(write_corpus(tmp_path / "corpus")))
    blocks = list(ReadFile(files, ("id", "text", "lang", "date"), block_rows=5)(2))
    assert [b.num_rows for b in blocks] == [5, 5, 2]
    table = pa.concat_tables(blocks)
    assert table.column_names == ["id", "text", "lang", "date", FILE_INDEX, SOURCE, ROW, ERROR]
    assert table.column(ROW).to_pylist() == list(range(12))
    assert set(table.column("lang").to_pylist()) == {"fr"}
    assert set(table.column(FILE_INDEX).to_pylist()) == {2}
    assert table.column(SOURCE)[0].as_py().endswith("lang=fr/part-1.parquet")
    assert table.column(ERROR).null_count == 12


def test_check_columns_names_the_flag_and_the_columns():
    schema = pa.schema([("id", pa.string()), ("body", pa.string())])
    with pytest.raises(InputError, match=r"--text-column 'text': no such column.*id, body"):
        check_columns(schema, [("--id-column", "id"), ("--text-column", "text")])


# --- validate, chain ----------------------------------------------------------------------------

def test_validate_marks_null_text_and_null_id_keeps_empty_text():
    table = docs_table(["fine", None, "", "x"], ids=["a", "b", "c", None])
    out = ValidateText(ValidateConfig())(table)
    errors = out.column(ERROR).to_pylist()
    assert errors[0] is None and errors[2] is None
    assert errors[1]["error"] == "null_text" and errors[1]["stage"] == "validate"
    assert errors[3]["error"] == "null_id"


def test_validate_rejects_non_string_text_column():
    table = docs_table(["a", "b"]).set_column(1, "text", pa.array([1, 2]))
    errors = ValidateText(ValidateConfig())(table).column(ERROR).to_pylist()
    assert [e["error"] for e in errors] == ["text_type", "text_type"]
    assert "int64" in errors[0]["message"]


def test_check_chain_reports_the_missing_column():
    validate = StageSpec(ValidateText, ValidateConfig(text_column="body"))
    assert check_chain(["id", "body", ERROR], [validate]) == ["id", "body", ERROR]
    with pytest.raises(ChainError, match=r"stage 'validate' needs columns \['body'\]"):
        check_chain(["id", "text", ERROR], [validate])


# --- tokenize, infer, decode ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def ner_stages(ner_checkpoint):
    folder = str(ner_checkpoint)
    tokenize = Tokenize(TokenizeConfig(folder, max_length=32, stride=8))
    decode = NerDecode(NerDecodeConfig(folder, tuple(NER_LABELS)))
    return tokenize, decode


def test_tokenize_nests_windows_per_document(ner_stages):
    tokenize, _ = ner_stages
    texts = make_texts(6)
    table = ValidateText(ValidateConfig())(docs_table([*texts, None]))
    out = tokenize(table)
    expected = tokenize.tokenizer.encode_windows(texts, max_length=32, stride=8)
    windows = out.column(WINDOWS).to_pylist()
    assert windows[-1] is None  # the null text stays an error row
    for doc, want in zip(windows, expected):
        assert [w["ids"] for w in doc] == [list(map(int, w.ids)) for w in want]
        assert [w["offsets"] for w in doc] == [np.asarray(w.offsets).tolist() for w in want]
    assert max(len(d) for d in windows[:-1]) > 1  # some texts needed several windows
    assert out.column("_stat_windows").to_pylist() == [len(w) for w in expected] + [0]
    assert out.schema.field(WINDOWS).type.value_type.field("ids").type == pa.list_(pa.int32())


def test_infer_outputs_do_not_depend_on_batching(ner_stages, ner_checkpoint):
    tokenize, _ = ner_stages
    tokenized = tokenize(ValidateText(ValidateConfig())(docs_table([*make_texts(8), None])))
    outputs = []
    for budget in (32, 4096):
        infer = Infer(InferConfig(str(ner_checkpoint), "ner", batch_tokens=budget, device="cpu"))
        out = infer(tokenized)
        outputs.append(out.column(OUTPUTS).to_pylist())
        real, padded = pc_sum(out, "_stat_tokens"), pc_sum(out, "_stat_padded_tokens")
        assert padded >= real > 0
    small, large = outputs
    assert small[-1] is None and large[-1] is None
    for a, b in zip(small[:-1], large[:-1]):
        np.testing.assert_allclose(np.array(sum(a, []), dtype=np.float32),
                                   np.array(sum(b, []), dtype=np.float32), atol=1e-5)
    first_doc = small[0]
    assert len(first_doc[0]) == len(tokenized.column(WINDOWS)[0].as_py()[0]["ids"])  # one vector per token
    assert len(first_doc[0][0]) == len(NER_LABELS)


def pc_sum(table, column):
    return int(np.sum(table.column(column).to_numpy()))


def test_ner_decode_equals_decode_entities(ner_stages, ner_checkpoint):
    tokenize, decode = ner_stages
    texts = make_texts(6)
    infer = Infer(InferConfig(str(ner_checkpoint), "ner", device="cpu"))
    inferred = infer(tokenize(ValidateText(ValidateConfig())(docs_table([*texts, None]))))
    out = decode(inferred)
    assert WINDOWS not in out.column_names and OUTPUTS not in out.column_names
    assert out.schema.field("entities").type == results.task_fields("ner")[0].type
    entities = out.column("entities").to_pylist()
    assert entities[-1] is None
    windows, logits = inferred.column(WINDOWS).to_pylist(), inferred.column(OUTPUTS).to_pylist()
    for i, text in enumerate(texts):
        ner_windows = [
            NerWindow(np.array(w["ids"], np.int32), np.array(w["offsets"], np.int32).reshape(-1, 2),
                      np.array(w["sequence_ids"]) < 0, np.array(lg, np.float32))
            for w, lg in zip(windows[i], logits[i])
        ]
        want = decode_entities(text, ner_windows, NER_LABELS, "simple", ("O",),
                               decode.tokenizer.id_to_token, decode.tokenizer.continuing_subword_prefix)
        assert [(e["label"], e["start"], e["end"], e["text"]) for e in entities[i]] == \
               [(e["label"], e["start"], e["end"], e["text"]) for e in want]
        np.testing.assert_allclose([e["score"] for e in entities[i]], [e["score"] for e in want], atol=1e-6)


# --- sink, report -------------------------------------------------------------------------------

def _sink_config(tmp_path, **overrides) -> SinkConfig:
    id_field = pa.field("id", pa.string())
    config = SinkConfig(
        output=str(tmp_path / "out"),
        result_schema=results.result_schema("ner", id_field, (pa.field("lang", pa.string()),)),
        errors_schema=results.errors_schema(id_field),
        metadata=(("bertbatch.task", "ner"),), rows_per_file=2,
    )
    return dataclasses.replace(config, **overrides)


def _annotated(n: int) -> pa.Table:
    table = docs_table([f"text {i}" for i in range(n)]).append_column("lang", pa.array(["en", "fr"] * (n // 2)))
    entity = {"label": "PER", "text": "text", "start": 0, "end": 4, "score": 0.5}
    entities = pa.array([[entity]] * n, type=results.task_fields("ner")[0].type)
    table = table.append_column("entities", entities).append_column("_stat_tokens", pa.array([3] * n, pa.int64()))
    errors = table.column(ERROR).to_pylist()
    errors[1] = {"stage": "tokenize", "error": "ValueError", "message": "bad"}
    return table.set_column(table.schema.get_field_index(ERROR), ERROR, pa.array(errors, ERROR_TYPE))


def test_sink_writes_results_errors_and_metadata(tmp_path):
    summary = ResultWriter(_sink_config(tmp_path))(_annotated(6))
    assert (summary["rows"], summary["errors"], summary["tokens"]) == (5, 1, 18)
    out = tmp_path / "out"
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == ["part-00000-000000000000.parquet", "part-00000-000000000003.parquet"]  # ≈ 2 rows per file
    dataset = pads.dataset(out, format="parquet")  # _errors/ is ignored, as Spark/Hive do
    assert sorted(dataset.to_table().column("id").to_pylist()) == ["d0", "d2", "d3", "d4", "d5"]
    assert dataset.schema.field("entities").type == results.task_fields("ner")[0].type
    assert pq.read_schema(out / parts[0]).metadata[b"bertbatch.task"] == b"ner"
    errors = pq.read_table(out / "_errors")
    assert errors.to_pylist() == [
        {"id": "d1", "source": "in.parquet", "row": 1, "stage": "tokenize", "error": "ValueError", "message": "bad"}]
    assert not list(out.rglob(".*.tmp"))


def test_sink_partitions_by_a_column(tmp_path):
    ResultWriter(_sink_config(tmp_path, partition_by="lang", rows_per_file=100))(_annotated(6))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["_errors", "_progress", "lang=en", "lang=fr"]
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table()
    assert sorted(zip(table.column("id").to_pylist(), table.column("lang").to_pylist())) == [
        ("d0", "en"), ("d2", "en"), ("d3", "fr"), ("d4", "en"), ("d5", "fr")]


def test_partition_folders_are_named_as_hive_and_spark_name_them(tmp_path):
    """Spark reads `%XX` as one character: percent-encoded UTF-8 came back garbled (café → cafÃ©), and it refuses a
    folder `lang=` (an empty value, which Spark itself writes as null). pyarrow and DuckDB read both the same."""
    import duckdb

    table = _annotated(6)
    langs = ["café", "x#y", "", "東京", "a/b=c%", None]       # d1 is an error already (_annotated)
    table = table.set_column(table.schema.get_field_index("lang"), "lang", pa.array(langs))
    ResultWriter(_sink_config(tmp_path, partition_by="lang", rows_per_file=100))(table)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("lang=")) == [
        "lang=__HIVE_DEFAULT_PARTITION__", "lang=a%2Fb%3Dc%25", "lang=café", "lang=東京"]
    hive = pads.partitioning(pa.schema([("lang", pa.string())]), flavor="hive")
    read = pads.dataset(out, format="parquet", partitioning=hive).to_table()
    expected = [("d0", "café"), ("d2", None), ("d3", "東京"), ("d4", "a/b=c%"), ("d5", None)]
    assert sorted(zip(*read.select(["id", "lang"]).to_pydict().values()), key=str) == sorted(expected, key=str)
    got = duckdb.sql(f"SELECT id, lang FROM read_parquet('{out}/lang=*/*.parquet', hive_partitioning=true)").fetchall()
    assert sorted(got, key=str) == sorted(expected, key=str)


def test_a_partition_value_too_long_for_a_folder_name_is_an_error_row(tmp_path):
    """90 CJK characters make a folder name of 275 bytes: the write failed (File name too long) after all the
    inference, and again on every resume; those rows are errors now, the others written."""
    table = _annotated(6)
    langs = ["en", "東" * 90, "fr", "東" * 90, "é" * 126, None]
    table = table.set_column(table.schema.get_field_index("lang"), "lang", pa.array(langs))
    summary = ResultWriter(_sink_config(tmp_path, partition_by="lang", rows_per_file=100))(table)
    assert (summary["rows"], summary["errors"]) == (3, 3)
    out = tmp_path / "out"
    written = pads.dataset(out, format="parquet", partitioning="hive").to_table()
    assert sorted(written.column("id").to_pylist()) == ["d0", "d2", "d5"]
    errors = {r["id"]: r for r in pq.read_table(out / "_errors").to_pylist()}
    assert errors["d1"]["stage"] == "tokenize"          # an earlier error stays as it was
    assert errors["d3"]["error"] == errors["d4"]["error"] == "partition_value_too_long"
    assert "makes a folder name of 275 bytes, past the 255" in errors["d3"]["message"]


def test_on_an_object_store_only_the_key_length_limits_a_partition_value(monkeypatch):
    """An object store has no folder names: a 365-byte `lang=…` segment is a fine key there (it was written before the
    255-byte folder check); a key past 1,024 bytes is not."""
    from pathlib import Path

    import fsspec

    from pipeline import sink

    monkeypatch.setattr(sink, "is_object_store", lambda fs: True)   # the memory filesystem standing in for S3
    fs = fsspec.filesystem("memory")
    if fs.exists("/bucket"):
        fs.rm("/bucket", recursive=True)
    table = _annotated(6)
    langs = ["en", "fr", "fr", "é" * 520, "é" * 150, None]    # d1 is an error already (_annotated)
    table = table.set_column(table.schema.get_field_index("lang"), "lang", pa.array(langs))
    config = dataclasses.replace(_sink_config(Path("/")), output="memory://bucket/out", partition_by="lang",
                                 rows_per_file=100)
    summary = ResultWriter(config)(table)
    assert (summary["rows"], summary["errors"]) == (4, 2)
    assert any(f"/lang={'é' * 150}/part-" in path for path in fs.find("/bucket/out"))
    errors = pq.read_table(fs.open(fs.find("/bucket/out/_errors")[0])).to_pylist()
    assert [e["error"] for e in errors if e["id"] == "d3"] == ["partition_value_too_long"]
    assert "past the 1024 a key may have" in next(e["message"] for e in errors if e["id"] == "d3")


def test_an_output_without_result_rows_gets_an_empty_file_where_readers_look(tmp_path):
    import duckdb

    from pipeline.sink import write_empty_results

    flat, partitioned = _sink_config(tmp_path / "flat"), _sink_config(tmp_path / "parted", partition_by="lang")
    write_empty_results(flat)
    write_empty_results(partitioned)
    assert duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path}/flat/out/*.parquet')").columns == \
        ["id", "lang", "entities"]
    got = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path}/parted/out/lang=*/*.parquet', hive_partitioning=true)")
    assert sorted(got.columns) == ["entities", "id", "lang"] and got.fetchall() == []
    # pyarrow infers no type from null partition values alone: it is given one
    hive = pads.partitioning(pa.schema([("lang", pa.string())]), flavor="hive")
    assert pads.dataset(tmp_path / "parted" / "out", format="parquet", partitioning=hive).to_table().num_rows == 0


def test_sink_refuses_a_batch_that_does_not_match_the_schema(tmp_path):
    table = _annotated(2)
    table = table.set_column(table.schema.get_field_index("lang"), "lang", pa.array([1, 2]))
    with pytest.raises(results.SchemaMismatch, match="lang: int64 != expected string"):
        ResultWriter(_sink_config(tmp_path))(table)


def test_report_sums_counters_and_formats():
    writes = [{"rows": 3, "errors": 1, "files": ["a"], "tokens": 30, "padded_tokens": 40, "windows": 4,
               "seconds_infer": 2.0}, {"rows": 1, "errors": 0, "files": ["b"], "tokens": 10, "padded_tokens": 10,
                                       "windows": 1, "seconds_infer": 2.0}]
    report = summarize(writes, input_rows=5, wall_seconds=2.0)
    assert (report["documents"], report["results"], report["errors"], report["files"]) == (5, 4, 1, 2)
    assert report["padding_efficiency"] == 0.8 and report["stages"]["infer"]["tokens_per_busy_second"] == 10.0
    assert "padding efficiency 80.0%" in format_report(report)


def test_prepare_output_needs_overwrite_and_never_deletes_foreign_files(tmp_path):
    out = tmp_path / "out"
    ResultWriter(_sink_config(tmp_path))(_annotated(4))
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        prepare_output(str(out), overwrite=False)
    prepare_output(str(out), overwrite=True)
    assert list(out.iterdir()) == []
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files a run did not write"):
        prepare_output(str(out), overwrite=True)
    assert (out / "notes.txt").exists()


def test_infer_keeps_the_output_type_for_a_batch_of_error_rows(ner_stages, ner_checkpoint):
    tokenize, _ = ner_stages
    infer = Infer(InferConfig(str(ner_checkpoint), "ner", device="cpu"))
    only_errors = infer(tokenize(ValidateText(ValidateConfig())(docs_table([None, None]))))
    normal = infer(tokenize(ValidateText(ValidateConfig())(docs_table(["John Smith"]))))
    assert only_errors.schema.field(OUTPUTS).type == normal.schema.field(OUTPUTS).type
    assert only_errors.column(OUTPUTS).to_pylist() == [None, None]


def test_infer_turns_ids_past_the_models_embeddings_into_error_rows(ner_stages, ner_checkpoint):
    """A tokenizer that does not match the model (added tokens, another model's vocabulary) fails the
    documents with such tokens, not their batch."""
    tokenize, _ = ner_stages
    infer = Infer(InferConfig(str(ner_checkpoint), "ner", device="cpu"))
    tokenized = tokenize(ValidateText(ValidateConfig())(docs_table(make_texts(5))))
    windows = tokenized.column(WINDOWS).to_pylist()
    windows[1][-1]["ids"][1] = infer.model.config.vocab_size
    windows[3][0]["type_ids"][2] = infer.model.config.type_vocab_size
    tampered = tokenized.set_column(tokenized.schema.get_field_index(WINDOWS), WINDOWS,
                                    pa.array(windows, tokenized.schema.field(WINDOWS).type))
    out, want = infer(tampered), infer(tokenized)
    errors = out.column(ERROR).to_pylist()
    assert [e is None for e in errors] == [True, False, True, False, True]
    vocab = infer.model.config.vocab_size
    assert errors[1]["stage"] == "infer"
    assert f"token id {vocab} is past the model's vocabulary of {vocab} tokens" in errors[1]["message"]
    assert "token type 2 is past the model's 2 token types" in errors[3]["message"]
    got = out.column(OUTPUTS).to_pylist()
    assert got[1] is None and got[3] is None
    for doc in (0, 2, 4):
        np.testing.assert_allclose(np.array(sum(got[doc], []), dtype=np.float32),
                                   np.array(sum(want.column(OUTPUTS)[doc].as_py(), []), dtype=np.float32), atol=1e-5)


# Runs with OMP_NUM_THREADS=1 (what Ray sets in its workers): builds the stage in the main thread and
# runs a batch in another one, as a Ray actor does; prints the OpenMP thread count inside the forward.
THREAD_PROBE = """
import ctypes, sys, threading
import torch
from pipeline.infer import Infer, InferConfig
from pipeline.tokenize import Tokenize, TokenizeConfig
from pipeline.validate import ValidateConfig, ValidateText
from tests.test_stages import docs_table

gomp = next(line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line)
omp_get_max_threads = ctypes.CDLL(gomp).omp_get_max_threads
infer = Infer(InferConfig(sys.argv[1], "ner", device="cpu", threads=2, dtype=sys.argv[2]))
table = Tokenize(TokenizeConfig(sys.argv[1], max_length=32))(ValidateText(ValidateConfig())(docs_table(["John Smith"])))
seen = []
forward = infer.model.forward_batches
infer.model.forward_batches = lambda *args: seen.append(omp_get_max_threads()) or forward(*args)
worker = threading.Thread(target=infer, args=(table,))
worker.start()
worker.join()
print(seen)
"""


def test_model_threads_hold_in_the_thread_that_runs_the_batches(ner_checkpoint):
    """OpenMP keeps its thread count per thread: set only where the stage was built, the batches ran
    their matmuls on one core in a Ray actor (OMP_NUM_THREADS=1, batches in another thread)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", THREAD_PROBE, str(ner_checkpoint), "bfloat16"], env=env,
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[2]"


def test_int8_quantises_the_encoders_linear_layers_on_cpu_only(ner_checkpoint):
    from pipeline.infer import resolve_dtype

    with pytest.raises(ValueError, match="int8.*CPU only"):
        resolve_dtype("int8", "cuda")
    infer = Infer(InferConfig(str(ner_checkpoint), "ner", device="cpu", dtype="int8"))
    modules = list(infer.model.encoder.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in modules)
    assert any(isinstance(m, Int8Linear) for m in modules)
    assert isinstance(infer.model.head.classifier, torch.nn.Linear)   # the head stays fp32


class DeviceMemory:
    """A model that raises as CUDA does when a forward pass has more than `limit` padded tokens."""

    def __init__(self, model, limit: int) -> None:
        self.model, self.limit, self.passes = model, limit, []

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def forward_batches(self, batches):
        self.passes.append([tuple(input_ids.shape) for input_ids, _, _ in batches])
        if sum(input_ids.numel() for input_ids, _, _ in batches) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return self.model.forward_batches(batches)


def test_a_pass_out_of_device_memory_is_split_and_the_budget_halved(ner_stages, ner_checkpoint, caplog):
    """A forward pass the GPU has no memory for runs again in halves, later ones under the halved
    budget; the outputs are those of a run with memory enough."""
    tokenize, _ = ner_stages
    tokenized = tokenize(ValidateText(ValidateConfig())(docs_table(make_texts(8))))
    reference = Infer(InferConfig(str(ner_checkpoint), "ner", batch_tokens=4096, device="cpu"))(tokenized)
    infer = Infer(InferConfig(str(ner_checkpoint), "ner", batch_tokens=4096, device="cpu"))
    infer.model = DeviceMemory(infer.model, limit=200)
    out = infer(tokenized)
    assert out.column(OUTPUTS).to_pylist() == reference.column(OUTPUTS).to_pylist()
    assert infer.batch_tokens <= 200 and "--batch-tokens" in caplog.text
    tokens = [sum(rows * width for rows, width in shapes) for shapes in infer.model.passes]
    assert tokens[0] > 200   # the first pass did not fit
    windows = sum(len(doc) for doc in tokenized.column(WINDOWS).to_pylist())
    ran = [rows for shapes, n in zip(infer.model.passes, tokens) if n <= 200 for rows, _ in shapes]
    assert sum(ran) == windows   # each window ran once, in the end

    infer.model = DeviceMemory(infer.model.model, limit=0)
    with pytest.raises(torch.OutOfMemoryError, match="a single window of"):
        infer(tokenized)


def test_max_pooling_runs_in_half_precision():
    """-1e9 for the padding overflowed float16 (RuntimeError), and so did weightedmean's weights (zeros)."""
    from models.heads import Pooling

    hidden = torch.randn(3, 512, 8)
    mask = torch.zeros(3, 512, dtype=torch.long)
    for row, length in enumerate((3, 512, 1)):
        mask[row, :length] = 1
    modes = ("max", "weightedmean", "mean")   # position weights of 512 tokens sum past float16's 65504
    full = Pooling(modes, False)(hidden, mask)
    for dtype in (torch.float16, torch.bfloat16):
        half = Pooling(modes, False)(hidden.to(dtype), mask.to(dtype))
        torch.testing.assert_close(half.float(), full, atol=2e-2, rtol=1e-2)
