"""The Airflow DAG (infra/airflow/dags/bertbatch_ner.py) run by a real Airflow against a real local Ray.

Airflow lives in its own virtual environment, `.venv-airflow/` in the repository root
(tests/side_venvs.py: built on first use, or ahead by .ci/run beside the suite). The test starts
a one-node Ray with `ray start --head` (token auth on, see tests/ray_cluster.py), runs
`airflow dags test bertbatch_ner <date>` with AIRFLOW_HOME and its sqlite database in tmp_path,
and checks that the job wrote the partition of that date: every input id, `_SUCCESS`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.checkpoints import make_checkpoint
from tests.ray_cluster import RAY, LoopbackCluster
from tests.side_venvs import side_venv

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "infra" / "airflow" / "dags"
DAG_ID = "bertbatch_ner"
LOGICAL_DATE = "2026-01-02"


@pytest.fixture(scope="module")
def head() -> Iterator[LoopbackCluster]:
    if not RAY.exists():
        pytest.skip(f"no `ray` command next to {sys.executable}")
    cluster = LoopbackCluster(workers=0, cpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def write_partition(root: Path, date: str) -> set[str]:
    """The input of one logical date, plus a neighbouring date that must not be read."""
    ids = set()
    for day, rows in ((date, 30), ("2026-01-03", 5)):
        table = pa.table({
            "id": [f"{day}-{i:03d}" for i in range(rows)],
            "text": [f"John Smith works at Acme Corp in Paris number {i} " * (1 + i % 4) for i in range(rows)],
        })
        folder = root / f"date={day}"
        folder.mkdir(parents=True)
        pq.write_table(table.slice(0, rows // 2), folder / "part-0.parquet")
        pq.write_table(table.slice(rows // 2), folder / "part-1.parquet")
        if day == date:
            ids = set(table.column("id").to_pylist())
    return ids


def test_dag_runs_the_ner_job_for_its_logical_date(head: LoopbackCluster, tmp_path: Path) -> None:
    try:
        bin_dir = side_venv("airflow")
    except RuntimeError as error:
        pytest.fail(str(error))
    model, _ = make_checkpoint(tmp_path / "model", "bert", "ner")
    ids = write_partition(tmp_path / "corpus", LOGICAL_DATE)
    airflow_home = tmp_path / "airflow"
    env = {
        **head.env,  # RAY_AUTH_MODE=token + RAY_AUTH_TOKEN: read by the Ray job client in the DAG's task
        "PATH": f"{bin_dir}{os.pathsep}{head.env['PATH']}",
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "BERTBATCH_RAY_ADDRESS": head.dashboard_url,
        "BERTBATCH_INPUT_ROOT": str(tmp_path / "corpus"),
        "BERTBATCH_OUTPUT_ROOT": str(tmp_path / "out"),
        "BERTBATCH_MODEL": str(model),
        "BERTBATCH_WORKING_DIR": str(REPO),
        "BERTBATCH_JOB_SCRIPT": "jobs/ner_corpus.py",
        "BERTBATCH_EXTRA_ARGS": "--max-length 32 --stride 8 --progress-seconds 1 --rows-per-file 10",
        "BERTBATCH_POLL_SECONDS": "2",
    }
    env.pop("VIRTUAL_ENV", None)

    def airflow(*args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / "airflow"), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)

    migrated = airflow("db", "migrate", timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-4000:]
    run = airflow("dags", "test", DAG_ID, LOGICAL_DATE, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-8000:]

    # The job's log reaches the task's log: its progress lines, not Ray Data's snapshots.
    assert re.search(rf"bertbatch ner: \d+ of {len(ids)} rows done", log) and "Running Dataset" not in log, log[-8000:]

    output = tmp_path / "out" / f"date={LOGICAL_DATE}"
    assert (output / "_SUCCESS").is_file(), f"{log[-6000:]}\n{sorted(p.name for p in output.iterdir())}"
    written = pads.dataset(output, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(written) == sorted(ids)
    assert not (tmp_path / "out" / "date=2026-01-03").exists()

    # A configuration error (exit 2) fails the task for good: a retry would fail the same way.
    env["BERTBATCH_EXTRA_ARGS"] = "--max-length 4"
    run = airflow("dags", "test", DAG_ID, "2026-01-03", timeout=900)
    log = run.stdout + run.stderr
    assert "--max-length: Input should be greater than or equal to 8" in log, log[-8000:]
    assert "a configuration error: not retried" in log and "AirflowFailException" in log, log[-8000:]
    assert not (tmp_path / "out" / "date=2026-01-03" / "_SUCCESS").exists()
