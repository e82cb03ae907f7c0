"""Reading a sentence-transformers folder: modules.json, its Pooling config and Normalize module."""

from __future__ import annotations

import json
from pathlib import Path

_MODE_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_UNSUPPORTED_MODES = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
DEFAULT_POOLING = ("mean",)   # the portable default: BERT's [CLS] is a poor summary without fine-tuning


def _read(path: Path) -> dict | list:
    return json.loads(path.read_text(encoding="utf-8"))


def pooling_from_folder(folder: Path) -> tuple[tuple[str, ...], bool]:
    """(pooling modes, normalize) as the folder's sentence-transformers modules say; mean, no L2 otherwise."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return DEFAULT_POOLING, False
    modes, normalize = DEFAULT_POOLING, False
    for module in _read(modules_path):
        kind = module.get("type", "").rsplit(".", 1)[-1]
        path = folder / module.get("path", "")
        if kind == "Transformer":
            if module.get("path", "") not in ("", "."):
                raise ValueError(f"{modules_path}: the transformer lives in {path}; point --model there")
        elif kind == "Pooling":
            modes = _pooling_modes(path / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(f"{modules_path}: module type {module.get('type')!r} is not supported "
                             "(supported: Transformer, Pooling, Normalize)")
    return modes, normalize


def _pooling_modes(path: Path) -> tuple[str, ...]:
    config = _read(path)
    for key in _UNSUPPORTED_MODES:
        if config.get(key):
            raise ValueError(f"{path}: {key} is not supported (supported: {', '.join(_MODE_KEYS)})")
    modes = tuple(mode for key, mode in _MODE_KEYS.items() if config.get(key))
    if not modes:
        raise ValueError(f"{path}: no pooling mode is set")
    return modes


def _bert_config(folder: Path) -> dict:
    path = Path(folder) / "sentence_bert_config.json"
    return _read(path) if path.is_file() else {}


def max_seq_length(folder: Path) -> int | None:
    """sentence_bert_config.json's max_seq_length (e.g. 256 for all-MiniLM-L6-v2), if the folder has one."""
    value = _bert_config(folder).get("max_seq_length")
    return int(value) if value is not None else None


def do_lower_case(folder: Path) -> bool:
    """sentence_bert_config.json's do_lower_case: sentence-transformers lowercases every text before its tokenizer."""
    return bool(_bert_config(folder).get("do_lower_case", False))
