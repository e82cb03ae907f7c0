"""A checkpoint folder read without torch: its config (family and encoder settings), weight files, fingerprint.

The driver checks a model with these before any Ray work; the weights are read by `models.loading`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from models.config import EncoderConfig
from models.registry import Family, family_for

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint folder we cannot load exactly; the message names the files or tensors at fault."""


def read_config(folder: Path) -> tuple[Family, EncoderConfig]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (is this a Hugging Face checkpoint folder?)")
    raw = json.loads(path.read_text(encoding="utf-8"))
    try:
        family = family_for(raw.get("model_type", ""))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    unknown = [a for a in raw.get("architectures") or () if a not in family.supported_architectures()]
    if unknown:
        raise CheckpointError(f"{path}: architectures {unknown} not supported; supported are "
                              f"{', '.join(family.supported_architectures())}")
    return family, family.parse_config(raw)


def weight_files(folder: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{path}: shards missing from the folder: {', '.join(missing)}")
            return [folder / s for s in shards]
        return [path]
    raise CheckpointError(f"{folder}: no weights; looked for {', '.join(WEIGHT_FILES)}")


def fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()
