"""Test hooks for restart tests: SIGKILL the run at named moments (docs/restart.md, "Kill points").

`BERTBATCH_TEST_KILL_AT=<point>:<n|*>` kills at the n-th (every) time any process of the run
reaches `point`; `model_row:<file>/<row>` kills a model actor whenever its batch holds that row.
Unset (always, outside the tests), every hook returns at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import signal
import tempfile

import numpy as np

KILL_ENV = "BERTBATCH_TEST_KILL_AT"
DRIVER_PID_ENV = "BERTBATCH_DRIVER_PID"
COUNTS_ENV = "BERTBATCH_KILL_COUNTS"


def arm() -> None:
    """In the driver, before Ray starts (its workers inherit the environment), when a hook is set: the process to
    kill, and a folder of this run's own for the counts (one named by the driver's pid would be found again by
    a later run whose driver got the same pid, its count already past n, and that run would not be killed)."""
    if os.environ.get(KILL_ENV):
        os.environ.setdefault(DRIVER_PID_ENV, str(os.getpid()))
        os.environ.setdefault(COUNTS_ENV, tempfile.mkdtemp(prefix="bertbatch-kill-"))


def kill_point(point: str) -> None:
    """Test hook (`BERTBATCH_TEST_KILL_AT=<point>:<n|*>`): SIGKILL at the n-th (every) time `point` is reached.

    Points `model_actor` and `model_load` kill the calling process (a model actor, in a batch or while it
    loads); every other point kills the driver and, when it leads a session, every process of it at once
    (the whole local Ray a test started, like a lost machine).
    """
    wanted = os.environ.get(KILL_ENV, "")
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    driver = int(os.environ.get(DRIVER_PID_ENV, os.getpid()))
    counts = os.environ.get(COUNTS_ENV) or tempfile.gettempdir()
    counter = os.path.join(counts, f"bertbatch-kill-{driver}-{point}")
    with open(counter, "a+") as handle:  # the count is shared by every process of this run
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        count = len(handle.read()) + 1
        handle.write("x")
        handle.flush()
    if nth != "*" and count != int(nth or 1):   # `*`: every time (a batch that always kills its actor)
        return
    if point in ("model_actor", "model_load"):
        os.kill(os.getpid(), signal.SIGKILL)
    kill_session(driver)
    os.kill(driver, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_session(driver: int) -> None:
    """SIGKILL the driver's session at once (frozen first: no worker commits meanwhile), but not the caller."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in _same_session(driver):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def kill_for_rows(point: str, file_index: np.ndarray, rows: np.ndarray) -> None:
    """Test hook (`BERTBATCH_TEST_KILL_AT=<point>:<file>/<row>`): SIGKILL this process whenever its batch holds that row."""
    name, _, where = os.environ.get(KILL_ENV, "").partition(":")
    if name == point:
        file, row = (int(x) for x in where.split("/"))
        if np.any((file_index == file) & (rows == row)):
            os.kill(os.getpid(), signal.SIGKILL)


def _same_session(driver: int) -> list[int]:
    """The driver, and when it leads (or led) a session, as under the tests, every process of it: the local Ray.

    Ray workers have their own process groups, so the driver's group alone would leave them running.
    """
    with contextlib.suppress(ProcessLookupError):
        if os.getsid(driver) != driver:
            return [driver]
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError):
            with open(stat) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == driver and int(stat.split("/")[2]) != os.getpid():
                pids.append(int(stat.split("/")[2]))
    return pids
