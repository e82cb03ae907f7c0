"""A node's model-actor threads, shared among the actors that have a batch to run.

CPU model actors run side by side on a node, one thread each by default (`ray_plan.place`). When one
of them has no batch left while another is still in a long one (the end of every corpus; a corpus
of three batches on two actors), its core would idle: each actor marks itself busy while it runs a
batch, in a folder of its group (one execution of a job) on the node, and before each micro-batch a
busy actor takes its share of the node's model threads. Ray has no notion of this (its CPUs are
accounting only); files keep it to the node without another process.

    <temp dir>/bertbatch-cores/<group>/<pid>.busy      while that process runs a batch

A mark whose process is gone (an actor killed mid-batch) counts for nothing and is removed by the
next reader. Several stages in one process (a multi-task job) run one after another: marks are per
process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = "bertbatch-cores"


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
    together; `threads` its own (never fewer)."""

    def __init__(self, group: str, threads: int, node_threads: int, root: str | os.PathLike | None = None):
        self.folder = Path(root or tempfile.gettempdir()) / ROOT / group
        self.threads, self.node_threads = threads, node_threads
        self.pid = os.getpid()
        self._mark = self.folder / f"{self.pid}.busy"
        _remove_finished_groups(self.folder.parent, keep=self.folder.name)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Marks this process busy while the block runs (a batch)."""
        for _ in range(2):   # another job's start may remove the folder while it is empty
            self.folder.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self._mark.touch()
                break
        try:
            yield
        finally:
            self._mark.unlink(missing_ok=True)

    def share(self) -> int:
        """Threads for this process now: the node's threads over its group's busy processes (this one included)."""
        busy = 1
        for name in os.listdir(self.folder) if self.folder.is_dir() else ():
            pid = int(name.split(".")[0])
            if pid == self.pid:
                continue
            if _alive(pid):
                busy += 1
            else:
                (self.folder / name).unlink(missing_ok=True)
        return max(self.threads, self.node_threads // busy)


def _remove_finished_groups(root: Path, keep: str) -> None:
    """Folders of earlier executions whose actors are all gone."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.name == keep:
            continue
        with contextlib.suppress(OSError, ValueError):
            if not any(_alive(int(name.split(".")[0])) for name in os.listdir(folder)):
                shutil.rmtree(folder, ignore_errors=True)
