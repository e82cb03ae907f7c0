"""Our encoders and heads against `transformers` on tiny random checkpoints, fp32, ≤1e-5.

Every test saves a model with `save_pretrained`, loads the folder with `models.load_model` and runs
both on the same right-padded batch. ConvBERT is compared with HF run on each text alone: HF lets
padding leak into ConvBERT's convolution branch, and ours must not (see the invariance tests).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checkpoints import (
    FAMILIES,
    HEADS,
    NER_LABELS,
    make_checkpoint,
    random_batch,
    write_sentence_transformers_files,
)

from models import load_model
from models.layers import Linear, half_units

ATOL = 1e-5
LENGTHS = [9, 23, 4, 16, 30]  # special tokens included; distinct so every row has its own padding


def hf_forward(hf: torch.nn.Module, head: str, ids, mask, types) -> torch.Tensor:
    """The HF output in our task layout: (B,T,H) | (B,T,L) | (B,L) | (B,T,2)."""
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        kwargs["token_type_ids"] = types
    with torch.no_grad():
        out = hf(**kwargs)
    if head == "base":
        return out.last_hidden_state
    if head == "qa":
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def reference(hf, family: str, head: str, ids, mask, types) -> torch.Tensor:
    """HF on the padded batch; for ConvBERT, HF on each row alone (its own padding-free output)."""
    if family != "convbert":
        return hf_forward(hf, head, ids, mask, types)
    rows = []
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        row_types = None if types is None else types[row : row + 1, :n]
        out = hf_forward(hf, head, ids[row : row + 1, :n], mask[row : row + 1, :n], row_types)[0]
        if head != "classify":
            out = F.pad(out, (0, 0, 0, ids.shape[1] - n))
        rows.append(out)
    return torch.stack(rows)


def assert_close_on_real_tokens(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, head: str) -> None:
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != HF {tuple(ref.shape)}"
    if head != "classify":
        ours, ref = ours[mask.bool()], ref[mask.bool()]
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= ATOL, f"max abs diff {diff:.3g} > {ATOL}"


def run_ours(model, ids, mask, types) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, mask, types if model.uses_token_type_ids else None)


def check_parity(folder, hf, family: str, head: str, pair: bool = False, seed: int = 0) -> None:
    ids, mask, types = random_batch(family, LENGTHS, hf.config.vocab_size, seed=seed, pair=pair)
    hf_types = types if family in ("bert", "convbert") else None
    model = load_model(folder, head)
    ours = run_ours(model, ids, mask, hf_types)
    assert_close_on_real_tokens(ours, reference(hf, family, head, ids, mask, hf_types), mask, head)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_head_parity(tmp_path, family, head):
    folder, hf = make_checkpoint(tmp_path, family, head, tokenizer=False)
    check_parity(folder, hf, family, head)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", ["bert", "convbert"])
def test_pair_token_type_ids_parity(tmp_path, family, head):
    folder, hf = make_checkpoint(tmp_path, family, head, tokenizer=False)
    check_parity(folder, hf, family, head, pair=True, seed=3)


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
@pytest.mark.parametrize(("family", "head"), [("bert", "ner"), ("bert", "qa"), ("roberta", "classify"),
                                              ("distilbert", "ner"), ("convbert", "qa")])
def test_weight_formats(tmp_path, family, head, fmt):
    folder, hf = make_checkpoint(tmp_path, family, head, fmt=fmt, tokenizer=False)
    expected = {"safetensors": "model.safetensors", "sharded": "model.safetensors.index.json",
                "bin": "pytorch_model.bin"}[fmt]
    assert (folder / expected).exists()
    check_parity(folder, hf, family, head)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "convbert"])
@pytest.mark.parametrize(("problem_type", "num_labels"), [("multi_label_classification", 4), ("regression", 1)])
def test_classify_problem_types(tmp_path, family, problem_type, num_labels):
    folder, hf = make_checkpoint(tmp_path, family, "classify", tokenizer=False,
                                 problem_type=problem_type, num_labels=num_labels)
    check_parity(folder, hf, family, "classify")
    model = load_model(folder, "classify")
    assert model.config.problem_type == problem_type
    assert len(model.config.id2label) == num_labels


@pytest.mark.parametrize(("family", "head"), [("bert", "ner"), ("roberta", "classify"), ("distilbert", "qa"),
                                              ("convbert", "ner"), ("convbert", "classify")])
def test_batches_of_other_widths_in_one_pass_give_each_batchs_own_output(tmp_path, family, head):
    """`forward_batches`: the linear layers see every batch's tokens at once; each output is its batch's alone."""
    folder, hf = make_checkpoint(tmp_path, family, head, tokenizer=False)
    model = load_model(folder, head)
    batches = [random_batch(family, lengths, hf.config.vocab_size, seed=seed, pair=family == "bert")
               for seed, lengths in enumerate([LENGTHS, [3, 5], [12]])]
    with torch.no_grad():
        together = model.forward_batches(batches)
        for (ids, mask, types), got in zip(batches, together):
            alone = run_ours(model, ids, mask, types)
            assert got.shape == alone.shape
            assert_close_on_real_tokens(got, alone, mask, head)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_metadata(tmp_path, family):
    folder, _ = make_checkpoint(tmp_path / "a", family, "ner", tokenizer=False)
    model = load_model(folder, "ner")
    assert not model.training
    assert model.config.model_type == family
    expected_family = "roberta" if family in ("xlm-roberta", "camembert") else family
    assert model.config.family == expected_family
    assert model.config.id2label == dict(enumerate(NER_LABELS))
    assert model.uses_token_type_ids == (family != "distilbert")
    assert len(model.fingerprint) == 64 and int(model.fingerprint, 16) >= 0
    assert load_model(folder, "ner").fingerprint == model.fingerprint
    other, _ = make_checkpoint(tmp_path / "b", family, "ner", seed=1, tokenizer=False)
    assert load_model(other, "ner").fingerprint != model.fingerprint


# ---- embed: pooling and normalisation from HF hidden states ----------------------------------------


def pool_reference(hidden: torch.Tensor, mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "mean":
        pooled = (hidden * weights).sum(1) / weights.sum(1)
    else:
        pooled = hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_embed_pooling(tmp_path, pooling, normalize):
    folder, hf = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    ids, mask, _ = random_batch("bert", LENGTHS, hf.config.vocab_size, seed=5)
    expected = pool_reference(hf_forward(hf, "base", ids, mask, None), mask, pooling, normalize)
    model = load_model(folder, "embed", pooling=pooling, normalize=normalize)
    ours = run_ours(model, ids, mask, None)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= ATOL
    if normalize:
        assert torch.allclose(ours.norm(dim=-1), torch.ones(len(LENGTHS)), atol=1e-5)


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", True), ("cls", False), ("max", True)])
def test_embed_settings_from_sentence_transformers_folder(tmp_path, pooling, normalize):
    folder, hf = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    write_sentence_transformers_files(folder, pooling, normalize)
    ids, mask, _ = random_batch("bert", LENGTHS, hf.config.vocab_size, seed=6)
    expected = pool_reference(hf_forward(hf, "base", ids, mask, None), mask, pooling, normalize)
    ours = run_ours(load_model(folder, "embed"), ids, mask, None)
    assert (ours - expected).abs().max().item() <= ATOL
    # an explicit argument wins over the folder's files
    flipped = run_ours(load_model(folder, "embed", normalize=not normalize), ids, mask, None)
    expected_flipped = pool_reference(hf_forward(hf, "base", ids, mask, None), mask, pooling, not normalize)
    assert (flipped - expected_flipped).abs().max().item() <= ATOL


# ---- dtype -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "head"), [("bert", "ner"), ("roberta", "base"), ("convbert", "qa"),
                                              ("distilbert", "ner")])
def test_bf16_close_to_fp32(tmp_path, family, head):
    """On a CPU with bf16 units every linear layer runs from oneDNN's blocked weights (models.layers.Linear)."""
    folder, hf = make_checkpoint(tmp_path, family, head, tokenizer=False)
    ids, mask, _ = random_batch(family, LENGTHS, hf.config.vocab_size)
    fp32 = run_ours(load_model(folder, head), ids, mask, None)
    model = load_model(folder, head, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    native = torch.backends.mkldnn.is_available() and bool(half_units(torch.bfloat16))
    assert linears and all((m.blocked is not None) == native for m in linears)
    bf16 = run_ours(model, ids, mask, None)
    real = mask.bool()
    diff = (bf16.float()[real] - fp32[real]).abs().max().item()
    assert diff <= 5e-2, f"bf16 vs fp32 max abs diff {diff:.3g}"


# ---- ConvBERT: padding never reaches the convolution branch ----------------------------------------


@pytest.mark.parametrize("kernel", [3, 9])
@pytest.mark.parametrize("head", ["base", "ner"])
def test_convbert_batch_invariance(tmp_path, head, kernel):
    folder, hf = make_checkpoint(tmp_path, "convbert", head, tokenizer=False, conv_kernel_size=kernel)
    ids, mask, types = random_batch("convbert", [7, 60, 45, 3], hf.config.vocab_size, seed=11)
    model = load_model(folder, head)
    n = int(mask[0].sum())
    alone = run_ours(model, ids[:1, :n], mask[:1, :n], types[:1, :n])[0]
    in_batch = run_ours(model, ids, mask, types)[0, :n]
    assert (alone - in_batch).abs().max().item() <= ATOL, "ConvBERT output depends on the batch's padding"
    hf_alone = hf_forward(hf, head, ids[:1, :n], mask[:1, :n], types[:1, :n])[0]
    assert (alone - hf_alone).abs().max().item() <= ATOL
    # the short row at the end of the batch (most padding on its right) too
    last = int(mask[3].sum())
    hf_last = hf_forward(hf, head, ids[3:, :last], mask[3:, :last], types[3:, :last])[0]
    assert (run_ours(model, ids, mask, types)[3, :last] - hf_last).abs().max().item() <= ATOL
