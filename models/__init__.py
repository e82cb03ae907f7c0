"""Plain-PyTorch BERT-family encoders, task heads, checkpoint and tokenizer loading (no `transformers`)."""

from models.config import ConfigError, EncoderConfig
from models.loading import TASKS, CheckpointError, TaskModel, load_model

__all__ = ["TASKS", "CheckpointError", "ConfigError", "EncoderConfig", "TaskModel", "load_model", "load_tokenizer"]


def load_tokenizer(folder):
    """The checkpoint's tokenizer (see models/tokenizer.py)."""
    from models.tokenizer import load_tokenizer as load

    return load(folder)
