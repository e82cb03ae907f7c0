"""How batches reach the model actors: none may wait at a busy actor while another one is idle."""

from __future__ import annotations

import pytest

from pipeline.config import NerConfig
from pipeline.job import build_plan
from pipeline.ner_task import NER_TASK
from pipeline.ray_plan import Placement, _operators
from tests.conftest import write_corpus


def operator_named(ds, name: str):
    op, seen = ds._logical_plan.dag, []
    while op is not None:
        seen.append(op.name)
        if op.name == name:
            return op
        op = op.input_dependencies[0] if op.input_dependencies else None
    raise AssertionError(f"no {name} operator in {seen}")


@pytest.mark.parametrize(("use_gpu", "queued"), [(False, 1), (True, 2)])
def test_model_actors_are_handed_one_batch_ahead_at_most(ray_session, ner_checkpoint, tmp_path, use_gpu, queued):
    """Ray Data hands an actor up to 4 batches by default: the first model actor to start took all four
    batches of a corpus and ran them alone while the other waited. On CPU each actor holds only the
    batch it runs; a GPU keeps one more waiting so it never idles between batches."""
    import ray

    corpus = write_corpus(tmp_path / "in")
    config = NerConfig(input=str(corpus), output=str(tmp_path / "out"), model=str(ner_checkpoint))
    plan = build_plan(config, NER_TASK)[0]
    placement = Placement(use_gpu, tokenizer_actors=1, tokenizer_cpus=0.5, model_actors=2, model_cpus=0.5,
                          model_threads=1, docs_per_batch=256)
    ds = _operators(ray.data.from_items([{"file": 0}]), plan, plan.infer, placement)
    infer = operator_named(ds, "MapBatches(Infer)")
    assert infer.compute.max_tasks_in_flight_per_actor == queued
    assert (infer.compute.min_size, infer.compute.max_size) == (2, 2)
