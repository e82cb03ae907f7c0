"""Write the demo corpus: examples/sample_corpus/part-0000{0,1,2}.parquet (deterministic).

    python examples/make_sample_corpus.py [--docs 300] [--output examples/sample_corpus]

Columns: `id` int64, `text` string, `date` string (a few days, for `--partition-by date`).
Document lengths are log-normal (median about 60 words) and a few documents are long enough to
need several 512-token windows. Sentences come from the demo model's word lists and templates,
so the demo model finds persons, organisations and places in them: names come from the model's
training pools (it hardly knows any other name, see its model card), sentence shapes from all templates.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent / "demo_model"))
from synthetic import SentenceMaker, all_pools, split_pools  # noqa: E402

SEED = 20240301
SCHEMA = pa.schema([("id", pa.int64(), False), ("text", pa.string(), False), ("date", pa.string(), False)])
DATES = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]
MEDIAN_WORDS, SIGMA = 50, 0.9  # the last sentence overshoots: median ends near 60
LONG_DOCS = 5  # forced long documents (700-1500 words), on top of the log-normal tail


def document(maker: SentenceMaker, rng: random.Random, target_words: int) -> str:
    """Sentences until the document has at least `target_words` words, in paragraphs of 2-6."""
    paragraphs, sentences, words = [], [], 0
    paragraph_size = rng.randint(2, 6)
    while words < target_words:
        text, _ = maker.sentence()
        sentences.append(text)
        words += len(text.split())
        if len(sentences) == paragraph_size:
            paragraphs.append(" ".join(sentences))
            sentences, paragraph_size = [], rng.randint(2, 6)
    return "\n\n".join(paragraphs + ([" ".join(sentences)] if sentences else []))


def make_corpus(n_docs: int, seed: int = SEED) -> pa.Table:
    rng = random.Random(seed)
    maker = SentenceMaker(rng, dataclasses.replace(split_pools()[0], templates=all_pools().templates))
    targets = [max(4, min(2500, round(rng.lognormvariate(math.log(MEDIAN_WORDS), SIGMA)))) for _ in range(n_docs)]
    for i in rng.sample(range(n_docs), min(LONG_DOCS, n_docs)):
        targets[i] = rng.randint(700, 1500)
    texts = [document(maker, rng, t) for t in targets]
    dates = [rng.choice(DATES) for _ in range(n_docs)]
    return pa.table({"id": list(range(1, n_docs + 1)), "text": texts, "date": dates}, schema=SCHEMA)


def write_parts(table: pa.Table, folder: Path, parts: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    size = math.ceil(table.num_rows / parts)
    paths = []
    for part in range(parts):
        path = folder / f"part-{part:05d}.parquet"
        pq.write_table(table.slice(part * size, size), path, compression="zstd")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "sample_corpus")
    args = parser.parse_args(argv)
    table = make_corpus(args.docs)
    paths = write_parts(table, args.output)
    words = sorted(len(t.split()) for t in table.column("text").to_pylist())
    print(f"wrote {table.num_rows} documents to {len(paths)} files in {args.output}: "
          f"words min {words[0]}, median {words[len(words) // 2]}, max {words[-1]}")


if __name__ == "__main__":
    main()
