"""The restart tests' kill hook (`pipeline/kill_hooks.py`) kills at the n-th time of each run, whatever ran before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.kill_hooks import COUNTS_ENV, DRIVER_PID_ENV, KILL_ENV

REPO = Path(__file__).resolve().parents[1]
DRIVER = "from pipeline import kill_hooks; kill_hooks.arm(); kill_hooks.kill_point('start'); print('not killed')"


def test_a_driver_with_the_pid_of_an_earlier_killed_run_is_still_killed_at_its_first_start(tmp_path):
    """Drivers' pids come round again (32,768 of them, and a CI run starts many processes); an earlier run's
    count under the same pid must not make this run's `start:1` its second."""
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])   # the driver to kill
    try:
        (tmp_path / f"bertbatch-kill-{stand_in.pid}-start").write_text("x")   # an earlier run's count, same pid
        env = {k: v for k, v in os.environ.items() if k != COUNTS_ENV}
        env |= {KILL_ENV: "start:1", DRIVER_PID_ENV: str(stand_in.pid), "TMPDIR": str(tmp_path),
                "PYTHONPATH": str(REPO)}
        run = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == -signal.SIGKILL, run.stdout + run.stderr
        assert stand_in.wait(timeout=10) == -signal.SIGKILL
    finally:
        stand_in.kill()


def test_without_a_hook_nothing_is_armed_or_killed(monkeypatch):
    from pipeline import kill_hooks

    for name in (KILL_ENV, COUNTS_ENV, DRIVER_PID_ENV):
        monkeypatch.delenv(name, raising=False)
    kill_hooks.arm()
    kill_hooks.kill_point("start")
    assert COUNTS_ENV not in os.environ and DRIVER_PID_ENV not in os.environ
