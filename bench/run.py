"""Side-by-side benchmark: bertbatch against what users would run instead, same model, corpus, machine, one run.

    bash scripts/setup.sh test,bench
    .venv/bin/python bench/run.py --suite cpu      # BERT-base NER + all-MiniLM-L6-v2 embeddings (~30 min on 2 cores)
    .venv/bin/python bench/run.py --suite smoke    # tiny model and corpus: keeps the harness working (tests)
    .venv/bin/python bench/run.py --suite gpu      # BERT-base NER on a CUDA GPU: tokens/s, MFU (bench/gpu.py)

Each finished step is saved in WORKDIR/steps.json; `--resume` continues a run that was cut off.

Every contender runs in its own process and does the whole job, start-up included; wall time and
the peak RSS of its process tree (Ray workers included) are measured from outside. Prints a table
and writes bench/RESULTS.md and bench/batch_tokens.png (smoke: into --workdir only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.dataset as pads

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.contenders import entity_keys  # noqa: E402
from bench.gpu import SPEC as GPU_SPEC  # noqa: E402
from bench.gpu import gpu_table, kept_section, run_gpu_suite, write_section  # noqa: E402
from bench.workload import bert_base_ner, make_corpus, minilm_folder  # noqa: E402
from pipeline.ray_plan import DOCS_PER_BATCH  # noqa: E402

SUITES = {
    #          NER docs, NER model size (layers, hidden, heads), embed docs, batch-token sweep
    "smoke": dict(ner_docs=24, ner_size=(2, 64, 4), embed_docs=24, sweep=(1024, 4096), rss_factor=2, stride=16),
    "cpu": dict(ner_docs=1000, ner_size=(12, 768, 12), embed_docs=2000, sweep=(2048, 8192, 16384, 32768),
                rss_factor=10, stride=32),
}


DTYPES = ("float32", "bfloat16", "int8")
FAST = ("bfloat16", "int8")                 # the CPU fast modes
MATMUL_DTYPES = ("float32", "bfloat16")     # the dtypes whose matmul FLOP/s the model stage is measured against


def cpu_dtypes() -> tuple[str, ...]:
    """The dtypes this CPU runs at speed: bf16 only with bf16 units (AVX-512 BF16, AMX); the jobs refuse it
    elsewhere (pipeline.infer.slow_on_this_cpu)."""
    from pipeline.infer import slow_on_this_cpu

    return tuple(d for d in DTYPES if not slow_on_this_cpu(d))
NOTES = REPO / "bench" / "NOTES.md"        # the reading of the cpu suite's numbers, kept by hand
SAMPLE_CORPUS, DEMO_MODEL = REPO / "examples" / "sample_corpus", REPO / "examples" / "demo-ner-model"


def measure(cmd: list[str], env: dict | None = None, watch=None) -> dict:
    """Run `cmd`; return wall seconds, peak RSS and PSS of its process tree, and its BENCH line (if any).

    RSS summed over processes counts shared pages (torch's libraries, Ray's object store) once per
    process that maps them; PSS shares them out, so its sum is the memory the job really holds.
    `watch(proc)`, if given, runs in a thread beside it.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    peak = [0, 0]

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [p for p in [root, *root.children(recursive=True)] if p.is_running()]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
                peak[1] = max(peak[1], sum(p.memory_full_info().pss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if watch is not None:
        threading.Thread(target=watch, args=(proc,), daemon=True).start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH ")), "BENCH {}")
    return {"seconds": wall, "peak_rss_mb": peak[0] / 2**20, "peak_pss_mb": peak[1] / 2**20, **json.loads(line[6:])}


def contender_args(name: str, **options) -> list[str]:
    """`bench.contenders`' arguments for one contender: `name`, then a flag per option (True: a bare flag)."""
    args = [name]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def contender(name: str, **options) -> dict:
    return measure([sys.executable, "-m", "bench.contenders", *contender_args(name, **options)])


def job_command(task: str, corpus: Path, model: Path, output: Path, **flags) -> list[str]:
    """Our job's command line; on CPU unless `device` says otherwise (the cpu suite stays on CPU on any machine)."""
    cmd = [sys.executable, f"jobs/{task}_corpus.py", "--input", str(corpus), "--model", str(model),
           "--output", str(output), "--overwrite"]
    for key, value in {"device": "cpu", **flags}.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    return cmd


def our_job(task: str, corpus: Path, model: Path, output: Path, **flags) -> dict:
    result = measure(job_command(task, corpus, model, output, **flags), env={"RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    run = json.loads((output / "_run.json").read_text())
    report, actors = run["report"], run["placement"].get("model_actors") or 1
    # the model actors' mean busy time: what is left of the wall is start-up, hand-overs and the tail
    model_busy = report["stages"].get("infer", {}).get("busy_seconds", 0.0) / actors
    return {**result, "docs": report["documents"], "real_tokens": report["real_tokens"],
            "padding_efficiency": report["padding_efficiency"], "model_busy_seconds": round(model_busy, 2)}


# Frames where a thread waits (py-spy still samples some of them): left out of the shares.
PYSPY_WAITING = ("Condition.wait", "Event.wait", "main_loop", "select (", "poll (", "sleep (", "_wait (",
                 "get_objects", "wait_for", "recv (", "accept (", "get_output_blocking", "wait (ray")
PYSPY_PARTS = (("model forward", ("models/", "pipeline/infer.py")), ("tokenize", ("pipeline/tokenize.py",)),
               ("decode", ("_decode.py",)), ("read + validate", ("pipeline/read.py", "pipeline/validate.py")),
               ("write", ("pipeline/sink.py",)))


def stop_after_its_child(spy: subprocess.Popen, grace: float = 30.0) -> None:
    """py-spy records until every process it follows has exited. Once it waited for good on a Ray
    worker the job had left behind, which its own sampling held stopped (SIGKILL stayed pending).
    When the job's driver, py-spy's child, has exited, py-spy gets `grace` seconds, then SIGINT:
    it writes its samples and exits."""
    seen = False
    while spy.poll() is None:
        try:
            live = [c for c in psutil.Process(spy.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:   # py-spy or its child just went
            live = []
        if live:
            seen = True
        elif seen:
            break
        time.sleep(0.5)
    deadline = time.monotonic() + grace
    while spy.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)


def pyspy_job(task: str, corpus: Path, model: Path, output: Path, **flags) -> dict:
    """py-spy over the whole job (driver and every Ray worker): where the busy samples go."""
    raw = output.with_suffix(".pyspy.txt")
    spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses", "--format", "raw", "-r", "50",
           "-o", str(raw), "--"]
    measure(spy + job_command(task, corpus, model, output, **flags), env={"RAY_DATA_DISABLE_PROGRESS_BARS": "1"},
            watch=stop_after_its_child)
    parts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith("process ")]   # process tree entries first
        if not count.isdigit() or not frames or any(w in frames[-1] for w in PYSPY_WAITING):
            continue
        part = next((name for name, keys in PYSPY_PARTS if any(k in stack for k in keys)),
                    "Ray, imports, start-up, other")
        parts[part] = parts.get(part, 0) + int(count)
        leaves[frames[-1][:90]] = leaves.get(frames[-1][:90], 0) + int(count)
    total = sum(parts.values()) or 1
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:8]
    return {"samples": total, "parts": {k: round(v / total, 4) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
            "top_leaves": [(k, round(v / total, 4)) for k, v in top]}


def entity_agreement(a: Path, b: Path) -> float:
    """Share of documents whose entity lists (label, start, end) are identical."""
    def load(path: Path) -> dict:
        table = pads.dataset(path, format="parquet").to_table(columns=["id", "entities"])
        return {i: entity_keys(ents) for i, ents in zip(table.column("id").to_pylist(),
                                                       table.column("entities").to_pylist())}
    left, right = load(a), load(b)
    return sum(left[i] == right.get(i) for i in left) / max(len(left), 1)


def embedding_agreement(a: Path, b: Path) -> float:
    """The smallest cosine similarity between the two runs' embeddings of the same document."""
    def load(path: Path) -> dict:
        table = pads.dataset(path, format="parquet").to_table(columns=["id", "embedding"])
        return dict(zip(table.column("id").to_pylist(), np.array(table.column("embedding").to_pylist())))
    left, right = load(a), load(b)
    worst = 1.0
    for i, x in left.items():
        y = right[i]
        worst = min(worst, float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12)))
    return worst


def flops_per_token(layers: int, hidden: int, mean_length: float) -> float:
    """Matmul FLOPs per token of a BERT encoder: projections + FFN + attention scores and context."""
    return layers * (2 * (4 * hidden * hidden + 2 * hidden * 4 * hidden) + 4 * mean_length * hidden)


class Steps:
    """Each finished step's numbers saved at once in WORKDIR/steps.json; `--resume` skips finished steps."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.done = json.loads(path.read_text()) if resume and path.is_file() else {}

    def __call__(self, name: str, fn, *args, **kwargs) -> dict:
        if name not in self.done:
            started = time.perf_counter()
            self.done[name] = fn(*args, **kwargs)
            self.path.write_text(json.dumps(self.done, indent=1, default=str))
            print(f"[bench] {name}: {time.perf_counter() - started:.0f} s", flush=True)
        return self.done[name]


def run_suite(suite: str, work: Path, resume: bool = False) -> dict:
    spec = SUITES[suite]
    step = Steps(work / "steps.json", resume)
    layers, hidden, heads = spec["ner_size"]
    ner_model = bert_base_ner(work / f"ner-model-{layers}x{hidden}", layers, hidden, heads)
    ner_corpus = make_corpus(work / f"ner-corpus-{spec['ner_docs']}", spec["ner_docs"])
    embed_corpus = make_corpus(work / f"embed-corpus-{spec['embed_docs']}", spec["embed_docs"], seed=1)
    minilm = minilm_folder()
    stride = spec["stride"]   # long documents: every window, on both sides (no silent truncation at 512)
    dtypes = cpu_dtypes()
    fast = tuple(d for d in dtypes if d in FAST)
    quick = "bfloat16" if "bfloat16" in dtypes else "float32"   # embeddings: int8 is too far from fp32 (NOTES.md)
    r: dict = {"suite": suite, "dtypes": dtypes, "big_dtype": quick, "matmul": step("matmul", contender, "matmul")}

    ner = r["ner"] = {}
    ner["hf_bs1"] = step("ner/hf_bs1", contender, "hf-ner", corpus=ner_corpus, model=ner_model, batch_size=1,
                         stride=stride)
    ner["hf_bs16_sorted"] = step("ner/hf_bs16_sorted", contender, "hf-ner", corpus=ner_corpus, model=ner_model,
                                 batch_size=16, sort=True, stride=stride)
    for dtype in dtypes:
        ner[f"ours_{dtype}"] = step(f"ner/ours_{dtype}", our_job, "ner", ner_corpus, ner_model,
                                    work / f"out-ner-{dtype}", dtype=dtype, stride=stride)
        ner[f"bare_{dtype}"] = step(f"ner/bare_{dtype}", contender, "bare", corpus=ner_corpus, model=ner_model,
                                    dtype=dtype, stride=stride)
        if dtype in MATMUL_DTYPES:   # the forward passes alone, warm: what the model stage's FLOP/s is taken from
            ner[f"model_stage_{dtype}"] = step(f"ner/model_stage_{dtype}", contender, "model-stage", corpus=ner_corpus,
                                               model=ner_model, dtype=dtype, stride=stride,
                                               docs_per_batch=DOCS_PER_BATCH[False])   # the CPU job's batch
    # random weights: near-tied logits flip under any rounding, so this is a floor, not the agreement
    ner["random_model_agreement"] = {d: entity_agreement(work / "out-ner-float32", work / f"out-ner-{d}")
                                     for d in fast}
    ner["demo_agreement"] = step("ner/demo_agreement", contender, "agree", task="ner", corpus=SAMPLE_CORPUS,
                                 model=DEMO_MODEL, dtypes=",".join(fast))

    emb = r["embed"] = {}
    emb["st_bs32"] = step("embed/st_bs32", contender, "st-embed", corpus=embed_corpus, model=minilm, batch_size=32)
    for dtype in dtypes:
        emb[f"ours_{dtype}"] = step(f"embed/ours_{dtype}", our_job, "embed", embed_corpus, minilm,
                                    work / f"out-embed-{dtype}", dtype=dtype)
        emb[f"bare_{dtype}"] = step(f"embed/bare_{dtype}", contender, "bare", task="embed", corpus=embed_corpus,
                                    model=minilm, dtype=dtype)
    emb["agreement"] = {d: embedding_agreement(work / "out-embed-float32", work / f"out-embed-{d}") for d in fast}

    r["sweep"] = {n: step(f"sweep/{n}", our_job, "embed", embed_corpus, minilm, work / "out-sweep",
                          dtype=quick, batch_tokens=n) for n in spec["sweep"]}
    factor = spec["rss_factor"]
    big = make_corpus(work / f"embed-corpus-x{factor}", spec["embed_docs"] * factor, seed=2)
    r["rss_factor"] = factor
    big_run = step(f"rss/{factor}x", our_job, "embed", big, minilm, work / "out-rss", dtype=quick)
    r["rss"] = {"1x": emb[f"ours_{quick}"]["peak_rss_mb"], f"{factor}x": big_run["peak_rss_mb"]}
    r["pss"] = {"1x": emb[f"ours_{quick}"].get("peak_pss_mb"), f"{factor}x": big_run.get("peak_pss_mb")}
    emb["ours_big"] = big_run   # the same job on a corpus 10× larger: its start-up amortised
    # ... against the references on those same documents (sentence-transformers and the bare loop)
    emb["st_big"] = step(f"embed_x{factor}/st_bs32", contender, "st-embed", corpus=big, model=minilm, batch_size=32)
    emb["bare_big"] = step(f"embed_x{factor}/bare_{quick}", contender, "bare", task="embed", corpus=big, model=minilm,
                           dtype=quick)
    r["profile"] = {d: step(f"profile/ner_{d}", contender, "profile", corpus=ner_corpus, model=ner_model, dtype=d,
                            stride=stride) for d in ("float32", "bfloat16") if d in dtypes}
    spied = "bfloat16" if "bfloat16" in dtypes else "int8"
    r["pyspy"] = step(f"profile/pyspy_ner_{spied}", pyspy_job, "ner", ner_corpus, ner_model, work / "out-pyspy",
                      dtype=spied, stride=stride)
    mean_len = ner["ours_float32"]["real_tokens"] / max(ner["ours_float32"]["docs"], 1)
    r["flops_per_token"] = flops_per_token(layers, hidden, mean_len)
    return r


def table(r: dict) -> str:
    def docs_s(x: dict) -> float:
        return x["docs"] / x["seconds"]

    ner, emb, mm = r["ner"], r["embed"], r["matmul"]
    dtypes = r.get("dtypes", DTYPES)
    fast = [d for d in dtypes if d in FAST]
    short = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8"}
    big_dtype = r.get("big_dtype", "bfloat16")
    best_hf = max(docs_s(ner["hf_bs1"]), docs_s(ner["hf_bs16_sorted"]))
    rows = ["| workload | contender | docs/s | real tokens/s | padding eff. | peak RSS MB | ratio |",
            "|---|---|---|---|---|---|---|"]

    def row(workload, name, x, ref):
        tokens = x.get("real_tokens")
        rows.append(f"| {workload} | {name} | {docs_s(x):.1f} | {tokens / x['seconds'] if tokens else float('nan'):.0f} | "
                    f"{x.get('padding_efficiency') or '':} | {x['peak_rss_mb']:.0f} | {docs_s(x) / ref:.2f}× |")

    for name in ("hf_bs1", "hf_bs16_sorted", *(f"{w}_{d}" for w in ("ours", "bare") for d in dtypes)):
        row("NER", name, ner[name], docs_s(ner["hf_bs1"]))
    for name in ("st_bs32", *(f"{w}_{d}" for w in ("ours", "bare") for d in dtypes)):
        row("embed", name, emb[name], docs_s(emb["st_bs32"]))
    big, st_big, bare_big = emb.get("ours_big"), emb.get("st_big"), emb.get("bare_big")
    if big and st_big:   # the references on the same 10× corpus
        for name, x in (("st_bs32", st_big), (f"ours_{big_dtype}", big), (f"bare_{big_dtype}", bare_big)):
            row(f"embed, {r['rss_factor']}× corpus", name, x, docs_s(st_big))
    elif big:            # runs before 2026-12-03: the job alone, against the references' 1× rates
        row(f"embed, {r['rss_factor']}× corpus", f"ours_{big_dtype}", big, docs_s(emb["st_bs32"]))

    def each(fmt, values) -> str:
        return " / ".join(fmt(v) for v in values)

    def names(values) -> str:
        return " / ".join(short[v] for v in values)

    def ratio(a: dict, b: dict) -> str:
        return f"{docs_s(a) / docs_s(b):.2f}×"

    matmul_dtypes = [d for d in MATMUL_DTYPES if d in dtypes and mm.get(d)]
    # the model stage's own seconds (warm forward passes); runs before 2026-12-03 had only the bare loop's wall time
    stage = {d: ner.get(f"model_stage_{d}") or {**ner[f"bare_{d}"], "model_seconds": ner[f"bare_{d}"]["seconds"]}
             for d in matmul_dtypes}
    achieved = {d: stage[d]["real_tokens"] / stage[d]["model_seconds"] * r["flops_per_token"] for d in matmul_dtypes}
    demo, random_model, cosine = ner["demo_agreement"], ner["random_model_agreement"], emb["agreement"]
    rss, pss = list(r["rss"].values()), list(r.get("pss", {}).values()) or [None, None]
    lines = [
        "\n".join(rows), "",
        "| target | measured |", "|---|---|",
        f"| NER fast ({names(fast)}) vs HF batch_size=1 (≥ 3×) | {each(lambda d: ratio(ner[f'ours_{d}'], ner['hf_bs1']), fast)} |",
        f"| NER fp32 vs best HF (≥ 1.0×) | {docs_s(ner['ours_float32']) / best_hf:.2f}× |",
        f"| embed fast ({names(fast)}) vs sentence-transformers (≥ 2.5×) | "
        f"{each(lambda d: ratio(emb[f'ours_{d}'], emb['st_bs32']), fast)} |",
        f"| embed fp32 vs sentence-transformers (≥ 1.0×) | {ratio(emb['ours_float32'], emb['st_bs32'])} |",
        *([f"| embed {short[big_dtype]} on the {r['rss_factor']}× corpus ({big['docs']:,} docs, start-up amortised): vs "
           f"sentence-transformers (≥ 2.5×) / job vs bare loop (≥ 0.85×), same documents | {ratio(big, st_big)} / "
           f"{ratio(big, bare_big)} |"] if big and st_big else
          [f"| (embed {short[big_dtype]} on the {r['rss_factor']}× corpus, start-up amortised: vs sentence-transformers "
           f"/ vs bare loop, both on the 1× corpus) | {ratio(big, emb['st_bs32'])} / "
           f"{ratio(big, emb[f'bare_{big_dtype}'])} |"] if big else []),
        f"| NER job vs bare loop, {names(dtypes)} (≥ 0.85×) | "
        f"{each(lambda d: ratio(ner[f'ours_{d}'], ner[f'bare_{d}']), dtypes)} |",
        f"| embed job vs bare loop, {names(dtypes)} (≥ 0.85×) | "
        f"{each(lambda d: ratio(emb[f'ours_{d}'], emb[f'bare_{d}']), dtypes)} |",
        f"| model stage FLOP/s vs matmul, {names(matmul_dtypes)} (≥ 60%) | "
        f"{each(lambda d: f'{achieved[d] / mm[d]:.0%}', matmul_dtypes)} "
        f"(matmul {each(lambda d: f'{mm[d] / 1e9:.0f}', matmul_dtypes)} GFLOP/s) |",
        f"| NER entities = fp32, demo model, {demo['docs']} docs, {names(fast)} (≥ 99%) | "
        f"{each(lambda d: f'{demo[d]:.1%}', fast)} |",
        f"| (same, random BERT-base: near-tied logits) {names(fast)} | "
        f"{each(lambda d: f'{random_model[d]:.1%}', fast)} |",
        f"| embeddings vs fp32, lowest cosine, {names(fast)} (≥ 0.999) | {each(lambda d: f'{cosine[d]:.5f}', fast)} |",
        *([] if "bfloat16" in dtypes else ["| bf16 (fast mode, model stage vs bf16 matmul) | not run: this CPU has no "
                                           "bf16 units (AVX2 only), where torch runs bf16 40-400× slower than fp32 |"]),
        f"| peak RSS, {r['rss_factor']}× corpus / 1× (≤ 1.2) | {rss[1] / rss[0]:.2f} ({rss[0]:.0f} → {rss[1]:.0f} MB) |",
        *([f"| peak PSS (shared pages counted once), {r['rss_factor']}× / 1× | {pss[1] / pss[0]:.2f} "
           f"({pss[0]:.0f} → {pss[1]:.0f} MB) |"] if all(pss) else []),
    ]
    return "\n".join(lines) + "\n\n" + profile_text(r)


def profile_text(r: dict) -> str:
    """What dominates: stage shares and top operators (torch profiler, in-process), and py-spy over the job."""
    lines = ["### Profile", ""]
    for dtype, p in r.get("profile", {}).items():
        shares = ", ".join(f"{k} {v:.1%}" for k, v in p["stage_share"].items())
        ops = ", ".join(f"`{k}` {v:.0%}" for k, v in p["top_ops"][:6])
        lines.append(f"- NER BERT-base {dtype}, in-process, {p['threads']} threads: stages {shares}; "
                     f"top operators (self CPU): {ops}")
    busy = [f"{task} {d} {x['model_busy_seconds'] / x['seconds']:.0%} of {x['seconds']:.0f} s"
            for task, runs in (("NER", r["ner"]), ("embed", r["embed"])) for d in r.get("dtypes", DTYPES)
            if "model_busy_seconds" in (x := runs[f"ours_{d}"])]
    if busy:
        lines.append(f"- Our jobs' model actors busy (mean per actor) over the job's wall time: {', '.join(busy)}; "
                     "the rest is start-up (driver, local Ray, actor processes, model load), hand-overs and the tail")
    if "pyspy" in r:
        spy = r["pyspy"]
        parts = ", ".join(f"{k} {v:.1%}" for k, v in spy["parts"].items())
        leaves = ", ".join(f"`{k}` {v:.1%}" for k, v in spy["top_leaves"][:5])
        spied = "bf16" if "bfloat16" in r.get("dtypes", DTYPES) else "int8"
        lines.append(f"- py-spy over the whole NER {spied} job (driver + Ray workers, {spy['samples']} busy samples): "
                     f"{parts}; top frames: {leaves}")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(r["sweep"])
    ys = [r["sweep"][x]["real_tokens"] / r["sweep"][x]["seconds"] for x in xs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("--batch-tokens")
    ax.set_ylabel("real tokens / s (job, wall)")
    ax.set_title(f"embed job, all-MiniLM-L6-v2, {r.get('big_dtype', 'bfloat16')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "?")


def write_results(r: dict, text: str, path: Path) -> None:
    import torch

    versions = {p: __import__(p).__version__ for p in ("torch", "ray", "transformers", "sentence_transformers")}
    notes = NOTES.read_text(encoding="utf-8") + "\n" if r["suite"] == "cpu" and NOTES.is_file() else ""
    gpu = kept_section(path)   # written by the gpu suite, on another machine
    path.write_text(
        f"# Benchmark results\n\nDate: {datetime.date.today()}  \nMachine: {platform.machine()}, CPU {cpu_name()} "
        f"({torch.backends.cpu.get_cpu_capability()}), {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, torch threads "
        f"{torch.get_num_threads()}  \nVersions: {versions}  \nSuite: {r['suite']} "
        f"(command: `.venv/bin/python bench/run.py --suite {r['suite']}`)\n\n{text}\n\n{notes}"
        f"Raw numbers:\n\n```json\n{json.dumps(r, indent=1, default=str)}\n```\n" + (f"\n{gpu}" if gpu else ""),
        encoding="utf-8")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted([*SUITES, "gpu"]), default="cpu")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where corpora, models, outputs and steps.json go (default: bench/.work/SUITE)")
    parser.add_argument("--resume", action="store_true", help="keep the finished steps of an earlier run in --workdir")
    parser.add_argument("--ner-docs", type=int, default=GPU_SPEC["ner_docs"],
                        help="gpu suite: documents of the model-stage and job corpus (default %(default)s)")
    parser.add_argument("--hf-docs", type=int, default=GPU_SPEC["hf_docs"],
                        help="gpu suite: documents of the HF pipeline's corpus (default %(default)s)")
    args = parser.parse_args(argv)
    work = args.workdir or REPO / "bench" / ".work" / args.suite
    work.mkdir(parents=True, exist_ok=True)
    if args.suite == "gpu":
        spec = {**GPU_SPEC, "ner_docs": args.ner_docs, "hf_docs": args.hf_docs}
        r = run_gpu_suite(work, Steps(work / "steps.json", args.resume), spec)
        text = gpu_table(r)
        print(text)
        write_section(r, text, REPO / "bench" / "RESULTS.md")
        print(f"wrote the GPU section of {REPO / 'bench' / 'RESULTS.md'}")
        return
    r = run_suite(args.suite, work, args.resume)
    text = table(r)
    print(text)
    target = REPO / "bench" if args.suite == "cpu" else work
    write_results(r, text, target / "RESULTS.md")
    plot(r, target / "batch_tokens.png")
    print(f"wrote {target / 'RESULTS.md'} and {target / 'batch_tokens.png'}")


if __name__ == "__main__":
    main(sys.argv[1:])
