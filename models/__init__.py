"""Plain-PyTorch BERT-family encoders, task heads, checkpoint and tokenizer loading (no `transformers`)."""

from models.config import ConfigError, EncoderConfig
from models.loading import TASKS, CheckpointError, TaskModel, load_model
from models.tokenizer import Tokenizer, Window, WindowError, load_tokenizer

__all__ = [
    "TASKS", "CheckpointError", "ConfigError", "EncoderConfig", "TaskModel", "Tokenizer", "Window",
    "WindowError", "load_model", "load_tokenizer",
]
