"""Daily NER over one date partition: submit `jobs/ner_corpus.py` to a Ray cluster and wait for it.

For the logical date `ds` the job reads `{input_root}/date={ds}/` and writes `{output_root}/date={ds}/`.
The output path depends on the date only, never on the try, so an Airflow retry (or a cleared
task) reruns the same command into the same output and the job's restart semantics finish the
work instead of duplicating it: a completed output is not recomputed, a partial one resumes.

Why Ray's `JobSubmissionClient` in a `@task`, not `RaySubmitJobOperator`:
- `RaySubmitJobOperator` lives in `apache-airflow-providers-google`, which pulls the whole Google
  Cloud client stack (hundreds of MB, its own pins on grpc/protobuf) into every Airflow worker
  for one HTTP client; the Ray client is what that operator calls anyway.
- `ray[default]` of exactly the cluster's Ray version is the one dependency this DAG needs, and
  with it we control the two things a retry needs: before submitting, the task stops any job
  still running for the same DAG and date (an earlier try whose Airflow task was killed — two
  writers on one output would race), and the job's log goes into the task's log as it runs. A
  configuration error (the job's exit status 2) fails the task without retries; any other failure
  (exit 1; 75 while another run holds the output) is retried.

Configuration (DAG params, defaults from the environment of the Airflow workers):
    ray_address   BERTBATCH_RAY_ADDRESS   dashboard URL, e.g. http://ray-head:8265
    input_root    BERTBATCH_INPUT_ROOT    e.g. s3://corpus/news  (partitions date=YYYY-MM-DD/ below)
    output_root   BERTBATCH_OUTPUT_ROOT   e.g. s3://results/news-ner
    model         BERTBATCH_MODEL         checkpoint folder or s3:// URL
    job_script    BERTBATCH_JOB_SCRIPT    path of ner_corpus.py on the cluster (image default below)
    working_dir   BERTBATCH_WORKING_DIR   optional: a checkout (or a remote .zip URI) uploaded with the
                                          job; job_script is then relative to it
    extra_args    BERTBATCH_EXTRA_ARGS    further job flags, e.g. "--model-actors 4"
Ray token authentication: the Ray client reads `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN` from the
worker's environment. Storage credentials are the cluster's (instance profile / IRSA), never DAG params.
"""

from __future__ import annotations

import os
import shlex
import time
import uuid

import pendulum

try:  # Airflow 3
    from airflow.sdk import Param, dag, get_current_context, task
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task
    from airflow.exceptions import AirflowFailException
    from airflow.models.param import Param
    from airflow.operators.python import get_current_context

DAG_ID = "bertbatch_ner"
IMAGE_JOB_SCRIPT = "/home/ray/bertbatch/jobs/ner_corpus.py"   # infra/docker/Dockerfile
POLL_SECONDS = float(os.environ.get("BERTBATCH_POLL_SECONDS", "10"))
ACTIVE = ("PENDING", "RUNNING")
CONFIG_ERROR = 2   # the job's exit status for a configuration error: a retry would fail the same way


def print_new_lines(log: str, printed: int, last: bool = False) -> int:
    """Print the job's log lines not printed yet into the task's log, where the job's progress lines (one a
    minute: rows done, rate, time left) show while it runs; `last`: it ended, print the rest. Returns how much
    of the log is printed."""
    end = len(log) if last else log.rfind("\n", printed) + 1
    if end > printed:
        print(log[printed:end].rstrip("\n"), flush=True)
    return max(end, printed)


def ner_command(params: dict, ds: str) -> list[str]:
    """The job's command line for one date partition (same output for every try of that date)."""
    input_root, output_root = params["input_root"].rstrip("/"), params["output_root"].rstrip("/")
    return ["python", params["job_script"],
            "--input", f"{input_root}/date={ds}/", "--output", f"{output_root}/date={ds}/",
            "--model", params["model"], *shlex.split(params.get("extra_args") or "")]


def stop_earlier_tries(client, ds: str) -> None:
    """Stop jobs of this DAG and date still running on the cluster, and wait until they are gone."""
    mine = [job for job in client.list_jobs()
            if (job.metadata or {}).get("airflow_dag") == DAG_ID and (job.metadata or {}).get("date") == ds
            and str(job.status) in ACTIVE and job.submission_id]
    for job in mine:
        print(f"stopping {job.submission_id}: an earlier try for {ds} is still {job.status}")
        client.stop_job(job.submission_id)
    for job in mine:
        while str(client.get_job_status(job.submission_id)) in ACTIVE:
            time.sleep(1)


@dag(
    dag_id=DAG_ID,
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=5), "retry_exponential_backoff": True},
    params={
        "ray_address": Param(os.environ.get("BERTBATCH_RAY_ADDRESS", "http://127.0.0.1:8265"), type="string"),
        "input_root": Param(os.environ.get("BERTBATCH_INPUT_ROOT", "s3://example-corpus/news"), type="string"),
        "output_root": Param(os.environ.get("BERTBATCH_OUTPUT_ROOT", "s3://example-results/news-ner"), type="string"),
        "model": Param(os.environ.get("BERTBATCH_MODEL", "s3://example-models/bert-base-ner/"), type="string"),
        "job_script": Param(os.environ.get("BERTBATCH_JOB_SCRIPT", IMAGE_JOB_SCRIPT), type="string"),
        "working_dir": Param(os.environ.get("BERTBATCH_WORKING_DIR", ""), type="string"),
        "extra_args": Param(os.environ.get("BERTBATCH_EXTRA_ARGS", ""), type="string"),
    },
    tags=["bertbatch", "ray"],
)
def bertbatch_ner():
    @task(execution_timeout=pendulum.duration(hours=12))
    def annotate_partition() -> str:
        from ray.job_submission import JobSubmissionClient

        context = get_current_context()
        params, ds = context["params"], context["ds"]
        client = JobSubmissionClient(params["ray_address"])
        stop_earlier_tries(client, ds)

        runtime_env = {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
        if params.get("working_dir"):
            runtime_env.update(working_dir=params["working_dir"],
                               excludes=[".git", ".venv", ".venv-airflow", ".venv-spark", "out", "__pycache__"])
        command = ner_command(params, ds)
        submission_id = f"{DAG_ID}-{ds}-{uuid.uuid4().hex[:8]}"
        client.submit_job(
            entrypoint=shlex.join(command), submission_id=submission_id, runtime_env=runtime_env,
            metadata={"airflow_dag": DAG_ID, "date": ds, "airflow_try": str(context["ti"].try_number)})
        print(f"submitted {submission_id}: {shlex.join(command)}")

        status, printed = str(client.get_job_status(submission_id)), 0
        while status in ACTIVE:
            time.sleep(POLL_SECONDS)
            status = str(client.get_job_status(submission_id))
            printed = print_new_lines(client.get_job_logs(submission_id), printed)
        print_new_lines(client.get_job_logs(submission_id), printed, last=True)
        if status != "SUCCEEDED":
            failed = f"Ray job {submission_id} ended {status}; its log is above"
            if client.get_job_info(submission_id).driver_exit_code == CONFIG_ERROR:
                raise AirflowFailException(f"{failed} (a configuration error: not retried)")
            raise RuntimeError(failed)
        return command[command.index("--output") + 1]

    annotate_partition()


bertbatch_ner()
