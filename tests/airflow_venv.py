"""`.venv-airflow/`: Airflow for tests/test_airflow.py, in a virtual environment of its own (its pins
clash with ours).

Built on first use and reused while the pinned requirements stay the same (a cold build takes one to
two minutes with a warm pip cache). `python -m tests.airflow_venv` builds it ahead: .ci/run starts it
beside the test suite, whose Airflow test runs last (tests/conftest.py). Builders take turns on a
lock file, so the test waits for a build already running instead of starting its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-airflow"
LOCK = REPO / ".venv-airflow.lock"
# Airflow 3.3 supports Python 3.10-3.13; the Ray client must be the cluster's exact version.
REQUIREMENTS = ("apache-airflow==3.3.2", f"ray[default]=={version('ray')}")


def airflow_venv() -> Path:
    """Create (or reuse) `.venv-airflow/` with the pinned requirements; return its bin folder."""
    stamp = VENV / f".installed-{hashlib.sha256(' '.join(REQUIREMENTS).encode()).hexdigest()[:16]}"
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
            install = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", *REQUIREMENTS],
                                     capture_output=True, text=True, timeout=900)
            if install.returncode != 0:
                raise RuntimeError(f"pip install {' '.join(REQUIREMENTS)} failed:\n{install.stderr[-4000:]}")
            stamp.touch()
    return VENV / "bin"


if __name__ == "__main__":
    airflow_venv()
