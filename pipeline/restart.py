"""Start, resume or skip a job in its output folder (docs/restart.md).

A fresh output gets `_progress/_job.json` (what it is made from). Starting again into it with the
same task, model, result-affecting options and unchanged inputs resumes from the ledger; anything
else refuses unless `--overwrite`. A finished output (`_SUCCESS`) is reported and left alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import ledger
from pipeline.sink import ERRORS_DIR, RUN_FILE, SUCCESS_FILE, prepare_output
from pipeline.stage import ROW, with_errors

ISOLATION_PASSES = 3        # runs after a fatal worker crash, each without the batches it was working on
# Options that change how the work is spread, how files are cut or how storage is reached (and may hold
# credentials, never written to the ledger), never a result row's values.
LAYOUT_ONLY = frozenset({"input", "output", "overwrite", "model", "tokenizer_actors", "model_actors",
                         "docs_per_batch", "batch_tokens", "rows_per_file", "device", "storage_options",
                         "wait_for_gpus", "progress_seconds"})


@dataclasses.dataclass
class Start:
    run: int                            # this run's number in the output (1 for a fresh output)
    progress: ledger.Progress
    lease: str | None = None            # this run's lease token (pipeline/lease.py): its writes check it


# Result options added after outputs existed: left out while unset, so those outputs keep their identity
# (a multi-task job hashes its tasks' options).
ADDED_LATER = frozenset({"prompt", "prompt_name", "truncate_dim"})


def result_options(config) -> dict:
    """The options that may change a result row (JSON-ready): what a restart must find unchanged."""
    options = {k: v for k, v in config.model_dump().items()
               if k not in LAYOUT_ONLY and not (k in ADDED_LATER and v is None)}
    return json.loads(json.dumps(options, default=str))


def job_identity(task: str, config, model, files, dtypes: tuple[str, ...]) -> dict:
    """What a restart must find unchanged. `dtypes`: the models' (`--dtype auto` until `with_dtypes`)."""
    return {"task": task, "model_sha256": model.fingerprint, "model_files_sha256": model.settings_sha256,
            "options": result_options(config), "dtypes": list(dtypes),
            "inputs": ledger.input_identity(files.fs, files.paths),
            **({"tasks": list(model.tasks)} if model.tasks else {})}


def with_dtypes(identity: dict, dtypes: tuple[str, ...]) -> dict:
    """The identity with the dtypes the models compute in, `auto` resolved by the cluster (ray_plan.preflight)."""
    return {**identity, "dtypes": list(dtypes)}


def _mismatch(old: dict, new: dict) -> str | None:
    if old["task"] != new["task"]:
        return f"task {old['task']!r} (now {new['task']!r})"
    if old["model_sha256"] != new["model_sha256"]:
        if old["task"] == "multi":
            return _task_change(old.get("tasks"), new.get("tasks")) or \
                "another model or task options (a multi-task job's sha256 covers each task's model, files and options)"
        return f"another model (sha256 {old['model_sha256'][:12]}, now {new['model_sha256'][:12]})"
    if old.get("model_files_sha256", new["model_files_sha256"]) != new["model_files_sha256"]:
        return "the same weights but another config.json, tokenizer or sentence-transformers files"
    resolved = "dtypes" in old   # the dtypes computed in are compared, not --dtype (auto follows the hardware)
    for key in sorted((set(old["options"]) | set(new["options"])) - ({"dtype"} if resolved else set())):
        if old["options"].get(key) != new["options"].get(key):
            return f"--{key.replace('_', '-')} {old['options'].get(key)!r} (now {new['options'].get(key)!r})"
    if resolved and "auto" not in new["dtypes"] and old["dtypes"] != new["dtypes"]:   # auto: known after preflight
        hints = ["--dtype auto follows the hardware: resume where it resolves the same"
                 if "auto" in (old["options"].get("dtype"), new["options"].get("dtype")) else "",
                 # a multi-task job's fingerprint holds each task's --dtype as given
                 f"give --dtype {old['dtypes'][0]}" if len(old["dtypes"]) == 1 and old["task"] != "multi" else ""]
        hint = ", or ".join(h for h in hints if h)
        return f"the model computing in {', '.join(old['dtypes'])} (now {', '.join(new['dtypes'])}{'; ' * bool(hint)}{hint})"
    if old["inputs"] != new["inputs"]:
        changed = next((b["path"] for a, b in zip(old["inputs"], new["inputs"]) if a != b), "the file list")
        return f"other input files (changed: {changed})"
    return None


def _task_change(old: list | None, new: list | None) -> str | None:
    """What differs between two multi-task jobs' tasks (None: nothing found, or a ledger without them)."""
    if not old or not new:
        return None
    was, now = ({t["column"]: t for t in tasks} for tasks in (old, new))
    if list(was) != list(now):
        return f"the tasks {', '.join(was)} (now {', '.join(now)})"
    for column, a in was.items():
        b = now[column]
        if a["task"] != b["task"]:
            return f"tasks.{column}.task {a['task']!r} (now {b['task']!r})"
        if a["model_sha256"] != b["model_sha256"]:
            return f"another model in tasks.{column} (sha256 {a['model_sha256'][:12]}, now {b['model_sha256'][:12]})"
        if a["model_files_sha256"] != b["model_files_sha256"]:
            return f"the same weights in tasks.{column} but another config.json, tokenizer or sentence-transformers files"
        for key in sorted(set(a["options"]) | set(b["options"])):
            if a["options"].get(key) != b["options"].get(key):
                return f"tasks.{column}.{key} {a['options'].get(key)!r} (now {b['options'].get(key)!r})"
    return None


def _same_job(output: str, identity: dict, overwrite: bool) -> dict | None:
    """The output's ledger identity (None: a fresh start); FileExistsError (one line) when it is another job's."""
    old = None if overwrite else ledger.read_job(output)
    if old is not None and (reason := _mismatch(old, identity)):
        raise FileExistsError(f"--output {output!r} was made with {reason}; pass --overwrite to replace it")
    return old


def finished_output(output: str, identity: dict, overwrite: bool) -> dict | None:
    """Read only: `_run.json` of an output this job already finished, else None; raise FileExistsError
    (one line) when the output is another job's. Runs before anything that may refuse the run later
    (the cluster's checks), so that a refused run has touched nothing: a `--dtype auto` is not compared
    yet (`open_output` compares what the cluster resolved it to)."""
    old = _same_job(output, identity, overwrite)
    if old is None:
        return None
    fs, root = fsspec.core.url_to_fs(output)
    if not fs.exists(f"{root.rstrip('/')}/{SUCCESS_FILE}"):
        return None
    with fs.open(f"{root.rstrip('/')}/{RUN_FILE}", "r") as handle:
        return json.load(handle)


def looks_finished(output: str, identity: dict, overwrite: bool) -> bool:
    """Read only, before the lease: whether `finished_output` should find this job done, so that a rerun of a
    finished output skips planning (which reads every input footer: 94 s for 1,000 shards on S3). Never raises:
    an output that is another job's or cannot be reached is refused later, by the lease and `finished_output`."""
    try:
        return finished_output(output, identity, overwrite) is not None
    except (OSError, ValueError, ImportError):
        return False


def open_output(output: str, identity: dict, overwrite: bool, lease: str | None = None) -> Start:
    """Start fresh or resume (after `finished_output`; `identity` now `with_dtypes`): empty or clean the
    folder, record this run."""
    old = _same_job(output, identity, overwrite)
    if old is None:
        prepare_output(output, overwrite)    # refuses a non-empty folder without a ledger
        old = {**identity, "runs": []}
    elif "dtypes" not in old:   # a ledger of an earlier version: its dtypes are compared from this run on
        old = {**old, "dtypes": identity["dtypes"]}
    progress = ledger.recover(output)
    run = len(old["runs"]) + 1
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    ledger.write_job(output, {**old, "runs": [*old["runs"], {"run": run, "started": started}]})
    return Start(run, progress, lease)


def run_counts(output: str, progress: ledger.Progress) -> list[dict]:
    """Per run: when it started and how many input rows it committed (results + errors)."""
    runs = (ledger.read_job(output) or {}).get("runs", [])
    for run in runs:
        entries = [e for e in progress.entries if e["run"] == run["run"]]
        run["rows_processed"] = sum(e["counters"].get("rows", 0) + e["counters"].get("errors", 0) for e in entries)
    return runs


def resume_plan(plan, start: Start):
    """The plan (writing as this run) without the rows earlier runs committed, and the files with rows to do."""
    sink = dataclasses.replace(plan.sink, config=dataclasses.replace(plan.sink.config, run=start.run,
                                                                     lease=start.lease))
    return _skip_committed(dataclasses.replace(plan, sink=sink), start.progress)


def _skip_committed(plan, progress: ledger.Progress):
    committed = tuple((i, tuple(r)) for i, r in sorted(progress.committed.items()))
    plan = dataclasses.replace(plan, read=dataclasses.replace(plan.read, committed=committed))
    pending = [i for i, rows in enumerate(plan.footers.rows) if rows is not None and progress.rows_done(i) < rows]
    return plan, pending


def record_unreadable(plan) -> None:
    """One error row per input file whose footer cannot be read (rewritten by every run: not in the ledger);
    the row of a file this run reads (a storage fault that passed) is deleted."""
    config = plan.sink.config
    fs, root = fsspec.core.url_to_fs(config.output)
    errors = f"{root.rstrip('/')}/{ERRORS_DIR}"
    unreadable = {f"unreadable-{index:05d}.parquet" for index, _ in plan.footers.unreadable}
    for path in fs.glob(f"{errors}/unreadable-*.parquet") if fs.exists(errors) else []:
        if path.rsplit("/", 1)[-1] not in unreadable:
            fs.rm(path)
    for index, reason in plan.footers.unreadable:
        table = pa.table({
            config.id_column: pa.nulls(1, config.errors_schema.field(config.id_column).type),
            "source": [plan.files.display(plan.files.paths[index])], "row": [-1],  # -1: the whole file
            "stage": ["read"], "error": ["unreadable_file"], "message": [reason],
        }).cast(config.errors_schema)
        fs.makedirs(f"{root.rstrip('/')}/{ERRORS_DIR}", exist_ok=True)
        with fs.open(f"{root.rstrip('/')}/{ERRORS_DIR}/unreadable-{index:05d}.parquet", "wb") as handle:
            pq.write_table(table, handle)


class RunFailed(RuntimeError):
    """A failure that no row of the input caused (an actor's constructor raised: a model that does not load, no CUDA
    on a GPU node; or workers died with no batch in flight): the run fails with it, and the rows it had not
    committed are left to do rather than made `worker_died` errors."""


def raise_unless_crash(error: BaseException) -> None:
    """Return when `error` is a worker crash `isolate_crashes` deals with; raise RunFailed for an actor that could
    not start, and `error` itself for anything else (a Python bug, a storage error)."""
    if failed := start_failure(error):
        raise failed from error
    if not worker_died(error):
        raise error


def worker_died(error: BaseException) -> bool:
    """A Ray worker or actor process died more often than its bounded restarts allow (not a Python bug)."""
    import ray.exceptions

    died = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)
    return any(isinstance(seen, died) or any(name in str(seen) for name in ("ActorDiedError", "WorkerCrashedError"))
               for seen in _chain(error))


def start_failure(error: BaseException) -> RunFailed | None:
    """The run's failure when `error` says an actor's constructor raised; None for anything else."""
    from pipeline.cli import one_line_reason

    seen = next(filter(_failed_to_start, _chain(error)), None)
    if seen is None:
        return None
    stage = re.search(r"MapBatches\((\w+)\)", str(seen))
    return RunFailed(f"an actor{f' of the {stage.group(1)} stage' if stage else ''} could not start: "
                     f"{one_line_reason(error)}; no row was marked done: run again once it is fixed")


def _failed_to_start(error: BaseException) -> bool:
    # Ray's flag where the error itself reaches the driver; its message where Ray Data passes on only the text
    return getattr(error, "actor_init_failed", False) is True or "raised in its creation task" in str(error)


def _chain(error: BaseException) -> list[BaseException]:
    chain, seen = [], error
    while seen is not None and all(seen is not e for e in chain):
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def uncommitted(plan, output: str):
    """The plan reading only rows no entry commits yet, and the input files that still have some."""
    return _skip_committed(plan, ledger.recover(output))


def fail_rows(plan, output: str, reason: str, only: dict[int, ledger.Ranges] | None = None) -> int:
    """Commit the uncommitted rows (of `only`'s ranges, or all) as `worker_died` error rows; return how many.

    Reads on the driver, one block at a time, through the same validate and write stages.
    """
    plan, pending = uncommitted(plan, output)
    validate, writer, marked = plan.validate.build(), plan.sink.build(), 0
    for index in pending:
        if only is not None and index not in only:
            continue
        for block in plan.read(index):
            if only is not None:
                block = block.filter(ledger.committed_mask(block.column(ROW).to_numpy(), only[index]))
            if block.num_rows:
                block = with_errors(validate(block), {i: ("infer", "worker_died", reason)
                                                      for i in range(block.num_rows)})
                writer(block)
                marked += block.num_rows
    return marked


def isolate_crashes(plan, output: str, error: BaseException, execute) -> dict:
    """After a worker crash outlived its retries: the batches it was working on become error rows, the rest goes on.

    The batches still marked in flight (ledger.mark_in_flight) are the suspects: their rows are
    committed as `worker_died` errors and the run continues without them, up to ISOLATION_PASSES
    times; one more crash after the last pass marks every row not committed yet. A crash with no
    marked batch points at no row (an actor killed while it loads its model, a lost node): RunFailed.
    `execute(plan, pending)` runs a pass; returns what `_run.json.worker_failure` holds.
    """
    failures = []
    for _ in range(ISOLATION_PASSES + 1):
        first_line = str(error).splitlines()[0][:300]
        reason = f"a worker process died on this batch and its bounded restarts were spent: {first_line}"
        suspects = ledger.in_flight(output)
        ledger.clear_in_flight(output)
        if not suspects:
            raise RunFailed(f"worker processes died beyond their retries with no batch in flight ({first_line}); "
                            "the rows not done yet are left to do: run again once the cause is fixed")
        if len(failures) == ISOLATION_PASSES:
            rows = fail_rows(plan, output, reason.replace("on this batch", "before this row was done"))
            failures.append({"error": reason, "rows": rows, "isolated": False})
            break
        failures.append({"error": reason, "rows": fail_rows(plan, output, reason, suspects), "isolated": True})
        resumed, pending = uncommitted(plan, output)
        if not pending:
            break
        try:
            execute(resumed, pending)
            break
        except Exception as again:
            raise_unless_crash(again)
            error = again
    return {"passes": failures, "rows": sum(f["rows"] for f in failures)}
