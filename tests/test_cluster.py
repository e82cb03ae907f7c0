"""A real two-node Ray cluster on loopback (`ray start --head` + `ray start --address=…`) and a
`ray job submit --working-dir .` of the NER job into it.

How the cluster stays isolated from the rest of the test session (temp dirs, free ports, token
auth through the environment only, teardown by our own pids): see tests/ray_cluster.py.
"""

from __future__ import annotations

import re
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.checkpoints import make_checkpoint
from tests.ray_cluster import RAY, LoopbackCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoopbackCluster]:
    if not RAY.exists():
        pytest.skip(f"no `ray` command next to {sys.executable}")
    c = LoopbackCluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_job_submission_sees_both_nodes(cluster: LoopbackCluster) -> None:
    probe = "import ray; ray.init(); print('ALIVE_NODES', sum(n['Alive'] for n in ray.nodes()))"
    status, logs = cluster.submit("python", "-c", probe)
    assert status == "SUCCEEDED", logs
    assert "ALIVE_NODES 2" in logs, logs


def test_dashboard_refuses_requests_without_the_cluster_token(cluster: LoopbackCluster) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        cluster.job_info("no-such-job", token="not-the-token")
    assert refused.value.code in (401, 403)


def _write_corpus(folder: Path, docs: int = 40) -> set[int]:
    """Two Parquet files of short and long texts (the long ones need several windows)."""
    folder.mkdir(parents=True)
    words = ["John", "Smith", "works", "at", "Acme", "Corp", "in", "Paris", "and", "Mary", "Jones", "visited"]
    texts = [" ".join(words[: 3 + i % len(words)]) * (1 + 12 * (i % 9 == 0)) for i in range(docs)]
    ids = list(range(1000, 1000 + docs))
    table = pa.table({"id": pa.array(ids, pa.int64()), "text": texts})
    pq.write_table(table.slice(0, docs // 2), folder / "part-0.parquet")
    pq.write_table(table.slice(docs // 2), folder / "part-1.parquet")
    return set(ids)


def test_ner_job_submitted_to_the_cluster_annotates_every_row(cluster: LoopbackCluster, tmp_path: Path) -> None:
    model, _ = make_checkpoint(tmp_path / "model", "bert", "ner")
    ids = _write_corpus(tmp_path / "corpus")
    output = tmp_path / "out"
    status, logs = cluster.submit(
        "python", "jobs/ner_corpus.py", "--input", str(tmp_path / "corpus"), "--output", str(output),
        "--model", str(model), "--max-length", "32", "--stride", "8",
    )
    assert status == "SUCCEEDED", f"{status}\n{logs[-6000:]}"
    assert (output / "_SUCCESS").is_file(), sorted(p.name for p in output.iterdir())
    results = ds.dataset(output, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    errors_dir = output / "_errors"
    errors = (ds.dataset(errors_dir, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
              if errors_dir.is_dir() and any(errors_dir.iterdir()) else [])
    assert sorted(results + errors) == sorted(ids)
    assert not errors


def test_a_run_needing_gpus_the_cluster_lacks_asks_waits_then_refuses(cluster: LoopbackCluster,
                                                                       tmp_path: Path) -> None:
    """A joined cluster may bring up GPU nodes: the run puts its demand to the autoscaler and waits (here
    --wait-for-gpus 3; this cluster has no autoscaler, which ends a longer wait after a minute)."""
    model, _ = make_checkpoint(tmp_path / "model", "bert", "ner")
    _write_corpus(tmp_path / "corpus", docs=4)
    status, logs = cluster.submit(
        "python", "jobs/ner_corpus.py", "--input", str(tmp_path / "corpus"), "--output", str(tmp_path / "out"),
        "--model", str(model), "--device", "cuda", "--wait-for-gpus", "3")
    assert status == "FAILED", logs[-3000:]
    assert "the cluster has 0 of the 1 GPUs this run needs; waiting for its autoscaler" in logs
    assert re.search(r"--device cuda: the Ray cluster has no GPU; use --device auto or cpu \(after waiting [34] s "
                     r"for them \(--wait-for-gpus\)\)", logs)
    assert not list((tmp_path / "out").glob("part-*"))


def test_a_run_waits_for_the_gpu_node_the_autoscaler_launches(tmp_path: Path) -> None:
    """A GPU node type scaled to zero, behind Ray's autoscaler: `--device cuda` puts the run's demand to it, it
    launches the node, and the run goes on to place its model actor there. That node's GPU is a resource only
    (Ray's fake multi-node provider): the actor's torch finds no CUDA, so the run fails with that, once the
    GPU is up, rather than refusing for want of one."""
    if not RAY.exists():
        pytest.skip(f"no `ray` command next to {sys.executable}")
    model, _ = make_checkpoint(tmp_path / "model", "bert", "ner")
    _write_corpus(tmp_path / "corpus", docs=4)
    scaling = LoopbackCluster(workers=0, cpus=2, node_types={
        "gpu_node": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 1}})
    try:
        scaling.start()
        status, logs = scaling.submit(
            "python", "jobs/ner_corpus.py", "--input", str(tmp_path / "corpus"), "--output", str(tmp_path / "out"),
            "--model", str(model), "--device", "cuda", "--dtype", "float32", "--wait-for-gpus", "300")
        status_text = scaling.ray("status", f"--address=127.0.0.1:{scaling.gcs_port}")
        gpus = status_text.stdout + status_text.stderr
    finally:
        scaling.stop()
    assert status == "FAILED", logs[-3000:]
    assert ("error: an actor of the Infer stage could not start: ValueError: device='cuda' but CUDA is not "
            "available here") in logs, logs[-3000:]
    assert "the Ray cluster has no GPU" not in logs and "launched no node" not in logs
    assert re.search(r"\b1 gpu_node\b", gpus) and re.search(r"/1\.0 GPU\b", gpus), gpus
    assert not list((tmp_path / "out").glob("part-*"))


def _ids(folder: Path) -> list:
    return ds.dataset(folder, format="parquet").to_table(columns=["id"]).column("id").to_pylist()


def test_classify_qa_and_embed_jobs_run_under_ray_job_submit(cluster: LoopbackCluster, tmp_path: Path) -> None:
    """One submission whose entrypoint runs the other three jobs; each joins the cluster on its own."""
    ids = _write_corpus(tmp_path / "corpus")
    models = {head: make_checkpoint(tmp_path / f"model-{head}", "bert", head)[0] for head in ("classify", "qa", "base")}
    common = f"--input {tmp_path / 'corpus'} --max-length 64"
    script = " && ".join([
        f"python jobs/classify_corpus.py {common} --output {tmp_path / 'cls'} --model {models['classify']}",
        f"python jobs/qa_corpus.py {common} --output {tmp_path / 'qa'} --model {models['qa']} --question 'Who works?'",
        f"python jobs/embed_corpus.py {common} --output {tmp_path / 'emb'} --model {models['base']}",
    ])
    status, logs = cluster.submit("bash", "-c", script)
    assert status == "SUCCEEDED", f"{status}\n{logs[-6000:]}"
    for name in ("cls", "qa", "emb"):
        assert (tmp_path / name / "_SUCCESS").is_file(), name
        assert sorted(_ids(tmp_path / name)) == sorted(ids), name
