"""The deployment files under infra/ parse, pass the checks their tools make, and name real entrypoints.

- the Ray cluster launcher config goes through `prepare_config` + `validate_config`, the two steps
  `ray up` runs before it talks to the cloud (defaults filled in, Ray's JSON schema checked);
- the KubeRay manifests are checked at schema level (no API server here): kinds, the GPU worker
  group's `nvidia.com/gpu` limits, and the job entrypoint parsed by the job's own argument parser;
- the Dockerfile installs torch before the project and copies only paths that exist.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import parse_config
from pipeline.config import NerConfig

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
LAUNCHER = INFRA / "ray" / "cluster-aws.yaml"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
IMAGE_WORKDIR = "/home/ray/bertbatch"    # where the Dockerfile puts the project
JOB_CONFIGS = {"ner_corpus.py": NerConfig}


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def kuberay_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted((INFRA / "kuberay").glob("*.yaml")) for doc in load_all(path)]


def test_every_yaml_file_under_infra_parses() -> None:
    files = sorted(INFRA.rglob("*.yaml"))
    assert {p.name for p in files} >= {"cluster-aws.yaml", "raycluster.yaml", "rayjob.yaml"}
    for path in files:
        assert load_all(path), f"{path} holds no YAML document"


# --- Ray cluster launcher (`ray up`) ---------------------------------------------------------------

def test_launcher_config_passes_the_validation_ray_up_runs() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text(encoding="utf-8"))
    validate_config(prepare_config(copy.deepcopy(config)))  # raises jsonschema.ValidationError when wrong

    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    with pytest.raises(Exception, match="is not of type 'integer'"):  # the check above really checks
        validate_config(prepare_config(broken))


def test_launcher_config_has_a_cpu_head_and_a_gpu_worker_group_that_install_the_project() -> None:
    config = yaml.safe_load(LAUNCHER.read_text(encoding="utf-8"))
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"):
        assert config.get(key), f"{LAUNCHER.name}: missing {key}"
    assert config["provider"]["type"] == "aws"
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in node_types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t.get("max_workers", 0) >= 1 for t in workers)
    setup = config["setup_commands"]
    torch_step = next(i for i, c in enumerate(setup) if "torch==" in c)
    project_step = next(i for i, c in enumerate(setup) if "pip install" in c and "bertbatch" in c)
    assert torch_step < project_step, "torch (CUDA wheel) must be installed before the project"
    mounted = {remote: local for remote, local in config.get("file_mounts", {}).items()}
    assert any(remote in setup[project_step] and (REPO / local / "pyproject.toml").is_file()
               for remote, local in mounted.items()), "the installed folder must be the mounted checkout"


# --- KubeRay ---------------------------------------------------------------------------------------

def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_kuberay_manifests_declare_a_ray_cluster_and_a_ray_job() -> None:
    kinds = {doc["kind"] for _, doc in kuberay_docs()}
    assert kinds == {"RayCluster", "RayJob"}
    for path, doc in kuberay_docs():
        assert doc["apiVersion"] == "ray.io/v1", path
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), path


def test_kuberay_clusters_have_a_cpu_head_and_a_gpu_worker_group_on_our_ray_version() -> None:
    import ray

    for path, doc in kuberay_docs():
        spec = cluster_spec(doc)
        assert spec["rayVersion"] == ray.__version__, f"{path}: image Ray must match the client's"
        head = containers(spec["headGroupSpec"]["template"])[0]
        assert "nvidia.com/gpu" not in head["resources"].get("limits", {}), path
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
                             for c in containers(g["template"]))]
        assert gpu_groups, f"{path}: no worker group with nvidia.com/gpu limits"
        for group in gpu_groups:
            assert group["rayStartParams"]["num-gpus"] == "1", path
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], path


def entrypoint_job(command: str) -> tuple[Path, list[str]]:
    """`python /image/path/jobs/X.py FLAGS…` → (the repo's jobs/X.py, FLAGS)."""
    words = shlex.split(command)
    assert words[0] in ("python", "python3"), command
    script = words[1]
    assert script.startswith(f"{IMAGE_WORKDIR}/jobs/") or script.startswith("jobs/"), script
    return REPO / "jobs" / Path(script).name, words[2:]


def test_rayjob_entrypoint_is_a_real_job_with_flags_its_parser_accepts() -> None:
    jobs = [doc for _, doc in kuberay_docs() if doc["kind"] == "RayJob"]
    for doc in jobs:
        script, flags = entrypoint_job(doc["spec"]["entrypoint"])
        assert script.is_file(), script
        config = parse_config(JOB_CONFIGS[script.name], flags, script.name, "")  # raises on an unknown flag
        for uri in (config.input, config.output, config.model):
            assert uri.startswith("s3://"), uri
        # and the job's real --help, in a fresh interpreter, lists every flag used
        shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
        for flag in (w for w in flags if w.startswith("--")):
            assert flag in shown.stdout, flag


# --- container recipe ------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_installs_torch_before_the_project_from_files_that_exist() -> None:
    steps = dockerfile_instructions()
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    base = next(a for op, a in steps if op == "FROM")
    assert "cu" in base or "cuda" in base, f"base image {base!r} has no CUDA"
    import ray
    assert args.get("RAY_VERSION") == ray.__version__

    runs = [a for op, a in steps if op == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_step = next(i for i, r in enumerate(runs) if re.search(r"pip install [^\n]*\s\.(\s|$)", r + " "))
    assert torch_step < project_step
    assert args["TORCH_VERSION"] == "2.13.0"

    copied = [shlex.split(a)[:-1] for op, a in steps if op == "COPY"]
    for sources in copied:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    copied_paths = {s.rstrip("/") for sources in copied for s in sources}
    assert {"pyproject.toml", "jobs", "pipeline", "models", "schemas"} <= copied_paths
    workdir = next(a for op, a in steps if op == "WORKDIR")
    assert workdir == IMAGE_WORKDIR, "the KubeRay entrypoints use this path"


def test_dockerfile_installs_the_dependencies_before_it_copies_the_code() -> None:
    """A code change must not reinstall every dependency: they come from pyproject.toml alone, in a layer of their
    own before any code is copied, and the project's own install adds nothing (--no-deps)."""
    steps = dockerfile_instructions()
    deps = next(i for i, (op, a) in enumerate(steps) if op == "RUN" and "pyproject.toml" in a and "-r" in a)
    assert [a for op, a in steps[:deps] if op == "COPY"] == ["pyproject.toml ./"]
    project = [a for op, a in steps[deps + 1:] if op == "RUN" and re.search(r"pip install .*\s\.$", a)]
    assert project and "--no-deps" in project[0]


def test_airflow_dag_defaults_to_the_job_path_inside_the_image() -> None:
    """The DAG module imports Airflow (not installed here: tests/test_airflow.py runs it); read its constants."""
    import ast

    tree = ast.parse((INFRA / "airflow" / "dags" / "bertbatch_ner.py").read_text(encoding="utf-8"))
    constants = {node.targets[0].id: node.value.value for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                 and isinstance(node.value, ast.Constant)}
    script, _ = entrypoint_job(f"python {constants['IMAGE_JOB_SCRIPT']}")
    assert constants["IMAGE_JOB_SCRIPT"].startswith(IMAGE_WORKDIR) and script.is_file()
    assert constants["DAG_ID"] == "bertbatch_ner"


def test_airflow_task_prints_each_line_of_the_jobs_log_once_as_it_comes(capsys) -> None:
    """`print_new_lines`, run on its own (the DAG module imports Airflow): whole lines while the job runs, the
    rest when it ended, nothing twice."""
    import ast

    tree = ast.parse((INFRA / "airflow" / "dags" / "bertbatch_ner.py").read_text(encoding="utf-8"))
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "print_new_lines")
    scope: dict = {}
    exec(compile(ast.Module([function], []), "bertbatch_ner.py", "exec"), scope)
    print_new_lines = scope["print_new_lines"]
    log = "started\nbertbatch ner: 0 of 9 rows done; 5s"
    printed = print_new_lines(log, 0)
    assert capsys.readouterr().out == "started\n"          # the cut line waits
    assert print_new_lines(log, printed) == printed and capsys.readouterr().out == ""
    log += " into this run\nbertbatch ner: 9 of 9 rows done\ndocuments 9"
    printed = print_new_lines(log, printed)
    assert capsys.readouterr().out == "bertbatch ner: 0 of 9 rows done; 5s into this run\nbertbatch ner: 9 of 9 rows done\n"
    assert print_new_lines(log, printed, last=True) == len(log) and capsys.readouterr().out == "documents 9\n"
