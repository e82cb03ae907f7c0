"""Tokenizers with Hugging Face *fast*-tokenizer parity, built on the `tokenizers` (Rust) library.

`load_tokenizer(folder)` builds the same backend `transformers.AutoTokenizer` would: `tokenizer.json`
as stored, else a WordPiece (`vocab.txt`, as `BertTokenizerFast`) or byte-level BPE (`vocab.json` +
`merges.txt`, as `RobertaTokenizerFast`) built the way transformers' `convert_slow_tokenizer` does,
then the edits the fast tokenizer classes make from `tokenizer_config.json` in their `__init__`.
`encode_windows` returns what the fast tokenizer returns with `truncation=True`, `stride` and
`return_overflowing_tokens=True`: the main encoding followed by its overflowing windows, cut from
the side the tokenizer truncates (`truncation_side`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import BPE, WordPiece

# transformers writes VERY_LARGE_INTEGER (int(1e30)) as model_max_length when no limit is known.
_UNSET_MAX_LENGTH = int(1e29)

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}
# RobertaTokenizerFast turns a plain-string mask token into one that swallows the space before it.
_ROBERTA_MASK = {"lstrip": True, "rstrip": False, "normalized": False}
_ROBERTA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                     "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}

# Fast classes whose __init__ rebuilds the BertNormalizer from do_lower_case / strip_accents /
# tokenize_chinese_chars, and those that rebuild the post-processor from add_prefix_space / trim_offsets.
_BERT_LIKE = {"Bert", "DistilBert", "ConvBert", "Electra", "MobileBert", "SqueezeBert", "LayoutLM",
              "Funnel", "Lxmert", "Realm", "RetriBert"}
_ROBERTA_LIKE = {"Roberta", "Longformer", "Bart", "Mvp", "Blenderbot", "LED", "LayoutLMv3"}
# SentencePiece classes of the RoBERTa layout: RoBERTa's special tokens, their own mask token (and
# CamemBERT's unused extra tokens), no rebuilt normaliser or post-processor.
_MASK_LSTRIP = {"XLMRoberta": {"lstrip": True, "rstrip": False, "normalized": True},
                "Camembert": {"lstrip": True, "rstrip": False, "normalized": False}}
_CAMEMBERT_EXTRA = ["<s>NOTUSED", "</s>NOTUSED", "<unk>NOTUSED"]
# Fast classes whose model_input_names leave token_type_ids out: the HF pipelines give their models
# none (type 0 everywhere), whatever the backend's encodings say (XLM-R's windows after the first
# give a pair's second text type 1, past its one-row type embedding).
_NO_TYPE_IDS = _ROBERTA_LIKE | set(_MASK_LSTRIP) | {"DistilBert"}
_MODEL_TYPE_CLASS = {"bert": "Bert", "distilbert": "DistilBert", "convbert": "ConvBert", "roberta": "Roberta",
                     "xlm-roberta": "XLMRoberta", "camembert": "Camembert"}


@dataclass(eq=False)
class Window:
    """One encoded window; arrays have one entry per token, special tokens included."""

    ids: np.ndarray  # int32[T]
    type_ids: np.ndarray  # int8[T]
    offsets: np.ndarray  # int32[T, 2], code point offsets into the text the token came from
    sequence_ids: np.ndarray  # int8[T]: -1 special token, 0 first text, 1 second text
    word_ids: np.ndarray  # int32[T]: -1 special token

    def __len__(self) -> int:
        return len(self.ids)


class WindowError(ValueError):
    """A document that cannot be windowed with the requested max_length / stride; `index` names it."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


class Tokenizer:
    def __init__(self, backend: RustTokenizer, settings: dict):
        backend.no_truncation()  # a stored truncation (all-MiniLM-L6-v2: 128) must not cap our windows
        backend.no_padding()
        self._backend = backend
        self._windowers: dict[tuple[int, int, str], RustTokenizer] = {}
        # A serialised backend (to_str, pickle) loses this flag: every copy gets it again.
        self._split_special = bool(settings.get("split_special_tokens", False))
        backend.encode_special_tokens = self._split_special
        self.type_ids = "token_type_ids" in settings["model_input_names"]
        self.truncation_side: str = settings.get("truncation_side", "right")
        self.padding_side: str = settings.get("padding_side", "right")
        for name in ("truncation_side", "padding_side"):
            if getattr(self, name) not in ("right", "left"):
                raise ValueError(f"{name}={getattr(self, name)!r} in tokenizer_config.json: expected 'right' or 'left'")
        limit = settings.get("model_max_length")
        self.model_max_length: int | None = int(limit) if limit is not None and limit < _UNSET_MAX_LENGTH else None
        self.pad_id, self.unk_id, self.cls_id = (self._special_id(settings, key)
                                                 for key in ("pad_token", "unk_token", "cls_token"))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_windowers": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._backend.encode_special_tokens = self._split_special

    def _special_id(self, settings: dict, key: str) -> int | None:
        token = settings.get(key)
        return self._backend.token_to_id(_content(token)) if token is not None else None

    @property
    def continuing_subword_prefix(self) -> str | None:
        model = self._backend.model
        prefix = model.continuing_subword_prefix if isinstance(model, (WordPiece, BPE)) else None
        return prefix or None

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def id_to_token(self, token_id: int) -> str:
        token = self._backend.id_to_token(int(token_id))
        if token is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary (ids 0..{self.vocab_size - 1})")
        return token

    def encode_windows(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        max_length: int = 512,
        stride: int = 0,
    ) -> list[list[Window]]:
        """Windows of every document; with `pairs`, texts[i] (the question) is repeated in each window."""
        _check_strings("texts", texts)
        if not isinstance(max_length, (int, np.integer)) or not isinstance(stride, (int, np.integer)) or stride < 0:
            raise ValueError(f"max_length={max_length!r}, stride={stride!r}: expected integers, stride >= 0")
        max_length, stride = int(max_length), int(stride)
        specials = self._backend.num_special_tokens_to_add(pairs is not None)
        if pairs is None:
            usable = max_length - specials
            if usable < 1 or stride >= usable:
                raise ValueError(
                    f"max_length={max_length} leaves {usable} tokens per window after {specials} special tokens;"
                    f" it must leave at least 1 and more than stride={stride}"
                )
            inputs, strategy = list(texts), "longest_first"
        else:
            _check_strings("pairs", pairs)
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs: expected one pair per text")
            self._check_first_texts(texts, pairs, max_length - specials, stride)
            inputs, strategy = list(zip(texts, pairs)), "only_second"
        if not inputs:
            return []
        encodings = self._windower(max_length, stride, strategy).encode_batch(inputs, add_special_tokens=True)
        return [[_to_window(e, self.type_ids) for e in (enc, *enc.overflowing)] for enc in encodings]

    def _check_first_texts(self, firsts: Sequence[str], seconds: Sequence[str], room: int, stride: int) -> None:
        # The Rust truncation panics (not a Python error) when a pair must be cut and the second
        # text would get <= stride tokens per window; a pair that fits needs no room for a stride.
        unique = list(dict.fromkeys(firsts))
        lengths = dict(zip(unique, _lengths(self._backend, unique)))
        for index, first in enumerate(firsts):
            usable = room - lengths[first]
            if usable <= stride and _lengths(self._backend, [seconds[index]])[0] > usable:
                raise WindowError(
                    index,
                    f"the first text has {lengths[first]} tokens, leaving {usable} per window for"
                    f" the second text after the special tokens; it must leave more than stride={stride}",
                )

    def _windower(self, max_length: int, stride: int, strategy: str) -> RustTokenizer:
        # One configured copy per setting: truncation lives on the Rust object, and changing it while
        # another thread encodes (the GIL is released) would fail, so the shared backend never changes.
        key = (max_length, stride, strategy)
        if key not in self._windowers:
            windower = RustTokenizer.from_str(self._backend.to_str())
            windower.encode_special_tokens = self._split_special
            windower.enable_truncation(max_length, stride=stride, strategy=strategy, direction=self.truncation_side)
            self._windowers[key] = windower
        return self._windowers[key]


def tokenizer_family(folder: Path) -> str:
    """The fast tokenizer class the folder loads as ("Bert", "DistilBert", "Roberta", ...): tokenizer_config.json's
    `tokenizer_class`, else config.json's model type (it decides, e.g., whether pairs get token type ids)."""
    class_name = _read_json(folder / "tokenizer_config.json").get("tokenizer_class") or _MODEL_TYPE_CLASS.get(
        _read_json(folder / "config.json").get("model_type"), ""
    )
    return class_name.removesuffix("Fast").removesuffix("Tokenizer")


def load_tokenizer(folder: str | Path, lowercase: bool = False) -> Tokenizer:
    """The folder's tokenizer as `PreTrainedTokenizerFast` loads it; `lowercase` puts a Lowercase normalizer
    first, as sentence-transformers does for `do_lower_case` (special tokens stay as they are)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist or is not a directory")
    settings = _read_json(folder / "tokenizer_config.json")
    family = tokenizer_family(folder)
    stored_padding = stored_truncation = None
    if (folder / "tokenizer.json").is_file():
        backend = RustTokenizer.from_file(str(folder / "tokenizer.json"))
        stored_padding, stored_truncation = backend.padding, backend.truncation
        specials = _special_tokens(folder, settings, family)
    elif (folder / "vocab.txt").is_file():
        family = "Bert"
        specials = _special_tokens(folder, settings, family)
        backend = _wordpiece(folder, settings, specials)
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        family = "Roberta"
        specials = _special_tokens(folder, settings, family)
        backend = _byte_level_bpe(folder, settings, specials)
    else:
        raise FileNotFoundError(
            f"no tokenizer in {folder}: looked for tokenizer.json, vocab.txt (WordPiece), vocab.json + merges.txt (BPE)"
        )
    _apply_fast_class_edits(backend, settings, family)
    _add_special_tokens(backend, settings, specials)
    if lowercase and not _lowercases(backend.normalizer):
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), *_steps(backend.normalizer)])
    # As PreTrainedTokenizerFast: tokenizer_config.json's sides and pad token, else those stored in the
    # tokenizer.json (whose lengths never cap our windows).
    default_inputs = ["input_ids", "attention_mask"] + ([] if family in _NO_TYPE_IDS else ["token_type_ids"])
    stored = {"model_input_names": default_inputs}
    if stored_truncation:
        stored["truncation_side"] = stored_truncation["direction"]
    if stored_padding:
        stored.update(padding_side=stored_padding["direction"], pad_token=stored_padding["pad_token"])
    return Tokenizer(backend, {**stored, **settings, **specials})


def _lowercases(normalizer) -> bool:
    return any(isinstance(step, normalizers.Lowercase) for step in _steps(normalizer))


def _steps(normalizer) -> list:
    if normalizer is None:
        return []
    return list(normalizer) if isinstance(normalizer, normalizers.Sequence) else [normalizer]


def _wordpiece(folder: Path, settings: dict, specials: dict) -> RustTokenizer:
    vocab: dict[str, int] = {}
    with open(folder / "vocab.txt", encoding="utf-8") as lines:  # as transformers' load_vocab
        for index, line in enumerate(lines):
            vocab[line.rstrip("\n")] = index
    unk, cls, sep = (_content(specials[k]) for k in ("unk_token", "cls_token", "sep_token"))
    backend = RustTokenizer(WordPiece(vocab, unk_token=unk, continuing_subword_prefix="##", max_input_chars_per_word=100))
    backend.normalizer = _bert_normalizer(settings)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = (_vocab_id(vocab, token, folder / "vocab.txt") for token in (cls, sep))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _byte_level_bpe(folder: Path, settings: dict, specials: dict) -> RustTokenizer:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    # As RobertaTokenizer: the first line ("#version") and the last (empty) line are skipped unread.
    merge_lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")[1:-1]
    merges = list(dict.fromkeys(tuple(line.split()) for line in merge_lines))
    backend = RustTokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                end_of_word_suffix="", fuse_unk=False))
    add_prefix_space = bool(settings.get("add_prefix_space", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    cls, sep = (_content(specials[k]) for k in ("cls_token", "sep_token"))
    backend.post_processor = processors.RobertaProcessing(  # by position, as below
        (sep, _vocab_id(vocab, sep, folder / "vocab.json")),
        (cls, _vocab_id(vocab, cls, folder / "vocab.json")),
        add_prefix_space=add_prefix_space,
        trim_offsets=True,  # overridden from tokenizer_config.json in _apply_fast_class_edits
    )
    return backend


def _bert_settings(settings: dict) -> dict:
    return {"handle_chinese_chars": bool(settings.get("tokenize_chinese_chars", True)),
            "strip_accents": settings.get("strip_accents"), "lowercase": bool(settings.get("do_lower_case", True))}


def _bert_normalizer(settings: dict) -> normalizers.BertNormalizer:
    return normalizers.BertNormalizer(clean_text=True, **_bert_settings(settings))


def _apply_fast_class_edits(backend: RustTokenizer, settings: dict, family: str) -> None:
    """What the fast classes' __init__ changes in a backend, with the classes' own defaults."""
    if family in _BERT_LIKE and backend.normalizer is not None:
        # A stored normaliser with other case / accent / Chinese settings is rebuilt with the config's
        # (its other fields, e.g. clean_text, kept).
        state = json.loads(backend.normalizer.__getstate__())
        wanted = _bert_settings(settings)
        if any(key in state and state[key] != value for key, value in wanted.items()):
            backend.normalizer = getattr(normalizers, state.pop("type"))(**{**state, **wanted})
    if family in _ROBERTA_LIKE and backend.post_processor is not None:
        state = json.loads(backend.post_processor.__getstate__())
        if "add_prefix_space" in state or "trim_offsets" in state:
            state.update(add_prefix_space=bool(settings.get("add_prefix_space", False)),
                         trim_offsets=bool(settings.get("trim_offsets", True)))
            kind = state.pop("type")
            if kind == "RobertaProcessing":  # sep and cls by position: tokenizers 0.23 renamed `cls` to `cls_token`
                sep, cls = (tuple(state.pop(k)) for k in ("sep", "cls"))
                backend.post_processor = processors.RobertaProcessing(sep, cls, **state)
            else:
                backend.post_processor = getattr(processors, kind)(**state)
    # PreTrainedTokenizerFast (every class) forces the pre-tokenizer's add_prefix_space to the config's.
    if backend.pre_tokenizer is not None:
        state = json.loads(backend.pre_tokenizer.__getstate__())
        if "add_prefix_space" in state:
            state["add_prefix_space"] = bool(settings.get("add_prefix_space", False))
            backend.pre_tokenizer = getattr(pre_tokenizers, state.pop("type"))(**state)


def _special_tokens(folder: Path, settings: dict, family: str) -> dict:
    """Class defaults < tokenizer_config.json < special_tokens_map.json, as from_pretrained merges them."""
    roberta_layout = family in _ROBERTA_LIKE or family in _MASK_LSTRIP
    specials = dict(_BERT_SPECIALS if family in _BERT_LIKE else _ROBERTA_SPECIALS if roberta_layout else {})
    if family == "Camembert":
        specials["additional_special_tokens"] = _CAMEMBERT_EXTRA
    for source in (settings, _read_json(folder / "special_tokens_map.json")):
        specials.update({k: v for k, v in source.items() if k in _SPECIAL_KEYS and v is not None})
        if source.get("additional_special_tokens"):
            specials["additional_special_tokens"] = source["additional_special_tokens"]
    if roberta_layout and isinstance(specials.get("mask_token"), str):
        specials["mask_token"] = {"content": specials["mask_token"], **_MASK_LSTRIP.get(family, _ROBERTA_MASK)}
    return specials


def _add_special_tokens(backend: RustTokenizer, settings: dict, specials: dict) -> None:
    """As PreTrainedTokenizerFast.__init__: tokenizer_config.json's added_tokens_decoder by index (an
    entry whose flags differ from the backend's token of that content replaces it), then the special
    tokens the backend lacks."""
    decoder = settings.get("added_tokens_decoder") or {}
    values = [specials[k] for k in _SPECIAL_KEYS if k in specials] + list(specials.get("additional_special_tokens", []))
    special_contents = {_content(v) for v in values}
    present = {t.content: _flags(t) for t in backend.get_added_tokens_decoder().values()}
    for key in sorted(decoder, key=int):
        token = _added_token(decoder[key], special=None)
        token.special = token.special or token.content in special_contents
        if present.get(token.content) != _flags(token):
            backend.add_tokens([token])
            present[token.content] = _flags(token)
    for value in values:
        token = _added_token(value, special=True)
        if token.content not in present:
            backend.add_tokens([token])
            present[token.content] = _flags(token)


def _flags(token: AddedToken) -> tuple:
    return token.content, token.single_word, token.lstrip, token.rstrip, token.normalized, token.special


def _lengths(backend: RustTokenizer, texts: Sequence[str]) -> list[int]:
    return [len(e.ids) for e in backend.encode_batch(list(texts), add_special_tokens=False)]


def _added_token(value: str | dict, special: bool | None) -> AddedToken:
    if isinstance(value, str):
        return AddedToken(value, special=bool(special))
    fields = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in value}
    if special is not None:
        fields["special"] = special
    return AddedToken(value["content"], **fields)


def _content(token: str | dict) -> str:
    return token if isinstance(token, str) else token["content"]


def _vocab_id(vocab: dict[str, int], token: str, path: Path) -> int:
    if token not in vocab:
        raise ValueError(f"special token {token!r} is not in {path}")
    return vocab[token]


def _to_window(encoding, type_ids: bool) -> Window:
    n = len(encoding.ids)
    # Flattening the offset tuples first is about twice as fast as np.array on the list of tuples.
    offsets = np.fromiter(chain.from_iterable(encoding.offsets), np.int32, 2 * n).reshape(n, 2)
    return Window(
        ids=np.array(encoding.ids, dtype=np.int32),
        type_ids=np.array(encoding.type_ids, dtype=np.int8) if type_ids else np.zeros(n, dtype=np.int8),
        offsets=offsets,
        sequence_ids=np.array([-1 if s is None else s for s in encoding.sequence_ids], dtype=np.int8),
        word_ids=np.array([-1 if w is None else w for w in encoding.word_ids], dtype=np.int32),
    )


def _check_strings(name: str, values: Sequence[str]) -> None:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of str, got a single str")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise WindowError(index, f"{name}[{index}] is {type(value).__name__}, expected str")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
