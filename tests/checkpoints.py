"""Tiny random Hugging Face checkpoints built with `transformers` inside the tests.

`make_checkpoint(folder, family, head)` writes what `save_pretrained` writes for a model and its
tokenizer, so our loader reads exactly what users download from the hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer, processors

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "convbert")
HEADS = ("base", "ner", "classify", "qa")

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]

_WORD_LIST = (
    "the a an of in on at to and or is was are were be by for with from as it its this that "
    "john smith mary jones paris london berlin new york acme corp bank city river company "
    "works lives visited met said today tomorrow yesterday big small good bad old young "
    "hello world dog cat house car tree book play run walk talk see go come make take give "
    "who what where when why how which question answer text document long short word "
    "café naïve résumé über straße 東京 北京 日本 中国 😀"
)
_WORDS = _WORD_LIST.split()

_SAMPLE_TEXT = (
    "John Smith works at Acme Corp in Paris. Mary Jones visited the Bank of London yesterday. "
    "Hello world, this is a small document about the big city and the old river. "
    "Who lives in New York? The company was in Berlin. Café naïve résumé über Straße. "
    "東京 and 北京 are cities. 😀 emoji text with tabs\tand  spaces."
)


def _wordpiece_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for w in _WORDS for c in w} | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!'-:;()"))
    pieces = [f"##{c}" for c in chars]
    words = list(dict.fromkeys(_WORDS + [w.capitalize() for w in _WORDS]))
    return list(dict.fromkeys(specials + chars + pieces + ["##ing", "##ed", "##er"] + words))


def write_wordpiece_tokenizer(folder: Path, lowercase: bool = True) -> transformers.PreTrainedTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(_wordpiece_vocab()) + "\n", encoding="utf-8")
    tok = transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=lowercase, model_max_length=512)
    tok.save_pretrained(folder)
    return tok


def write_bpe_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [_SAMPLE_TEXT, " ".join(_WORDS)] * 4,
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe.save_model(str(folder))
    tok = transformers.RobertaTokenizerFast(
        vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"), model_max_length=512
    )
    tok.save_pretrained(folder)
    return tok


def write_unigram_tokenizer(folder: Path, texts: list[str] | None = None,
                            cls: str = "XLMRobertaTokenizerFast") -> transformers.PreTrainedTokenizerFast:
    """A SentencePiece Unigram tokenizer laid out as XLM-R's and CamemBERT's (such folders come with a
    tokenizer.json only): `<s> A </s>`, pairs `<s> A </s></s> B </s>`."""
    folder.mkdir(parents=True, exist_ok=True)
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(texts or [_SAMPLE_TEXT, " ".join(_WORDS)] * 4, vocab_size=200, unk_token="<unk>",
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    backend = unigram._tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    backend.save(str(folder / "tokenizer.json"))
    tok = getattr(transformers, cls)(tokenizer_file=str(folder / "tokenizer.json"), model_max_length=512)
    tok.save_pretrained(folder)
    return tok


_ARCH = {
    ("bert", "base"): "BertModel",
    ("bert", "ner"): "BertForTokenClassification",
    ("bert", "classify"): "BertForSequenceClassification",
    ("bert", "qa"): "BertForQuestionAnswering",
    ("roberta", "base"): "RobertaModel",
    ("roberta", "ner"): "RobertaForTokenClassification",
    ("roberta", "classify"): "RobertaForSequenceClassification",
    ("roberta", "qa"): "RobertaForQuestionAnswering",
    ("xlm-roberta", "base"): "XLMRobertaModel",
    ("xlm-roberta", "ner"): "XLMRobertaForTokenClassification",
    ("xlm-roberta", "classify"): "XLMRobertaForSequenceClassification",
    ("xlm-roberta", "qa"): "XLMRobertaForQuestionAnswering",
    ("camembert", "base"): "CamembertModel",
    ("camembert", "ner"): "CamembertForTokenClassification",
    ("camembert", "classify"): "CamembertForSequenceClassification",
    ("camembert", "qa"): "CamembertForQuestionAnswering",
    ("distilbert", "base"): "DistilBertModel",
    ("distilbert", "ner"): "DistilBertForTokenClassification",
    ("distilbert", "classify"): "DistilBertForSequenceClassification",
    ("distilbert", "qa"): "DistilBertForQuestionAnswering",
    ("convbert", "base"): "ConvBertModel",
    ("convbert", "ner"): "ConvBertForTokenClassification",
    ("convbert", "classify"): "ConvBertForSequenceClassification",
    ("convbert", "qa"): "ConvBertForQuestionAnswering",
}

_CONFIG = {
    "bert": "BertConfig",
    "roberta": "RobertaConfig",
    "xlm-roberta": "XLMRobertaConfig",
    "camembert": "CamembertConfig",
    "distilbert": "DistilBertConfig",
    "convbert": "ConvBertConfig",
}


def tiny_config(family: str, head: str, vocab_size: int, **overrides) -> transformers.PretrainedConfig:
    """Hidden 32, 2 layers, 4 heads, intermediate 64 (DistilBERT names mapped)."""
    if family == "distilbert":
        kw = dict(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128)
    else:
        kw = dict(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=128,
        )
    if family in ("roberta", "xlm-roberta", "camembert"):
        kw.update(max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if family == "convbert":
        kw.update(embedding_size=32, conv_kernel_size=3)
    if head == "ner":
        kw.update(id2label=dict(enumerate(NER_LABELS)), label2id={label: i for i, label in enumerate(NER_LABELS)})
    elif head == "classify":
        kw.update(num_labels=3)
    kw.update(overrides)
    return getattr(transformers, _CONFIG[family])(**kw)


def make_checkpoint(
    folder: Path,
    family: str,
    head: str,
    fmt: str = "safetensors",
    seed: int = 0,
    tokenizer: bool = True,
    **config_overrides,
) -> tuple[Path, torch.nn.Module]:
    """Build a tiny random model, save it (fmt: safetensors | sharded | bin), return (folder, model)."""
    folder = Path(folder)
    tok = None
    if tokenizer:
        if family == "roberta":
            tok = write_bpe_tokenizer(folder)
        elif family in ("xlm-roberta", "camembert"):
            tok = write_unigram_tokenizer(folder, cls=f"{_CONFIG[family].removesuffix('Config')}TokenizerFast")
        else:
            tok = write_wordpiece_tokenizer(folder)
    vocab_size = max(len(tok) if tok is not None else 0, 120)
    config = tiny_config(family, head, vocab_size, **config_overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, _ARCH[(family, head)])(config).eval()
    _randomise_norms(model)
    kwargs = {}
    if fmt == "sharded":
        kwargs["max_shard_size"] = "20KB"
    elif fmt == "bin":
        kwargs["safe_serialization"] = False
    elif fmt != "safetensors":
        raise ValueError(f"fmt={fmt!r}: expected safetensors, sharded or bin")
    model.save_pretrained(folder, **kwargs)
    return folder, model


def _randomise_norms(model: torch.nn.Module) -> None:
    """LayerNorms start at weight 1 / bias 0; random values make a wrong norm mapping visible."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))


def write_sentence_transformers_files(folder: Path, pooling: str, normalize: bool, **bert_config) -> None:
    """modules.json (Transformer, Pooling, optionally Normalize), the pooling config, and
    sentence_bert_config.json when `bert_config` has entries (max_seq_length, do_lower_case)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{m}": pooling == name for m, name in
             [("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max")]}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    if bert_config:
        (folder / "sentence_bert_config.json").write_text(json.dumps(bert_config))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")


def special_ids(family: str) -> dict[str, int]:
    """Start, separator and pad ids of the tokenizers written above (RoBERTa pad drives position ids)."""
    if family in ROBERTA_LIKE:
        return {"start": 0, "pad": 1, "sep": 2}
    return {"start": 2, "pad": 0, "sep": 3}


def random_batch(
    family: str, lengths: list[int], vocab_size: int, seed: int = 0, pair: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, token_type_ids) with the family's special-token layout.

    `lengths` count special tokens. Single: `[CLS] x [SEP]`; pair: `[CLS] a [SEP] b [SEP]` with type
    ids 1 on the second segment (RoBERTa: `<s> a </s></s> b </s>`, type ids stay 0).
    """
    ids = special_ids(family)
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), ids["pad"], dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        # ids below 5 are special tokens in both tokenizers
        body = torch.randint(5, vocab_size, (n,), generator=g)
        body[0], body[-1] = ids["start"], ids["sep"]
        if pair:
            middle = n // 2
            body[middle] = ids["sep"]
            if family in ROBERTA_LIKE:
                body[middle + 1] = ids["sep"]
            else:
                token_type_ids[row, middle + 1 : n] = 1
        input_ids[row, :n] = body
        attention_mask[row, :n] = 1
    return input_ids, attention_mask, token_type_ids
