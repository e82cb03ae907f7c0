"""Reading a sentence-transformers folder: modules.json, its Pooling, Dense and Normalize modules, and what
`encode` applies from config_sentence_transformers.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

# sentence-transformers' legacy flags, in the order it concatenates their vectors
_MODE_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
DEFAULT_POOLING = ("mean",)   # the portable default: BERT's [CLS] is a poor summary without fine-tuning


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
    """What sentence-transformers' `encode` applies from config_sentence_transformers.json: its prompts (name ->
    text put before every text), the one used by default, `truncate_dim`; and whether pooling takes the
    prompt's tokens in (the Pooling config's `include_prompt`)."""
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    default_name: str | None = None
    truncate_dim: int | None = None
    include_prompt: bool = True


def _read(path: Path) -> dict | list:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclasses.dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers Dense module after the pooling: activation(linear(embedding))."""
    folder: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str   # a name of models.layers.activation (DENSE_ACTIVATIONS' values)


DENSE_ACTIVATIONS = {"torch.nn.modules.activation.Tanh": "tanh", "torch.nn.modules.linear.Identity": "linear",
                     "torch.nn.modules.activation.ReLU": "relu", "torch.nn.modules.activation.GELU": "gelu",
                     "torch.nn.modules.activation.Sigmoid": "sigmoid"}


def pooling_from_folder(folder: Path) -> tuple[tuple[str, ...], bool]:
    """(pooling modes, normalize) as the folder's sentence-transformers modules say; mean, no L2 otherwise."""
    modes, _, normalize = modules_from_folder(folder)
    return modes, normalize


def modules_from_folder(folder: Path) -> tuple[tuple[str, ...], tuple[DenseLayer, ...], bool]:
    """(pooling modes, Dense layers after it, normalize): the modules sentence-transformers runs after the
    transformer, in its order (Transformer, Pooling, Dense..., Normalize); mean, none, no L2 without them."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return DEFAULT_POOLING, (), False
    modes, dense, normalize = DEFAULT_POOLING, [], False
    for module in _read(modules_path):
        kind = module.get("type", "").rsplit(".", 1)[-1]
        path = folder / module.get("path", "")
        if normalize and kind != "Normalize":
            raise ValueError(f"{modules_path}: a {kind} module after Normalize is not supported")
        if kind == "Transformer":
            if module.get("path", "") not in ("", "."):
                raise ValueError(f"{modules_path}: the transformer lives in {path}; point --model there")
        elif kind == "Pooling":
            modes = _pooling_modes(path / "config.json")
        elif kind == "Dense":
            dense.append(_dense(path))
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(f"{modules_path}: module type {module.get('type')!r} is not supported "
                             "(supported: Transformer, Pooling, Dense, Normalize)")
    return modes, tuple(dense), normalize


def _dense(folder: Path) -> DenseLayer:
    path = folder / "config.json"
    config = _read(path)
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if activation not in DENSE_ACTIVATIONS:
        raise ValueError(f"{path}: activation_function {activation!r} is not supported "
                         f"(supported: {', '.join(DENSE_ACTIVATIONS)})")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") != "sentence_embedding":
            raise ValueError(f"{path}: {key} {config[key]!r}: only a Dense layer on the sentence embedding is supported")
    return DenseLayer(folder, int(config["in_features"]), int(config["out_features"]), bool(config.get("bias", True)),
                      DENSE_ACTIVATIONS[activation])


def embedding_width(hidden_size: int, modes: tuple[str, ...], dense: tuple[DenseLayer, ...]) -> int:
    """Values per embedding before `truncate_dim`: the pooled modes, then each Dense layer, which must fit."""
    width, source = hidden_size * len(modes), f"the pooling ({', '.join(modes)})"
    for layer in dense:
        if layer.in_features != width:
            raise ValueError(f"its Dense layer {layer.folder.name} takes {layer.in_features} values, {source} "
                             f"gives {width}")
        width, source = layer.out_features, "the Dense layer before it"
    return width


def dense_weights(layer: DenseLayer) -> Path:
    """The Dense layer's weight file (`linear.weight`, `linear.bias`)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (layer.folder / name).is_file():
            return layer.folder / name
    raise FileNotFoundError(f"{layer.folder}: no model.safetensors or pytorch_model.bin for its Dense layer")


def _pooling_modes(path: Path) -> tuple[str, ...]:
    """Modes in the order sentence-transformers concatenates them: `pooling_mode` (a name or a list; version
    5 on), else the legacy `pooling_mode_*` flags (none set: mean, as sentence-transformers falls back)."""
    config = _read(path)
    mode = config.get("pooling_mode")
    if mode is None:
        return tuple(name for key, name in _MODE_KEYS.items() if config.get(key)) or ("mean",)
    modes = tuple([mode] if isinstance(mode, str) else mode)
    if not modes:
        raise ValueError(f"{path}: pooling_mode is empty")
    return modes


def encode_settings(folder: Path) -> EncodeSettings:
    """The folder's EncodeSettings (none, if it has no such files)."""
    path = folder / "config_sentence_transformers.json"
    config = _read(path) if path.is_file() else {}
    include = True
    modules_path = folder / "modules.json"
    for module in _read(modules_path) if modules_path.is_file() else []:
        pooling = folder / module.get("path", "") / "config.json"
        if module.get("type", "").endswith(".Pooling") and pooling.is_file():
            include = bool(_read(pooling).get("include_prompt", True))
    prompts = {str(k): "" if v is None else str(v) for k, v in (config.get("prompts") or {}).items()}
    truncate_dim = config.get("truncate_dim")
    found = EncodeSettings(prompts, config.get("default_prompt_name"),
                           int(truncate_dim) if truncate_dim is not None else None, include)
    if found.default_name is not None and found.default_name not in found.prompts:
        raise ValueError(f"{path}: default_prompt_name {found.default_name!r} is not one of its prompts "
                         f"({', '.join(found.prompts) or 'none'})")
    return found


def dense_identity(folder: Path) -> bytes:
    """sha256 of each Dense layer's config and weights, for the model's settings fingerprint (they change
    the embeddings; their weights are not among the model's weight files); empty without Dense layers."""
    try:
        layers = modules_from_folder(folder)[1]
        files = [f for layer in layers for f in (layer.folder / "config.json", dense_weights(layer))]
    except (ValueError, TypeError, KeyError, AttributeError, OSError):
        return b""   # the embed task refuses such a folder; other tasks do not read it
    return " ".join(hashlib.sha256(f.read_bytes()).hexdigest() for f in files).encode()


def _bert_config(folder: Path) -> dict:
    path = Path(folder) / "sentence_bert_config.json"
    return _read(path) if path.is_file() else {}


def max_seq_length(folder: Path) -> int | None:
    """sentence_bert_config.json's max_seq_length (e.g. 256 for all-MiniLM-L6-v2), if the folder has one."""
    value = _bert_config(folder).get("max_seq_length")
    return int(value) if value is not None else None


def do_lower_case(folder: Path) -> bool:
    """sentence_bert_config.json's do_lower_case: sentence-transformers puts a Lowercase normalizer first
    in the tokenizer (special tokens stay as they are)."""
    return bool(_bert_config(folder).get("do_lower_case", False))
