"""A node's model-actor threads, shared among the actors that have a batch to run.

CPU model actors run side by side on a node, one thread each by default (`ray_plan.place`). When one
of them has no batch left while another is still in a long one (the end of every corpus; a corpus
of three batches on two actors), its core would idle: each actor marks, in a folder of its group (one
execution of a job) on the node, whether it is running a batch or since when it has been without one,
and before each micro-batch a busy actor takes its share of the node's model threads. Ray has no
notion of this (its CPUs are accounting only); files keep it to the node without another process.

    <temp dir>/bertbatch-cores/<group>/<pid>.busy      while that process runs a batch
    <temp dir>/bertbatch-cores/<group>/<pid>.idle      after its last batch, or its model's load (modified: when)

An actor lends its threads only once it has been without a batch for `LEND_AFTER` seconds: between
two batches an actor waits a moment for the next one, and while it loads its model it has no mark at
all (from the load's end it is idle, so an actor that gets no batch lends too). Threads lent earlier
would run beside the lender's own, and torch's threads meet at a barrier in every operator, so one
preempted thread stalls the others (a MiniLM bf16 pass on 2 threads beside a busy 1-thread process,
2 cores: 3.6 times as long as on 1 thread). The mark of a process that is gone (an actor killed
mid-batch) is removed by the next reader and lends nothing: Ray restarts the actor, which loads its
model on that core. Several stages in one process (a multi-task job) run one after another: marks
are per process. Where the folder cannot be written or read (another user's, say), an actor keeps
its own threads: sharing is an optimisation, never a reason for a batch to fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = "bertbatch-cores"
# Seconds without a batch before an actor's threads go to the busy ones: longer than the hand-over
# between two batches (up to 0.2 s on a busy 2-core node), short against a batch (seconds).
LEND_AFTER = 0.5


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's process of that number: alive, not ours to judge
        return True
    return True


class NodeCores:
    """This process's share of `node_threads`, the threads of its group's model actors on this node
    together (`node_threads // threads` actors); `threads` its own."""

    def __init__(self, group: str, threads: int, node_threads: int, root: str | os.PathLike | None = None):
        self.folder = Path(root or tempfile.gettempdir()) / ROOT / group
        self.threads, self.node_threads = threads, node_threads
        self.pid = os.getpid()
        self._busy, self._idle = (self.folder / f"{self.pid}.{kind}" for kind in ("busy", "idle"))
        with contextlib.suppress(OSError):
            _remove_finished_groups(self.folder.parent, keep=self.folder.name)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Marks this process busy while the block runs (a batch), and idle from its end."""
        for _ in range(2):   # another job's start may remove the folder while it is empty
            with contextlib.suppress(OSError):
                self.folder.mkdir(parents=True, exist_ok=True)
                self._busy.touch()
                break
        with contextlib.suppress(OSError):
            self._idle.unlink(missing_ok=True)
        try:
            yield
        finally:
            self.idle()
            with contextlib.suppress(OSError):
                self._busy.unlink(missing_ok=True)

    def idle(self) -> None:
        """Marks this process without a batch from now: after a batch, and once its model is loaded."""
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            self._idle.touch()

    def share(self) -> int:
        """Threads for this process now: the node's threads over its group's actors, less those that lend."""
        try:
            names = os.listdir(self.folder)
        except OSError:   # no folder yet (nobody ran a batch), or not ours to read
            return self.threads
        now, lending = time.time(), 0
        for name in names:
            pid, kind = _mark(name)
            if pid is None or pid == self.pid:
                continue
            if not _alive(pid):
                with contextlib.suppress(OSError):
                    (self.folder / name).unlink(missing_ok=True)
                continue
            with contextlib.suppress(OSError):
                lending += kind == "idle" and now - (self.folder / name).stat().st_mtime >= LEND_AFTER
        actors = max(1, self.node_threads // self.threads)
        return self.node_threads // max(1, actors - lending)


def _mark(name: str) -> tuple[int | None, str]:
    """The process and kind ("busy", "idle") of a mark; None for anything else."""
    stem, dot, kind = name.partition(".")
    return (int(stem), kind) if dot and kind in ("busy", "idle") and stem.isdigit() else (None, kind)


def _remove_finished_groups(root: Path, keep: str) -> None:
    """Folders of earlier executions whose actors are all gone."""
    for folder in root.iterdir() if root.is_dir() else ():
        with contextlib.suppress(OSError):
            pids = {_mark(name)[0] for name in os.listdir(folder)} - {None}
            if folder.name != keep and not any(_alive(pid) for pid in pids):
                shutil.rmtree(folder, ignore_errors=True)
