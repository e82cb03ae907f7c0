"""Train the demo NER model on synthetic sentences and save it as a Hugging Face checkpoint.

    python examples/demo_model/train.py [--output examples/demo-ner-model]

Deterministic (fixed seeds, fixed thread count): a cased WordPiece vocabulary trained with
`tokenizers`, then bertbatch's own encoder (models/) with a token-classification head, trained
with plain PyTorch. Every sub-token is labelled (B- on an entity's first token, I- on the rest),
so the Hugging Face pipeline's aggregation strategies all group whole words. Paragraphs of up to
512 tokens train every position embedding the exported config allows. The held-out split draws
half of its names, organisations, places and templates from pools never seen in training.

With no pre-training to lean on, three things keep the model from memorising its templates:
invented names (random syllables, or random vocabulary pieces, which is how unseen names
tokenize), sentences of random common words, and dropout plus random replacement of
non-entity input tokens while training.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import BertWordPieceTokenizer
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]
import wordlists as wl  # noqa: E402
from model_card import write_model_card  # noqa: E402
from ner_metrics import entity_scores, token_scores  # noqa: E402
from synthetic import SLOT, SentenceMaker, Span, invented_word, split_pools  # noqa: E402

from models.bert import FAMILY, parse_config  # noqa: E402
from models.heads import TokenClassifier  # noqa: E402
from models.loading import TaskModel  # noqa: E402

SEED = 13
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Latin-1 and Latin Extended-A letters: held-out names with rare accents still get pieces, not [UNK].
EXTRA_ALPHABET = [chr(c) for c in range(0xC0, 0x180) if chr(c).isalpha()]
MAX_TOKENS = 512
HF_CONFIG = {
    "architectures": ["BertForTokenClassification"],
    "model_type": "bert",
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": MAX_TOKENS,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "classifier_dropout": None,
    "id2label": {str(i): label for i, label in enumerate(LABELS)},
    "label2id": {label: i for i, label in enumerate(LABELS)},
    "torch_dtype": "float32",
}
TRAIN = {"vocab_size": 3000, "examples": 8000, "batch_tokens": 3072, "lr": 1e-3, "warmup": 0.06,
         "weight_decay": 0.01, "eval_examples": 1200, "threads": 2, "invented": 0.4,
         "word_salad": 0.1,
         "dropout": 0.1, "corrupt": 0.15}

# Our parameter names → Hugging Face BertForTokenClassification names ({i}: layer index).
# Our fused q/k/v ("mixer.qkv", rows q | k | v) is split into three HF tensors.
HF_NAMES = {
    "encoder.embeddings.word.{p}": "bert.embeddings.word_embeddings.{p}",
    "encoder.embeddings.position.{p}": "bert.embeddings.position_embeddings.{p}",
    "encoder.embeddings.token_type.{p}": "bert.embeddings.token_type_embeddings.{p}",
    "encoder.embeddings.norm.{p}": "bert.embeddings.LayerNorm.{p}",
    "encoder.layers.{i}.mixer.qkv.{p}": ("bert.encoder.layer.{i}.attention.self.query.{p}",
                                         "bert.encoder.layer.{i}.attention.self.key.{p}",
                                         "bert.encoder.layer.{i}.attention.self.value.{p}"),
    "encoder.layers.{i}.mixer_out.{p}": "bert.encoder.layer.{i}.attention.output.dense.{p}",
    "encoder.layers.{i}.mixer_norm.{p}": "bert.encoder.layer.{i}.attention.output.LayerNorm.{p}",
    "encoder.layers.{i}.ffn_up.{p}": "bert.encoder.layer.{i}.intermediate.dense.{p}",
    "encoder.layers.{i}.ffn_down.{p}": "bert.encoder.layer.{i}.output.dense.{p}",
    "encoder.layers.{i}.ffn_norm.{p}": "bert.encoder.layer.{i}.output.LayerNorm.{p}",
    "head.classifier.{p}": "classifier.{p}",
}


def paragraphs(maker: SentenceMaker, rng: random.Random, n: int) -> list[tuple[str, list[Span]]]:
    """Mostly short paragraphs; a tenth of them long enough to reach the 512-token limit."""
    out = []
    for _ in range(n):
        kind = rng.random()
        sentences = rng.randint(1, 3) if kind < 0.6 else rng.randint(4, 10) if kind < 0.9 else rng.randint(11, 32)
        out.append(maker.paragraph(sentences))
    return out


def piece_inventor(tok: BertWordPieceTokenizer) -> Callable[[random.Random], str]:
    """Invented names made of vocabulary pieces (a capitalised word piece + 0-2 "##" pieces): they
    tokenize the way unseen real names do, so the model learns to read such piece sequences."""
    vocab = sorted(tok.get_vocab())
    heads = [t for t in vocab if t[:1].isupper() and t.isalpha()]
    tails = [t[2:] for t in vocab if t.startswith("##") and t[2:].isalpha()]

    def invent(rng: random.Random) -> str:
        return rng.choice(heads) + "".join(rng.choices(tails, k=rng.randint(0, 2)))

    return invent


def train_tokenizer(texts: list[str], vocab_size: int) -> BertWordPieceTokenizer:
    """WordPiece on the training text plus the plain words of every template (held-out ones too):
    a real vocabulary knows common English words, while unseen names still split into pieces."""
    plain_words = [SLOT.sub(" ", t) for t in wl.TEMPLATES + wl.NO_ENTITY_SENTENCES + wl.MONTHS] * 20
    tok = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=False)
    tok.train_from_iterator(texts + plain_words, vocab_size=vocab_size, min_frequency=2, limit_alphabet=1000,
                            initial_alphabet=EXTRA_ALPHABET, special_tokens=SPECIAL_TOKENS)
    return tok


def encode(tok: BertWordPieceTokenizer, examples: list[tuple[str, list[Span]]]) -> list[tuple[list[int], list[int]]]:
    """Token ids and label ids (-100 on special tokens); B- on the token where an entity starts."""
    tok.enable_truncation(MAX_TOKENS)
    encodings = tok.encode_batch([text for text, _ in examples])
    tok.no_truncation()
    out = []
    for (text, spans), enc in zip(examples, encodings):
        char_labels = [0] * len(text)
        for start, end, kind in spans:
            char_labels[start:end] = [LABELS.index(f"I-{kind}")] * (end - start)
            char_labels[start] = LABELS.index(f"B-{kind}")
        labels = []
        for (start, _), special in zip(enc.offsets, enc.special_tokens_mask):
            labels.append(-100 if special else char_labels[start])
        out.append((enc.ids, labels))
    return out


def batches(examples: list[tuple[list[int], list[int]]], budget: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by length so that padded size (rows x longest) stays under `budget`."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    groups, current = [], []
    for i in order:
        longest = len(examples[i][0])
        if current and (len(current) + 1) * longest > budget:
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    rng.shuffle(groups)
    return groups


def collate(examples: list[tuple[list[int], list[int]]], rows: list[int]) -> tuple[torch.Tensor, ...]:
    width = max(len(examples[i][0]) for i in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, i in enumerate(rows):
        ids[r, : len(examples[i][0])] = torch.tensor(examples[i][0])
        labels[r, : len(examples[i][1])] = torch.tensor(examples[i][1])
    return ids, (ids != 0).long(), labels


def init_weights(model: nn.Module) -> None:
    """BERT's initialisation: N(0, 0.02) for dense and embedding weights, zero biases, unit norms."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=HF_CONFIG["initializer_range"])
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def add_dropout(model: nn.Module, p: float) -> list:
    """Dropout on the embeddings and after every block while training (our encoder is inference-only,
    so it has none): hooks, removed before export. Without it the model memorises the templates."""
    def hook(module, inputs, output):
        return nn.functional.dropout(output, p, module.training)

    return [m.register_forward_hook(hook) for m in (model.encoder.embeddings, *model.encoder.layers)]


def corrupt(ids: torch.Tensor, labels: torch.Tensor, p: float, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """Replace a fraction `p` of the non-entity tokens by random ones, so that no single context word is trusted."""
    pick = (torch.rand(ids.shape, generator=generator) < p) & (labels == 0)
    random_ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, ids.shape, generator=generator)
    return torch.where(pick, random_ids, ids)


def train(model: nn.Module, examples, rng: random.Random) -> None:
    groups = batches(examples, TRAIN["batch_tokens"], rng)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": TRAIN["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=TRAIN["lr"])
    warmup = max(1, int(TRAIN["warmup"] * len(groups)))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (len(groups) - s) / (len(groups) - warmup))))
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    hooks = add_dropout(model, TRAIN["dropout"])
    generator = torch.Generator().manual_seed(SEED)
    vocab_size = model.encoder.embeddings.word.num_embeddings
    model.train()
    started = time.monotonic()
    for step, rows in enumerate(groups):
        ids, mask, labels = collate(examples, rows)
        ids = corrupt(ids, labels, TRAIN["corrupt"], vocab_size, generator)
        logits = model(ids, mask)                                                    # (B, T, L)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == len(groups) - 1:
            print(f"step {step + 1}/{len(groups)} loss {loss.item():.4f} ({time.monotonic() - started:.0f}s)", flush=True)
    for hook in hooks:
        hook.remove()
    model.eval()


@torch.inference_mode()
def evaluate(model: nn.Module, examples) -> dict:
    gold, predicted = [], []
    for rows in batches(examples, TRAIN["batch_tokens"], random.Random(0)):
        ids, mask, labels = collate(examples, rows)
        best = model(ids, mask).argmax(-1)
        for r in range(len(rows)):
            keep = labels[r] != -100
            gold.append([LABELS[i] for i in labels[r][keep].tolist()])
            predicted.append([LABELS[i] for i in best[r][keep].tolist()])
    return {"token": token_scores(gold, predicted), "entity": entity_scores(gold, predicted)}


def hf_state_dict(model: nn.Module, num_layers: int) -> dict[str, torch.Tensor]:
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for pattern, hf in HF_NAMES.items():
        for i in range(num_layers) if "{i}" in pattern else [None]:
            for p in ("weight", "bias"):
                name = pattern.format(i=i, p=p)
                if name not in ours:
                    continue
                tensor = ours.pop(name)
                targets = (hf,) if isinstance(hf, str) else hf
                for target, part in zip(targets, tensor.chunk(len(targets), dim=0)):
                    out[target.format(i=i, p=p)] = part.contiguous().clone()
    if ours:
        raise RuntimeError(f"parameters without a Hugging Face name in HF_NAMES: {sorted(ours)}")
    return out


def save_checkpoint(folder: Path, model: nn.Module, tok: BertWordPieceTokenizer, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(hf_state_dict(model, config["num_hidden_layers"]), folder / "model.safetensors", metadata={"format": "pt"})
    tok.save(str(folder / "tokenizer.json"))
    tok.save_model(str(folder))  # vocab.txt
    specials = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer", "do_lower_case": False, "strip_accents": None,
        "tokenize_chinese_chars": True, "do_basic_tokenize": True, "never_split": None,
        "model_max_length": MAX_TOKENS, "clean_up_tokenization_spaces": False, **specials,
        "added_tokens_decoder": {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                                          "rstrip": False, "single_word": False, "special": True}
                                 for t in SPECIAL_TOKENS},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "examples" / "demo-ner-model")
    parser.add_argument("--examples", type=int, default=TRAIN["examples"], help="training paragraphs")
    args = parser.parse_args(argv)
    started = time.monotonic()
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(TRAIN["threads"])
    torch.use_deterministic_algorithms(True)
    train_pools, held_pools = split_pools()
    rng = random.Random(SEED)
    vocab_texts = paragraphs(SentenceMaker(rng, train_pools, invented=TRAIN["invented"]), rng, args.examples // 4)
    tok = train_tokenizer([text for text, _ in vocab_texts], TRAIN["vocab_size"])
    inventors = (invented_word, piece_inventor(tok))
    train_texts = paragraphs(SentenceMaker(rng, train_pools, invented=TRAIN["invented"], word_salad=TRAIN["word_salad"],
                                           inventors=inventors), rng, args.examples)
    held_out = paragraphs(SentenceMaker(rng, train_pools, other=held_pools, mix=0.5), rng, TRAIN["eval_examples"])
    seen = paragraphs(SentenceMaker(rng, train_pools), rng, TRAIN["eval_examples"] // 4)
    config = {**HF_CONFIG, "vocab_size": tok.get_vocab_size()}
    model = TaskModel(FAMILY, parse_config(config), TokenClassifier(parse_config(config)))
    init_weights(model)
    train(model, encode(tok, train_texts), rng)
    scores = evaluate(model, encode(tok, held_out))
    scores["breakdown"] = {"training names and templates": evaluate(model, encode(tok, seen))["entity"]["all"]["f1"]}
    for what, other in (("held-out templates, training names", replace(train_pools, templates=held_pools.templates)),
                        ("held-out names, training templates", replace(held_pools, templates=train_pools.templates))):
        maker = SentenceMaker(random.Random(SEED + len(what)), train_pools, other=other, mix=1.0)
        scores["breakdown"][what] = evaluate(model, encode(tok, paragraphs(maker, maker.rng, len(seen))))["entity"]["all"]["f1"]
    print("entity F1:", json.dumps(scores["breakdown"]))
    save_checkpoint(args.output, model, tok, config)
    minutes = (time.monotonic() - started) / 60
    write_model_card(args.output, config, TRAIN, scores, args.examples, minutes)
    (args.output / "eval_results.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    print(f"held-out entity F1 {scores['entity']['all']['f1']:.4f}, token F1 {scores['token']['f1']:.4f}; "
          f"saved to {args.output} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
