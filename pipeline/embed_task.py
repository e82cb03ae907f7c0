"""Embeddings as a pipeline task: each document's window embeddings -> one `embedding` vector.

Pooling, Dense layers and normalisation come from the model's sentence-transformers modules (`--pooling`,
`--normalize/--no-normalize` override them). The default `--max-length` is the folder's
`sentence_bert_config.json` `max_seq_length` (256 for all-MiniLM-L6-v2), as sentence-transformers
truncates; the truncation stored inside `tokenizer.json` (128 there) is never used. Its
`do_lower_case` puts a Lowercase normalizer first in the tokenizer, as sentence-transformers (5) does.
A prompt (`--prompt-name`, `--prompt`, else the model's `default_prompt_name`) goes before every text,
as `encode` puts it; a Pooling with `include_prompt: false` leaves its tokens out of the pooling.
`--truncate-dim` (else the model's `truncate_dim`) keeps the first values of each embedding, as `encode`.
`--long-text truncate` embeds the first window only (only that window is sent to the model);
`mean` embeds every window and takes their token-weighted mean (`embed_decode.combine_windows`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.arrow_nested import flat_lengths, flatten
from pipeline.cli import UsageError
from pipeline.doc_decode import DecodeWindow, DocumentDecode
from pipeline.embed_decode import LONG_TEXT_MODES, combine_windows
from pipeline.job import Feed, ModelInfo, Task, resolve_max_length
from pipeline.stage import STAT_PREFIX, WINDOWS, StageSpec, set_column
from pipeline.tokenize import Tokenize, TokenizeConfig
from schemas.results import EMBEDDING_DTYPES, embedding_field


class FirstWindowTokenize(Tokenize):
    """Tokenize, keeping each document's first window only (`--long-text truncate`): the model never
    sees the windows a truncating embedder would drop."""

    def __call__(self, table: pa.Table) -> pa.Table:
        table = super().__call__(table)
        first = pc.list_slice(table.column(WINDOWS), 0, 1)
        has_window = flat_lengths(first) > 0
        tokens = np.zeros(table.num_rows, dtype=np.int64)
        tokens[has_window] = flat_lengths(flatten(first).field("ids"))
        table = set_column(table, WINDOWS, first)
        table = set_column(table, f"{STAT_PREFIX}windows", pa.array(has_window.astype(np.int32)))
        return set_column(table, f"{STAT_PREFIX}tokens", pa.array(tokens))


@dataclasses.dataclass(frozen=True)
class EmbedDecodeConfig:
    dim: int
    text_column: str = "text"
    long_text: str = "truncate"
    normalize: bool = False             # what the model did per window; the mean of windows is renormalised
    embedding_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.long_text not in LONG_TEXT_MODES:
            raise ValueError(f"long_text={self.long_text!r}: expected one of {', '.join(LONG_TEXT_MODES)}")
        if self.embedding_dtype not in EMBEDDING_DTYPES:
            raise ValueError(f"embedding_dtype={self.embedding_dtype!r}: expected one of "
                             f"{', '.join(EMBEDDING_DTYPES)}")


class EmbedDecode(DocumentDecode):
    @classmethod
    def result_fields(cls, config: EmbedDecodeConfig) -> tuple[pa.Field, ...]:
        return (embedding_field(config.dim, config.embedding_dtype),)

    def decode(self, text: str, windows: list[DecodeWindow]) -> dict:
        embeddings = np.stack([w.outputs[0] for w in windows])          # (W, D)
        counts = np.array([len(w.ids) for w in windows], dtype=np.int64)
        return {"embedding": combine_windows(embeddings, counts, self.config.long_text, self.config.normalize)}

    def to_array(self, field: pa.Field, values: list) -> pa.Array:
        """One (N, D) matrix → fixed_size_list, without a Python float per value."""
        dtype = np.dtype(field.type.value_type.to_pandas_dtype())
        matrix = np.zeros((len(values), self.config.dim), dtype=dtype)
        missing = np.array([v is None for v in values], dtype=bool)
        for i, value in enumerate(values):
            if value is not None:
                matrix[i] = value
        flat = pa.array(matrix.reshape(-1), type=field.type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, type=field.type, mask=pa.array(missing))


def model_pooling(config, folder: str) -> tuple[tuple[str, ...], bool]:
    """(pooling modes, normalize) after the --pooling / --normalize overrides."""
    from models.sentence_transformers import pooling_from_folder

    try:
        modes, normalize = pooling_from_folder(Path(folder))
    except (ValueError, OSError) as error:   # a module or pooling mode we do not run, an unreadable file
        raise UsageError(f"--model {config.model!r}: {error}") from None
    return ((config.pooling,) if config.pooling else modes), (normalize if config.normalize is None else
                                                               config.normalize)


def _feed(config, model: ModelInfo) -> Feed:
    from models.sentence_transformers import do_lower_case, max_seq_length

    try:
        length, lowercase = max_seq_length(Path(model.local)), do_lower_case(Path(model.local))
    except (ValueError, TypeError, OSError) as error:
        raise UsageError(f"--model {config.model!r}: sentence_bert_config.json: {error}") from None
    if config.max_length is None and length:
        config = config.model_copy(update={"max_length": min(length, model.max_tokens)})
    max_length = resolve_max_length(config, model)
    stage = FirstWindowTokenize if config.long_text == "truncate" else Tokenize
    prompt, prompt_tokens = _prompt(config, model, lowercase, max_length)
    tokenize = TokenizeConfig(model.folder, config.text_column, None, max_length, config.stride,
                              lowercase=lowercase, prefix=prompt)
    _, normalize = model_pooling(config, model.local)
    truncate_dim = _truncate_dim(config, model)
    options = (("pooling", config.pooling), ("normalize", normalize), ("prompt_tokens", prompt_tokens),
               ("truncate_dim", truncate_dim))
    identity = []   # what came from config_sentence_transformers.json (the flags are in the options already)
    if prompt and config.prompt is None:
        identity.append(("prompt", prompt))
    if truncate_dim and not config.truncate_dim:
        identity.append(("truncate_dim", truncate_dim))
    return Feed(StageSpec(stage, tokenize), max_length, model_options=options, identity=tuple(identity))


def _settings(config, model: ModelInfo):
    from models.sentence_transformers import encode_settings

    try:
        return encode_settings(Path(model.local))
    except (ValueError, TypeError, AttributeError, OSError) as error:
        raise UsageError(f"--model {config.model!r}: {error}") from None


def _truncate_dim(config, model: ModelInfo) -> int | None:
    """--truncate-dim, else the model's truncate_dim; None where that keeps every value. A flag past the
    embedding's width is refused (sentence-transformers returns the whole embedding); the model's own
    setting past it keeps every value, as in sentence-transformers."""
    width = _width(config, model)
    if config.truncate_dim and config.truncate_dim > width:
        raise UsageError(f"--truncate-dim {config.truncate_dim}: the model's embeddings have {width} values; "
                         f"give at most {width}")
    dim = config.truncate_dim or _settings(config, model).truncate_dim
    return dim if dim and dim < width else None


def _prompt(config, model: ModelInfo, lowercase: bool, max_length: int) -> tuple[str, int]:
    """(the text put before every text, how many first tokens the pooling leaves out: 0 unless the model's
    Pooling says include_prompt=false, then the [CLS] and the prompt's tokens, as sentence-transformers)."""
    from models import load_tokenizer

    found = _settings(config, model)
    name = config.prompt_name if config.prompt is None else None
    if name is not None and name not in found.prompts:
        raise UsageError(f"--prompt-name {name!r}: the model's prompts are {', '.join(map(repr, found.prompts)) or 'none'}"
                         " (config_sentence_transformers.json); give the text with --prompt")
    prompt = config.prompt if config.prompt is not None else found.prompts.get(name or found.default_name or "", "")
    if not prompt or found.include_prompt:
        return prompt, 0
    if config.long_text != "truncate":
        raise UsageError("--long-text mean with a prompt: the model's pooling leaves the prompt's tokens out "
                         "(include_prompt: false), which only the first window has; use --long-text truncate")
    tokenizer = load_tokenizer(Path(model.local), lowercase=lowercase)
    window = tokenizer.encode_windows([prompt], max_length=max_length)[0][0]   # cut as the texts are
    special_last = window.sequence_ids[-1] < 0   # a trailing [SEP] / </s> is not the prompt's
    return prompt, len(window) - int(special_last)


def _width(config, model: ModelInfo) -> int:
    """Values per embedding before any truncate_dim: the pooling's and the Dense layers'."""
    from models.checkpoint import read_config
    from models.sentence_transformers import embedding_width, modules_from_folder

    modes, _ = model_pooling(config, model.local)
    dense = modules_from_folder(Path(model.local))[1]   # read (and checked) by model_pooling already
    try:
        return embedding_width(read_config(Path(model.local))[1].hidden_size, modes, dense)
    except ValueError as error:
        raise UsageError(f"--model {config.model!r}: {error}" + (" (--pooling)" if config.pooling else "")) from None


def _dim(config, model: ModelInfo) -> int:
    return _truncate_dim(config, model) or _width(config, model)


def _decode_spec(config, model: ModelInfo) -> StageSpec:
    _, normalize = model_pooling(config, model.local)
    # A model's Normalize comes before truncate_dim (a cut unit vector is not one); --normalize is encode's
    # normalize_embeddings, after it. What is normalised here is also the mean of several windows.
    truncate_dim = _truncate_dim(config, model)
    normalize = config.normalize is True or (normalize and not truncate_dim)
    return StageSpec(EmbedDecode, EmbedDecodeConfig(truncate_dim or _width(config, model), config.text_column,
                                                    config.long_text, normalize, config.embedding_dtype))


def _fields(config, model: ModelInfo) -> tuple[pa.Field, ...]:
    return (embedding_field(_dim(config, model), config.embedding_dtype),)


EMBED_TASK = Task(name="embed", model_task="embed", decode=_decode_spec, feed=_feed, fields=_fields)
