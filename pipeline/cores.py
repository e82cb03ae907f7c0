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
process. Where the folder cannot be written or read (another user's, say), an actor keeps its own
threads: sharing is an optimisation, never a reason for a batch to fail.
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
        with contextlib.suppress(OSError):
            _remove_finished_groups(self.folder.parent, keep=self.folder.name)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Marks this process busy while the block runs (a batch)."""
        for _ in range(2):   # another job's start may remove the folder while it is empty
            with contextlib.suppress(OSError):
                self.folder.mkdir(parents=True, exist_ok=True)
                self._mark.touch()
                break
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                self._mark.unlink(missing_ok=True)

    def share(self) -> int:
        """Threads for this process now: the node's threads over its group's busy processes (this one included)."""
        try:
            others = [pid for pid in map(_pid, os.listdir(self.folder)) if pid and pid != self.pid]
        except OSError:   # no folder yet (nobody busy), or not ours to read
            return self.threads
        busy = 1
        for pid in others:
            if _alive(pid):
                busy += 1
            else:
                with contextlib.suppress(OSError):
                    (self.folder / f"{pid}.busy").unlink(missing_ok=True)
        return max(self.threads, self.node_threads // busy)


def _pid(name: str) -> int | None:
    """The process of a `<pid>.busy` mark; None for anything else."""
    stem, dot, kind = name.partition(".")
    return int(stem) if dot and kind == "busy" and stem.isdigit() else None


def _remove_finished_groups(root: Path, keep: str) -> None:
    """Folders of earlier executions whose actors are all gone."""
    for folder in root.iterdir() if root.is_dir() else ():
        with contextlib.suppress(OSError):
            if folder.name != keep and not any(_alive(pid) for pid in map(_pid, os.listdir(folder)) if pid):
                shutil.rmtree(folder, ignore_errors=True)
