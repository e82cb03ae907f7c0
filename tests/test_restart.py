"""Exactly-once restarts: the NER job SIGKILLed at named moments (BERTBATCH_TEST_KILL_AT) and from outside.

Each job runs as `python jobs/ner_corpus.py ...` in its own session with its own local Ray; the
kill hook takes the driver's whole process group down (the local Ray it started), like a lost node.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_ner_job, write_corpus

pytestmark = pytest.mark.ray
SHARDS, ROWS = 4, 15
OPTIONS = ("--rows-per-file", "5", "--docs-per-batch", "5", "--stride", "16")


def run_job(corpus: Path, model: Path, output: Path, *extra: str, kill: str | None = None,
            kill_at_first_commit: bool = False) -> subprocess.CompletedProcess:
    """The job; `kill_at_first_commit`: killed from outside as soon as a write task committed."""
    committed = (lambda: bool(list(output.glob("_progress/0*.json")))) if kill_at_first_commit else None
    return run_ner_job(corpus, model, output, *OPTIONS, *extra, kill=kill, killed_when=committed)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), shards=SHARDS, rows_per_shard=ROWS)


@pytest.fixture(scope="module")
def reference(corpus, ner_checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("reference") / "out"
    done = run_job(corpus, ner_checkpoint, output)
    assert done.returncode == 0, done.stdout[-3000:]
    return output


def input_ids(corpus: Path) -> list[str]:
    return pads.dataset(corpus, format="parquet", partitioning="hive").to_table().column("id").to_pylist()


def read_output(output: Path) -> tuple[dict, dict]:
    results = pads.dataset(output, format="parquet").to_table()
    if "id" not in results.column_names:  # no result file at all
        results = pa.table({"id": pa.array([], pa.string())})
    errors = pq.read_table(output / "_errors") if (output / "_errors").exists() else pa.table({"id": []})
    ids = results.column("id").to_pylist() + errors.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "a row was written twice"
    return {r["id"]: r for r in results.to_pylist()}, {r["id"]: r for r in errors.to_pylist()}


def assert_same_as_reference(output: Path, reference: Path, corpus: Path) -> dict:
    results, errors = read_output(output)
    assert sorted(results.keys() | errors.keys()) == sorted(input_ids(corpus))
    want_results, want_errors = read_output(reference)
    assert results.keys() == want_results.keys() and errors.keys() == want_errors.keys()
    for doc_id, row in results.items():
        want = want_results[doc_id]["entities"]
        assert [(e["label"], e["start"], e["end"]) for e in row["entities"]] == \
               [(e["label"], e["start"], e["end"]) for e in want]
        np.testing.assert_allclose([e["score"] for e in row["entities"]], [e["score"] for e in want], atol=1e-5)
    assert (output / "_SUCCESS").exists()
    run = json.loads((output / "_run.json").read_text())
    assert run["complete"] and run["report"]["documents"] == run["report"]["input_rows"] == SHARDS * ROWS
    assert not list(output.rglob(".*.tmp"))
    return run


def test_driver_killed_at_four_moments_and_from_outside(corpus, ner_checkpoint, reference, tmp_path):
    """One output, killed again and again; every rerun is the same command and continues. One model
    actor per run (six runs, each starting its own Ray: fewer worker processes to start on two cores).
    Mid-pipeline kills (a batch being read or in the model) are the one from outside, at the first commit."""
    output, one = tmp_path / "out", ("--model-actors", "1")
    killed = run_job(corpus, ner_checkpoint, output, *one, kill_at_first_commit=True)
    assert not (output / "_SUCCESS").exists()
    for point in ("start:1", "write:1", "commit:1", "finish:1"):
        killed = run_job(corpus, ner_checkpoint, output, *one, kill=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stdout[-3000:])
        assert not (output / "_SUCCESS").exists()
    final = run_job(corpus, ner_checkpoint, output, *one)
    assert final.returncode == 0, final.stdout[-3000:]
    run = assert_same_as_reference(output, reference, corpus)
    rows = [r["rows_processed"] for r in run["runs"]]
    assert len(rows) == 6 and sum(rows) == SHARDS * ROWS   # each rerun did only the rest: nothing committed twice
    assert rows[0] > 0 and rows[1] == 0 and rows[3] > 0    # outside kill and commit:1 after a commit; start:1 before
    assert rows[4] > 0 and rows[5] == 0                    # finish:1 killed just before _SUCCESS


def test_one_shard_is_committed_batch_by_batch_and_a_rerun_redoes_only_the_rest(ner_checkpoint, reference, tmp_path):
    """Ray joins what one read task yields into one block; cut into model batches (`ray_plan._blocks_of`), one file
    is committed as it goes, so a kill after its second commit leaves only the rest to do."""
    corpus = write_corpus(tmp_path / "corpus", shards=1, rows_per_shard=SHARDS * ROWS)   # the reference's rows
    output, one = tmp_path / "out", ("--model-actors", "1", "--progress-seconds", "0.2")
    killed = run_job(corpus, ner_checkpoint, output, *one, kill="commit:2")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    final = run_job(corpus, ner_checkpoint, output, *one)
    assert final.returncode == 0, final.stdout[-3000:]
    run = assert_same_as_reference(output, reference, corpus)
    first, rest = (r["rows_processed"] for r in run["runs"])
    assert 0 < first < SHARDS * ROWS and first + rest == SHARDS * ROWS
    # stdout is a pipe, as in a `ray job submit` or Airflow log: the progress line (pipeline/progress_log.py)
    # instead of Ray Data's snapshots, and the rerun's lines count from what the killed run committed
    for job in (killed, final):
        assert "Running Dataset" not in job.stdout and "Progress bars disabled" not in job.stdout
    done = [int(n) for n in re.findall(rf"^bertbatch ner: (\d+) of {SHARDS * ROWS} rows done", final.stdout, re.M)]
    assert done and done == sorted(done) and done[0] >= first, final.stdout[-3000:]


def test_model_actor_killed_mid_run_is_restarted(corpus, ner_checkpoint, reference, tmp_path):
    output = tmp_path / "out"
    done = run_job(corpus, ner_checkpoint, output, kill="model_actor:2")
    assert done.returncode == 0, done.stdout[-3000:]
    assert_same_as_reference(output, reference, corpus)


def test_finished_output_is_not_recomputed_other_model_refuses_overwrite_replaces(
        corpus, ner_checkpoint, reference, tmp_path):
    import shutil

    from tests.checkpoints import make_checkpoint

    def stamps() -> dict:
        return {p: p.stat().st_mtime_ns for p in [reference, *reference.rglob("*")]}

    untouched = stamps()
    again = run_job(corpus, ner_checkpoint, reference)
    assert again.returncode == 0 and "already complete" in again.stdout
    assert stamps() == untouched    # not even the lease taken: nothing written, no folder changed
    before = json.loads((reference / "_run.json").read_text())
    assert len(before["runs"]) == 1

    other, _ = make_checkpoint(tmp_path / "other", "bert", "ner", seed=1)
    refused = run_job(corpus, other, reference)
    assert refused.returncode != 0
    last_line = refused.stdout.strip().splitlines()[-1]
    assert "was made with another model" in last_line and "--overwrite" in last_line
    refused = run_job(corpus, ner_checkpoint, reference, "--aggregation", "first")
    assert refused.returncode != 0 and "--aggregation 'simple'" in refused.stdout

    output = tmp_path / "copy"   # another model's output, cut short as a kill leaves it: --overwrite replaces it whole
    shutil.copytree(reference, output)
    for name in ("_SUCCESS", "_run.json", sorted((output / "_progress").glob("0*.json"))[-1]):
        (output / name).unlink()                                  # not finished; the last commit never happened
    (output / ".part-00003-000000000010.parquet.abc.tmp").write_bytes(b"cut")   # a write in progress
    replaced = run_job(corpus, other, output, "--overwrite")
    assert replaced.returncode == 0, replaced.stdout[-3000:]
    run = json.loads((output / "_run.json").read_text())
    assert len(run["runs"]) == 1 and run["runs"][0]["rows_processed"] == SHARDS * ROWS
    assert run["model"]["sha256"] != before["model"]["sha256"]
    assert len(read_output(output)[0]) + len(read_output(output)[1]) == SHARDS * ROWS and not list(output.rglob("*.tmp"))


def test_a_crash_on_every_batch_ends_in_error_rows_after_bounded_passes(corpus, ner_checkpoint, tmp_path):
    """Every batch kills its actor (restart.isolate_crashes in process: each pass marks its first batch in
    flight, as the model actors do, and fails as Ray reports a dead actor): ISOLATION_PASSES passes each set
    their batch aside, then every row left is a worker_died error. Nothing hangs, every row is accounted for.
    On a real Ray, with bounded actor restarts: test_batch_that_always_kills_its_actor_…"""
    import ray.exceptions

    from pipeline import ledger, restart
    from pipeline.config import NerConfig
    from pipeline.job import build_plan
    from pipeline.ner_task import NER_TASK
    from pipeline.stage import FILE_INDEX, ROW

    output = tmp_path / "out"
    config = NerConfig(input=str(corpus), output=str(output), model=str(ner_checkpoint), rows_per_file=5,
                       docs_per_batch=5, stride=16)
    plan, info, _ = build_plan(config, NER_TASK)
    identity = restart.job_identity("ner", config, info, plan.files, ("float32",))
    plan, pending = restart.resume_plan(plan, restart.open_output(str(output), identity, overwrite=False))
    batches = []

    def execute(plan, pending):   # dies on its first batch: the first 5 rows not committed yet
        batch = next(plan.read(pending[0])).slice(0, 5)
        ledger.mark_in_flight(str(output), "infer", batch.column(FILE_INDEX).to_numpy(), batch.column(ROW).to_numpy())
        batches.append(batch.column("id").to_pylist())
        raise ray.exceptions.ActorDiedError()

    with pytest.raises(ray.exceptions.ActorDiedError) as died:
        execute(plan, pending)
    failure = restart.isolate_crashes(plan, str(output), died.value, execute)
    assert [p["isolated"] for p in failure["passes"]] == [True] * restart.ISOLATION_PASSES + [False]
    assert failure["rows"] == SHARDS * ROWS and len(batches) == restart.ISOLATION_PASSES + 1
    results, errors = read_output(output)
    assert not results and sorted(errors) == sorted(input_ids(corpus))
    died = {i: e for i, e in errors.items() if e["error"] == "worker_died"}
    assert sorted(e["error"] for i, e in errors.items() if i not in died) == ["null_text"]
    assert all(e["stage"] == "infer" and "bounded restarts" in e["message"] for e in died.values())
    on_batch = {i for i, e in died.items() if "died on this batch" in e["message"]}
    assert on_batch == died.keys() & {i for batch in batches[:-1] for i in batch}   # the last one's: with the rest
    assert not ledger.in_flight(str(output))


def test_a_model_actor_killed_while_it_loads_fails_the_run_and_marks_no_row(corpus, ner_checkpoint, tmp_path):
    """Every model actor dies while it loads (the OOM killer, say): no batch was in flight, so no row is to blame.
    The run used to mark every row a worker_died error and end with _SUCCESS and exit 0; now it fails."""
    output = tmp_path / "out"
    done = run_job(corpus, ner_checkpoint, output, kill="model_load:*")
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1, done.stdout[-3000:]
    assert re.fullmatch(r"ner_corpus\.py: error: worker processes died beyond their retries with no batch in flight "
                        r"\(.+\); the rows not done yet are left to do: run again once the cause is fixed", last), last
    assert not (output / "_SUCCESS").exists() and not list(output.rglob("*.parquet"))


def test_batch_that_always_kills_its_actor_becomes_error_rows_the_rest_finishes(
        corpus, ner_checkpoint, reference, tmp_path):
    output = tmp_path / "out"
    done = run_job(corpus, ner_checkpoint, output, kill="model_row:1/7")   # file 1, row 7 kills every time
    assert done.returncode == 0, done.stdout[-3000:]
    assert "worker_died" in done.stdout
    results, errors = read_output(output)
    want_results, want_errors = read_output(reference)
    died = {i for i, e in errors.items() if e["error"] == "worker_died"}
    poisoned = {r["id"] for r in pq.read_table(sorted(corpus.rglob("*.parquet"))[1]).slice(5, 5).to_pylist()}
    assert died == poisoned    # the batch of --docs-per-batch 5 rows that held it, nothing else
    assert results.keys() == want_results.keys() - died and errors.keys() - died == want_errors.keys()
    assert all(e["stage"] == "infer" and "died on this batch" in e["message"] for i, e in errors.items() if i in died)
    run = json.loads((output / "_run.json").read_text())
    assert run["complete"] and run["worker_failure"]["rows"] == 5 and (output / "_SUCCESS").exists()
    assert not (output / "_progress" / ".in_flight").exists() or not list((output / "_progress" / ".in_flight").iterdir())


def test_ledger_ranges_and_orphans(tmp_path):
    """Unit level: ranges compact (file, row) pairs; recover keeps committed parts, deletes orphans and temp files."""
    import fsspec

    from pipeline import ledger

    ranges = ledger.row_ranges(np.array([1, 0, 0, 0, 1]), np.array([7, 2, 0, 1, 5]))
    assert ranges == {0: [(0, 3)], 1: [(5, 6), (7, 8)]}
    assert ledger.merge([(5, 8), (0, 3), (3, 4), (7, 9)]) == [(0, 4), (5, 9)]
    assert ledger.committed_mask(np.arange(10), [(0, 4), (5, 9)]).tolist() == \
        [True] * 4 + [False] + [True] * 4 + [False]
    out = tmp_path / "out"
    (out / "_errors").mkdir(parents=True)
    for name in ("part-00000-000000000000.parquet", "part-00001-000000000000.parquet",
                 "_errors/part-00001-000000000003.parquet", ".part-x.parquet.abc.tmp"):
        (out / name).write_bytes(b"x")
    ledger.commit(fsspec.filesystem("file"), str(out), ["part-00000-000000000000.parquet"], {0: [(0, 3)]},
                  {"rows": 3, "errors": 0}, run=1)
    progress = ledger.recover(str(out))
    assert progress.committed == {0: [(0, 3)]} and progress.rows_done(0) == 3
    assert sorted(progress.removed) == [".part-x.parquet.abc.tmp", "_errors/part-00001-000000000003.parquet",
                                        "part-00001-000000000000.parquet"]
    assert sorted(p.name for p in out.iterdir()) == ["_errors", "_progress", "part-00000-000000000000.parquet"]


def test_in_flight_markers_name_the_batch_that_was_retried(tmp_path):
    """Unit level: a finished batch clears its marker; of those left, the most retried are the suspects."""
    from pipeline import ledger

    out = str(tmp_path / "out")
    done = ledger.mark_in_flight(out, "infer", np.array([0, 0]), np.array([0, 1]))
    ledger.done_in_flight(out, done)
    assert ledger.in_flight(out) == {}
    ledger.mark_in_flight(out, "tokenize", np.array([1, 1]), np.array([10, 11]))   # interrupted once
    for _ in range(3):                                                              # died three times
        ledger.mark_in_flight(out, "infer", np.array([0, 0, 0]), np.array([5, 6, 7]))
    assert ledger.in_flight(out) == {0: [(5, 8)]}
    ledger.clear_in_flight(out)
    ledger.mark_in_flight(out, "infer", np.array([2]), np.array([4]))
    ledger.mark_in_flight(out, "tokenize", np.array([1]), np.array([3]))
    assert ledger.in_flight(out) == {1: [(3, 4)], 2: [(4, 5)]}          # none retried: all suspects
    assert ledger.recover(out).entries == []                            # markers are not ledger entries


def test_an_entry_whose_files_are_gone_is_done_again_not_counted(tmp_path):
    """Unit level: files deleted after their commit (by hand, by an --overwrite cut short) leave rows that
    no file holds; recover drops such an entry and its other files, so a restart redoes its rows."""
    import fsspec

    from pipeline import ledger

    out = tmp_path / "out"
    (out / "_errors").mkdir(parents=True)
    fs = fsspec.filesystem("file")
    for name in ("part-00000-000000000000.parquet", "part-00000-000000000005.parquet",
                 "_errors/part-00000-000000000005.parquet"):
        (out / name).write_bytes(b"x")
    ledger.commit(fs, str(out), ["part-00000-000000000000.parquet"], {0: [(0, 5)]}, {"rows": 5, "errors": 0}, run=1)
    ledger.commit(fs, str(out), ["part-00000-000000000005.parquet", "_errors/part-00000-000000000005.parquet"],
                  {0: [(5, 10)]}, {"rows": 4, "errors": 1}, run=1)
    (out / "part-00000-000000000005.parquet").unlink()
    progress = ledger.recover(str(out))
    assert progress.committed == {0: [(0, 5)]} and len(progress.entries) == 1
    assert not (out / "_errors" / "part-00000-000000000005.parquet").exists()
    assert sorted(p.name for p in (out / "_progress").iterdir()) == ["00000-000000000000.json"]


def test_entries_a_crash_cut_on_a_filesystem_written_in_place(tmp_path, monkeypatch):
    """HDFS / SFTP entries are written in place: a crash mid-write leaves a cut one. A cut commit is a
    commit that never happened (its rows are done again), a cut in-flight marker is no suspect, and a
    cut _job.json is read from the copy written before it; on a local disk a cut _job.json still fails."""
    from types import SimpleNamespace

    import fsspec

    from pipeline import ledger

    in_place = ledger.in_place
    out = tmp_path / "out"
    fs = fsspec.filesystem("file")
    (out / "_progress").mkdir(parents=True)
    job = {"task": "ner", "runs": [{"run": 1}]}
    monkeypatch.setattr(ledger, "in_place", lambda fs: True)   # as on HDFS
    ledger.write_job(str(out), job)
    assert json.loads((out / "_progress" / ledger.JOB_COPY).read_text()) == job
    for name in ("part-00000-000000000000.parquet", "part-00000-000000000005.parquet"):
        (out / name).write_bytes(b"x")
    ledger.commit(fs, str(out), ["part-00000-000000000000.parquet"], {0: [(0, 5)]}, {"rows": 5, "errors": 0}, run=1)
    ledger.commit(fs, str(out), ["part-00000-000000000005.parquet"], {0: [(5, 10)]}, {"rows": 5, "errors": 0}, run=1)
    cut = out / "_progress" / "00000-000000000005.json"
    cut.write_text(cut.read_text()[:25])
    marker = Path(ledger.mark_in_flight(str(out), "infer", np.array([0]), np.array([7])))
    marker.write_text(marker.read_text()[:10])
    (out / "_progress" / ledger.JOB_FILE).write_text(json.dumps({**job, "runs": [{"run": 1}, {"run": 2}]})[:20])

    progress = ledger.recover(str(out))
    assert progress.committed == {0: [(0, 5)]} and not cut.exists()
    assert not (out / "part-00000-000000000005.parquet").exists()   # its file went with it: rows done again
    assert ledger.in_flight(str(out)) == {}
    assert ledger.read_job(str(out)) == job
    (out / "_progress" / ledger.JOB_FILE).unlink()   # a fresh output: the crash came after the copy
    assert ledger.read_job(str(out)) == job
    (out / "_progress" / ledger.JOB_FILE).write_text("{")
    monkeypatch.setattr(ledger, "in_place", lambda fs: False)   # a local disk: a cut file is no crash of ours
    with pytest.raises(json.JSONDecodeError):
        ledger.read_job(str(out))
    kinds = {"webhdfs": True, "sftp": True, "hdfs": True, "file": False, "s3": False, "gcs": False, "abfs": False}
    assert {kind: in_place(SimpleNamespace(protocol=(kind,))) for kind in kinds} == kinds


def test_a_stale_unreadable_file_row_goes_once_the_file_reads(tmp_path):
    from types import SimpleNamespace

    from pipeline.restart import record_unreadable
    from schemas import results

    out = tmp_path / "out"
    config = SimpleNamespace(output=str(out), id_column="id", errors_schema=results.errors_schema(pa.field("id", pa.string())))
    files = SimpleNamespace(paths=["a.parquet", "b.parquet"], display=str)
    record_unreadable(SimpleNamespace(sink=SimpleNamespace(config=config), files=files,
                                      footers=SimpleNamespace(unreadable=((0, "OSError: x"), (1, "OSError: y")))))
    assert sorted(p.name for p in (out / "_errors").iterdir()) == ["unreadable-00000.parquet", "unreadable-00001.parquet"]
    record_unreadable(SimpleNamespace(sink=SimpleNamespace(config=config), files=files,
                                      footers=SimpleNamespace(unreadable=((1, "OSError: y"),))))
    assert sorted(p.name for p in (out / "_errors").iterdir()) == ["unreadable-00001.parquet"]


def test_identity_covers_the_models_settings_and_multi_task_layout_flags_are_free(tmp_path, ner_checkpoint):
    """Same weights with another label map is another job; --overwrite or --rows-per-file in a multi-task
    config are not part of what a restart compares."""
    import shutil

    from pipeline.config import MultiConfig, NerConfig
    from pipeline.job import build_plan
    from pipeline.ledger import read_job
    from pipeline.multi_task import multi_task
    from pipeline.ner_task import NER_TASK
    from pipeline.restart import _mismatch, job_identity, open_output, with_dtypes

    corpus = write_corpus(tmp_path / "corpus", shards=1, rows_per_shard=6)
    relabelled = tmp_path / "relabelled"
    shutil.copytree(ner_checkpoint, relabelled)
    config = json.loads((relabelled / "config.json").read_text())
    config["id2label"] = {k: v.replace("PER", "PERSON") for k, v in config["id2label"].items()}
    (relabelled / "config.json").write_text(json.dumps(config))

    def identity(model, **options):
        job = NerConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(model), **options)
        plan, info, _ = build_plan(job, NER_TASK)
        return job_identity("ner", job, info, plan.files, plan.infer.config.dtypes)

    assert _mismatch(identity(ner_checkpoint), identity(ner_checkpoint)) is None
    assert "another config.json, tokenizer" in _mismatch(identity(ner_checkpoint), identity(relabelled))

    # --dtype: the dtype the model computed in (auto resolved by the cluster) is what counts
    auto = identity(ner_checkpoint)
    ran_fp32, ran_bf16 = with_dtypes(auto, ("float32",)), with_dtypes(auto, ("bfloat16",))
    assert _mismatch(ran_fp32, auto) is None and _mismatch(ran_bf16, auto) is None   # not resolved yet: later
    assert _mismatch(ran_fp32, with_dtypes(auto, ("float32",))) is None
    assert _mismatch(ran_fp32, identity(ner_checkpoint, dtype="float32")) is None     # auto ran as float32
    refused = _mismatch(ran_bf16, with_dtypes(auto, ("float32",)))
    assert refused.startswith("the model computing in bfloat16 (now float32") and "--dtype bfloat16" in refused
    assert "computing in bfloat16" in _mismatch(ran_bf16, identity(ner_checkpoint, dtype="float32"))
    int8 = with_dtypes(identity(ner_checkpoint, dtype="int8"), ("int8",))   # no word of auto where none ran
    assert _mismatch(int8, with_dtypes(identity(ner_checkpoint, dtype="float32"), ("float32",))) == \
        "the model computing in int8 (now float32; give --dtype int8)"
    before = {k: v for k, v in auto.items() if k != "dtypes"}   # a ledger of an earlier version: --dtype as given
    assert _mismatch(before, identity(ner_checkpoint, dtype="float32")) == "--dtype 'auto' (now 'float32')"
    # ... and from the first resume on, the dtypes it computed in
    output = str(tmp_path / "legacy")
    open_output(output, before, overwrite=False)
    assert "dtypes" not in read_job(output)
    open_output(output, with_dtypes(auto, ("float32",)), overwrite=False)
    assert read_job(output)["dtypes"] == ["float32"] and len(read_job(output)["runs"]) == 2
    assert "computing in float32 (now bfloat16" in _mismatch(read_job(output), with_dtypes(auto, ("bfloat16",)))

    def multi(shared=None, **flags):
        tasks = {"entities": {"task": "ner", "model": str(ner_checkpoint), **flags}}
        _, task = multi_task(MultiConfig(input=str(corpus), output=str(tmp_path / "m"), tasks=tasks, **(shared or {})))
        return task.inspect(None).fingerprint

    layout = {"overwrite": True, "rows_per_file": 7, "model_actors": 1}
    assert multi() == multi(layout, batch_tokens=999) != multi(aggregation="first")


def test_a_multi_task_output_names_what_changed_in_its_tasks(tmp_path, ner_checkpoint):
    """A multi-task job's sha256 covers each task's model, files and options (its --dtype as given): a change
    is named (it said "another model (sha256 …)" for any of them); a ledger without the tasks still refuses."""
    from pipeline.config import MultiConfig
    from pipeline.job import build_plan
    from pipeline.multi_task import multi_task
    from pipeline.restart import _mismatch, job_identity

    corpus = write_corpus(tmp_path / "corpus", shards=1, rows_per_shard=6)

    def identity(column="entities", shared=None, **flags):
        tasks = {column: {"task": "ner", "model": str(ner_checkpoint), **flags}}
        config, task = multi_task(MultiConfig(input=str(corpus), output=str(tmp_path / "m"), tasks=tasks,
                                              **(shared or {})))
        plan, info, _ = build_plan(config, task)
        return job_identity("multi", config, info, plan.files, plan.infer.config.dtypes)

    base = identity()
    assert _mismatch(base, identity()) is None and _mismatch(base, identity(batch_tokens=999)) is None
    assert _mismatch(base, identity(aggregation="first")) == "tasks.entities.aggregation 'simple' (now 'first')"
    assert _mismatch(base, identity(shared={"dtype": "float32"})) == "tasks.entities.dtype 'auto' (now 'float32')"
    assert _mismatch(base, identity("names")) == "the tasks entities (now names)"
    legacy = {k: v for k, v in base.items() if k != "tasks"}    # a ledger written before the tasks were kept
    assert _mismatch(legacy, identity()) is None
    assert _mismatch(legacy, identity(aggregation="first")).startswith("another model or task options")


def test_a_run_the_cluster_refuses_leaves_the_output_untouched(corpus, ner_checkpoint, reference, tmp_path):
    """The cluster's refusals (here --device cuda without a GPU) come before the output is cleaned,
    emptied (--overwrite) or given a ledger: a finished output stays finished."""
    import shutil

    output = tmp_path / "out"
    shutil.copytree(reference, output)
    before = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.name != ".lease.json")
    refused = run_job(corpus, ner_checkpoint, output, "--device", "cuda", "--overwrite")
    assert refused.returncode == 2 and "--device cuda" in refused.stdout.strip().splitlines()[-1]
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.name != ".lease.json") == before
    again = run_job(corpus, ner_checkpoint, output)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_a_resume_that_would_compute_in_another_dtype_refuses(ray_session, corpus, ner_checkpoint, reference,
                                                               tmp_path):
    """--dtype auto runs as float32 here; an output whose earlier runs computed in bfloat16 (--dtype auto
    on a GPU) is not resumed in float32: its rows would mix the two. (In process, on the session's Ray.)"""
    import shutil

    from pipeline.config import NerConfig
    from pipeline.job import run_job as run_in_process
    from pipeline.ner_task import NER_TASK

    assert json.loads((reference / "_progress" / "_job.json").read_text())["dtypes"] == ["float32"]
    assert json.loads((reference / "_run.json").read_text())["model"]["dtypes"] == ["float32"]
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    job = json.loads((output / "_progress" / "_job.json").read_text())
    (output / "_progress" / "_job.json").write_text(json.dumps({**job, "dtypes": ["bfloat16"]}))
    (output / "_SUCCESS").unlink()
    config = NerConfig(input=str(corpus), output=str(output), model=str(ner_checkpoint), rows_per_file=5,
                       docs_per_batch=5, stride=16)
    with pytest.raises(FileExistsError, match=r"was made with the model computing in bfloat16 \(now float32"):
        run_in_process(config, NER_TASK)
