"""One run at a time per output: a lease `OUTPUT/_progress/.lease.json` kept fresh by a heartbeat.

A run takes the lease before it touches the output and refreshes it every HEARTBEAT_SECONDS; a
second run into the same output refuses while the lease is held. A lease is free when its run
released it, when its heartbeat is older than EXPIRES_SECONDS (a run killed on another machine),
or at once when its process is gone from this machine (a killed run restarted where it ran).
There is no atomic create on object stores, so after writing its lease a run reads it back (on
object stores SETTLE_SECONDS later): of two runs starting together, the overwritten one refuses.
See docs/restart.md.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid

import fsspec

from pipeline.ledger import put_json

HEARTBEAT_SECONDS = 30.0
EXPIRES_SECONDS = 180.0
SETTLE_SECONDS = 1.0
LEASE_FILE = ".lease.json"


class OutputBusy(FileExistsError):
    """Another run holds the output's lease."""


def _alive_here(holder: dict) -> bool:
    """False when the holder ran on this machine and its process is gone."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        pass
    return True


class Lease:
    def __init__(self, output: str):
        self.fs, root = fsspec.core.url_to_fs(output)
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
        age = time.time() - float(holder.get("heartbeat", 0))
        if age < EXPIRES_SECONDS and _alive_here(holder):
            raise OutputBusy(
                f"--output {self.output!r} is being written by another run (host {holder.get('host')}, "
                f"pid {holder.get('pid')}, started {holder.get('started')}, heartbeat {age:.0f} s ago); "
                f"one run per output. If that run is dead, rerun after {EXPIRES_SECONDS - age:.0f} s")

    def acquire(self) -> Lease:
        self.check_free()
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._write()
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol not in ("file", "local"):   # a local write is visible at once
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

    def _write(self) -> None:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        body = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                "started": self.started, "heartbeat": time.time()}
        put_json(self.fs, self.path, body)   # whole or nothing: a reader never sees half a lease

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                self._write()
