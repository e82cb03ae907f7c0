"""Shared fixtures: one local Ray per test session (only for tests that ask for it), tiny checkpoints, a corpus."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORDS = (  # noqa: SIM905 - a sentence is easier to read than a list of words
    "John Smith works at Acme Corp in Paris . Mary Jones visited the Bank of London yesterday . "
    "Hello world , this is a small document about the big city and the old river . "
    "Who lives in New York ? The company was in Berlin . Café naïve résumé über Straße . "
    "東京 and 北京 are cities . 😀"
).split()


def pytest_configure(config: pytest.Config) -> None:
    """`pytest -m gpu` runs the GPU tests, and refuses where torch sees no GPU (a CPU wheel, no driver: every
    test would be skipped). Any other run hides the GPUs, so that on a GPU machine the suite runs as in CI
    (its jobs' `--device auto` would pick CUDA and bf16 and differ from the fp32 references)."""
    if config.getoption("markexpr", "").strip() != "gpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""   # before torch or Ray looks (workers inherit it)
        return
    import torch

    if not torch.cuda.is_available():
        raise pytest.UsageError(f"-m gpu: torch {torch.__version__} sees no CUDA device here, so every GPU test "
                                "would be skipped; install a CUDA build of torch (on Linux PyPI's torch is one: "
                                "scripts/setup.sh without TORCH_INDEX_URL)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Spark and Airflow tests last: .ci/run builds their virtual environments beside the rest of the suite."""
    last = ("spark", "airflow")   # stable sort: the rest keep their order
    items.sort(key=lambda item: sum(1 + i for i, m in enumerate(last) if item.get_closest_marker(m)))


@pytest.fixture(scope="session")
def ray_session():
    """`ray.init(num_cpus=2)` once per session; shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ner_checkpoint(tmp_path_factory) -> Path:
    """Tiny random BERT token classifier (BIO labels, 128 positions) with its WordPiece tokenizer."""
    from tests.checkpoints import make_checkpoint

    folder, _ = make_checkpoint(tmp_path_factory.mktemp("ner-bert"), "bert", "ner")
    return folder


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Varied lengths: most fit one 128-token window, every fifth needs several."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        length = rng.randint(150, 300) if i % 5 == 4 else rng.randint(1, 40)
        texts.append(" ".join(rng.choice(WORDS) for _ in range(length)))
    return texts


def write_corpus(folder: Path, shards: int = 3, rows_per_shard: int = 12) -> Path:
    """Hive-partitioned shards `lang=xx/part-N.parquet` with ids, texts, a date; one null and one empty text."""
    texts = make_texts(shards * rows_per_shard)
    texts[3], texts[5] = None, ""
    for shard in range(shards):
        rows = range(shard * rows_per_shard, (shard + 1) * rows_per_shard)
        table = pa.table({
            "id": pa.array([f"doc-{i:03d}" for i in rows]),
            "text": pa.array([texts[i] for i in rows], pa.string()),
            "date": pa.array([f"2026-01-0{1 + i % 3}" for i in rows]),
        })
        path = folder / f"lang={'en' if shard % 2 == 0 else 'fr'}" / f"part-{shard}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=5)
    return folder


def run_ner_job(corpus: Path | str, model: Path | str, output: Path | str, *args: str, kill: str | None = None,
                killed_when: Callable[[], bool] | None = None) -> subprocess.CompletedProcess:
    """`jobs/ner_corpus.py` as its own process in its own session (its own local Ray), optionally SIGKILLed at a
    kill hook (`kill`: BERTBATCH_TEST_KILL_AT) or from outside as soon as `killed_when()` holds."""
    from pipeline.kill_hooks import KILL_ENV, kill_session

    env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, "RAY_ADDRESS")}
    if kill:
        env[KILL_ENV] = kill
    command = [sys.executable, "jobs/ner_corpus.py", "--input", str(corpus), "--model", str(model),
               "--output", str(output), *args]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    if killed_when is not None:   # from outside: mid-run, wherever the rest is
        deadline = time.time() + 300
        while process.poll() is None and time.time() < deadline and not killed_when():
            time.sleep(0.005)
        kill_session(process.pid)
    out, _ = process.communicate(timeout=300)
    kill_session(process.pid)   # a killed driver's Ray went with it; be sure
    return subprocess.CompletedProcess(command, process.returncode, out, "")
