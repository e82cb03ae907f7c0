"""Plain-PyTorch BERT-family encoders, task heads, checkpoint and tokenizer loading (no `transformers`).

The names below load on first use: the tokenizer side (models.tokenizer, models.config) does not
import torch, so the processes that only tokenize, decode or plan do not pay torch's import (≈ 1.6 s).
"""

import importlib

_WHERE = {
    "ConfigError": "models.config", "EncoderConfig": "models.config",
    "TASKS": "models.loading", "CheckpointError": "models.checkpoint", "TaskModel": "models.loading",
    "load_model": "models.loading",
    "Tokenizer": "models.tokenizer", "Window": "models.tokenizer", "WindowError": "models.tokenizer",
    "load_tokenizer": "models.tokenizer",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
