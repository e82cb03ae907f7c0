"""How actors are placed on CPUs and GPUs (pure arithmetic; no Ray started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import UsageError
from pipeline.ray_plan import BATCH_TEXT_BYTES, READ_TASK_FILES, place, read_groups
from tests.conftest import write_corpus


def test_cpu_cluster_leaves_room_for_tasks_and_threads_follow_cpus():
    placement = place("auto", tokenizer_actors=1, model_actors=1, cluster_cpus=16, cluster_gpus=0)
    assert not placement.use_gpu
    assert placement.tokenizer_cpus == 1.0
    assert placement.model_cpus == 11.0          # 16 - 4 reserved - 1 tokenizer, in Ray's accounting
    assert placement.model_threads == 16         # but its threads use the node's cores
    laptop = place("cpu", 1, 1, cluster_cpus=2, cluster_gpus=0)
    assert laptop.model_cpus == 1.0 and laptop.model_threads == 2
    small = place("cpu", 1, 2, cluster_cpus=2, cluster_gpus=0)
    assert small.model_cpus == 0.5 and small.model_threads == 1
    two_nodes = place("cpu", 1, 4, cluster_cpus=32, cluster_gpus=0, node_cpus=16)
    assert two_nodes.model_threads == 8          # two actors per 16-core node


def test_default_cpu_placement_is_one_single_threaded_actor_per_core():
    laptop = place("cpu", 1, None, cluster_cpus=2, cluster_gpus=0)
    assert (laptop.model_actors, laptop.model_cpus, laptop.model_threads) == (2, 0.5, 1)
    assert laptop.node_threads == 2              # an actor without a batch lends its core (pipeline.cores)
    node = place("auto", 1, None, cluster_cpus=16, cluster_gpus=0)
    assert (node.model_actors, node.model_threads) == (16, 1)
    assert node.model_actors * node.model_cpus <= 16 - 4 - 1 + 0.1    # the tasks' reserve stays
    two_nodes = place("cpu", 1, None, cluster_cpus=32, cluster_gpus=0, node_cpus=16)
    assert (two_nodes.model_actors, two_nodes.model_threads, two_nodes.node_threads) == (32, 1, 16)


def test_default_cpu_placement_shrinks_to_memory_and_corpus():
    gib = 2**30
    # 1 GiB of weights: ≈ 2.4 GiB per actor; half of 16 GiB holds 3 → 3 actors of 5 threads
    tight = place("cpu", 1, None, cluster_cpus=16, cluster_gpus=0, node_memory=16 * gib, model_bytes=gib)
    assert (tight.model_actors, tight.model_threads, tight.node_threads) == (3, 5, 15)
    huge = place("cpu", 1, None, cluster_cpus=16, cluster_gpus=0, node_memory=4 * gib, model_bytes=8 * gib)
    assert (huge.model_actors, huge.model_threads) == (1, 16)
    small_corpus = place("cpu", 1, None, cluster_cpus=16, cluster_gpus=0, rows=500)   # 2 batches of 256
    assert (small_corpus.model_actors, small_corpus.model_threads) == (2, 8)
    finer = place("cpu", 1, None, cluster_cpus=16, cluster_gpus=0, rows=500, docs_per_batch=100)
    assert finer.model_actors == 5
    assert place("cpu", 1, 3, cluster_cpus=16, cluster_gpus=0, rows=10).model_actors == 3   # asked for


def test_gpu_cluster_gives_each_model_actor_a_gpu():
    placement = place("auto", 2, 1, cluster_cpus=16, cluster_gpus=1)
    assert placement.use_gpu and placement.model_cpus == 1.0
    assert not place("cpu", 1, 1, cluster_cpus=16, cluster_gpus=1).use_gpu
    every_gpu = place("auto", 1, None, cluster_cpus=32, cluster_gpus=4)
    assert every_gpu.use_gpu and every_gpu.model_actors == 4


def test_default_tokenizer_actors_and_batches_follow_the_device():
    cpu = place("auto", None, None, cluster_cpus=16, cluster_gpus=0)
    assert (cpu.tokenizer_actors, cpu.docs_per_batch) == (1, 256)
    # one tokenizer actor (≈ 0.3 M tokens/s) cannot feed a GPU: one per 2 CPUs, at most 6 per GPU
    gpu = place("auto", None, None, cluster_cpus=16, cluster_gpus=1)
    assert (gpu.tokenizer_actors, gpu.docs_per_batch) == (6, 2048)
    assert gpu.tokenizer_actors * gpu.tokenizer_cpus <= 0.25 * 16 + 1e-9     # the tasks keep most CPUs
    assert place("auto", None, None, cluster_cpus=4, cluster_gpus=1).tokenizer_actors == 2
    assert place("auto", None, None, cluster_cpus=64, cluster_gpus=8).tokenizer_actors == 32
    asked = place("auto", 3, None, cluster_cpus=16, cluster_gpus=1, docs_per_batch=100)
    assert (asked.tokenizer_actors, asked.docs_per_batch) == (3, 100)
    assert place("cpu", None, None, cluster_cpus=16, cluster_gpus=1).tokenizer_actors == 1   # --device cpu


def test_long_documents_make_smaller_batches_unless_docs_per_batch_is_given():
    """Every stage holds ≈ 125 bytes per character of its batches: 2048 documents of 100,000 characters a batch
    would need ≈ 25 GB a stage. The footers' text bytes per document bound the default batch."""
    short = place("cpu", None, None, cluster_cpus=2, cluster_gpus=0, rows=10_000, text_bytes=10_000 * 300)
    assert short.docs_per_batch == 256
    long = place("cpu", None, None, cluster_cpus=2, cluster_gpus=0, rows=1_000, text_bytes=1_000 * 100_000)
    assert long.docs_per_batch == BATCH_TEXT_BYTES // 100_000 == 83
    assert place("auto", None, None, cluster_cpus=16, cluster_gpus=1, rows=10_000,
                 text_bytes=10_000 * 20_000).docs_per_batch == 419
    huge = place("cpu", None, None, cluster_cpus=2, cluster_gpus=0, rows=10, text_bytes=10 * 50 * 2**20)
    assert huge.docs_per_batch == 1
    given = place("cpu", None, None, cluster_cpus=2, cluster_gpus=0, rows=1_000, text_bytes=1_000 * 100_000,
                  docs_per_batch=256)
    assert given.docs_per_batch == 256


def test_small_files_share_read_tasks_and_big_or_unreadable_ones_have_their_own():
    """A read task per file cost ≈ 24 ms each (20,000 files of a few rows ran at 84 docs/s): consecutive small
    files share a task up to a model batch of rows or READ_TASK_FILES files, in the order given; big ones stay
    alone."""
    rows = (5, 5, 5, None, 5, 4096, 10, 0, 4000, 100)
    assert read_groups(list(range(10)), rows, 4096, max_files=2) == [[0, 1], [2], [3], [4], [5], [6, 7], [8], [9]]
    assert read_groups(list(range(10)), rows, 4096) == [[0, 1, 2], [3], [4], [5], [6, 7, 8], [9]]
    assert read_groups([9, 2, 1], rows, 4096) == [[9, 2, 1]]     # a restart's or a crash isolation's subset
    assert read_groups([], rows, 4096) == []
    tiny = read_groups(list(range(5000)), (5,) * 5000, 4096)
    assert [i for g in tiny for i in g] == list(range(5000)) and {len(g) for g in tiny[:-1]} == {READ_TASK_FILES}


@pytest.mark.parametrize(("device", "model_actors", "cpus", "gpus", "message"), [
    ("cuda", 1, 8, 0, "--device cuda: the Ray cluster has no GPU"),
    ("auto", 2, 8, 1, "--model-actors 2: the cluster has 1 GPUs"),
    ("cpu", 8, 2, 0, "do not fit in 2 CPUs"),
])
def test_impossible_placements_are_refused(device, model_actors, cpus, gpus, message):
    with pytest.raises(UsageError, match=message):
        place(device, 1, model_actors, cpus, gpus)


def test_half_precision_on_cpu_is_slow_only_without_native_units(monkeypatch):
    import torch

    from pipeline import infer

    assert infer.slow_on_this_cpu("float32") is None and infer.slow_on_this_cpu("int8") is None
    for native, dtype in ((True, "bfloat16"), (False, "bfloat16"), (False, "float16")):
        monkeypatch.setattr(infer, "_native_on_cpu", lambda d, native=native: native)
        why = infer.slow_on_this_cpu(dtype)
        assert (why is None) == native
        if why:
            assert f"({torch.backends.cpu.get_cpu_capability()}) has no {dtype}" in why
    # the probe itself answers for this machine (on CI's AVX2-only CPUs: no bf16)
    monkeypatch.undo()
    assert isinstance(infer._native_on_cpu("bfloat16"), bool)


def test_cpu_flags_of_half_units_answer_before_torch_is_asked(monkeypatch):
    import torch

    from models import layers
    from pipeline import infer

    asked = []
    monkeypatch.setattr(layers, "half_units", lambda dtype: asked.append(dtype) or False)
    monkeypatch.setattr(infer, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert infer._native_on_cpu("bfloat16") and not asked
    assert not infer._native_on_cpu("float16") and asked == [torch.float16]   # no fp16 flag: torch's probe
    monkeypatch.setattr(infer, "cpu_flags", lambda: frozenset())
    assert not infer._native_on_cpu("bfloat16") and asked[-1] == torch.bfloat16
    # on this machine, flags that say yes agree with torch's probe
    monkeypatch.undo()
    for dtype, flags in infer.HALF_UNIT_FLAGS.items():
        if flags & infer.cpu_flags():
            assert layers.half_units(getattr(torch, dtype)) is True, dtype


def test_a_bf16_run_is_checked_without_importing_torch_where_the_cpu_flags_answer():
    """The driver's check that bf16 will not crawl (`slow_on_this_cpu`) reads the CPU's flags, where they have the units."""
    script = ("import sys\nfrom pipeline import infer\n"
              "print(infer.slow_on_this_cpu('bfloat16') is None, 'torch' in sys.modules, "
              "bool(infer.HALF_UNIT_FLAGS['bfloat16'] & infer.cpu_flags()))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    fine, imported, flagged = done.stdout.split()
    if flagged == "True":
        assert (fine, imported) == ("True", "False")
    else:   # no flag (an AVX2-only CPU, not Linux): torch's probe answers
        assert imported == "True"


def test_the_driver_plans_a_cpu_run_without_torch_or_the_tokenizers_thread_pool(ner_checkpoint, tmp_path):
    """torch's import is ≈ 2 s of a 2-core machine's start-up, taken from Ray's workers starting beside it: the
    driver plans a CPU run (`--dtype auto` included) without it; only the model actors import torch. Nor does
    its tokenizer start its thread pool: Ray forks the driver to start its processes, and tokenizers then
    warned in each child ("The current process just got forked, after parallelism has already been used")."""
    corpus = write_corpus(tmp_path / "corpus", shards=1, rows_per_shard=6)
    script = (
        "import os, sys\n"
        "from jobs.ner_corpus import NER_TASK, NerConfig\n"
        "from pipeline import job, ray_plan, restart\n"
        "from pipeline.infer import auto_dtype\n"
        f"config = NerConfig(input={str(corpus)!r}, output={str(tmp_path / 'out')!r}, model={str(ner_checkpoint)!r})\n"
        "plan, model, _ = job.build_plan(config, NER_TASK)\n"
        "assert plan.infer.config.with_auto_as(auto_dtype('cpu')).dtypes == ('float32',)\n"
        "print('torch' in sys.modules, flush=True)\n"
        "child = os.fork()\n"
        "os._exit(0) if child == 0 else os.waitpid(child, 0)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert "forked" not in done.stderr


def test_a_window_with_no_room_for_the_stride_is_refused_by_the_plan(ner_checkpoint, tmp_path):
    from jobs.ner_corpus import NER_TASK, NerConfig
    from pipeline import job

    corpus = write_corpus(tmp_path / "corpus", shards=1, rows_per_shard=6)
    config = NerConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(ner_checkpoint), max_length=8, stride=6)
    with pytest.raises(UsageError, match="--max-length/--stride: max_length=8 leaves 6 tokens per window.*stride=6"):
        job.build_plan(config, NER_TASK)
