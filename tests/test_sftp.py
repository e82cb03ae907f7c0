"""The NER job writing to an SFTP server (tests/sftp_server.py): the filesystem class whose writes are in place.

SFTP's rename does not replace a file and a crash can cut a file it was writing, as on HDFS, so the
output's ledger is written in place there (docs/restart.md). These runs are killed mid-run, one of
their ledger entries is cut as a crash would leave it, and the last rerun must still hold every
input row exactly once, with the results of a local run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_ner_job, write_corpus
from tests.sftp_server import SftpServer

pytestmark = [pytest.mark.sftp, pytest.mark.timeout(900)]
SHARDS, ROWS = 4, 15
OPTIONS = ("--rows-per-file", "5", "--docs-per-batch", "5", "--stride", "16", "--model-actors", "1")


@pytest.fixture(scope="module")
def sftp(tmp_path_factory):
    server = SftpServer(tmp_path_factory.mktemp("sftp-root"), tmp_path_factory.mktemp("sftp-keys")).start()
    try:
        yield server
    finally:
        server.stop()


def run_job(corpus: Path | str, model: Path | str, output: str, *extra: str, kill: str | None = None,
            killed_when: Path | None = None) -> subprocess.CompletedProcess:
    """The job; `killed_when`: killed from outside once that file appears (on the server's side)."""
    return run_ner_job(corpus, model, output, *OPTIONS, *extra, kill=kill,
                       killed_when=killed_when.exists if killed_when is not None else None)


def rows_of(output: Path) -> tuple[dict, list]:
    results = pads.dataset(output, format="parquet").to_table()
    errors = pq.read_table(output / "_errors").column("id").to_pylist() if (output / "_errors").exists() else []
    return {r["id"]: [(e["label"], e["start"], e["end"]) for e in r["entities"]] for r in results.to_pylist()}, errors


def test_a_run_killed_twice_and_a_ledger_entry_cut_by_a_crash_end_exactly_once(sftp, ner_checkpoint, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", shards=SHARDS, rows_per_shard=ROWS)
    local = run_job(corpus, ner_checkpoint, str(tmp_path / "local"))
    assert local.returncode == 0, local.stdout[-3000:]
    secrets = ("--storage-options", json.dumps(sftp.storage_options()))
    served = sftp.root / "out"          # what the server holds under sftp://…/out
    output = sftp.url("/out")

    run_job(corpus, ner_checkpoint, output, *secrets, killed_when=served / "_progress" / "00000-000000000000.json")
    killed = run_job(corpus, ner_checkpoint, output, *secrets, kill="commit:2")
    assert killed.returncode < 0, killed.stdout[-3000:]
    entries = sorted(p for p in (served / "_progress").glob("0*.json"))
    assert entries and not (served / "_SUCCESS").exists()
    counted = [json.loads(e.read_text())["counters"] for e in entries]
    committed = sum(c["rows"] + c["errors"] for c in counted)
    cut, cut_rows = entries[-1], counted[-1]["rows"] + counted[-1]["errors"]
    cut.write_text(cut.read_text()[: len(cut.read_text()) // 2])   # a crash in the middle of writing it in place

    final = run_job(corpus, ner_checkpoint, output, *secrets)
    assert final.returncode == 0, final.stdout[-3000:]
    results, errors = rows_of(served)
    want_results, want_errors = rows_of(tmp_path / "local")
    assert results == want_results and sorted(errors) == sorted(want_errors)   # every row once, as locally
    run = json.loads((served / "_run.json").read_text())
    assert run["complete"] and run["report"]["documents"] == SHARDS * ROWS
    assert run["runs"][-1]["rows_processed"] == SHARDS * ROWS - committed + cut_rows   # the rest, and the cut rows
    assert (served / "_SUCCESS").exists() and not list(served.rglob("*.tmp"))
    assert not (served / "_progress" / ".lease.json").exists()   # the lease released
    assert json.dumps(sftp.storage_options()) not in final.stdout


def test_input_model_and_output_all_on_the_sftp_server(sftp, ner_checkpoint, tmp_path):
    """Planning reads the footers and the model's files over SFTP too (one session: one thread at a time)."""
    import shutil

    write_corpus(sftp.root / "all" / "corpus", shards=SHARDS, rows_per_shard=ROWS)
    shutil.copytree(ner_checkpoint, sftp.root / "all" / "model")
    options = ("--storage-options", json.dumps(sftp.storage_options()))
    done = run_job(sftp.url("/all/corpus"), sftp.url("/all/model"), sftp.url("/all/out"), *options)
    assert done.returncode == 0, done.stdout[-3000:]
    results, errors = rows_of(sftp.root / "all" / "out")
    assert len(results) + len(errors) == SHARDS * ROWS
    run = json.loads((sftp.root / "all" / "out" / "_run.json").read_text())
    assert run["complete"] and run["model"]["path"] == sftp.url("/all/model")
