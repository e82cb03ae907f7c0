"""Waiting for GPUs a cluster may bring up (`pipeline.gpu_wait`), on the session's real Ray (no GPUs)."""

from __future__ import annotations

import re

import pytest
import ray

from pipeline import gpu_wait

pytestmark = pytest.mark.ray


def groups() -> list[str]:
    return [g["state"] for g in ray.util.placement_group_table().values()]


def test_what_a_run_needs():
    assert gpu_wait.gpus_wanted("cuda", None, have=0) == 1 and gpu_wait.gpus_wanted("cuda", 4, have=1) == 4
    assert gpu_wait.gpus_wanted("auto", 4, have=1) == 4
    assert gpu_wait.gpus_wanted("auto", 4, have=0) == 0   # a CPU cluster: auto runs on its CPUs
    assert gpu_wait.gpus_wanted("cpu", 4, have=8) == 0


def test_a_ray_this_process_started_is_not_waited_for(ray_session):
    assert gpu_wait._started_here()
    assert gpu_wait.wait_for_gpus("cuda", 2, seconds=600) == ""   # at once: nothing could add GPUs


def test_a_cluster_that_launches_nothing_ends_the_wait_early(ray_session, monkeypatch):
    """Joined (not started here), no GPU, no autoscaler launching: the wait ends after the grace, not after
    --wait-for-gpus, and the demand (a placement group) is withdrawn."""
    monkeypatch.setattr(gpu_wait, "_started_here", lambda: False)
    monkeypatch.setattr(gpu_wait, "LAUNCH_GRACE_SECONDS", 1.0)
    before = groups()
    assert re.fullmatch(r"its autoscaler launched no node for them in [12] s",
                        gpu_wait.wait_for_gpus("cuda", 2, seconds=600))
    assert groups() == [*before, "REMOVED"]
    monkeypatch.setattr(gpu_wait, "_launching", lambda: True)   # launching, but not within --wait-for-gpus
    assert re.fullmatch(r"after waiting [12] s for them \(--wait-for-gpus\)", gpu_wait.wait_for_gpus("cuda", 2, 1.5))


def test_the_wait_ends_when_the_demand_is_placed(ray_session, monkeypatch, capsys):
    """The demand placed (here CPU bundles stand in for GPUs that came up): no refusal, the group is removed."""
    monkeypatch.setattr(gpu_wait, "_started_here", lambda: False)
    monkeypatch.setattr(gpu_wait, "placement_group", lambda bundles: ray.util.placement_group(
        [{"CPU": 0.01} for _ in bundles]))
    assert gpu_wait.wait_for_gpus("cuda", 2, seconds=60) == ""
    assert groups()[-1] == "REMOVED"
    assert "the cluster has 0 of the 2 GPUs" not in capsys.readouterr().out   # placed at the first look


def test_the_dtype_probe_refuses_a_node_whose_torch_sees_no_gpu():
    """torch without CUDA says "no bf16", which read as float16 for the whole run; now the probe fails."""
    from pipeline import ray_plan

    with pytest.raises(ValueError, match="CUDA is not available"):
        ray_plan._probe_auto_dtype._function()
