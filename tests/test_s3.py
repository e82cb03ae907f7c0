"""The NER job on S3: input, output and model on a local S3-compatible server (moto), through s3fs.

Jobs run as `python jobs/ner_corpus.py …` subprocesses (each with its embedded Ray under its own
RAY_TMPDIR), because credentials and endpoint reach a job only through its environment or its
flags — exactly as on a cluster. Every log line (driver output and every Ray log file) and every
output object is searched for the recognisable fake credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline import job
from pipeline.config import MultiConfig, NerConfig
from pipeline.multi_task import multi_task
from pipeline.ner_task import NER_TASK
from tests.checkpoints import make_checkpoint, write_sentence_transformers_files
from tests.s3_server import FaultProxy, MotoS3
from tests.task_runs import CLASSIFY_HEADS, annotate, scaled_checkpoint, write_task_corpus

pytestmark = [pytest.mark.s3, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
KEY_ID = "AKIAFAKEKEYID0BERTBATCH"
SECRET = "fakeSecret/BERTBATCH+doNotLeak0123456789"
FLAG_SECRET = "flagSecret/BERTBATCH+alsoNeverShown987"
BUCKET = "bertbatch-test"
ROWS = 48


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[MotoS3, FaultProxy]]:
    server = MotoS3().start()
    proxy = FaultProxy(server.endpoint).start()
    try:
        yield server, proxy
    finally:
        proxy.stop()
        server.stop()


def aws_env(endpoint: str | None, tmp_path: Path) -> dict[str, str]:
    """A clean AWS environment: the fake keys + endpoint, no profile or instance metadata to fall back to."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-creds"),
               BERTBATCH_MODEL_CACHE=str(tmp_path / "model-cache"), RAY_USAGE_STATS_ENABLED="0")
    if endpoint:
        env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_ENDPOINT_URL=endpoint)
    return env


def client(endpoint: str) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, endpoint_url=endpoint, skip_instance_cache=True)


@pytest.fixture(scope="module")
def uploaded(s3, tmp_path_factory) -> dict:
    """A corpus (2 files, short and multi-window texts) and a tiny NER checkpoint, uploaded to the bucket."""
    server, _ = s3
    local = tmp_path_factory.mktemp("s3-data")
    model, _ = make_checkpoint(local / "model", "bert", "ner")
    texts = [("John Smith works at Acme Corp in Paris . " * (1 + 6 * (i % 7 == 0)))[: 40 + i] for i in range(ROWS)]
    table = pa.table({"id": pa.array(range(ROWS), pa.int64()), "text": texts})
    fs = client(server.endpoint)
    fs.mkdir(BUCKET)
    for part in range(2):
        with fs.open(f"{BUCKET}/corpus/date=2026-01-01/part-{part}.parquet", "wb") as handle:
            pq.write_table(table.slice(part * ROWS // 2, ROWS // 2), handle)
    fs.put(str(model), f"{BUCKET}/models/ner", recursive=True)
    return {"input": f"s3://{BUCKET}/corpus/", "model": f"s3://{BUCKET}/models/ner", "ids": list(range(ROWS))}


def run_job(env: dict, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the NER job with its own Ray temp dir; return the process and every log it left, concatenated."""
    ray_tmp = tempfile.mkdtemp(prefix="bbs3", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    done = subprocess.run([sys.executable, "jobs/ner_corpus.py", *args, "--max-length", "32", "--stride", "8"],
                          env={**env, "RAY_TMPDIR": ray_tmp}, cwd=REPO, capture_output=True, text=True, timeout=600)
    logs = [done.stdout, done.stderr]
    for path in Path(ray_tmp).rglob("*"):
        if path.is_file() and not path.is_socket() and path.suffix in (".log", ".out", ".err", ".txt", ".json", ""):
            logs.append(path.read_text(encoding="utf-8", errors="replace"))
    return done, "\n".join(logs)


def read_output(fs: s3fs.S3FileSystem, output: str) -> tuple[pa.Table, dict, list[str]]:
    """Results through pyarrow + s3fs, `_run.json`, and the raw bytes of every object as text."""
    root = output.removeprefix("s3://").rstrip("/")
    objects = fs.find(root)
    assert f"{root}/_SUCCESS" in objects, objects
    table = pads.dataset(root, filesystem=fs, format="parquet").to_table()
    run = json.loads(fs.cat_file(f"{root}/_run.json"))
    raw = [fs.cat_file(path).decode("latin-1") for path in objects]
    return table, run, raw


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET, FLAG_SECRET):
            assert secret not in text, f"secret found near: {text[max(0, text.find(secret) - 200):][:400]!r}"


def test_ner_job_reads_writes_and_loads_its_model_from_s3(s3, uploaded, tmp_path: Path) -> None:
    server, _ = s3
    output = f"s3://{BUCKET}/out/env-chain"
    done, logs = run_job(aws_env(server.endpoint, tmp_path), "--input", uploaded["input"], "--output", output,
                         "--model", uploaded["model"])
    assert done.returncode == 0, logs[-6000:]
    table, run, raw = read_output(client(server.endpoint), output)
    assert sorted(table.column("id").to_pylist()) == uploaded["ids"]
    assert any(table.column("entities").to_pylist()) or table.num_rows == ROWS
    assert run["complete"] and run["model"]["path"] == uploaded["model"]
    assert_no_secrets(logs, *raw)
    # one cached copy of the checkpoint on this node, named after its content
    assert len([p for p in (tmp_path / "model-cache").iterdir() if p.is_dir()]) == 1


def test_storage_options_flag_overrides_the_environment_and_is_never_shown(s3, uploaded, tmp_path: Path) -> None:
    server, _ = s3
    options = {"key": KEY_ID, "secret": FLAG_SECRET, "endpoint_url": server.endpoint}
    output = f"s3://{BUCKET}/out/flag"
    # no AWS_* credentials or endpoint in the environment: the job can only reach the store through the flag
    done, logs = run_job(aws_env(None, tmp_path), "--input", uploaded["input"], "--output", output,
                         "--model", uploaded["model"], "--storage-options", json.dumps(options))
    assert done.returncode == 0, logs[-6000:]
    table, run, raw = read_output(client(server.endpoint), output)
    assert sorted(table.column("id").to_pylist()) == uploaded["ids"]
    assert run["config"]["storage_options"] == "**********"
    logs_without_command = logs.replace(json.dumps(options), "")  # the job's own command line is ours
    assert_no_secrets(logs_without_command, *raw)


@pytest.mark.parametrize("value", [f'{{"secret": "{FLAG_SECRET}", broken', f'["{FLAG_SECRET}"]'])
def test_bad_storage_options_fail_in_one_line_without_echoing_them(value: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "jobs/ner_corpus.py", "--input", "s3://b/in", "--output", "s3://b/out",
                           "--model", "s3://b/m", "--storage-options", value],
                          env=aws_env(None, tmp_path), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--storage-options" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert_no_secrets(done.stdout, done.stderr)


def test_model_folder_is_copied_once_per_node_and_again_when_its_content_changes(s3, uploaded, tmp_path: Path) -> None:
    server, proxy = s3
    env = aws_env(proxy.endpoint, tmp_path)
    fetch = ("import sys; from models.remote import local_model_folder; "
             "print(local_model_folder(sys.argv[1]))")
    proxy.reset_counts()
    workers = [subprocess.Popen([sys.executable, "-c", fetch, uploaded["model"]], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    folders = {w.communicate(timeout=120)[0].strip() for w in workers}
    assert all(w.returncode == 0 for w in workers)
    assert len(folders) == 1 and (Path(folders.pop()) / "model.safetensors").is_file()
    weights = f"/{BUCKET}/models/ner/model.safetensors"
    assert proxy.paths[("GET", weights)] == 1, dict(proxy.paths)

    fs = client(server.endpoint)
    config = json.loads(fs.cat_file(f"{BUCKET}/models/ner/config.json"))
    changed = {**config, "_name_or_path": "changed"}
    fs.pipe_file(f"{BUCKET}/models/ner-changed/config.json", json.dumps(changed).encode())
    again = subprocess.run([sys.executable, "-c", fetch, uploaded["model"]], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and proxy.paths[("GET", weights)] == 1  # unchanged: served from the cache
    fs.pipe_file(f"{BUCKET}/models/ner/config.json", json.dumps(changed).encode())
    try:
        third = subprocess.run([sys.executable, "-c", fetch, uploaded["model"]], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=120)
        assert third.returncode == 0, third.stderr
        assert third.stdout.strip() not in folders and proxy.paths[("GET", weights)] == 2
    finally:
        fs.pipe_file(f"{BUCKET}/models/ner/config.json", json.dumps(config).encode())


def test_transient_faults_are_retried_and_the_output_is_complete_and_duplicate_free(
        s3, uploaded, tmp_path: Path) -> None:
    server, proxy = s3
    output = f"s3://{BUCKET}/out/faults"
    proxy.reset_counts()
    proxy.inject(faults=24, every=3)   # 503, 500 and dropped connections in turn, on every third request
    done, logs = run_job(aws_env(proxy.endpoint, tmp_path), "--input", uploaded["input"], "--output", output,
                         "--model", uploaded["model"])
    injected = dict(proxy.faults)
    proxy.inject(faults=0)
    assert done.returncode == 0, f"{injected}\n{logs[-6000:]}"
    assert all(injected.get(kind, 0) >= 5 for kind in ("503", "500", "drop")), injected
    table, run, raw = read_output(client(server.endpoint), output)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == uploaded["ids"], "every row exactly once"
    assert run["report"]["documents"] == ROWS
    assert_no_secrets(logs, *raw)


def test_storage_options_merge_over_the_retry_defaults_and_never_print() -> None:
    from pipeline.config import NerConfig
    from pipeline.storage import S3_DEFAULTS, StorageOptions, options_for

    text = json.dumps({"secret": FLAG_SECRET, "config_kwargs": {"read_timeout": 5}})
    storage = StorageOptions.parse(text, ("s3://b/in", "/local/out"))
    assert FLAG_SECRET not in repr(storage) and FLAG_SECRET not in str(storage)
    merged = options_for("s3://b/in/x.parquet", storage)
    assert merged["secret"] == FLAG_SECRET and merged["config_kwargs"]["read_timeout"] == 5
    assert merged["config_kwargs"]["retries"] == S3_DEFAULTS["config_kwargs"]["retries"]
    assert options_for("/local/out", storage) == {}

    config = NerConfig(input="s3://b/in", output="s3://b/out", model="s3://b/m", storage_options=text)
    assert config.storage.as_dict()["secret"] == FLAG_SECRET
    assert FLAG_SECRET not in repr(config) and FLAG_SECRET not in json.dumps(config.model_dump(), default=str)


def test_task_plans_read_a_remote_models_files_from_its_local_copy(s3, tmp_path: Path, monkeypatch) -> None:
    """A classifier's problem type, an embedder's sentence-transformers files and each task's own
    tokenizer come from the copy of a model on S3 as they do from a local folder (the plans' stages,
    without Ray)."""
    server, _ = s3
    local = tmp_path / "models"
    scaled_checkpoint(local / "classify", "bert", "classify", 8.0, **CLASSIFY_HEADS["multi"])
    embed, _ = make_checkpoint(local / "embed", "roberta", "base")
    write_sentence_transformers_files(embed, "cls", True, max_seq_length=24, do_lower_case=True)
    fs = client(server.endpoint)
    for name in ("classify", "embed"):
        fs.put(str(local / name), f"{BUCKET}/plan-models/{name}", recursive=True)
    for key, value in aws_env(server.endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()   # a client made from another test's environment would be reused
    corpus = write_task_corpus(tmp_path / "corpus")

    def run(folder) -> dict:
        tasks = {"topics": {"task": "classify", "model": folder("classify"), "top_k": 4},
                 "vector": {"task": "embed", "model": folder("embed")}}
        return annotate(*multi_task(MultiConfig(input=str(corpus), output=str(tmp_path / "out"), tasks=tasks)))

    remote = run(lambda name: f"s3://{BUCKET}/plan-models/{name}")
    here = run(lambda name: str(local / name))
    assert remote.keys() == here.keys() and len(here) > 5
    for doc_id, row in here.items():
        got = remote[doc_id]
        assert [s["label"] for s in got["topics"]["scores"]] == [s["label"] for s in row["topics"]["scores"]]
        np.testing.assert_allclose(got["vector"]["embedding"], row["vector"]["embedding"], atol=1e-6)
        assert abs(np.linalg.norm(row["vector"]["embedding"]) - 1) < 1e-5   # the folder's Normalize module


def test_a_multi_task_job_opens_its_models_with_the_storage_options(s3, uploaded, tmp_path: Path, monkeypatch) -> None:
    """Credentials and endpoint only in --storage-options (a YAML mapping): the multi-task plan opens every
    model with them, as the single-task jobs do (it opened the models before they were configured)."""
    import fsspec

    server, _ = s3
    for key, value in aws_env(None, tmp_path).items():   # nothing to fall back to
        monkeypatch.setenv(key, value)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(fsspec.config, "conf", {})   # no options configured by an earlier test
    s3fs.S3FileSystem.clear_instance_cache()
    options = {"key": KEY_ID, "secret": SECRET, "endpoint_url": server.endpoint}
    config = MultiConfig(input=uploaded["input"], output=f"s3://{BUCKET}/multi-out", storage_options=options,
                         tasks={"entities": {"task": "ner", "model": uploaded["model"]}})
    job, task = multi_task(config)
    assert json.loads(job.storage_options.get_secret_value()) == options
    assert task.inspect(None).fingerprint   # each model was read (fingerprinted) through the options
    with pytest.raises(ValueError, match="storage_options"):
        MultiConfig(input="in/", output="out/", storage_options="[1]", tasks={"e": {"task": "ner", "model": "m"}})


def test_an_output_beside_or_inside_the_input_on_s3(s3, uploaded, tmp_path: Path, monkeypatch) -> None:
    """The output/input overlap rules hold on an object store (keys, no links; s3 and s3a are one store)."""
    from pipeline.read import InputError, list_input_files

    server, _ = s3
    for key, value in aws_env(server.endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = client(server.endpoint)
    table = pa.table({"id": ["a"], "text": ["John Smith works in Paris."]})
    for key in ("overlap/in/a.parquet", "overlap/in/out/part-00000-000000000000.parquet", "overlap/in2/b.parquet"):
        with fs.open(f"{BUCKET}/{key}", "wb") as handle:
            pq.write_table(table, handle)
    base = f"s3://{BUCKET}/overlap"
    for output in (f"{base}/in", base, f"{base}/in/out"):   # the input's folder, above it, a folder of input files
        with pytest.raises(InputError, match="holds the input"):
            list_input_files(f"{base}/in", output)
    fs.pipe(f"{BUCKET}/overlap/in/out/_progress/_job.json", b"{}")   # a run made it: its results are not input
    for output in (f"{base}/in/out", f"s3a://{BUCKET}/overlap/in/out"):
        assert list_input_files(f"{base}/in", output).paths == (f"{BUCKET}/overlap/in/a.parquet",)
    assert list_input_files(f"{base}/in2", f"{base}/in").paths == (f"{BUCKET}/overlap/in2/b.parquet",)


@pytest.mark.usefixtures("uploaded")   # the bucket
def test_a_lease_on_s3_is_aged_by_the_stores_clock(s3, tmp_path: Path, monkeypatch) -> None:
    """A holder whose clock is 10 minutes behind ours wrote its lease just now: by its heartbeat it is long
    dead, by the store's LastModified it is fresh, and the second run refuses. The store's clock probe is gone."""
    from pipeline.lease import CLOCK_PROBE, EXPIRES_SECONDS, LEASE_FILE, Lease, OutputBusy

    server, _ = s3
    for key, value in aws_env(server.endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs, output = client(server.endpoint), f"s3://{BUCKET}/leased"
    holder = {"token": "other", "host": "another-machine", "pid": 1, "started": "earlier",
              "heartbeat": time.time() - 600}
    fs.pipe(f"{BUCKET}/leased/_progress/{LEASE_FILE}", json.dumps(holder).encode())
    with pytest.raises(OutputBusy, match=r"another-machine.*heartbeat \d s ago\).*rerun after 1[78]\d s"):
        Lease(output).acquire()
    assert not [p for p in fs.find(f"{BUCKET}/leased") if CLOCK_PROBE in p]
    assert EXPIRES_SECONDS < 600


@pytest.mark.usefixtures("uploaded")   # the bucket
def test_planning_reads_each_footer_once_and_a_rerun_of_a_finished_output_none(
        s3, ner_checkpoint, tmp_path: Path, monkeypatch) -> None:
    """Planning reads each input footer with one GET, several at a time (read twice and one by one, 1,000 shards
    took 94 s on this server); a rerun of a finished output reads no footer at all (it read them all)."""
    server, proxy = s3
    fs = client(server.endpoint)
    shards = [f"{BUCKET}/many/date=2026-01-0{1 + i % 2}/part-{i:03d}.parquet" for i in range(30)]
    for i, key in enumerate(shards):
        with fs.open(key, "wb") as handle:
            pq.write_table(pa.table({"id": [f"{i}-{j}" for j in range(i % 3)], "text": ["John Smith in Paris"] * (i % 3)},
                                    schema=pa.schema({"id": pa.string(), "text": pa.string()})), handle)
    source, output = f"s3://{BUCKET}/many/", f"s3://{BUCKET}/out/many"
    done, logs = run_job(aws_env(server.endpoint, tmp_path), "--input", source, "--output", output,
                         "--model", str(ner_checkpoint))
    assert done.returncode == 0, logs[-6000:]

    for key, value in aws_env(proxy.endpoint, tmp_path).items():   # the same job in this process, through the proxy
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(fsspec.config, "conf", {})   # run_job configures the s3 options: not for later tests
    s3fs.S3FileSystem.clear_instance_cache()
    config = NerConfig(input=source, output=output, model=str(ner_checkpoint), max_length=32, stride=8)

    def footer_requests() -> dict[tuple[str, str], int]:
        return {(method, unquote(path)): n for (method, path), n in proxy.paths.items()
                if unquote(path).startswith(f"/{BUCKET}/many/")}

    proxy.reset_counts()   # the plan of a run into a new output, as run_job makes it
    plan = job.plan_unless_finished(config.model_copy(update={"output": f"{output}-new"}), NER_TASK)[2][0]
    assert dict(zip(plan.files.paths, plan.footers.rows)) == {key: i % 3 for i, key in enumerate(shards)}
    assert "date" in plan.read.schema.names   # the hive key, from the footer read with the rest
    assert footer_requests() == {("GET", f"/{key}"): 1 for key in shards}   # and no HEAD for a file's size
    proxy.reset_counts()
    assert job.plan_unless_finished(config, NER_TASK)[2] is None
    run = job.run_job(config, NER_TASK)
    assert run["complete"] and run["report"]["documents"] == sum(plan.footers.rows)
    assert footer_requests() == {}
