"""What the benchmark compares, each run in its own process: `python -m bench.contenders NAME ...`.

Every contender reads the same Parquet corpus, does the whole job (model load included) and
prints one JSON line with what it did; the parent measures wall time and the process tree's RSS.

  hf-ner      transformers.pipeline("token-classification", aggregation_strategy="simple")
  st-embed    sentence_transformers.SentenceTransformer.encode
  bare        bertbatch's own stages in one process: read → tokenize → model → decode, no Ray, no writes
  model-stage the model stage alone on tokenized batches: what the device does (GPU tokens/s, MFU)
  agree       bfloat16 and int8 against float32 on one model (NER: identical entities; embed: cosine)
  profile     torch profiler over our stages in-process: time share per stage, top operators
  matmul      the machine's torch matmul FLOP/s (all cores) in float32 and bfloat16
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pyarrow.dataset as pads


def read_texts(corpus: str) -> list[str]:
    return pads.dataset(corpus, format="parquet").to_table(columns=["text"]).column("text").to_pylist()


def hf_ner(args) -> dict:
    from transformers import pipeline

    texts = read_texts(args.corpus)
    import torch

    dtype = getattr(torch, args.dtype)
    pipe = pipeline("token-classification", model=args.model, aggregation_strategy="simple",
                    device=0 if args.device == "cuda" else -1, dtype=dtype, stride=args.stride)
    if args.sort:  # the best a user can do with the pipeline: length-sorted batches
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        texts = [texts[i] for i in order]
    entities = 0
    for result in pipe(texts, batch_size=args.batch_size):
        entities += len(result)
    return {"docs": len(texts), "entities": entities}


def st_embed(args) -> dict:
    from sentence_transformers import SentenceTransformer

    texts = read_texts(args.corpus)
    model = SentenceTransformer(args.model, device="cpu")
    if args.dtype == "bfloat16":
        model = model.to(dtype=__import__("torch").bfloat16)
    embeddings = model.encode(texts, batch_size=args.batch_size)
    return {"docs": len(texts), "dim": int(embeddings.shape[1])}


def built_stages(task_name: str, corpus: str, model: str, dtype: str, batch_tokens: int = 16384, stride: int = 0,
                 device: str = "cpu"):
    """The job's plan for these options, and its validate/tokenize/infer/decode stages built in this process."""
    from pipeline.cli import parse_config
    from pipeline.job import build_plan

    task, config_cls = _task(task_name)
    argv = ["--input", corpus, "--output", "/nonexistent", "--model", model, "--dtype", dtype,
            "--batch-tokens", str(batch_tokens), "--stride", str(stride), "--device", device]
    plan, _, _ = build_plan(parse_config(config_cls, argv, "bare", "bare loop"), task)
    return plan, {s.name: s.build() for s in (plan.validate, plan.tokenize, plan.infer, plan.decode)}


def stages(task_name: str, corpus: str, model: str, dtype: str, batch_tokens: int = 16384, stride: int = 0,
           device: str = "cpu"):
    """Yield decoded tables: our stages on whole files in this process (no Ray, no writes)."""
    plan, built = built_stages(task_name, corpus, model, dtype, batch_tokens, stride, device)
    for file_index in range(len(plan.files.paths)):
        for table in plan.read(file_index):
            for stage in built.values():
                table = stage(table)
            yield table


def entity_keys(entities: list[dict] | None) -> list[tuple]:
    """What two NER runs must agree on for a document: each entity's label and character span."""
    return [(e["label"], e["start"], e["end"]) for e in entities or []]


def bare(args) -> dict:
    """Our stages in this process: the cost of everything around the model, removed."""
    docs = tokens = padded = 0
    for table in stages(args.task, args.corpus, args.model, args.dtype, args.batch_tokens, args.stride, args.device):
        docs += table.num_rows
        tokens += sum(table.column("_stat_tokens").to_pylist()) if "_stat_tokens" in table.column_names else 0
        padded += sum(table.column("_stat_padded_tokens").to_pylist())
    return {"docs": docs, "real_tokens": tokens, "padded_tokens": padded}


def model_stage(args) -> dict:
    """The model stage alone (Infer on tokenized batches of --docs-per-batch documents): tokens/s of the
    device, without the CPU stages around it, which a job runs in parallel on other cores."""
    import time

    import pyarrow as pa

    plan, built = built_stages(args.task, args.corpus, args.model, args.dtype, args.batch_tokens, args.stride,
                               args.device)
    tables = [built["tokenize"](built["validate"](table)) for i in range(len(plan.files.paths))
              for table in plan.read(i)]
    tokenized = pa.concat_tables(tables)
    batches = [tokenized.slice(start, args.docs_per_batch) for start in range(0, tokenized.num_rows, args.docs_per_batch)]
    built["infer"](batches[0].slice(0, 8))   # warm-up: kernels chosen, memory pools filled
    started = time.perf_counter()
    padded = sum(sum(built["infer"](batch).column("_stat_padded_tokens").to_pylist()) for batch in batches)
    seconds = time.perf_counter() - started
    return {"docs": tokenized.num_rows, "real_tokens": sum(tokenized.column("_stat_tokens").to_pylist()),
            "padded_tokens": padded, "model_seconds": seconds}


def profile(args) -> dict:
    """torch profiler over our stages in this process: the share of each stage and the top operators."""
    import time

    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    plan, built = built_stages(args.task, args.corpus, args.model, args.dtype, stride=args.stride)
    seconds = dict.fromkeys(["read", *built], 0.0)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for file_index in range(len(plan.files.paths))[: args.files]:
            start = time.perf_counter()
            for table in plan.read(file_index):
                seconds["read"] += time.perf_counter() - start
                for name, stage in built.items():
                    start = time.perf_counter()
                    table = stage(table)
                    seconds[name] += time.perf_counter() - start
                start = time.perf_counter()
    total = sum(seconds.values())
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    profiled = sum(e.self_cpu_time_total for e in events) or 1
    return {"docs_files": args.files, "dtype": args.dtype, "threads": torch.get_num_threads(),
            "stage_share": {k: round(v / total, 4) for k, v in seconds.items()},
            "top_ops": [(e.key, round(e.self_cpu_time_total / profiled, 4)) for e in events[:10]]}


def agree(args) -> dict:
    """Fast modes against fp32 on one model: NER documents with identical entities, or the lowest cosine."""
    import numpy as np

    def outputs(dtype: str) -> dict:
        found = {}
        for table in stages(args.task, args.corpus, args.model, dtype, args.batch_tokens, args.stride, args.device):
            for row in table.to_pylist():
                if args.task == "ner":
                    found[row["id"]] = entity_keys(row["entities"])
                else:
                    found[row["id"]] = np.asarray(row["embedding"], dtype=np.float64)
        return found

    reference, result = outputs("float32"), {}
    for dtype in args.dtypes.split(","):
        got = outputs(dtype)
        if args.task == "ner":
            result[dtype] = sum(got[i] == want for i, want in reference.items()) / len(reference)
        else:
            result[dtype] = min(float(got[i] @ want / (np.linalg.norm(got[i]) * np.linalg.norm(want) + 1e-12))
                                for i, want in reference.items())
    return {"docs": len(reference), **result}


def _task(name: str):
    if name == "ner":
        from pipeline.config import NerConfig
        from pipeline.ner_task import NER_TASK

        return NER_TASK, NerConfig
    from pipeline.config import EmbedConfig
    from pipeline.embed_task import EMBED_TASK

    return EMBED_TASK, EmbedConfig


def matmul(args) -> dict:
    """Square matmul FLOP/s per dtype on the device (CPU: all cores; CUDA: float32 runs as TF32)."""
    import torch

    from pipeline.infer import slow_on_this_cpu

    cuda = args.device == "cuda"
    out = {"threads": torch.get_num_threads(), "device": torch.cuda.get_device_name() if cuda else "cpu"}
    torch.backends.cuda.matmul.allow_tf32 = True
    n = 8192 if cuda else 2048
    for dtype in (torch.float32, torch.bfloat16):
        if not cuda and dtype == torch.bfloat16 and slow_on_this_cpu("bfloat16"):
            out["bfloat16"] = None   # no bf16 units: torch's scalar fallback, minutes per matmul
            continue
        a, b = (torch.randn(n, n, dtype=dtype, device=args.device) for _ in range(2))
        for _ in range(3):
            a @ b
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            a @ b
            reps += 1
            if reps % 10 == 0:
                sync()
        sync()
        out[str(dtype).removeprefix("torch.")] = 2 * n**3 * reps / (time.perf_counter() - start)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.contenders")
    parser.add_argument("name", choices=["hf-ner", "st-embed", "bare", "model-stage", "agree", "profile", "matmul"])
    parser.add_argument("--corpus")
    parser.add_argument("--model")
    parser.add_argument("--task", default="ner")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--stride", type=int, default=0)
    parser.add_argument("--sort", action="store_true")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dtypes", default="bfloat16,int8", help="agree: the fast modes compared with float32")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--files", type=int, default=1, help="profile: input files to run")
    parser.add_argument("--docs-per-batch", type=int, default=2048, help="model-stage: documents per batch")
    args = parser.parse_args(argv)
    run = {"hf-ner": hf_ner, "st-embed": st_embed, "bare": bare, "model-stage": model_stage, "agree": agree,
           "profile": profile, "matmul": matmul}[args.name]
    print("BENCH " + json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
