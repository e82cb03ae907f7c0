"""`transformers` and `sentence_transformers` are test-only: no shipped module may import them."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"transformers", "sentence_transformers"}
# tests/ and bench/ compare against the reference; the rest are environments and build output
SKIPPED_DIRS = {"tests", "bench", ".venv", "venv", "build", "dist", "node_modules", "__pycache__"}


def shipped_python_files() -> list[Path]:
    files = []
    for path in REPO.rglob("*.py"):
        parts = path.relative_to(REPO).parts[:-1]
        if any(part in SKIPPED_DIRS or part.startswith(".") or part.endswith(".egg-info") for part in parts):
            continue
        files.append(path)
    return sorted(files)


def forbidden_imports(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (  # importlib.import_module("transformers") / __import__("transformers")
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno} imports {n}" for n in names
                  if n.split(".")[0] in FORBIDDEN]
    return found


def test_scan_sees_the_packages():
    scanned = {p.relative_to(REPO).parts[0] for p in shipped_python_files()}
    assert "models" in scanned


def test_scanner_catches_every_import_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import transformers\nfrom sentence_transformers import SentenceTransformer\n"
        "import transformers.activations as a\nimport importlib\nimportlib.import_module('transformers')\n"
        "import transformers_stream_generator\nfrom . import transformers\n"
    )
    assert len(forbidden_imports(sample, root=tmp_path)) == 4


def test_no_shipped_module_imports_transformers():
    offenders = [hit for path in shipped_python_files() for hit in forbidden_imports(path)]
    assert not offenders, "transformers is test-only:\n" + "\n".join(offenders)
