"""Checkpoint loading: config.json + weights → a TaskModel, strictly.

One generic loader driven by each family's declarative rules: detect the base-model prefix, fix
legacy names, rename, fuse q/k/v, check every shape, and load strictly — only names on the family's
allow-list (MLM heads, unused poolers, position-id buffers) may be left over.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from models import heads as head_modules
from models.checkpoint import CheckpointError, check_architectures, fingerprint, read_config, weight_files
from models.config import ConfigError, EncoderConfig
from models.encoder import Encoder
from models.heads import NoHead, Pooling, SpanPredictor, TokenClassifier
from models.layers import Int8Linear, pack_for_cpu
from models.registry import Family
from models.sentence_transformers import dense_weights, embedding_width, modules_from_folder

TASKS = ("base", "ner", "classify", "qa", "embed")
_LEGACY = ((re.compile(r"LayerNorm\.gamma$"), "LayerNorm.weight"), (re.compile(r"LayerNorm\.beta$"), "LayerNorm.bias"))
_HEAD_NAMES = {"ner": "token-classification", "classify": "sequence-classification", "qa": "question-answering"}


class TaskModel(nn.Module):
    """Encoder + task head. `forward(input_ids, attention_mask, token_type_ids=None)`, right padding."""

    def __init__(self, family: Family, config: EncoderConfig, head: nn.Module):
        super().__init__()
        offset = config.pad_token_id if family.roberta_positions else None
        if family.roberta_positions and offset is None:
            raise ConfigError("pad_token_id=None: RoBERTa-style positions count from pad_token_id + 1")
        self.encoder = Encoder(config, family.make_mixer, offset)
        self.head = head
        self.config = config
        self.uses_token_type_ids = family.uses_token_type_ids
        self.weight_files: list[Path] = []

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the weight files, when first asked: hashing BERT-base's 440 MB took 0.5 s of
        every model actor's start, and the jobs take the fingerprint from the driver's plan."""
        return fingerprint(self.weight_files)

    @property
    def max_tokens(self) -> int:
        return self.encoder.embeddings.max_tokens

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        return self.forward_batches([(input_ids, attention_mask, token_type_ids)])[0]

    def forward_batches(self, batches: list[tuple[Tensor, Tensor, Tensor | None]]) -> list[Tensor]:
        """Several right-padded batches in one pass (`Encoder.forward_batches`), each through the head."""
        types = self.uses_token_type_ids
        hidden = self.encoder.forward_batches([(ids, mask, t if types else None) for ids, mask, t in batches])
        return [self.head(h, mask) for h, (_, mask, _) in zip(hidden, batches)]


def build_head(family: Family, config: EncoderConfig, task: str, folder: Path,
               pooling: str | None, normalize: bool | None, prompt_tokens: int = 0,
               truncate_dim: int | None = None) -> nn.Module:
    if task == "embed":
        modes, dense, norm = modules_from_folder(folder)
        modes = (pooling,) if pooling else modes
        try:
            embedding_width(config.hidden_size, modes, dense)
        except ValueError as error:
            raise CheckpointError(f"{folder}: {error}") from None
        return Pooling(modes, norm if normalize is None else normalize, prompt_tokens, truncate_dim,
                       tuple((d.in_features, d.out_features, d.bias, d.activation) for d in dense))
    heads = {"base": NoHead, "ner": TokenClassifier, "classify": getattr(head_modules, family.classifier),
             "qa": SpanPredictor}
    if task not in heads:
        raise ValueError(f"task={task!r}: expected one of {', '.join(TASKS)}")
    return heads[task](config) if task != "base" else NoHead()


def load_model(folder: str | Path, task: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               pooling: str | None = None, normalize: bool | None = None, prompt_tokens: int = 0,
               truncate_dim: int | None = None) -> TaskModel:
    """`pooling`, `normalize`: overrides of an embedding model's modules; `prompt_tokens`: first tokens its
    pooling leaves out (a prompt, when its Pooling has include_prompt=false); `truncate_dim`: values kept."""
    folder = Path(folder)
    family, config = read_config(folder)
    check_architectures(config, task)
    with torch.device("meta"):
        model = TaskModel(family, config, build_head(family, config, task, folder, pooling, normalize, prompt_tokens,
                                                                truncate_dim))
    files = weight_files(folder)
    weights = read_weights(files)
    names = Names(family, list(weights))
    state, origin, optional = rename(names, weights)
    expected = model.state_dict().keys()
    for name in [k for k in state if k not in expected]:
        if name in optional or (task in ("base", "embed") and name.startswith("head.")):
            del state[name]   # MLM heads, unused poolers, buffers; any task head when embedding
    if task == "embed":   # a sentence-transformers Dense layer keeps its weights in its own folder
        for i, layer in enumerate(modules_from_folder(folder)[1]):
            for name, tensor in read_weights([dense_weights(layer)]).items():
                state[f"head.dense.{i}.{name}"] = tensor
                origin[f"head.dense.{i}.{name}"] = f"{layer.folder.name}/{name}"
    if family.fill_missing:
        family.fill_missing(state, config)
    check_state(model, state, names, origin, task, config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.weight_files = files
    model = model.to(device).eval().requires_grad_(False)
    if torch.device(device).type == "cpu":
        pack_for_cpu(model, dtype)
    return model


def quantize_int8(model: TaskModel) -> TaskModel:
    """CPU fast mode: the encoder's linear layers with int8 weights and per-batch int8 activations
    (`layers.Int8Linear`); the head, the embeddings and ConvBERT's grouped layers stay fp32."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
        for parent in list(model.encoder.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(child))
    return model


def read_weights(files: list[Path]) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            state.update(load_file(path))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{n}"), r"(?P<n>\d+)"))


def translate(name: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    """Apply the first rule whose prefix template matches; None when none does."""
    for pattern, target in rules:
        m = pattern.match(name)
        if m:
            return target.replace("{n}", m.groupdict().get("n") or "") + name[m.end():]
    return None


class Names:
    """Translation between checkpoint names and ours, both ways, for loading and for error messages."""

    def __init__(self, family: Family, checkpoint_names: list[str]):
        self.family = family
        self.prefixed = any(k.startswith(family.prefix) for k in checkpoint_names)
        self.forward = [(_compile(ckpt), ours) for ckpt, ours in family.renames]
        self.backward = [(_compile(ours), ckpt) for ckpt, ours in family.renames]
        self.droppable = [re.compile(p) for p in family.droppable]

    def ours(self, name: str) -> tuple[str, bool]:
        """(our name, whether the family may leave it unused) for a checkpoint name."""
        for pattern, fixed in _LEGACY:
            name = pattern.sub(fixed, name)
        if self.prefixed and name.startswith(self.family.prefix):
            name = name[len(self.family.prefix):]
        return translate(name, self.forward) or name, any(p.search(name) for p in self.droppable)

    def checkpoint(self, ours: str) -> str:
        """The checkpoint name a tensor of ours would have in this checkpoint."""
        name = translate(ours, self.backward) or ours
        top_level = not ours.startswith("encoder.") and not name.startswith("pooler.")
        return name if top_level or not self.prefixed else self.family.prefix + name


def rename(names: Names, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], set[str]]:
    """Checkpoint → our names; also our name → checkpoint name, and ours the family may leave unused."""
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    optional: set[str] = set()
    for name, tensor in state.items():
        new, droppable = names.ours(name)
        out[new], origin[new] = tensor, name
        if droppable:
            optional.add(new)
    return fuse_qkv(out, origin, names.family.qkv_names), origin, optional


def fuse_qkv(state: dict[str, Tensor], origin: dict[str, str], parts: tuple[str, str, str]) -> dict[str, Tensor]:
    """Replace complete query/key/value triples by one `qkv` tensor; incomplete ones stay for the report."""
    pattern = re.compile(rf"^(.*\.mixer)\.({'|'.join(parts)})\.(weight|bias)$")
    groups: dict[tuple[str, str], set[str]] = {}
    for key in state:
        m = pattern.match(key)
        if m:
            groups.setdefault((m[1], m[3]), set()).add(m[2])
    for (module, kind), found in groups.items():
        if len(found) == 3:
            names = [f"{module}.{p}.{kind}" for p in parts]
            state[f"{module}.qkv.{kind}"] = torch.cat([state.pop(n) for n in names])
            origin[f"{module}.qkv.{kind}"] = ", ".join(origin[n] for n in names)
    return state


def check_state(model: nn.Module, state: dict[str, Tensor], names: Names, origin: dict[str, str],
                task: str, config: EncoderConfig) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    for fused in [k for k in missing if ".qkv." in k]:      # report which of q/k/v is absent instead
        present = {k for k in unexpected if k.startswith(fused.split(".qkv.")[0] + ".")}
        parts = [fused.replace(".qkv.", f".{p}.") for p in names.family.qkv_names]
        missing |= {p for p in parts if p not in present}
        missing.discard(fused)
        unexpected -= present
    misshaped = sorted(f"{origin[k]} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
                       for k in set(expected) & set(state) if state[k].shape != expected[k])
    if not (missing or unexpected or misshaped):
        return
    if missing and all(k.startswith("head.") for k in missing) and task in _HEAD_NAMES:
        raise CheckpointError(
            f"this checkpoint has no {_HEAD_NAMES[task]} head for task {task!r}: head weights missing "
            f"({', '.join(sorted(names.checkpoint(k) for k in missing))}); "
            f"its architectures: {list(config.architectures) or 'not stated'}")
    report = [("missing", sorted(names.checkpoint(k) for k in missing)),
              ("unexpected", sorted(origin.get(k, k) for k in unexpected)), ("misshaped", misshaped)]
    available = sorted(n for v in origin.values() for n in v.split(", "))
    shown = ", ".join(available[:30]) + (f", … ({len(available)} in all)" if len(available) > 30 else "")
    raise CheckpointError("checkpoint does not match the model — "
                          + "; ".join(f"{label}: {', '.join(items)}" for label, items in report if items)
                          + f". Available in the checkpoint: {shown}")
