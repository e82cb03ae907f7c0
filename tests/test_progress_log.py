"""The progress line (`pipeline/progress_log.py`): read from the ledger, this run's entries only.

In a job's log (stdout a pipe) after a kill and a rerun: tests/test_restart.py; in Airflow's: tests/test_airflow.py.
"""

from __future__ import annotations

import json
import time

import fsspec
import pytest

from pipeline import ledger
from pipeline.progress_log import ProgressLog, duration


def commit(output, first_row: int, rows: int, run: int, errors: int = 0, tokens: int = 0) -> None:
    fs, root = fsspec.core.url_to_fs(str(output))
    ledger.commit(fs, root, [f"part-{run}-{first_row}.parquet"], {0: [(first_row, first_row + rows)]},
                  {"rows": rows - errors, "errors": errors, "tokens": tokens}, run)


def test_counts_this_runs_entries_on_top_of_earlier_runs_and_times_from_the_first_commit_seen(tmp_path):
    commit(tmp_path, 0, 400, run=1)                      # an earlier run's: counted in done_before
    log = ProgressLog("ner", str(tmp_path), run=2, input_rows=1000, done_before=400, every=0, rows_per_write=100)
    started = log._started
    log.read()
    assert log.rows == 0
    assert log.line(started + 30) == ("bertbatch ner: 400 of 1,000 rows done (40.0%); 30s into this run, nothing "
                                      "committed yet (a write commits up to 100 rows)")
    commit(tmp_path, 400, 100, run=2, errors=3, tokens=5_000)
    log.read()
    assert log.line(started + 40) == "bertbatch ner: 500 of 1,000 rows done (50.0%); this run 100 in 40s, 3 errors"
    commit(tmp_path, 500, 100, run=2, tokens=5_000)
    commit(tmp_path, 600, 100, run=2, tokens=5_000)
    log.read()
    log.read()                                             # each entry counted once
    assert log.line(started + 50) == ("bertbatch ner: 700 of 1,000 rows done (70.0%); this run 300 in 50s, 3 errors; "
                                      "20 rows/s, 1,000 tokens/s; about 15s left")   # 200 rows in the 10 s since


def test_an_entry_not_whole_yet_is_read_again_and_a_job_file_or_marker_never(tmp_path):
    """Where entries are written in place (SFTP, HDFS) a read can meet one half written."""
    progress = tmp_path / ledger.PROGRESS_DIR
    progress.mkdir()
    (progress / ledger.JOB_FILE).write_text(json.dumps({"runs": [{"run": 1}]}))
    (progress / f".{ledger.JOB_FILE}").write_text("{")
    whole = {"run": 1, "files": ["part-a.parquet"], "ranges": {"0": [[0, 50]]}, "counters": {"rows": 50}}
    entry = progress / "00000-000000000000.json"
    entry.write_text(json.dumps(whole)[:20])
    log = ProgressLog("embed", str(tmp_path), run=1, input_rows=50, done_before=0, every=0)
    log.read()
    assert log.rows == 0
    entry.write_text(json.dumps(whole))
    log.read()
    assert log.rows == 50 and log.line().startswith("bertbatch embed: 50 of 50 rows done (100.0%); this run 50 in ")


def test_lines_come_every_interval_on_their_own_thread_until_the_block_ends(tmp_path, capsys, monkeypatch):
    log = ProgressLog("qa", str(tmp_path), run=1, input_rows=10, done_before=0, every=0.05)
    with log:
        commit(tmp_path, 0, 10, run=1)
        for _ in range(200):
            if "10 of 10 rows done" in capsys.readouterr().out:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no line counted the commit")
    assert not log._thread.is_alive()
    reads = []

    def read_once_faulty(self):
        reads.append(self)
        if len(reads) == 1:
            raise OSError("SlowDown: reduce your request rate")

    monkeypatch.setattr(ProgressLog, "read", read_once_faulty)
    with ProgressLog("qa", str(tmp_path), run=1, input_rows=10, done_before=0, every=0.05):
        time.sleep(0.3)
    captured = capsys.readouterr()
    assert "bertbatch qa: progress not read (OSError: SlowDown: reduce your request rate)" in captured.err
    assert "rows done" in captured.out                     # the next line came anyway


def test_no_interval_no_thread(tmp_path):
    with ProgressLog("ner", str(tmp_path), run=1, input_rows=1, done_before=0, every=0) as log:
        assert log._thread is None


def test_durations_read_as_a_clock():
    assert [duration(s) for s in (0.4, 45, 62, 3599, 3600, 11_100, 90_000)] == \
        ["0s", "45s", "1m02s", "59m59s", "1h00m", "3h05m", "25h00m"]
