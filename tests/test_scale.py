"""Wide rows and large batches, without Ray: what must hold when a corpus's rows or writes are big."""

from __future__ import annotations

import dataclasses

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import ledger, ray_plan
from pipeline.ledger import commit, recover
from pipeline.read import ReadFile, list_input_files, scan_footers
from pipeline.sink import ResultWriter, SinkConfig, input_order
from pipeline.stage import ERROR, ERROR_TYPE, FILE_INDEX, ROW, SOURCE, StageSpec
from pipeline.validate import ValidateConfig, ValidateText
from schemas import results

NER = results.task_fields("ner")[0]


def _block(file: int, first_row: int, n: int, payload: pa.Array) -> pa.Table:
    """n annotated NER rows of one input file with a kept `payload` column (its values: `payload`, shared)."""
    rows = np.arange(first_row, first_row + n)
    return pa.table({
        "id": pa.array([f"f{file}-{r}" for r in rows]), "payload": payload,
        FILE_INDEX: pa.array([file] * n, pa.int32()), SOURCE: pa.array([f"in-{file}.parquet"] * n),
        ROW: pa.array(rows, pa.int64()), ERROR: pa.nulls(n, ERROR_TYPE),
        NER.name: pa.array([[]] * n, NER.type),
    })


def _sink(tmp_path, **overrides) -> SinkConfig:
    id_field = pa.field("id", pa.string())
    config = SinkConfig(output=str(tmp_path / "out"), errors_schema=results.errors_schema(id_field),
                        result_schema=results.result_schema("ner", id_field, (pa.field("payload", pa.string()),)))
    return dataclasses.replace(config, **overrides)


def test_a_write_past_2_gib_in_one_column_is_written_in_input_order(tmp_path):
    # 24,000 kept values of 100 KB (one buffer shared by the blocks: 0.6 GB of memory, 2.4 GB of rows), blocks out of
    # input order as a write receives them: Arrow's sort failed here with "offset overflow while concatenating arrays".
    payload = pa.array(["x" * 100_000] * 6000)
    blocks = [_block(1, 6000, 6000, payload), _block(0, 0, 6000, payload), _block(1, 0, 6000, payload),
              _block(0, 6000, 6000, payload)]
    table = pa.concat_tables(blocks)
    assert table.column("payload").nbytes > 2**31
    ordered = input_order(table)
    assert ordered.column("id").to_pylist() == [f"f{f}-{r}" for f in (0, 1) for r in range(12_000)]
    assert ordered.column("payload").chunk(0).buffers()[2].address == payload.buffers()[2].address  # not copied

    summary = ResultWriter(_sink(tmp_path, rows_per_file=100_000))(table)
    assert (summary["rows"], summary["errors"], len(summary["files"])) == (24_000, 0, 1)
    written = pq.read_table(summary["files"][0], columns=["id"])
    assert written.column("id").to_pylist() == ordered.column("id").to_pylist()
    assert pq.ParquetFile(summary["files"][0]).read_row_group(0, columns=["payload"]).column(0)[0].as_py() == \
        "x" * 100_000


def test_rows_far_out_of_order_are_sorted_all_the_same():
    table = pa.concat_tables([_block(0, r, 1, pa.array(["p"])) for r in np.random.default_rng(0).permutation(50)])
    assert input_order(table).column(ROW).to_pylist() == list(range(50))
    assert input_order(table.slice(0, 0)).num_rows == 0


def test_a_write_task_writes_its_bundle_in_parts_of_at_most_write_bytes(tmp_path, monkeypatch):
    # A bundle of rows_per_file rows with wide kept values is written as several parts, each committed on its own.
    payload = pa.array(["y" * 10_000] * 100)
    blocks = [_block(0, first, 100, payload) for first in range(0, 1000, 100)]
    monkeypatch.setattr(ray_plan, "WRITE_BYTES", 3 * max(b.nbytes for b in blocks))
    sink = ray_plan.ResultDatasink(StageSpec(ResultWriter, _sink(tmp_path, rows_per_file=1000)), 1000)
    returned = sink.write(iter(blocks), ctx=None)
    assert (returned["rows"], returned["errors"], len(returned["files"])) == (1000, 0, 4)   # 3 + 3 + 3 + 1 blocks
    entries = recover(str(tmp_path / "out")).entries
    assert [e["counters"]["rows"] for e in entries] == [300, 300, 300, 100]
    assert pq.read_table(tmp_path / "out", columns=["id"]).num_rows == 1000


def test_decode_hands_the_sink_only_what_it_writes(tmp_path):
    """The texts (unless kept) stay behind at decode: 100,000 documents of 21,000 characters would otherwise
    ride into a write (2 GiB) that writes none of them."""
    table = pa.table({"id": ["a"], "text": ["some text"], "payload": ["p"], FILE_INDEX: pa.array([0], pa.int32()),
                      SOURCE: ["in.parquet"], ROW: pa.array([0], pa.int64()), ERROR: pa.nulls(1, ERROR_TYPE),
                      NER.name: pa.array([[]], NER.type), "_stat_tokens": [2]})
    keep = StageSpec(ResultWriter, _sink(tmp_path)).columns[0]
    stage = StageSpec(ValidateText, ValidateConfig())   # any stage: what it returns still holds the text
    out = ray_plan._apply_stage(table, stage, keep=keep)
    assert out.column_names == ["id", "payload", FILE_INDEX, SOURCE, ROW, ERROR, NER.name, "_stat_tokens"]


def test_a_text_refused_at_validation_does_not_travel_further():
    table = pa.table({"id": ["a", "b", None], "text": ["fine", "z" * 50, "also fine"], "question": ["q", "q", "q"],
                      FILE_INDEX: pa.array([0] * 3, pa.int32()), SOURCE: ["in.parquet"] * 3,
                      ROW: pa.array(range(3), pa.int64()), ERROR: pa.nulls(3, ERROR_TYPE)})
    out = ValidateText(ValidateConfig(max_chars=10, second_texts=("question",)))(table)
    assert [e and e["error"] for e in out.column(ERROR).to_pylist()] == [None, "text_too_long", "null_id"]
    assert out.column("text").to_pylist() == ["fine", None, None]
    assert out.column("question").to_pylist() == ["q", None, None]
    assert out.column("id").to_pylist() == ["a", "b", None]   # the id goes to _errors
    same = ValidateText(ValidateConfig(id_column="text", max_chars=10))(table.drop_columns(["id"]))
    assert same.column("text").to_pylist() == ["fine", "z" * 50, "also fine"]   # --id-column text: still the id


def test_read_blocks_are_bounded_by_bytes_as_well_as_rows(tmp_path):
    big, small = "w" * 2**20, "s"
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(200)], "text": [big] * 200}), tmp_path / "a.parquet",
                   use_dictionary=False)
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(10_000)], "text": [small] * 10_000}),
                   tmp_path / "b.parquet")
    read = ReadFile(list_input_files(str(tmp_path)), ("id", "text"), block_bytes=16 * 2**20)
    wide = list(read(0))
    assert [b.num_rows for b in wide] == [16] * 12 + [8]          # 16 MiB of 1 MiB rows, not one 200 MiB block
    assert [r for b in wide for r in b.column(ROW).to_pylist()] == list(range(200))
    assert [b.num_rows for b in read(1)] == [4096, 4096, 1808]   # small rows: block_rows as before


def test_footers_give_each_files_text_bytes(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x" * 50_000, "y" * 30_000], "other": ["z" * 90_000] * 2}),
                   tmp_path / "a.parquet", use_dictionary=False, row_group_size=1)
    pq.write_table(pa.table({"id": ["c"], "text": ["short"], "other": ["o"]}), tmp_path / "b.parquet")
    footers = scan_footers(list_input_files(str(tmp_path)), ("id", "text"), frozenset({"text"}))
    assert footers.rows == (2, 1)
    assert 80_000 <= footers.text_bytes[0] < 81_000 and footers.text_bytes[1] < 100   # the text column only


def test_a_write_with_many_partition_values_passes_over_its_rows_once_not_once_per_value(tmp_path, monkeypatch):
    """A filter of the whole write per partition value cost values × rows: 50,000 values in a write of 100,000 rows
    took minutes. Counted here as the values compared (`pc.equal`); each folder still gets its rows in input order."""
    keys = [f"k{r % 300:03d}" if r % 7 else None for r in range(1200)]   # 300 values, nulls among them
    table = pa.concat_tables([_block(1, 600, 600, pa.array(keys[600:])), _block(0, 0, 600, pa.array(keys[:600]))])
    compared, equal = [], pc.equal
    monkeypatch.setattr(pc, "equal", lambda left, *rest, **kw: compared.append(len(left)) or equal(left, *rest, **kw))
    summary = ResultWriter(_sink(tmp_path, partition_by="payload"))(table)
    assert sum(compared) <= 2 * table.num_rows      # empty values found, twice: not 301 × 1,200 more
    assert (summary["rows"], len(summary["files"])) == (1200, 301)
    expected = {}
    for row, key in enumerate(keys):
        expected.setdefault(key, []).append(f"f{row // 600}-{row}")
    for key, ids in expected.items():
        folder = tmp_path / "out" / f"payload={key or '__HIVE_DEFAULT_PARTITION__'}"
        [part] = folder.iterdir()
        assert part.name == f"part-{int(ids[0][1]):05d}-{int(ids[0].split('-')[1]):012d}.parquet"
        assert pq.read_table(part).column("id").to_pylist() == ids


def test_recover_looks_up_an_entrys_files_in_one_set_of_what_it_found(tmp_path, monkeypatch):
    """A set of every file found was built again for each entry: entries × files, minutes for a partitioned output
    (500 entries of 5,000 folders each). Counted as the values put into sets."""
    out = tmp_path / "out"
    for entry in range(200):
        files = [f"k={entry}/part-{entry:05d}-{part:012d}.parquet" for part in range(3)]
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(b"")
        commit(fsspec.filesystem("file"), str(out), files, {entry: [(0, 10)]}, {"rows": 10}, run=1)
    counted = []

    def counting_set(values=()):
        values = list(values)
        counted.append(len(values))
        return set(values)

    monkeypatch.setattr(ledger, "set", counting_set, raising=False)
    progress = recover(str(out))
    assert len(progress.entries) == 200 and not progress.removed
    assert sum(counted) <= 2 * (600 + 200)        # the files found (and entries) once, not 200 × 800
