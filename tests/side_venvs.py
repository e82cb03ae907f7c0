"""Virtual environments of their own for tools whose pins clash with ours: `.venv-airflow/` (Airflow and
the Ray client, for tests/test_airflow.py) and `.venv-spark/` (pyspark, for tests/test_spark.py).

Each is built on first use and reused while its pinned requirements stay the same (a cold build takes
one to two minutes with a warm pip cache). `python -m tests.side_venvs` builds them ahead: .ci/run
starts it beside the test suite, whose Airflow and Spark tests run last (tests/conftest.py). Builders
take turns on a lock file per environment, so a test waits for a build already running instead of
starting its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = {
    # Airflow 3.3 supports Python 3.10-3.13; the Ray client must be the cluster's exact version.
    "airflow": ("apache-airflow==3.3.2", f"ray[default]=={version('ray')}"),
    "spark": ("pyspark==4.3.0",),   # needs Java 17 or later
}


def side_venv(name: str) -> Path:
    """Create (or reuse) `.venv-NAME/` with its pinned requirements; return its bin folder."""
    venv, requirements = REPO / f".venv-{name}", REQUIREMENTS[name]
    stamp = venv / f".installed-{hashlib.sha256(' '.join(requirements).encode()).hexdigest()[:16]}"
    with open(REPO / f".venv-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
                                      *requirements], capture_output=True, text=True, timeout=900)
            if install.returncode != 0:
                raise RuntimeError(f"pip install {' '.join(requirements)} failed:\n{install.stderr[-4000:]}")
            stamp.touch()
    return venv / "bin"


if __name__ == "__main__":
    for name in sys.argv[1:] or REQUIREMENTS:
        side_venv(name)
