"""Strict checkpoint loading: what a broken or mismatched folder is told, and what loads anyway."""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
from checkpoints import make_checkpoint, read_json, tiny_config
from safetensors.torch import load_file, save_file
from test_model_parity import check_parity

import models
from models import load_model


def edit_weights(folder, edit) -> None:
    """Apply `edit(dict[str, Tensor])` to model.safetensors and save it back."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def rewrite_config(folder, **changes) -> None:
    config = read_json(folder / "config.json")
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_tensor_is_named(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "ner", tokenizer=False)
    edit_weights(folder, lambda t: t.pop("bert.encoder.layer.0.attention.self.query.weight"))
    with pytest.raises(models.CheckpointError, match=r"encoder\.layer\.0\.attention\.self\.query\.weight"):
        load_model(folder, "ner")


def test_unexpected_tensor_is_named(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "ner", tokenizer=False)
    edit_weights(folder, lambda t: t.update({"bert.encoder.layer.1.attention.self.rotary.weight": torch.zeros(4)}))
    with pytest.raises(models.CheckpointError, match=r"encoder\.layer\.1\.attention\.self\.rotary\.weight"):
        load_model(folder, "ner")


@pytest.mark.parametrize("family", ["bert", "distilbert", "convbert"])
def test_misshaped_tensor_names_both_shapes(tmp_path, family):
    folder, hf = make_checkpoint(tmp_path, family, "classify", tokenizer=False)
    name = "classifier.weight" if family == "distilbert" else next(
        k for k in hf.state_dict() if k.endswith("layer.1.intermediate.dense.weight"))
    expected = tuple(hf.state_dict()[name].shape)
    wrong = (expected[0] + 1, expected[1])
    edit_weights(folder, lambda t: t.update({name: torch.zeros(wrong)}))
    with pytest.raises(models.CheckpointError) as info:
        load_model(folder, "classify")
    message = str(info.value)
    assert name.removeprefix(f"{family}.") in message
    for rows, cols in (expected, wrong):
        assert re.search(rf"\b{rows}\s*[,x×]\s*{cols}\b", message), f"shape {(rows, cols)} not in: {message}"


def test_ner_load_of_base_checkpoint_says_head_is_missing(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    with pytest.raises(models.CheckpointError, match=r"classifier\.weight") as info:
        load_model(folder, "ner")
    assert "head" in str(info.value).lower()


def test_masked_lm_checkpoint_used_for_ner_is_refused(tmp_path):
    config = tiny_config("bert", "ner", 120)
    config.architectures = ["BertForMaskedLM"]
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)
    with pytest.raises(models.CheckpointError, match=r"classifier\.weight"):
        load_model(tmp_path, "ner")


def test_unknown_architecture_lists_supported(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "ner", tokenizer=False)
    rewrite_config(folder, architectures=["BertForFancyTagging"])
    with pytest.raises((models.CheckpointError, models.ConfigError)) as info:
        load_model(folder, "ner")
    message = str(info.value)
    assert "BertForFancyTagging" in message
    assert "BertForTokenClassification" in message


def test_no_weights_file_lists_what_was_looked_for(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    (folder / "model.safetensors").unlink()
    with pytest.raises(models.CheckpointError) as info:
        load_model(folder, "base")
    message = str(info.value)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        assert name in message


def test_missing_shard_is_named(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "base", fmt="sharded", tokenizer=False)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(models.CheckpointError, match=re.escape(shard.name)):
        load_model(folder, "base")


def test_folder_without_config_json(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    (folder / "config.json").unlink()
    with pytest.raises((models.CheckpointError, models.ConfigError, FileNotFoundError), match="config.json"):
        load_model(folder, "base")


def test_unknown_task_lists_tasks(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    with pytest.raises(ValueError) as info:
        load_model(folder, "summarize")
    assert "summarize" in str(info.value)
    assert all(task in str(info.value) for task in ("base", "ner", "classify", "qa", "embed"))


# ---- extra weights on the allow-list load fine -----------------------------------------------------


def test_pooler_in_token_classification_checkpoint_is_ignored(tmp_path):
    folder, hf = make_checkpoint(tmp_path, "bert", "ner", tokenizer=False)
    edit_weights(folder, lambda t: t.update({"bert.pooler.dense.weight": torch.randn(32, 32),
                                              "bert.pooler.dense.bias": torch.randn(32)}))
    check_parity(folder, hf, "bert", "ner")


@pytest.mark.parametrize("arch", ["BertForMaskedLM", "BertForPreTraining"])
def test_pretraining_heads_are_ignored_for_base(tmp_path, arch):
    config = tiny_config("bert", "base", 120)
    torch.manual_seed(0)
    full = getattr(transformers, arch)(config).eval()
    full.save_pretrained(tmp_path)
    names = load_file(tmp_path / "model.safetensors")
    assert any(k.startswith("cls.predictions.") for k in names)
    check_parity(tmp_path, full.bert, "bert", "base")


def test_roberta_masked_lm_head_is_ignored_for_base(tmp_path):
    config = tiny_config("roberta", "base", 120)
    torch.manual_seed(0)
    full = transformers.RobertaForMaskedLM(config).eval()
    full.save_pretrained(tmp_path)
    check_parity(tmp_path, full.roberta, "roberta", "base")


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_position_ids_buffer_is_ignored(tmp_path, family):
    folder, hf = make_checkpoint(tmp_path, family, "ner", tokenizer=False)
    key = f"{family}.embeddings.position_ids"
    edit_weights(folder, lambda t: t.update({key: torch.arange(hf.config.max_position_embeddings)[None]}))
    check_parity(folder, hf, family, "ner")


def test_bare_model_checkpoint_without_prefix_loads(tmp_path):
    folder, hf = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    assert not any(k.startswith("bert.") for k in load_file(folder / "model.safetensors"))
    check_parity(folder, hf, "bert", "base")


def test_legacy_layer_norm_gamma_beta_names(tmp_path):
    # old BERT checkpoints name LayerNorm parameters gamma/beta
    folder, hf = make_checkpoint(tmp_path, "bert", "ner", tokenizer=False)

    def rename(tensors):
        for key in [k for k in tensors if "LayerNorm." in k]:
            new = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            tensors[new] = tensors.pop(key)

    edit_weights(folder, rename)
    check_parity(folder, hf, "bert", "ner")
