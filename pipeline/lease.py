"""One run at a time per output: a lease `OUTPUT/_progress/.lease.json` kept fresh by a heartbeat.

A run takes the lease before it touches the output and refreshes it every HEARTBEAT_SECONDS; a
second run into the same output refuses while the lease is held. A lease is free when its run
released it, when its heartbeat is older than EXPIRES_SECONDS (a run killed on another machine),
or at once when its process is gone from this machine (a killed run restarted where it ran).
"This machine" means the same host, Linux boot and pid namespace: containers sharing a hostname
(host networking) cannot see each other's pids, so between them only the heartbeat decides.

Locally a run looks at the lease and writes its own under a file lock, so of two runs starting
together (on a missing or a stale lease) exactly one gets it. Object stores have no lock or
exclusive create: there a run reads its lease back SETTLE_SECONDS after writing it, and of two
runs that both wrote before either read back, the overwritten one refuses.

A heartbeat's age is taken from the storage's clock, not the machines': the lease's modification
time against that of a probe file written now (`_storage_age`), so machines whose clocks disagree
still agree on when a lease expired. Where the filesystem keeps no modification times, the age is
our clock minus the holder's heartbeat, and machines are assumed to agree within EXPIRES_SECONDS -
HEARTBEAT_SECONDS (150 s). See docs/restart.md.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import fsspec

from pipeline.ledger import put_json
from pipeline.storage import protocols

HEARTBEAT_SECONDS = 30.0
EXPIRES_SECONDS = 180.0
SETTLE_SECONDS = 1.0
LEASE_FILE = ".lease.json"
LOCK_FILE = ".lease.lock"        # local filesystems: held while a run looks at the lease and writes its own
CLOCK_PROBE = ".clock-"          # + a run's token: written and removed to read the storage's clock


class OutputBusy(FileExistsError):
    """Another run holds the output's lease."""


class LeaseLost(RuntimeError):
    """A write of a run that no longer holds the output's lease."""


def check_held(fs, root: str, token: str | None) -> None:
    """Raise LeaseLost unless the run with this lease `token` still holds the lease of the output at `root`.

    Write tasks call it before they place a file or commit: a run killed from outside can leave Ray workers
    that go on for seconds (a driver's process group killed, not its session: a write committed 2-3 s later),
    and a run stalled past EXPIRES_SECONDS has workers too; another run may by then be redoing their rows under
    the same file names. None (a writer outside a job): no check."""
    if token is None:
        return
    path = f"{root.rstrip('/')}/_progress/{LEASE_FILE}"
    holder = None
    for attempt in range(3):   # where files are written in place (HDFS, SFTP) a heartbeat may be half written
        time.sleep(0.2 * attempt)
        fs.invalidate_cache(path)
        try:
            holder = json.loads(fs.cat_file(path))
            break
        except FileNotFoundError:
            break
        except ValueError:
            continue
    if not isinstance(holder, dict) or holder.get("token") != token:
        who = f"host {holder.get('host')}, pid {holder.get('pid')}" if isinstance(holder, dict) else "no run"
        raise LeaseLost(f"this run no longer holds the lease of the output ({who} holds it): its write is not "
                        "committed; the run holding the lease does these rows")


def _pid_space() -> dict:
    """Where a pid names a process: the host, the Linux boot and the pid namespace (None without /proc)."""
    space = {"host": socket.gethostname(), "boot_id": None, "pid_ns": None}
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as handle:
        space["boot_id"] = handle.read().strip()
    with contextlib.suppress(OSError):
        space["pid_ns"] = os.readlink("/proc/self/ns/pid")
    return space


def _alive_here(holder: dict) -> bool:
    """False only when the holder's pid is one we can check and its process is gone.

    A holder in another container with our hostname, or from an older version that recorded no boot id
    and pid namespace, may be alive with a pid we cannot see: only its heartbeat decides."""
    space = _pid_space()
    if any(holder.get(key) != value for key, value in space.items()) or (space["boot_id"] and not space["pid_ns"]):
        return True   # (a Linux whose pid namespace cannot be read: a container we cannot tell apart)
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        pass
    return True


class Lease:
    def __init__(self, output: str):
        # an instance of its own: the heartbeat's thread never waits on a client the job's thread is using
        self.fs, root = fsspec.core.url_to_fs(output, skip_instance_cache=True)
        self.local = bool(protocols(self.fs) & {"file", "local"})
        self.output = output
        self.path = f"{root.rstrip('/')}/_progress/{LEASE_FILE}"
        self.token = uuid.uuid4().hex
        self.started = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        self.fs.invalidate_cache(self.path)   # another run may have written it
        try:
            with self.fs.open(self.path, "r") as handle:
                return json.load(handle)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def check_free(self) -> None:
        """Raise OutputBusy (one line) when a live run holds the lease."""
        holder = self.holder()
        if holder is None or holder.get("token") == self.token:
            return
        age = self._storage_age()
        if age is None:   # no modification times: the holder's clock against ours
            age = time.time() - float(holder.get("heartbeat", 0))
        if age < EXPIRES_SECONDS and _alive_here(holder):
            beat = f"{max(age, 0):.0f} s ago" if age > -1 else f"{-age:.0f} s ahead of our clock"
            raise OutputBusy(
                f"--output {self.output!r} is being written by another run (host {holder.get('host')}, "
                f"pid {holder.get('pid')}, started {holder.get('started')}, heartbeat {beat}); "
                f"one run per output. If that run is dead, rerun after {EXPIRES_SECONDS - age:.0f} s")

    def _storage_age(self) -> float | None:
        """Seconds since the lease was last written, by the storage's clock: the modification time of a probe
        file written now minus the lease's (a run's heartbeat rewrites the lease). inf when the lease is gone
        (released since it was read); None where the filesystem keeps no modification times."""
        probe = f"{self.path.rsplit('/', 1)[0]}/{CLOCK_PROBE}{self.token}"
        try:
            self.fs.pipe_file(probe, b"")
            try:
                self.fs.invalidate_cache(self.path)
                now, written = self.fs.modified(probe), self.fs.modified(self.path)
            finally:
                with contextlib.suppress(OSError):
                    self.fs.rm(probe)
        except FileNotFoundError:
            return math.inf
        except (NotImplementedError, OSError, KeyError, TypeError, ValueError):
            return None
        return (now - written).total_seconds()

    def acquire(self) -> Lease:
        if self.local:
            with self._locked():   # the look and the write as one step: of two runs, one takes it
                self.check_free()
                self._take()
        else:
            self.check_free()
            self._take()
            time.sleep(SETTLE_SECONDS)
            holder = self.holder()
            if holder is None or holder.get("token") != self.token:
                self.check_free()   # someone else's lease now: refuse with their details
        self._thread = threading.Thread(target=self._beat, name="bertbatch-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path)

    def _body(self) -> dict:
        return {"token": self.token, **_pid_space(), "pid": os.getpid(), "started": self.started,
                "heartbeat": time.time()}

    def _take(self) -> None:
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._write()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock (flock: between processes, NFS included) on `_progress/.lease.lock`, a file
        that stays: removing it could let a run lock a name another run has just replaced."""
        folder = self.path.rsplit("/", 1)[0]
        os.makedirs(folder, exist_ok=True)
        with open(f"{folder}/{LOCK_FILE}", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _write(self) -> None:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        put_json(self.fs, self.path, self._body())   # whole or nothing: a reader never sees half a lease

    def _beat(self) -> None:
        """Refresh the lease while it is ours. A run that stalled past EXPIRES_SECONDS may find another
        run's lease there: it says so and stops, rather than overwrite it and let a third run in."""
        while not self._stop.wait(HEARTBEAT_SECONDS):
            holder = self.holder()
            if holder is not None and holder.get("token") != self.token:
                print(f"bertbatch: lost the lease of {self.output} to another run (host {holder.get('host')}, pid "
                      f"{holder.get('pid')}): this run stalled past {EXPIRES_SECONDS:.0f} s", file=sys.stderr, flush=True)
                return
            with contextlib.suppress(OSError):
                self._write()
