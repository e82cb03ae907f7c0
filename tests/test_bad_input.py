"""Bad input becomes error rows with a reason (or a documented result), never silent loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.stage import ERROR, ERROR_TYPE
from pipeline.validate import ValidateConfig, ValidateText
from tests.conftest import REPO

VALID = {  # id -> text that must be annotated
    "empty": "", "spaces": "  \t \n ", "control": "John\x00Smith\x07 lives in\x1bParis\x7f\x85.",
    "cjk": "東京と北京は都市です。서울", "rtl": "שלום עולם مرحبا بالعالم", "emoji": "😀👍🏽 family 👨‍👩‍👧 in Paris",
    "dup": "John Smith", "plain": "Mary Jones visited London",
}
MAX_CHARS = 200
ERRORS = {"null-text": "null_text", "too-long": "text_too_long", "bad-bytes": "invalid_utf8",
          "lone-surrogate": "invalid_utf8"}


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/ner_corpus.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def text_array(values: list) -> pa.Array:
    """A string column that may hold invalid UTF-8 (as a broken writer would leave it)."""
    raw = [v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v for v in values]
    return pa.array(raw, pa.binary()).view(pa.string())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-corpus")
    rows = [*VALID.items(), ("dup", "Acme Corp in Berlin"), ("null-text", None), ("too-long", "word " * 60),
            ("bad-bytes", b"caf\xe9 au lait"), ("lone-surrogate", "half \ud800 pair"), (None, "no id here")]
    half = len(rows) // 2
    for name, part in (("a", rows[:half]), ("b", rows[half:])):
        pq.write_table(pa.table({"id": pa.array([r[0] for r in part], pa.string()),
                                 "text": text_array([r[1] for r in part])}), folder / f"{name}.parquet")
    (folder / "c.parquet").write_bytes(b"PAR1 this is not a parquet file")
    write_corrupt_second_row_group(folder / "d.parquet")
    return folder


def write_corrupt_second_row_group(path: Path) -> None:
    """Rows d0..d9 in two row groups; the footer and the ids read, the second group's text pages do not."""
    texts = [f"John Smith number {i} lives in Paris" for i in range(10)]
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(10)], "text": texts}), path, row_group_size=5,
                   compression="zstd")
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(1)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    for k in range(start + 20, start + chunk.total_compressed_size - 4):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.ray
def test_every_bad_row_is_accounted_for(corpus, ner_checkpoint, tmp_path):
    output = tmp_path / "out"
    done = run_cli("--input", str(corpus), "--model", str(ner_checkpoint), "--output", str(output),
                   "--max-chars", str(MAX_CHARS))
    assert done.returncode != 0, done.stderr[-3000:]
    assert not (output / "_SUCCESS").exists()      # the corrupt shard's rows are unknown
    results = pads.dataset(output, format="parquet").to_table()
    errors = pq.read_table(output / "_errors")
    ids = results.column("id").to_pylist()
    readable = [f"d{i}" for i in range(5)]         # the corrupt shard's first row group
    assert sorted(ids) == sorted([*VALID, "dup", *readable])  # duplicate ids: both rows annotated
    assert all(isinstance(e, list) for e in results.column("entities").to_pylist())
    reasons = {r["id"]: r["error"] for r in errors.to_pylist() if r["id"] is not None}
    assert reasons == {**ERRORS, **{f"d{i}": "corrupt_data" for i in range(5, 10)}}
    corrupt = [r for r in errors.to_pylist() if r["error"] == "corrupt_data"]
    assert {(r["source"], r["row"]) for r in corrupt} == {(str(corpus / "d.parquet"), i) for i in range(5, 10)}
    assert "row group 1" in corrupt[0]["message"] and "cannot be decoded" in corrupt[0]["message"]
    by_error = {r["error"]: r for r in errors.to_pylist()}
    assert by_error["null_id"]["id"] is None and by_error["null_id"]["message"] == "'id' is null"
    assert "--max-chars is 200" in by_error["text_too_long"]["message"]
    unreadable = by_error["unreadable_file"]
    assert unreadable["source"].endswith("c.parquet") and unreadable["row"] == -1
    run = json.loads((output / "_run.json").read_text())["report"]
    assert run["input_rows"] == run["results"] + run["errors"] == len(ids) + len(ERRORS) + 1 + len(corrupt)
    assert run["unreadable_files"] == [str(corpus / "c.parquet")] and run["unreadable_rows"] == 5


def test_binary_text_column_is_decoded_or_rejected():
    table = pa.table({"id": ["ok", "bad", "surrogate", "null"],
                      "text": pa.array([b"caf\xc3\xa9", b"caf\xe9", b"\xed\xa0\x80", None], pa.binary()),
                      ERROR: pa.nulls(4, ERROR_TYPE)})
    out = ValidateText(ValidateConfig())(table)
    assert out.column("text").type == pa.string() and out.column("text")[0].as_py() == "café"
    assert [e and e["error"] for e in out.column(ERROR).to_pylist()] == \
        [None, "invalid_utf8", "invalid_utf8", "null_text"]


def write(path: Path, **columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("case", ["no-text", "no-id", "int-text", "disagree"])
def test_configuration_errors_exit_with_one_line_before_cluster_work(case, ner_checkpoint, tmp_path):
    corpus = tmp_path / "in"
    if case == "no-text":
        write(corpus / "a.parquet", id=["1"], body=["x"])
    elif case == "no-id":
        write(corpus / "a.parquet", key=["1"], text=["x"])
    elif case == "int-text":
        write(corpus / "a.parquet", id=["1"], text=[7])
    else:
        write(corpus / "a.parquet", id=["1"], text=["x"])
        write(corpus / "b.parquet", id=[1], text=["y"])
    done = run_cli("--input", str(corpus), "--model", str(ner_checkpoint), "--output", str(tmp_path / "out"))
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0, done.stderr
    expected = {"no-text": "--text-column 'text': no such column", "no-id": "--id-column 'id': no such column",
                "int-text": "--text-column 'text' has type int64",
                "disagree": f"input shards disagree on column 'id': {corpus / 'a.parquet'} has string, "
                            f"{corpus / 'b.parquet'} has int64"}[case]
    assert expected in done.stderr
    assert not (tmp_path / "out").exists()


def test_footers_read_together_report_in_file_order(tmp_path):
    """Footers are read several at a time; unreadable files are listed, and the error raised is the first
    disagreement in file order, whichever footer came back first."""
    from pipeline.read import InputError, list_input_files, scan_footers

    for i in range(60):
        if i in (7, 41):
            (tmp_path / f"{i:02d}.parquet").write_bytes(b"PAR1 not parquet")
        else:   # ids as numbers from file 20 on, as strings again from 40 on
            write(tmp_path / f"{i:02d}.parquet", id=[i] * (i % 3) if 20 <= i < 40 else [str(i)] * (i % 3),
                  text=["x"] * (i % 3))
    files = list_input_files(str(tmp_path))
    with pytest.raises(InputError, match=f"disagree on column 'id': {tmp_path / '01.parquet'} has string, "
                                         f"{tmp_path / '20.parquet'} has int64"):
        scan_footers(files, ("id", "text"))
    footers = scan_footers(files, ("text",))
    assert footers.rows == tuple(None if i in (7, 41) else i % 3 for i in range(60))
    assert [i for i, _ in footers.unreadable] == [7, 41] and footers.first_readable == 1


def read_all(path: Path) -> pa.Table:
    from pipeline.read import ReadFile, list_input_files

    files = list_input_files(str(path))
    return pa.concat_tables(ReadFile(files, ("id", "text"), block_rows=3)(0))


def test_corrupt_row_group_becomes_error_rows_and_the_rest_is_read(tmp_path):
    write_corrupt_second_row_group(tmp_path / "d.parquet")
    table = read_all(tmp_path / "d.parquet")
    assert table.column("_row").to_pylist() == list(range(10))
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(10)]
    errors = [e and e["error"] for e in table.column(ERROR).to_pylist()]
    assert errors == [None] * 5 + ["corrupt_data"] * 5
    assert table.column("text").to_pylist()[5:] == [None] * 5


def test_a_read_failure_that_does_not_repeat_is_retried_not_an_error_row(tmp_path, monkeypatch):
    path = tmp_path / "ok.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(10)], "text": ["Paris"] * 10}), path, row_group_size=4)
    real, calls = pq.ParquetFile.iter_batches, []

    def flaky(self, *args, **kwargs):   # the first read of every row group fails after one batch
        calls.append(kwargs["row_groups"])
        for number, batch in enumerate(real(self, *args, **kwargs)):
            if calls.count(kwargs["row_groups"]) == 1 and number == 1:
                raise OSError("connection reset by peer")
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", flaky)
    monkeypatch.setattr("pipeline.read.time.sleep", lambda _: None)
    table = read_all(path)
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(10)]
    assert table.column("_row").to_pylist() == list(range(10))
    assert table.column(ERROR).null_count == 10


@pytest.mark.parametrize("case", ["no-tokenizer", "corrupt-tokenizer", "output-is-a-file", "unknown-protocol"])
def test_model_and_output_problems_are_one_line_too(case, ner_checkpoint, tmp_path):
    import shutil

    corpus, model, output = tmp_path / "in", tmp_path / "model", str(tmp_path / "out")
    write(corpus / "a.parquet", id=["1"], text=["x"])
    shutil.copytree(ner_checkpoint, model)
    if case == "no-tokenizer":
        for name in ("tokenizer.json", "vocab.txt"):
            (model / name).unlink(missing_ok=True)
    elif case == "corrupt-tokenizer":
        (model / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    elif case == "output-is-a-file":
        Path(output).write_text("a file")
    else:
        output = "nosuchprotocol://bucket/out"
    done = run_cli("--input", str(corpus), "--model", str(model), "--output", output)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    expected = {"no-tokenizer": "its tokenizer: no tokenizer in", "corrupt-tokenizer": "its tokenizer: ",
                "output-is-a-file": "--output", "unknown-protocol": "--output 'nosuchprotocol://bucket/out'"}[case]
    assert expected in done.stderr


@pytest.mark.ray
def test_a_model_whose_weights_do_not_load_fails_the_run_and_marks_no_row(ner_checkpoint, tmp_path):
    """The weights are read in the model actors only: a cut file failed every actor's constructor, and the run
    wrote every row as a worker_died error, _SUCCESS and exit 0. Now it exits 1 with the loader's error, and
    the output holds no row (a rerun does them all)."""
    import shutil

    corpus, model, output = tmp_path / "in", tmp_path / "model", tmp_path / "out"
    write(corpus / "a.parquet", id=["1", "2"], text=["John Smith lives in Paris", "x"])
    shutil.copytree(ner_checkpoint, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])   # header whole, tensors cut
    done = run_cli("--input", str(corpus), "--model", str(model), "--output", str(output))
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1, done.stderr[-3000:]
    assert last.startswith("ner_corpus.py: error: an actor of the Infer stage could not start: SafetensorError: "), last
    assert last.endswith("no row was marked done: run again once it is fixed")
    assert not (output / "_SUCCESS").exists() and not list(output.rglob("*.parquet"))


def test_a_ray_address_nobody_answers_at_is_one_line_not_a_wait(ner_checkpoint, tmp_path):
    """Ray itself retries a dead GCS address for minutes; the job says so at once (exit 2)."""
    import os
    import socket

    with socket.socket() as probe:   # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    corpus = tmp_path / "in"
    write(corpus / "a.parquet", id=["1"], text=["x"])
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    done = run_cli("--input", str(corpus), "--model", str(ner_checkpoint), "--output", str(tmp_path / "out"), env=env)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there" in done.stderr


def test_a_local_run_starts_its_own_ray_past_a_dead_ray_start_cluster(ner_checkpoint, tmp_path):
    """Without RAY_ADDRESS a run starts its own Ray: a cluster a `ray start` recorded on this machine
    (ray_current_cluster) that died without `ray stop` made a bare `ray.init()` retry it for ever."""
    import os
    import shutil
    import socket
    import tempfile

    with socket.socket() as probe:   # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))   # short: Ray's socket paths live below it
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        corpus = tmp_path / "in"
        write(corpus / "a.parquet", id=["1"], text=["John Smith lives in Paris"])
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(ray_tmp)}
        done = subprocess.run([sys.executable, "jobs/ner_corpus.py", "--input", str(corpus), "--model",
                               str(ner_checkpoint), "--output", str(tmp_path / "out")], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (tmp_path / "out" / "_SUCCESS").exists()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
