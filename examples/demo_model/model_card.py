"""The demo model's README.md (model card), written by train.py with the numbers of that run."""

from __future__ import annotations

from pathlib import Path

_CARD = """\
# bertbatch demo NER model (synthetic data)

A small cased BERT token-classification model that **bertbatch trains itself** so that the
no-argument demo (`python jobs/ner_corpus.py`) has a real model to run. It is a Hugging Face
checkpoint (`BertForTokenClassification`): `transformers.AutoModelForTokenClassification` and
`AutoTokenizer` load it as they are, and so does bertbatch's own loader.

**It is a toy.** It was trained only on synthetic sentences built from word lists and templates
(`examples/demo_model/wordlists.py`). It knows a few hundred invented or common names and a few
dozen sentence shapes, and it will miss or mislabel entities in real text.

| | |
|---|---|
| labels | {labels} |
| architecture | BERT, {layers} layers, hidden {hidden}, {heads} heads, FFN {ffn}, max {max_pos} tokens |
| vocabulary | cased WordPiece, {vocab} entries, trained with `tokenizers` on the training text |
| parameters | {params:,} ({megabytes:.1f} MB as float32 safetensors) |
| training data | {examples:,} synthetic paragraphs (1–32 sentences, up to 512 tokens); {invented:.0%} of name slots filled with invented words, {salad:.0%} of sentences random common words |
| training | AdamW lr {lr}, warmup {warmup:.0%}, batches of ≤ {batch_tokens} padded tokens, one pass, dropout {dropout}, {corrupt:.0%} of non-entity input tokens replaced at random, {threads} CPU threads, {minutes:.1f} min |

## How it was made

```
python examples/demo_model/train.py            # deterministic: fixed seeds, fixed thread count
```

The script builds the vocabulary, trains bertbatch's own encoder (`models/`) with a token
classification head in plain PyTorch, and writes this folder (`config.json`, `model.safetensors`
with Hugging Face parameter names, `tokenizer.json`, `vocab.txt`, `tokenizer_config.json`,
`special_tokens_map.json`). Every sub-token is labelled (`B-` on an entity's first token, `I-` on
the others), so all `--aggregation` strategies group whole words.

## Held-out evaluation

{eval_examples:,} synthetic paragraphs in which every person, organisation and place slot and
every template is drawn with probability ½ from pools held out of training (every fifth first
name, last name, organisation, place and template). Scores are on sub-tokens; entity scores count
exact spans (conlleval/seqeval rules).

| | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Entity F1 by what is new to the model ({breakdown_size} paragraphs each):

| sentences | entity F1 |
|---|---|
{breakdown}

The model generalises to new sentence shapes but hardly to names it has never seen: with no
pre-training, an unseen name is a sequence of word pieces it has little evidence about.
Exact numbers are in `eval_results.json`.

## Limitations

- Synthetic, template-made English: the scores above say the model learnt the templates' shapes
  and capitalised names, not that it works on real text.
- Cased: lower-case names are mostly missed.
- Two small layers trained from scratch, with no pre-training: sentence shapes far from the
  templates (see the held-out scores) confuse it.
"""


def write_model_card(folder: Path, config: dict, train: dict, scores: dict, examples: int, minutes: float) -> None:
    weights = folder / "model.safetensors"
    megabytes = weights.stat().st_size / 1e6
    rows = [("tokens (B-/I- exact)", scores["token"])]
    rows += [(f"entities: {kind}", s) for kind, s in scores["entity"].items()]
    table = "\n".join(f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
                      for name, s in rows)
    breakdown = "\n".join(f"| {what} | {f1:.4f} |" for what, f1 in scores["breakdown"].items())
    text = _CARD.format(
        breakdown=breakdown, breakdown_size=train["eval_examples"] // 4,
        labels=", ".join(f"`{label}`" for label in config["label2id"]),
        layers=config["num_hidden_layers"], hidden=config["hidden_size"], heads=config["num_attention_heads"],
        ffn=config["intermediate_size"], max_pos=config["max_position_embeddings"], vocab=config["vocab_size"],
        params=int(megabytes * 1e6 / 4), megabytes=megabytes, examples=examples, lr=train["lr"],
        warmup=train["warmup"], batch_tokens=train["batch_tokens"], threads=train["threads"], minutes=minutes,
        invented=train["invented"], salad=train["word_salad"], dropout=train["dropout"], corrupt=train["corrupt"],
        eval_examples=train["eval_examples"], rows=table,
    )
    (folder / "README.md").write_text(text, encoding="utf-8")
