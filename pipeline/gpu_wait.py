"""Waiting for the GPUs a run needs on a cluster that may autoscale (`--wait-for-gpus`).

A GPU worker group scaled to zero (KubeRay `minReplicas: 0`) or started below what a run asks
(`min_workers: 1` and `--model-actors 4`) has fewer GPUs up than the run needs. The run then holds
a placement group of one-GPU bundles: pending, it is demand the cluster's autoscaler launches
nodes for (several runs' groups add up, where `request_resources` would replace each other's).
Once the group is placed the GPUs are up; it is removed at once and Ray Data's model actors take
them. A cluster that launches nothing for it within LAUNCH_GRACE_SECONDS (no autoscaler, or no
node type with GPUs) ends the wait early; a Ray started by this process has no autoscaler at all.
"""

from __future__ import annotations

import json
import time

import ray
from ray.util.placement_group import placement_group, remove_placement_group

POLL_SECONDS, REPORT_SECONDS = 2.0, 30.0
LAUNCH_GRACE_SECONDS = 60.0   # an autoscaler reacts to new demand within seconds (its update interval: 5 s)


def gpus_wanted(device: str, model_actors: int | None, have: float) -> int:
    """GPUs the run needs: `--device cuda` one per model actor; `--device auto` only on a cluster with GPUs."""
    if device == "cuda":
        return model_actors or 1
    return (model_actors or 0) if device == "auto" and have else 0


def wait_for_gpus(device: str, model_actors: int | None, seconds: float) -> str:
    """Wait until the GPUs the run needs are up; "" when they are (or none are missing), else why not."""
    have = ray.cluster_resources().get("GPU", 0.0)
    wanted = gpus_wanted(device, model_actors, have)
    if have >= wanted or not seconds or _started_here():
        return ""
    group = placement_group([{"GPU": 1}] * wanted)
    started = time.monotonic()
    deadline, said, launched = started + seconds, started - REPORT_SECONDS, False
    try:
        while True:
            ready, _ = ray.wait([group.ready()], timeout=max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
            if ready:
                return ""
            now, have = time.monotonic(), ray.cluster_resources().get("GPU", 0.0)
            launched = launched or _launching()
            if now >= deadline:
                return f"after waiting {now - started:.0f} s for them (--wait-for-gpus)"
            if not launched and now - started >= LAUNCH_GRACE_SECONDS:
                return f"its autoscaler launched no node for them in {now - started:.0f} s"
            if now - said >= REPORT_SECONDS:
                print(f"bertbatch: the cluster has {have:g} of the {wanted} GPUs this run needs; waiting for its "
                      f"autoscaler (up to {deadline - now:.0f} s more)", flush=True)
                said = now
    finally:
        remove_placement_group(group)


def _started_here() -> bool:
    """Whether this process started the Ray it runs on (`ray.init()` without an address: no autoscaler)."""
    node = getattr(ray._private.worker, "_global_node", None)
    return bool(node is not None and node.head)


def _launching() -> bool:
    """Whether the cluster's autoscaler is launching nodes: autoscaler v2's status, else v1's report."""
    from ray.autoscaler.v2.sdk import get_cluster_status
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        if status.pending_launches or status.pending_nodes:
            return True
    except Exception:  # noqa: BLE001 - no v2 autoscaler state on this cluster
        pass
    raw = _internal_kv_get("__autoscaling_status")   # ray_constants.DEBUG_AUTOSCALING_STATUS, what `ray status` reads
    report = json.loads(raw).get("autoscaler_report") or {} if raw else {}
    return bool(report.get("pending_launches") or report.get("pending_nodes"))
