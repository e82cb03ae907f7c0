"""pipeline.cores: the node's model threads go to the actors that have a batch to run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.cores import LEND_AFTER, NodeCores


@pytest.fixture
def other_actor():
    """Another live process of the node, as another model actor of the group would be."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def idle_since(folder: Path, pid: int, seconds: float) -> None:
    """Mark `pid` as without a batch for `seconds`."""
    mark = folder / f"{pid}.idle"
    mark.touch()
    os.utime(mark, (time.time() - seconds,) * 2)


def test_busy_actors_share_the_nodes_threads(tmp_path, other_actor):
    cores = NodeCores("job", threads=1, node_threads=2, root=tmp_path)
    with cores.busy():
        assert cores.share() == 1                 # the other actor has no mark yet: loading its model
        idle_since(cores.folder, other_actor.pid, 0.1)
        assert cores.share() == 1                 # between two of its batches
        idle_since(cores.folder, other_actor.pid, LEND_AFTER + 0.1)
        assert cores.share() == 2                 # without a batch for a while: its core too
        (cores.folder / f"{other_actor.pid}.idle").unlink()
        (cores.folder / f"{other_actor.pid}.busy").touch()
        assert cores.share() == 1                 # both busy: one each
    assert set(os.listdir(cores.folder)) == {f"{os.getpid()}.idle", f"{other_actor.pid}.busy"}
    wide = NodeCores("wide", threads=2, node_threads=6, root=tmp_path)   # three actors of 2 threads
    with wide.busy():
        (wide.folder / f"{other_actor.pid}.busy").touch()
        assert wide.share() == 2
        idle_since(wide.folder, os.getppid(), LEND_AFTER + 0.1)           # this test's parent: alive
        assert wide.share() == 3                  # 6 threads over the 2 that do not lend


def test_an_actor_is_idle_once_loaded_busy_during_its_batch_and_idle_from_its_end(tmp_path, other_actor):
    cores = NodeCores("job", threads=1, node_threads=2, root=tmp_path)
    cores.idle()                                  # its model loaded: no batch yet
    assert os.listdir(cores.folder) == [f"{os.getpid()}.idle"]
    with cores.busy():
        assert os.listdir(cores.folder) == [f"{os.getpid()}.busy"]
    ended = time.time()
    assert os.listdir(cores.folder) == [f"{os.getpid()}.idle"]
    assert abs((cores.folder / f"{os.getpid()}.idle").stat().st_mtime - ended) < 1
    with cores.busy():
        assert os.listdir(cores.folder) == [f"{os.getpid()}.busy"]


def test_a_dead_actors_mark_lends_nothing_and_is_removed(tmp_path, other_actor):
    cores = NodeCores("job", threads=1, node_threads=2, root=tmp_path)
    cores.folder.mkdir(parents=True)
    idle_since(cores.folder, other_actor.pid, LEND_AFTER + 0.1)
    assert cores.share() == 2
    other_actor.kill()                            # killed: Ray restarts it, and the new one loads on that core
    other_actor.wait()
    assert cores.share() == 1
    assert os.listdir(cores.folder) == []


def test_folders_of_finished_groups_are_removed_running_ones_kept(tmp_path, other_actor):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root = tmp_path / "bertbatch-cores"
    for group, pid in (("finished", int(dead.stdout)), ("running", other_actor.pid)):
        (root / group).mkdir(parents=True)
        (root / group / f"{pid}.busy").touch()
    (root / "idle").mkdir()                       # every actor between batches (or all gone)
    cores = NodeCores("new", threads=1, node_threads=2, root=tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["running"]
    with cores.busy():                            # made when needed
        assert sorted(p.name for p in root.iterdir()) == ["new", "running"]


def test_anything_else_in_the_folder_is_ignored_and_a_folder_it_cannot_use_costs_only_the_sharing(tmp_path):
    cores = NodeCores("job", threads=1, node_threads=2, root=tmp_path)
    cores.folder.mkdir(parents=True)
    for name in ("notes.txt", "123-1.actor", "x.busy", ".busy", "x.idle", "12.lent"):
        (cores.folder / name).touch()
    idle_since(cores.folder, os.getppid(), LEND_AFTER + 0.1)   # this test's parent: alive
    with cores.busy():
        assert cores.share() == 2
    (tmp_path / "blocked").write_text("a file where the folders would go")
    blocked = NodeCores("job", threads=1, node_threads=2, root=tmp_path / "blocked")
    with blocked.busy():                          # cannot mark itself: runs on its own threads
        assert blocked.share() == 1


# A model actor's stage (OMP_NUM_THREADS=1, as in a Ray worker) beside another actor of its group, idle
# for a while before the first batch and busy for the second: prints the OpenMP thread count inside each forward.
PROBE = """
import ctypes, os, sys, time
from pathlib import Path
from pipeline.infer import Infer, InferConfig
from pipeline.tokenize import Tokenize, TokenizeConfig
from pipeline.validate import ValidateConfig, ValidateText
from tests.test_stages import docs_table

gomp = next(line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line)
omp_get_max_threads = ctypes.CDLL(gomp).omp_get_max_threads
infer = Infer(InferConfig(sys.argv[1], "ner", device="cpu", threads=1, core_group=sys.argv[2], node_threads=2))
table = Tokenize(TokenizeConfig(sys.argv[1], max_length=32))(ValidateText(ValidateConfig())(docs_table(["John Smith"])))
seen = []
forward = infer.model.forward_batches
infer.model.forward_batches = lambda *args: seen.append(omp_get_max_threads()) or forward(*args)
idle, busy = Path(sys.argv[3] + ".idle"), Path(sys.argv[3] + ".busy")
print(os.listdir(idle.parent) == [f"{os.getpid()}.idle"])   # loaded: idle, lending if no batch comes
idle.touch()
os.utime(idle, (time.time() - 60,) * 2)
infer(table)
idle.unlink()
busy.touch()
infer(table)
print(seen)
"""


def test_a_model_actor_runs_on_the_threads_of_an_idle_one(ner_checkpoint, tmp_path, other_actor):
    group = f"test-{os.getpid()}-{tmp_path.name}"
    folder = Path(tempfile.gettempdir()) / "bertbatch-cores" / group
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", PROBE, str(ner_checkpoint), group,
                              str(folder / str(other_actor.pid))], env=env,
                             cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    finally:
        for entry in folder.iterdir():
            entry.unlink()
        folder.rmdir()
    assert out.stdout.split() == ["True", "[2,", "1]"]
