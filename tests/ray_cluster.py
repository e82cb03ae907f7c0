"""A real Ray cluster on loopback for tests: `ray start --head` (+ `ray start --address=…` workers).

Isolation from the rest of the test session (which may hold its own local `ray.init()`):
- each node has its own short `--temp-dir`, so the `ray_current_cluster` file that a bare
  `ray.init()` would follow is never written to the default /tmp/ray;
- every port is chosen free (worker port ranges included), so nothing collides with the local
  session or between nodes;
- token authentication (on by default for `ray start` clusters since Ray 2.5x) gets a fresh token
  through `RAY_AUTH_TOKEN` in the subprocess environment only: ~/.ray/auth_token is not touched;
  `cluster.env` is that environment, for any client process (`ray job submit`, Airflow, …);
- teardown kills exactly the processes whose command line names one of our temp dirs, never
  `ray stop`, which would also stop the session's local Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
WORKER_PORTS = 40  # per node: job supervisor, driver, data tasks and actors


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortPicker:
    """Hands out distinct free loopback ports and free port ranges, never the same one twice."""

    def __init__(self) -> None:
        self.taken: set[int] = set()
        self.next_range = 30000 + secrets.randbelow(20000)

    def port(self) -> int:
        while True:
            port = free_port()
            if port not in self.taken:
                self.taken.add(port)
                return port

    def port_range(self, size: int) -> tuple[int, int]:
        while True:
            start, self.next_range = self.next_range, self.next_range + size
            if self.next_range > 60000:
                self.next_range = 30000
            ports = range(start, start + size)
            if not self.taken.intersection(ports) and all(_bindable(p) for p in ports):
                self.taken.update(ports)
                return start, start + size - 1


class LoopbackCluster:
    """A head and `workers` worker nodes on 127.0.0.1, each with `cpus` CPUs and its own temp dir.

    With `node_types` (autoscaler node types: name -> resources, min_workers, max_workers), the head also runs
    Ray's autoscaler, which launches those nodes on demand through Ray's fake multi-node provider: real raylets
    on this machine, started and stopped by the autoscaler as it would cloud instances (a "GPU" there is the
    resource only).
    """

    def __init__(self, workers: int = 1, cpus: int = 1, node_types: dict | None = None) -> None:
        # Short paths: Ray puts Unix sockets under the temp dir (108-byte path limit).
        self.temp_dirs = [Path(tempfile.mkdtemp(prefix="bbhead", dir="/tmp"))]
        self.temp_dirs += [Path(tempfile.mkdtemp(prefix="bbnode", dir="/tmp")) for _ in range(workers)]
        self.cpus = cpus
        self.token = secrets.token_hex(32)
        self.ports = PortPicker()
        self.gcs_port, self.dashboard_port = self.ports.port(), self.ports.port()
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` in the entrypoint is ours
        )
        self.env = env
        self.node_types = node_types

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_flags(self, temp_dir: Path) -> list[str]:
        low, high = self.ports.port_range(WORKER_PORTS)
        p = self.ports.port
        return [
            f"--num-cpus={self.cpus}", "--num-gpus=0", "--object-store-memory=200000000", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
            f"--node-manager-port={p()}", f"--object-manager-port={p()}",
            f"--min-worker-port={low}", f"--max-worker-port={high}",
            f"--dashboard-agent-listen-port={p()}", f"--dashboard-agent-grpc-port={p()}",
            f"--runtime-env-agent-port={p()}", f"--metrics-export-port={p()}",
        ]

    def ray(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([str(RAY), *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    def _autoscaling_flags(self) -> list[str]:
        if not self.node_types:
            return []
        config = {
            "cluster_name": "bertbatch-test", "max_workers": sum(t["max_workers"] for t in self.node_types.values()),
            "idle_timeout_minutes": 5, "upscaling_speed": 1.0,
            # the fake provider by module path: the `fake_multinode` type reads defaults from a file the wheel lacks
            "provider": {"type": "external",
                         "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
                         "gcs_address": f"127.0.0.1:{self.gcs_port}", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": {"ray.head.default": {"resources": {"CPU": self.cpus}, "node_config": {},
                                                          "max_workers": 0},
                                     **{name: {"node_config": {}, **t} for name, t in self.node_types.items()}},
            "head_node_type": "ray.head.default", "auth": {}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }
        path = self.temp_dirs[0] / "autoscaling.json"
        path.write_text(json.dumps(config))
        # A device id no machine has: Ray starts a node with a GPU only where that many ids are visible (the test
        # session hides its GPUs with ""), and torch there sees none.
        self.env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", CUDA_VISIBLE_DEVICES="99")
        return [f"--autoscaling-config={path}"]

    def start(self) -> None:
        head = self.ray(
            "start", "--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", *self._autoscaling_flags(),
            f"--ray-client-server-port={self.ports.port()}", *self._node_flags(self.temp_dirs[0]),
        )
        assert head.returncode == 0, f"ray start --head failed:\n{head.stdout}\n{head.stderr}"
        for temp_dir in self.temp_dirs[1:]:
            worker = self.ray("start", f"--address=127.0.0.1:{self.gcs_port}", *self._node_flags(temp_dir))
            assert worker.returncode == 0, f"ray start (worker) failed:\n{worker.stdout}\n{worker.stderr}"

    def submit(self, *entrypoint: str, timeout: float = 480) -> tuple[str, str]:
        """`ray job submit --working-dir .` from the repo root; waits for the end: (status, job logs)."""
        job_id = f"bertbatch-test-{secrets.token_hex(4)}"
        address = f"--address={self.dashboard_url}"
        submitted = self.ray("job", "submit", address, f"--submission-id={job_id}", "--no-wait",
                             "--working-dir=.", "--", *entrypoint)
        assert submitted.returncode == 0, f"ray job submit failed:\n{submitted.stdout}\n{submitted.stderr}"
        deadline, status = time.monotonic() + timeout, "PENDING"
        while status in ("PENDING", "RUNNING") and time.monotonic() < deadline:
            time.sleep(2)
            status = self.job_info(job_id)["status"]
        if status in ("PENDING", "RUNNING"):
            self.ray("job", "stop", address, job_id)
            status = f"TIMED OUT after {timeout:.0f}s while {status}"
        return status, self.ray("job", "logs", address, job_id).stdout

    def job_info(self, job_id: str, token: str | None = None) -> dict:
        """The job's record from the dashboard's REST API (what `ray job status` shows)."""
        request = urllib.request.Request(f"{self.dashboard_url}/api/jobs/{job_id}",
                                         headers={"Authorization": f"Bearer {token or self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def _own_pids(self) -> list[int]:
        """Processes whose command line names one of our temp dirs, or that hold a file open below one (Ray's agents
        rename themselves, `ray::DashboardAgent`, and outlived the teardown by a minute or more)."""
        marks = [str(d) for d in self.temp_dirs]
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                if not any(mark in cmdline for mark in marks):
                    files = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
                    if not any(f.startswith(mark) for f in files for mark in marks):
                        continue
            except OSError:
                continue
            pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            pids = self._own_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while self._own_pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
