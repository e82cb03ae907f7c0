"""A checkpoint folder read without torch: its config (family and encoder settings), weight files, fingerprint.

The driver checks a model with these before any Ray work; the weights are read by `models.loading`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from models.config import EncoderConfig
from models.registry import Family, family_for

# What besides the weights decides a model's results: its config, tokenizer and sentence-transformers files.
SETTINGS_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "modules.json",
                  "sentence_bert_config.json", "1_Pooling/config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


_HEAD_CLASSES = {"ner": ("ForTokenClassification", "token-classification"),
                 "classify": ("ForSequenceClassification", "sequence-classification"),
                 "qa": ("ForQuestionAnswering", "question-answering")}


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


def check_architectures(config: EncoderConfig, task: str) -> None:
    """A checkpoint whose config.json names only another task's head class is refused: BERT's token and
    sequence classifiers share their weight names and shapes, so the weights alone cannot tell."""
    others = [suffix for t, (suffix, _) in _HEAD_CLASSES.items() if t != task]
    if task in _HEAD_CLASSES and config.architectures and all(
            any(a.endswith(suffix) for suffix in others) for a in config.architectures):
        raise CheckpointError(f"this checkpoint is a {', '.join(config.architectures)} (config.json architectures): "
                              f"task {task!r} needs a {_HEAD_CLASSES[task][1]} head")


def settings_fingerprint(folder: Path, names: tuple[str, ...] = SETTINGS_FILES) -> str:
    """sha256 of the folder's files of these names (names and contents); by default SETTINGS_FILES: with
    the weights' fingerprint, what a restart compares (another label map or tokenizer beside the same
    weights gives other results)."""
    from models.sentence_transformers import dense_identity

    digest = hashlib.sha256()
    for name in names:
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    if names == SETTINGS_FILES and (dense := dense_identity(Path(folder))):
        digest.update(b"dense\0" + dense + b"\0")   # a sentence-transformers Dense layer's files
    return digest.hexdigest()
