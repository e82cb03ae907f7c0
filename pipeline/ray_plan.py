"""The only module that knows about Ray: turns a `Plan` of stages into Ray Data operators.

    one block per big file or run of small files → read+validate (tasks) → tokenize (CPU actor pool) →
    infer (model actor pool, one GPU each when there are GPUs) → decode (tasks) → ResultDatasink (write tasks)

CPU budget: model actors on CPU reserve (in Ray's accounting) the CPUs left after the tokenizer
actors and a reserve for the read/decode/write tasks; without that reserve the tasks could wait
forever for a CPU held by an idle actor. Their torch intra-op threads (Ray sets OMP_NUM_THREADS=1
in workers) are the node's cores shared by the model actors on it (by default one actor per core,
one thread each: `place`; an actor left without batches lends its threads to the busy ones,
pipeline.cores): the tokenizer and the tasks are light next to an encoder (a few % of its time,
bench/RESULTS.md), so leaving them whole cores would idle those cores.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import uuid
import warnings
from collections.abc import Iterable, Iterator

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, Datasink
from ray.util.debug import log_once

from pipeline.cli import UsageError, one_line_reason
from pipeline.gpu_wait import wait_for_gpus
from pipeline.infer import auto_dtype, resolve_device, slow_on_this_cpu
from pipeline.kill_hooks import kill_for_rows, kill_point
from pipeline.ledger import done_in_flight, mark_in_flight
from pipeline.stage import FILE_INDEX, ROW, STAT_PREFIX, Stage, StageSpec
from pipeline.storage import StorageOptions, configure

TASK_CPUS = 0.25            # read/validate and decode tasks are light and short
# A CPU request different from the decode tasks' keeps Ray from fusing decode into the write: fused,
# decoding would wait until rows_per_file documents (with all their logits) were bundled for a write.
WRITE_CPUS = 0.2
# Ray Data restarts a dead actor, and retries its task, forever by default: a batch that kills its
# actor every time would hang the job. Bounded, the run fails instead and job.py accounts for the rows.
# Ray 2.60 has no named parameter for these and warns that **ray_remote_args goes away in 2.64
# (pyproject pins ray below it); the warning is filtered where they are passed.
ACTOR_RETRIES = {"max_restarts": 2, "max_task_retries": 2}
TASK_RETRIES = 2            # read/decode/write tasks whose worker process died
# Files one read task reads at most (`read_groups`): a task per file cost ≈ 24 ms of Ray's own time per file
# (20,000 files of a few rows ran at 84 docs/s; the NER job over 5,000 files of 5 rows on 2 cores: 210 docs/s,
# 1,630 grouped), while each file a task opens is one more GET in a row on an object store (≈ 20-50 ms each).
READ_TASK_FILES = 64
# Ray bundles `rows_per_file` rows for a write task; the task writes them in parts of at most this many bytes
# (Arrow's, in memory): rows with wide kept columns make smaller files rather than one write of many GB.
WRITE_BYTES = 256 * 2**20
CONNECT_SECONDS = 10.0      # for RAY_ADDRESS's GCS port to accept a connection
PROBE_SECONDS = 300.0       # for a GPU to run the --dtype auto probe (other jobs may hold them all)
# Batches handed to one model actor ahead of the one it runs (Ray Data's default: 4). A batch queued
# at a busy actor cannot go to an idle one: with 4, the first model actor to start took all four
# batches of a 1,000-document corpus and ran them alone while the other idled (114 s against 77 s).
# On CPU a batch takes seconds and the next one arrives in milliseconds; a GPU keeps one waiting.
MODEL_BATCHES_IN_FLIGHT = {False: 1, True: 2}
_BUILT: dict[StageSpec, Stage] = {}   # per worker process: stages used by tasks are built once
_embedded = False   # whether init_ray started the Ray this driver runs on


def init_ray() -> None:
    """Join the cluster under `ray job submit` (RAY_ADDRESS is set there), else start an embedded Ray.

    The embedded Ray runs without its dashboard: it lives only as long as the job, and its ten
    processes cost ≈ 1 s of start-up and ≈ 0.9 GB of RSS (bench/NOTES.md). To watch a local run,
    start a local cluster (`ray start --head`) and run the job with RAY_ADDRESS=auto. It is always a
    new Ray: a bare `ray.init()` would join the cluster the last `ray start` on this machine recorded,
    and retry for ever where that one died without `ray stop`.
    """
    global _embedded
    if ray.is_initialized():
        return
    if address := os.environ.get("RAY_ADDRESS"):
        _check_reachable(address)
        ray.init(address="auto")
    else:
        ray.init(address="local", include_dashboard=False)
        _embedded = True


def without_ray_data_progress() -> None:
    """Ray Data's progress off for the executions to come. Where stdout is no terminal it logs a snapshot of every
    operator every 10 s (about 17 lines); the job's own line (`pipeline.progress_log`) replaces it."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")   # spent here: Ray Data's "to enable, set DataContext..." hint


def _check_reachable(address: str) -> None:
    """A `host:port` nobody answers at is a one-line error, not Ray's endless connect retries."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():   # auto, ray:// clients: Ray's own checks
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()   # [::1]:6379
    except OSError as error:
        raise UsageError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({error}); start one "
                         f"(ray start --head) or unset RAY_ADDRESS to run on an embedded Ray") from None


def stop_ray(started_here_only: bool = True) -> None:
    """Shut Ray down (`started_here_only`: only the embedded Ray init_ray started; a cluster stays).

    Ray stops its GCS before its autoscaler monitor, whose SIGTERM handler then reports to the gone
    GCS for the whole second Ray waits before it kills it; an embedded Ray's monitor (it has nothing
    to scale) is killed first: shutdown 1.4 → 0.4 s (bench/NOTES.md).
    """
    global _embedded
    if started_here_only and not _embedded:
        return
    node = getattr(ray._private.worker, "_global_node", None) if _embedded else None
    if node is not None:
        node.kill_monitor(check_alive=False)
    ray.shutdown()
    _embedded = False


@dataclasses.dataclass(frozen=True)
class Placement:
    use_gpu: bool
    tokenizer_actors: int
    tokenizer_cpus: float       # per tokenizer actor
    model_actors: int
    model_cpus: float           # per model actor
    model_threads: int
    docs_per_batch: int
    node_threads: int = 1       # the model actors' threads on a node together: busy actors share them


# Documents per batch when --docs-per-batch is not given. On CPU a batch of 256 takes seconds; a GPU
# runs it in milliseconds, less than what each batch costs around the model (Ray's hand-over, the
# in-flight marker in the output's ledger), so GPU batches are larger.
DOCS_PER_BATCH = {False: 256, True: 2048}
# Result rows per output file when --rows-per-file is not given. A write commits its rows (docs/restart.md), so this
# is also the work a kill can cost: 100,000 documents take a GPU seconds and a CPU node hours (BERT-base NER on 2
# cores: 5 documents/s, 5.5 h); 10,000 keep that to minutes on a CPU node.
ROWS_PER_FILE = {False: 10_000, True: 100_000}
# Text per batch at most, when --docs-per-batch is not given: every stage holds ≈ 125 bytes per character of the
# batches it works on (tokenizer windows, logits, decoded entities: 50 documents of 2 MB took 12.5 GiB), so a
# batch of 2048 documents of 100,000 characters would need ≈ 25 GB a stage. Long documents make smaller batches.
BATCH_TEXT_BYTES = 8 * 2**20
# Tokenizer actors feeding one GPU when --tokenizer-actors is not given: one actor tokenizes ≈ 0.3 M
# tokens/s (BERT WordPiece with offsets, one core; bench corpus), a BERT-base forward in bf16 on an
# H100 is expected to take 2 M or more.
TOKENIZERS_PER_GPU = 6


# What a CPU model actor holds besides its weights (torch, Ray's worker, the forward's activations):
# measured 0.6-1.6 GB for MiniLM and BERT-base actors (bench/RESULTS.md), i.e. about twice the weight
# files plus this. The default placement keeps a node's model copies within half of its memory.
ACTOR_BASE_BYTES = 400 * 2**20
NODE_MEMORY_SHARE = 0.5


def place(device: str, tokenizer_actors: int | None, model_actors: int | None, cluster_cpus: float,
          cluster_gpus: float, node_cpus: float | None = None, node_memory: float | None = None,
          model_bytes: int = 0, rows: int | None = None, docs_per_batch: int | None = None,
          text_bytes: int | None = None) -> Placement:
    """Resources per actor; model actors get a GPU each when `device` allows and the cluster has them.

    `tokenizer_actors` None: one on CPU (the model actors take the cores); with GPUs one per 2 CPUs,
    at most `TOKENIZERS_PER_GPU` per GPU. `docs_per_batch` None: `DOCS_PER_BATCH` of the device, fewer where
    the corpus's documents are long (`text_bytes`: its text columns' uncompressed bytes; `BATCH_TEXT_BYTES`).

    `model_actors` None: one per GPU; on CPU one single-threaded actor per core of each node, fewer
    where the node's memory would not hold that many copies of the model (`model_bytes` of weights)
    or the corpus has fewer `batches`, each actor then with more threads. Single-threaded because
    torch splits each operator of a forward over its threads, which meet at a barrier: anything
    preempting one thread (the tokenizer, a decode task, Ray's own processes) stalls all of them,
    while one-thread actors lose only the time taken (2 × 1 thread ran the bf16 embed job 1.15× as
    fast as 1 × 2 threads on 2 cores; bench/NOTES.md).
    `node_cpus`, `node_memory`: of one (the largest) node; default: one node holding all of `cluster_cpus`.
    `rows`: documents in the corpus (fewer CPU model actors than cores when it makes fewer batches).
    """
    use_gpu = device != "cpu" and cluster_gpus >= 1
    if device == "cuda" and not use_gpu:
        raise UsageError("--device cuda: the Ray cluster has no GPU; use --device auto or cpu")
    if docs_per_batch is None:
        docs_per_batch = DOCS_PER_BATCH[use_gpu]
        if rows and text_bytes:
            docs_per_batch = max(1, min(docs_per_batch, BATCH_TEXT_BYTES * rows // text_bytes))
    if tokenizer_actors is None:
        tokenizer_actors = max(1, min(TOKENIZERS_PER_GPU * int(cluster_gpus), int(cluster_cpus // 2))) if use_gpu else 1
    tokenizer_cpus = min(1.0, 0.25 * cluster_cpus / tokenizer_actors)
    if use_gpu:
        actors = model_actors or int(cluster_gpus)
        if actors > cluster_gpus:
            raise UsageError(f"--model-actors {actors}: the cluster has {int(cluster_gpus)} GPUs")
        return Placement(True, tokenizer_actors, tokenizer_cpus, actors, 1.0, 1, docs_per_batch)
    node_cpus = node_cpus or cluster_cpus
    nodes = max(1, round(cluster_cpus / node_cpus))
    if model_actors is None:
        per_node = max(1, int(node_cpus))
        if node_memory and model_bytes:
            fits = int(NODE_MEMORY_SHARE * node_memory // (2 * model_bytes + ACTOR_BASE_BYTES))
            per_node = max(1, min(per_node, fits))
        batches = math.ceil(rows / docs_per_batch) if rows else None
        model_actors = min(per_node * nodes, batches) if batches else per_node * nodes
    reserve = max(0.5, 0.25 * cluster_cpus)
    left = cluster_cpus - reserve - tokenizer_cpus * tokenizer_actors
    model_cpus = round(left / model_actors, 2)
    if model_cpus < 0.25:
        raise UsageError(f"--model-actors {model_actors} and --tokenizer-actors {tokenizer_actors} "
                         f"do not fit in {cluster_cpus:g} CPUs; use fewer actors")
    per_node = math.ceil(model_actors / nodes)
    threads = max(1, math.floor(node_cpus / per_node))
    return Placement(False, tokenizer_actors, tokenizer_cpus, model_actors, model_cpus, threads, docs_per_batch,
                     node_threads=threads * per_node)


def preflight(plan):
    """Start or join Ray, make the checks only the cluster can answer (UsageError), and return the plan
    with `--dtype auto` resolved once for the device its model actors get (every actor computes in the
    same dtype, which the restart identity records) and that device pinned: `execute` places the work
    again, and waits for or refuses a GPU gone since rather than compute a GPU's dtype on the CPU.
    A `--rows-per-file` not given becomes the device's (`ROWS_PER_FILE`)."""
    init_ray()
    placement = _placement(plan, list(range(len(plan.files.paths))))
    config = plan.infer.config
    if "auto" in config.dtypes:
        config = config.with_auto_as(_cuda_auto_dtype() if placement.use_gpu else auto_dtype("cpu"))
    config = dataclasses.replace(config, device="cuda" if placement.use_gpu else "cpu")
    rows_per_file = plan.rows_per_file or ROWS_PER_FILE[placement.use_gpu]
    sink = dataclasses.replace(plan.sink, config=dataclasses.replace(plan.sink.config, rows_per_file=rows_per_file))
    return dataclasses.replace(plan, infer=dataclasses.replace(plan.infer, config=config), sink=sink,
                               rows_per_file=rows_per_file)


def _cuda_auto_dtype() -> str:
    """What `--dtype auto` is on the cluster's GPUs, asked of one by a tiny task (the driver may have none)."""
    probe = _probe_auto_dtype.remote()
    try:
        return ray.get(probe, timeout=PROBE_SECONDS)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(probe, force=True)
        raise UsageError(f"--dtype auto: no GPU of the cluster was free to tell within {PROBE_SECONDS:.0f} s whether "
                         "it computes in bfloat16; give --dtype bfloat16 or float16") from None
    except ray.exceptions.RayError as error:
        raise UsageError(f"--dtype auto: asking a GPU for its dtype failed: {one_line_reason(error)}") from None


@ray.remote(num_cpus=0, num_gpus=0.01)   # GPU tasks' workers exit after each call (Ray's max_calls=1), CUDA context too
def _probe_auto_dtype() -> str:
    resolve_device("cuda")   # a node whose torch sees no GPU (a CPU wheel, a broken driver) says so, not "float16"
    return auto_dtype("cuda")


def _placement(plan, file_indices: list[int]) -> Placement:
    missing = wait_for_gpus(plan.infer.config.device, plan.model_actors, plan.wait_for_gpus)
    resources = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((n["Resources"] for n in alive), key=lambda r: r.get("CPU", 0.0), default={})
    rows = sum(plan.footers.rows[i] or 0 for i in file_indices)
    text_bytes = sum(plan.footers.text_bytes[i] or 0 for i in file_indices)
    try:
        placement = place(plan.infer.config.device, plan.tokenizer_actors, plan.model_actors,
                          resources.get("CPU", 1.0), resources.get("GPU", 0.0), largest.get("CPU"),
                          largest.get("memory"), plan.model_bytes, rows, plan.docs_per_batch, text_bytes)
    except UsageError as error:
        if not missing:
            raise
        raise UsageError(f"{error} ({missing})") from None
    dtypes = plan.infer.config.dtypes   # a multi-task job: every task's model
    if placement.use_gpu and "int8" in dtypes:
        raise UsageError("--dtype int8 (dynamic quantisation) runs on CPU only; use --device cpu or --dtype bfloat16")
    here = [n["NodeID"] for n in alive] == [ray.get_runtime_context().get_node_id()]  # the model runs on this CPU
    if not placement.use_gpu and here and (why := next(filter(None, map(slow_on_this_cpu, dtypes)), None)):
        raise UsageError(why)
    return placement


def read_groups(file_indices: list[int], rows: tuple[int | None, ...], max_rows: int,
                max_files: int = READ_TASK_FILES) -> list[list[int]]:
    """The files of each read task, in their order: consecutive small files together, up to `max_rows` rows (from
    their footers) or `max_files` files a task; a file of `max_rows` rows or more, or of unknown size (None),
    alone, so that big files are read in parallel as ever.

    `execute` gives a model batch (`docs_per_batch`) as `max_rows`: a task's reads are one after the other, so
    small groups keep files read in parallel (the output is cut into batch-sized blocks anyway, `_blocks_of`).
    """
    groups, group, held = [], [], 0
    for index in file_indices:
        count = rows[index]
        alone = count is None or count >= max_rows
        if group and (alone or held + count > max_rows or len(group) == max_files):
            groups.append(group)
            group, held = [], 0
        group.append(index)
        held += count or 0
        if alone:
            groups.append(group)
            group, held = [], 0
    if group:
        groups.append(group)
    return groups


def execute(plan, file_indices: list[int] | None = None) -> tuple[list[dict], dict]:
    """Run the plan over the given input files (default: all); return (what each write returned, placement)."""
    init_ray()
    if file_indices is None:
        file_indices = list(range(len(plan.files.paths)))
    placement = _placement(plan, file_indices)
    infer = dataclasses.replace(
        plan.infer, config=dataclasses.replace(
            plan.infer.config, device="cuda" if placement.use_gpu else "cpu",
            threads=None if placement.use_gpu else placement.model_threads,
            core_group=None if placement.use_gpu else uuid.uuid4().hex,   # this execution's actors only
            node_threads=None if placement.use_gpu else placement.node_threads))

    # One block per read task, made on the driver (ray.data.range would need a read task with a whole CPU).
    groups = read_groups(file_indices, plan.footers.rows, placement.docs_per_batch)
    ds = ray.data.from_items([{"files": g} for g in groups], override_num_blocks=len(groups))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        ds = _operators(ds, plan, infer, placement)
    sink = ResultDatasink(plan.sink, plan.rows_per_file, plan.storage)
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_CPUS, "max_retries": TASK_RETRIES})
    except BaseException:
        stop_ray(started_here_only=False)   # ends the failed execution's stray tasks: none may commit meanwhile
        raise
    return sink.write_results, {**dataclasses.asdict(placement), "rows_per_file": plan.rows_per_file}


def _operators(ds: ray.data.Dataset, plan, infer: StageSpec, placement: Placement) -> ray.data.Dataset:
    """read+validate (tasks) → tokenize (actors) → infer (actors) → decode (tasks)."""
    ds = ds.map_batches(_read_files, fn_kwargs={"read": plan.read, "validate": plan.validate},
                        batch_size=1, batch_format="pyarrow", num_cpus=TASK_CPUS, max_retries=TASK_RETRIES)
    ds = _blocks_of(ds, placement.docs_per_batch)
    output = plan.sink.config.output
    # The Rust tokenizer's thread pool would otherwise use every core of the node. Set in the actor,
    # not as a runtime_env: a runtime_env needs a worker process of its own, started for it (≈ 2 s of
    # CPU on a 2-core node at the busiest moment), where an idle prestarted worker can take the actor.
    tokenizer_env = {"RAYON_NUM_THREADS": str(max(1, int(placement.tokenizer_cpus)))}
    ds = ds.map_batches(_stage_actor(plan.tokenize, plan.storage, output, tokenizer_env),
                        batch_size=placement.docs_per_batch, batch_format="pyarrow",
                        num_cpus=placement.tokenizer_cpus, compute=ActorPoolStrategy(size=placement.tokenizer_actors),
                        **ACTOR_RETRIES)
    ds = ds.map_batches(_stage_actor(infer, plan.storage, output), batch_size=placement.docs_per_batch,
                        batch_format="pyarrow", num_cpus=placement.model_cpus,
                        num_gpus=1 if placement.use_gpu else 0,
                        compute=ActorPoolStrategy(size=placement.model_actors, max_tasks_in_flight_per_actor=
                                                  MODEL_BATCHES_IN_FLIGHT[placement.use_gpu]),
                        **ACTOR_RETRIES)
    # What leaves decode is only what the sink writes: the texts (unless kept) stay behind.
    ds = ds.map_batches(_apply_stage, fn_kwargs={"spec": plan.decode, "storage": plan.storage,
                                                 "keep": plan.sink.columns[0]},
                        batch_size=placement.docs_per_batch,
                        batch_format="pyarrow", num_cpus=TASK_CPUS, max_retries=TASK_RETRIES)
    return ds


def _blocks_of(ds: ray.data.Dataset, rows: int) -> ray.data.Dataset:
    """The read's output in blocks of `rows` rows (a model batch), cut in the read tasks themselves.

    Ray joins what one read task yields into blocks of up to 128 MiB, and an actor takes a block whole: a shard
    of short texts went through one model actor, after all of it was tokenized, and one write (one ledger entry,
    redone whole after a kill). Blocks of a batch spread it over the model actors, let tokenize, infer and write
    overlap, and commit as they go (one file of 4,000 documents, MiniLM on 2 cores: 4 entries, not 1, and 4%
    faster; bench/NOTES.md).

    Ray fuses the repartition into the read tasks only when both ops ask for the same resources; `repartition` has
    no parameter for them (ray 2.60) and its op would ask for a whole CPU, in tasks of its own that wait for a CPU
    the actors hold (the job hung on 2 CPUs), so its op gets the read's.
    """
    ds = ds.repartition(target_num_rows_per_block=rows)
    ds._logical_plan.dag.ray_remote_args.update(num_cpus=TASK_CPUS, max_retries=TASK_RETRIES)
    return ds


def _build(spec: StageSpec) -> Stage:
    if spec not in _BUILT:
        _BUILT[spec] = spec.build()
    return _BUILT[spec]


def _read_files(batch: pa.Table, read, validate: StageSpec) -> Iterator[pa.Table]:
    """Read and validate the files of a read task (`read_groups`), one after the other."""
    stage = _build(validate)
    for group in batch.column("files").to_pylist():
        for file_index in group:
            for table in read(int(file_index)):
                kill_point("read")
                yield stage(table)


def _apply_stage(batch: pa.Table, spec: StageSpec, storage: StorageOptions | None = None,
                 keep: tuple[str, ...] | None = None) -> pa.Table:
    """The stage's output; `keep`: only these columns and the `_stat_*` counters go on."""
    configure(storage)
    table = _build(spec)(batch)
    return table if keep is None else table.select([c for c in table.column_names
                                                    if c in keep or c.startswith(STAT_PREFIX)])


def _stage_actor(spec: StageSpec, storage: StorageOptions | None, output: str, env: dict | None = None) -> type:
    """A `_StageActor` class bound to one stage and named after it: Ray Data names the operator,
    its actors and their logs after the class (`MapBatches(Infer)`, not `MapBatches(_StageActor)`)."""
    return type(spec.cls.__name__, (_StageActor,), {"spec": spec, "storage": storage, "output": output,
                                                    "env": env or {}})


class _StageActor:
    """An actor holding one stage (the tokenizer, or the model) for its lifetime.

    Each batch is marked in flight in the output's ledger while the stage works on it, so the rows
    of a batch that keeps killing its actor can be told apart (restart.isolate_crashes).
    """

    spec: StageSpec
    storage: StorageOptions | None
    output: str
    env: dict    # environment variables set before the stage is built

    def __init__(self):
        os.environ.update(self.env)
        configure(self.storage)  # before the stage opens its model (possibly on object storage)
        if self.spec.cls.name == "infer":
            kill_point("model_load")   # test hook: a model actor killed while it loads
        self.stage = self.spec.build()

    def __call__(self, batch: pa.Table) -> pa.Table:
        files, rows = batch.column(FILE_INDEX).to_numpy(), batch.column(ROW).to_numpy()
        marker = mark_in_flight(self.output, self.stage.name, files, rows)
        if self.stage.name == "infer":  # test hooks: kill the driver, or this actor, mid-inference
            kill_point("infer")
            kill_point("model_actor")
            kill_for_rows("model_row", files, rows)
        result = self.stage(batch)
        done_in_flight(self.output, marker)
        return result


class ResultDatasink(Datasink):
    """Hands each write task's rows (at least `rows_per_file`, bundled by Ray) to the ResultWriter."""

    def __init__(self, spec: StageSpec, rows_per_file: int, storage: StorageOptions | None = None):
        self.spec = spec
        self.rows_per_file = rows_per_file
        self.storage = storage
        self.write_results: list[dict] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable, ctx) -> dict:
        """Write the bundle in parts of at most `WRITE_BYTES` (each its own files and ledger entry)."""
        configure(self.storage)
        total = {"rows": 0, "errors": 0, "files": []}
        for part in _parts(b for b in blocks if b.num_rows):
            written = _build(self.spec)(pa.concat_tables(part, promote_options="none"))
            for key, value in written.items():
                total[key] = total.get(key, 0) + value
        return total

    def on_write_complete(self, write_result) -> None:
        self.write_results = list(write_result.write_returns)


def _parts(blocks: Iterator[pa.Table]) -> Iterator[list[pa.Table]]:
    """Consecutive blocks joined up to `WRITE_BYTES` (a block larger than that alone)."""
    part, size = [], 0
    for block in blocks:
        if part and size + block.nbytes > WRITE_BYTES:
            yield part
            part, size = [], 0
        part.append(block)
        size += block.nbytes
    if part:
        yield part
