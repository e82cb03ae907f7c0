"""One run per output: the lease refuses a second live run and frees itself for a dead one."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from pipeline import lease
from pipeline.lease import Lease, OutputBusy
from tests.conftest import REPO, write_corpus


def held_by(output, written: float | None = None, **holder) -> None:
    """A lease of another run, last written at `written` by the storage's clock (its modification time;
    default: its heartbeat, as when the holder's clock and the storage's agree)."""
    path = output / "_progress" / lease.LEASE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"token": "other", **lease._pid_space(), "pid": os.getpid(), "started": "earlier",
            "heartbeat": time.time(), **holder}
    path.write_text(json.dumps(body))
    stamp = body["heartbeat"] if written is None else written
    os.utime(path, (stamp, stamp))


def dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_a_live_run_on_this_machine_holds_the_output(tmp_path):
    held_by(tmp_path)                       # this test process stands for the other run: alive
    with pytest.raises(OutputBusy, match=r"being written by another run .*pid \d+"):
        Lease(str(tmp_path)).acquire()


def test_a_dead_process_or_a_stale_heartbeat_frees_it(tmp_path):
    held_by(tmp_path, pid=dead_pid())       # same host, boot and pid namespace: the pid is ours to check
    Lease(str(tmp_path)).acquire().release()
    held_by(tmp_path, host="another-machine", heartbeat=time.time() - lease.EXPIRES_SECONDS - 1)
    taken = Lease(str(tmp_path)).acquire()
    assert json.loads((tmp_path / "_progress" / lease.LEASE_FILE).read_text())["token"] == taken.token
    taken.release()
    assert not (tmp_path / "_progress" / lease.LEASE_FILE).exists()


def test_a_dead_pid_under_our_hostname_but_another_pid_namespace_or_boot_holds_it(tmp_path):
    """Containers sharing the host's name (host networking) cannot see each other's pids: a pid missing
    here may be a live run next door, so only its heartbeat decides."""
    for other in ({"pid_ns": "pid:[1]"}, {"boot_id": "another-boot"}):
        held_by(tmp_path, pid=dead_pid(), **other)
        with pytest.raises(OutputBusy, match=rf"host {re.escape(socket.gethostname())}, pid \d+"):
            Lease(str(tmp_path)).acquire()


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="without /proc the host alone decides")
def test_a_lease_from_before_boot_ids_and_pid_namespaces_waits_for_its_heartbeat(tmp_path):
    held_by(tmp_path, pid=dead_pid())
    path = tmp_path / "_progress" / lease.LEASE_FILE
    older = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("boot_id", "pid_ns")}
    path.write_text(json.dumps(older))
    with pytest.raises(OutputBusy):
        Lease(str(tmp_path)).acquire()


@pytest.mark.parametrize("before", ["no lease", "a dead run's lease"])
def test_of_two_runs_starting_together_exactly_one_takes_it(tmp_path, monkeypatch, before):
    """Both look at once (a missing or a stale lease, each slowed down between look and write): one holds
    the lease, the other refuses naming it."""
    import threading

    if before != "no lease":
        held_by(tmp_path, pid=dead_pid())
    look = Lease.check_free

    def slow_look(self):
        look(self)
        time.sleep(0.2)   # without the lock both runs would look here before either writes

    monkeypatch.setattr(Lease, "check_free", slow_look)
    runs, outcomes = [Lease(str(tmp_path)) for _ in range(2)], []

    def start(run):
        try:
            outcomes.append(run.acquire())
        except OutputBusy as refused:
            outcomes.append(refused)

    threads = [threading.Thread(target=start, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [o for o in outcomes if isinstance(o, Lease)]
    assert len(held) == 1 and sum(isinstance(o, OutputBusy) for o in outcomes) == 1
    assert held[0].holder()["token"] == held[0].token
    held[0].release()
    assert sorted(p.name for p in (tmp_path / "_progress").iterdir()) == [lease.LOCK_FILE]


def test_an_unreadable_lease_is_taken_over(tmp_path):
    (tmp_path / "_progress").mkdir()
    (tmp_path / "_progress" / lease.LEASE_FILE).write_text("")
    taken = Lease(str(tmp_path)).acquire()
    assert taken.holder()["token"] == taken.token
    taken.release()


@pytest.mark.parametrize("holder_clock", [-600, +600])
def test_the_storage_clock_decides_not_the_holders(tmp_path, holder_clock):
    """A holder on a machine whose clock is 10 minutes behind (or ahead of) ours: its heartbeat field says
    it is long dead (or fresh for another 10 minutes); the lease's modification time says when it wrote."""
    now = time.time()
    held_by(tmp_path, host="another-machine", heartbeat=now + holder_clock, written=now - 5)
    with pytest.raises(OutputBusy, match=r"heartbeat \d s ago\); .* rerun after 17\d s"):
        Lease(str(tmp_path)).acquire()
    held_by(tmp_path, host="another-machine", heartbeat=now + holder_clock, written=now - lease.EXPIRES_SECONDS - 5)
    Lease(str(tmp_path)).acquire().release()
    assert not list((tmp_path / "_progress").glob(lease.CLOCK_PROBE + "*"))   # the probe files are gone


def test_without_modification_times_the_holders_heartbeat_decides(tmp_path, monkeypatch):
    """A filesystem without modification times: the age is our clock minus the holder's heartbeat, and a
    holder's clock ahead of ours is reported as such."""
    monkeypatch.setattr("fsspec.implementations.local.LocalFileSystem.modified",
                        lambda self, path: (_ for _ in ()).throw(NotImplementedError))
    held_by(tmp_path, host="another-machine", heartbeat=time.time() + 70)
    with pytest.raises(OutputBusy, match=r"heartbeat \d+ s ahead of our clock\); .* rerun after 2\d\d s"):
        Lease(str(tmp_path)).acquire()
    held_by(tmp_path, host="another-machine", heartbeat=time.time() - lease.EXPIRES_SECONDS - 1, written=time.time())
    Lease(str(tmp_path)).acquire().release()


def test_a_lease_released_while_its_age_is_read_is_free(tmp_path):
    held_by(tmp_path, host="another-machine")
    taker = Lease(str(tmp_path))
    (tmp_path / "_progress" / lease.LEASE_FILE).unlink()   # released between the read and the age
    assert taker._storage_age() == float("inf")


def test_another_machine_with_a_fresh_heartbeat_holds_it(tmp_path):
    held_by(tmp_path, host="another-machine", heartbeat=time.time() - 10)
    with pytest.raises(OutputBusy, match="another-machine.*rerun after"):
        Lease(str(tmp_path)).acquire()


def test_heartbeat_refreshes_the_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_SECONDS", 0.05)
    taken = Lease(str(tmp_path)).acquire()
    first = taken.holder()["heartbeat"]
    time.sleep(0.3)
    assert taken.holder()["heartbeat"] > first
    taken.release()


def test_a_run_that_lost_its_lease_does_not_overwrite_the_new_holders(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lease, "HEARTBEAT_SECONDS", 0.05)
    stalled = Lease(str(tmp_path)).acquire()
    held_by(tmp_path, host="another-machine")        # taken over while this run stalled
    time.sleep(0.3)
    assert stalled.holder()["token"] == "other"
    assert "lost the lease" in capsys.readouterr().err
    stalled.release()                                # and its release leaves the new holder's lease
    assert stalled.holder()["token"] == "other"


@pytest.mark.ray
def test_second_job_into_a_running_output_refuses(tmp_path, ner_checkpoint):
    corpus = write_corpus(tmp_path / "corpus", shards=2, rows_per_shard=6)
    output = tmp_path / "out"
    command = [sys.executable, "jobs/ner_corpus.py", "--input", str(corpus), "--model", str(ner_checkpoint),
               "--output", str(output)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (output / "_progress" / lease.LEASE_FILE).exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()[0][-3000:]
            time.sleep(0.1)
        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 75                 # temporary (EX_TEMPFAIL): a scheduler retries it
        assert "being written by another run" in second.stderr.strip().splitlines()[-1]
    finally:
        out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    assert (output / "_SUCCESS").exists() and not (output / "_progress" / lease.LEASE_FILE).exists()


def test_the_lease_comes_before_the_output_is_touched_and_survives_overwrite(tmp_path):
    """A run holds the lease while open_output cleans or empties the folder: --overwrite keeps it, and a
    folder holding nothing but the lease (and a clock probe a killed run left) counts as empty."""
    from pipeline.sink import prepare_output

    out = tmp_path / "out"
    held = Lease(str(out)).acquire()
    try:
        (out / "_progress" / f"{lease.CLOCK_PROBE}killed-run").write_bytes(b"")
        prepare_output(str(out), overwrite=False)          # only our lease: a fresh output
        (out / "part-00000-000000000000.parquet").write_bytes(b"x")
        (out / "_progress" / "_job.json").write_text("{}")
        prepare_output(str(out), overwrite=True)
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == \
            ["_progress", "_progress/.lease.json", "_progress/.lease.lock"]
        with pytest.raises(OutputBusy):
            Lease(str(out)).check_free()
    finally:
        held.release()


def test_a_write_of_a_run_that_lost_the_lease_places_and_commits_nothing(tmp_path):
    """A killed run's Ray workers can go on for seconds (its process group killed, not its whole session), one
    stalled past the expiry for longer: their writes must not land beside the rows a new run redoes."""
    import pyarrow as pa

    from pipeline.lease import LeaseLost
    from pipeline.ledger import recover
    from pipeline.sink import ResultWriter
    from tests.test_scale import _block, _sink

    output = tmp_path / "out"
    block = _block(0, 0, 4, pa.array(["x"] * 4))
    held_by(output, token="new-run")
    with pytest.raises(LeaseLost, match=r"no longer holds the lease of the output \(host .*\): its write is not"):
        ResultWriter(_sink(tmp_path, lease="killed-run", rows_per_file=2))(block)
    assert not list(output.glob("part-*")) and not recover(str(output)).entries
    (output / "_progress" / lease.LEASE_FILE).unlink()   # released: a write after its run ended
    with pytest.raises(LeaseLost, match=r"\(no run holds it\)"):
        ResultWriter(_sink(tmp_path, lease="killed-run"))(block)
    held_by(output, token="new-run")
    assert ResultWriter(_sink(tmp_path, lease="new-run", rows_per_file=2))(block)["rows"] == 4
    assert len(list(output.glob("part-*"))) == 2 and len(recover(str(output)).entries) == 1


def test_the_heartbeat_has_a_client_of_its_own_and_sftp_sessions_are_not_shared(tmp_path):
    """The lease's heartbeat thread runs beside the job's: it gets its own filesystem instance. Two threads
    waiting on one paramiko SFTP session deadlock, so threads take turns on SFTP (tests/test_sftp.py)."""
    import types

    import fsspec

    from pipeline.storage import thread_safe

    assert Lease(str(tmp_path)).fs is not fsspec.core.url_to_fs(str(tmp_path))[0]
    assert not thread_safe(types.SimpleNamespace(protocol=("sftp", "ssh")))
    assert thread_safe(fsspec.filesystem("file")) and thread_safe(fsspec.filesystem("memory"))
