"""The GPU suite: BERT-base NER in bf16 on one GPU — tokens/s, MFU, agreement with fp32, the HF pipeline.

    .venv/bin/python bench/run.py --suite gpu      # on a machine with a CUDA GPU (~6–9 min on an H200)
    bash bench/device_run.sh                       # on a lent one without a package index (bench/NOTES.md)

What it measures, each in its own process (bench/run.py `measure`):
  - the GPU's matmul FLOP/s (bf16, and fp32 as TF32): the MFU denominator, next to the nominal peak;
  - the model stage alone (`model-stage`: Infer over tokenized batches): the tokens/s of the device and
    its MFU (matmul FLOPs per token from the config × tokens/s ÷ peak);
  - our NER job end to end (Ray: read, tokenizer actors, the model actor on the GPU, decode, write),
    on a corpus large enough for its start-up to matter little, when Ray is installed;
  - the HF token-classification pipeline on the GPU (its default batch_size=1 in fp32, and
    length-sorted batches of 64 in bf16) on a smaller slice of the same distribution;
  - bf16 against fp32 on the GPU: NER entities of the demo model per document.
Numbers go into a section of bench/RESULTS.md of their own, which the cpu suite keeps.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SPEC = dict(ner_docs=100_000, hf_docs=4_000, ner_size=(12, 768, 12), stride=32, device="cuda", dtype="bfloat16",
            matmul_seconds=3.0)
# Nominal dense bf16 tensor-core peaks (FLOP/s) by device name: the MFU against the datasheet.
NOMINAL_BF16 = {"H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.5e12, "H100 NVL": 835.5e12, "H200": 989.4e12,
                "A100": 312e12, "L4": 121e12}
SECTION = ("<!-- gpu suite -->", "<!-- /gpu suite -->")


def run_gpu_suite(work: Path, step, spec: dict = SPEC) -> dict:
    """Every step of the GPU suite (`step` saves each; see bench/run.py `Steps`)."""
    from bench import run
    from bench.workload import bert_base_ner, make_corpus

    device, stride, dtype = spec["device"], spec["stride"], spec.get("dtype", "bfloat16")
    layers, hidden, heads = spec["ner_size"]
    model = bert_base_ner(work / f"ner-model-{layers}x{hidden}", layers, hidden, heads)
    corpus = make_corpus(work / f"ner-corpus-{spec['ner_docs']}", spec["ner_docs"], seed=3)
    small = make_corpus(work / f"ner-corpus-{spec['hf_docs']}", spec["hf_docs"], seed=4)
    r: dict = {"suite": "gpu", "device": device, "dtype": dtype, "ner_size": spec["ner_size"]}
    r["matmul"] = step("matmul", run.contender, "matmul", device=device, seconds=spec["matmul_seconds"])
    r["model_stage"] = step(f"ner/model_stage_{dtype}", run.contender, "model-stage", corpus=corpus, model=model,
                            dtype=dtype, device=device, stride=stride)
    r["ray"] = importlib.util.find_spec("ray") is not None
    if r["ray"]:
        r["job"] = step(f"ner/ours_{dtype}", run.our_job, "ner", corpus, model, work / f"out-ner-{dtype}",
                        dtype=dtype, device=device, stride=stride)
        if spec.get("small_job", True):   # the smoke test leaves out this second Ray start
            r["job_small"] = step(f"ner/ours_{dtype}_small", run.our_job, "ner", small, model,
                                  work / "out-ner-small", dtype=dtype, device=device, stride=stride)
    r["hf_bs1"] = step("ner/hf_bs1", run.contender, "hf-ner", corpus=small, model=model, batch_size=1,
                       device=device, stride=stride)
    r["hf_bs64_sorted"] = step(f"ner/hf_bs64_sorted_{dtype}", run.contender, "hf-ner", corpus=small, model=model,
                               batch_size=64, sort=True, dtype=dtype, device=device, stride=stride)
    r["demo_agreement"] = step("ner/demo_agreement", run.contender, "agree", task="ner", corpus=run.SAMPLE_CORPUS,
                               model=run.DEMO_MODEL, dtypes=dtype, device=device)
    stage = r["model_stage"]
    r["flops_per_token"] = run.flops_per_token(layers, hidden, stage["real_tokens"] / max(stage["docs"], 1))
    return r


def gpu_table(r: dict) -> str:
    """The suite's numbers against the GPU target (≥ 2 M real tokens/s end to end, entities ≥ 99% equal)."""
    mm, stage, fpt = r["matmul"], r["model_stage"], r["flops_per_token"]
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in mm.get("device", "")), None)

    def mfu(tokens_per_s: float) -> str:
        shares = [f"{tokens_per_s * fpt / mm['bfloat16']:.0%} of measured bf16 matmul"] if mm.get("bfloat16") else []
        if nominal:
            shares.append(f"{tokens_per_s * fpt / nominal:.0%} of nominal {nominal / 1e12:.0f} TFLOP/s")
        return ", ".join(shares)

    dtype = r.get("dtype", "bfloat16")
    name = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)
    stage_rate = stage["real_tokens"] / stage["model_seconds"]
    rows = ["| contender | docs | docs/s | real tokens/s | MFU |", "|---|---|---|---|---|",
            f"| model stage alone ({name}) | {stage['docs']} | {stage['docs'] / stage['model_seconds']:.0f} | "
            f"{stage_rate:,.0f} | {mfu(stage_rate)} |"]
    for key in ("job", "job_small"):
        if key in r:
            x = r[key]
            rate = x["real_tokens"] / x["seconds"]
            rows.append(f"| our NER job, {name} ({'end to end' if key == 'job' else 'small corpus'}) | {x['docs']} | "
                        f"{x['docs'] / x['seconds']:.0f} | {rate:,.0f} | {mfu(rate)} |")
    for key, label in (("hf_bs1", "HF pipeline, batch_size=1, fp32"),
                       ("hf_bs64_sorted", f"HF pipeline, sorted batches of 64, {name}")):
        x = r[key]
        rows.append(f"| {label} | {x['docs']} | {x['docs'] / x['seconds']:.0f} | | |")
    job = r.get("job")
    demo = r["demo_agreement"]
    layers, hidden, _ = r["ner_size"]
    lines = [
        f"GPU: {mm.get('device')}; matmul {(mm.get('bfloat16') or 0) / 1e12:.0f} TFLOP/s bf16, {mm['float32'] / 1e12:.0f} "
        f"TFLOP/s fp32 (TF32); NER model {layers} layers × {hidden} hidden, {fpt / 1e9:.3f} GFLOP per token "
        "(matmuls, at the mean window length).", "",
        "\n".join(rows), "",
        "| target | measured |", "|---|---|",
        f"| BERT-base NER end to end on one GPU, {name} (≥ 2 M real tokens/s) | "
        + (f"{job['real_tokens'] / job['seconds']:,.0f} (model stage alone {stage_rate:,.0f}) |" if job
           else f"job not run (Ray is not installed here); model stage alone {stage_rate:,.0f} |"),
        f"| NER entities = fp32 on the GPU, demo model, {demo['docs']} docs, {name} (≥ 99%) | {demo[dtype]:.1%} |",
    ]
    if "job_small" in r:
        small, hf = r["job_small"], r["hf_bs1"]
        lines.append(f"| (our job vs HF batch_size=1, {small['docs']} docs, start-up included) | "
                     f"{(small['docs'] / small['seconds']) / (hf['docs'] / hf['seconds']):.1f}× |")
    return "\n".join(lines)


def write_section(r: dict, text: str, path: Path) -> None:
    """Put the GPU suite's section into `path` (bench/RESULTS.md), replacing an earlier one."""
    import datetime

    section = (f"{SECTION[0]}\n## GPU suite\n\nDate: {datetime.date.today()}  \nCommand: "
               f"`.venv/bin/python bench/run.py --suite gpu`\n\n{text}\n\n<details><summary>Raw numbers</summary>\n\n"
               f"```json\n{json.dumps(r, indent=1, default=str)}\n```\n</details>\n{SECTION[1]}\n")
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n\n"
    path.write_text(without_section(old).rstrip("\n") + "\n\n" + section, encoding="utf-8")


def kept_section(path: Path) -> str:
    """The GPU section of an existing results file ('' if none): the cpu suite keeps it when it rewrites the file."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    start, end = text.find(SECTION[0]), text.find(SECTION[1])
    return text[start:end + len(SECTION[1])] + "\n" if start >= 0 and end > start else ""


def without_section(text: str) -> str:
    start, end = text.find(SECTION[0]), text.find(SECTION[1])
    return text[:start] + text[end + len(SECTION[1]):] if start >= 0 and end > start else text
