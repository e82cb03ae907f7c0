"""config.json variants: each one a tiny HF model compared with ours at ≤1e-5, or a ConfigError."""

from __future__ import annotations

import json

import pytest
import torch
from checkpoints import make_checkpoint, read_json
from test_model_parity import check_parity
from transformers.activations import ACT2FN

import models
from models import load_model

ACTIVATIONS = ["gelu", "relu", "silu", "swish", "gelu_new", "gelu_fast", "quick_gelu", "mish"]


def rewrite_config(folder, **changes) -> None:
    config = read_json(folder / "config.json")
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_activation_list_is_supported_by_hf():
    # the parity cases below are only meaningful for activations HF itself can run
    assert set(ACTIVATIONS) <= set(ACT2FN)
    assert "selu" not in ACT2FN


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize(("family", "head"), [("bert", "ner"), ("roberta", "classify"), ("convbert", "classify")])
def test_hidden_act_parity(tmp_path, family, head, act):
    # ConvBERT's classification head applies hidden_act too, so "classify" exercises both places. Larger
    # weights than the default init: at 0.02 the activations' inputs are so small that gelu and gelu_new
    # differ by 1e-7, under the tolerance.
    folder, hf = make_checkpoint(tmp_path, family, head, tokenizer=False, hidden_act=act, initializer_range=0.2)
    check_parity(folder, hf, family, head)


@pytest.mark.parametrize("act", ["gelu", "relu", "silu", "gelu_new"])
def test_distilbert_activation_parity(tmp_path, act):
    folder, hf = make_checkpoint(tmp_path, "distilbert", "ner", tokenizer=False, activation=act, initializer_range=0.2)
    check_parity(folder, hf, "distilbert", "ner")


@pytest.mark.parametrize("family", ["bert", "convbert"])
def test_selu_is_refused_like_hf(tmp_path, family):
    # ConvBERT's doc lists "selu", but HF cannot build such a model: neither do we, with a clear message
    folder, _ = make_checkpoint(tmp_path, family, "base", tokenizer=False)
    rewrite_config(folder, hidden_act="selu")
    with pytest.raises(models.ConfigError, match=r"hidden_act.*selu"):
        load_model(folder, "base")


def test_unknown_hidden_act_lists_allowed_values(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    rewrite_config(folder, hidden_act="frobnicate")
    with pytest.raises(models.ConfigError) as info:
        load_model(folder, "base")
    message = str(info.value)
    assert "hidden_act" in message and "frobnicate" in message
    assert all(name in message for name in ("gelu", "relu", "silu", "gelu_new"))


@pytest.mark.parametrize("position_type", ["relative_key", "relative_key_query"])
@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
@pytest.mark.parametrize("head", ["base", "ner"])
def test_relative_position_embeddings(tmp_path, family, head, position_type):
    folder, hf = make_checkpoint(tmp_path, family, head, tokenizer=False, position_embedding_type=position_type)
    check_parity(folder, hf, family, head)


@pytest.mark.parametrize("head", ["base", "classify"])
def test_distilbert_sinusoidal_positions(tmp_path, head):
    folder, hf = make_checkpoint(tmp_path, "distilbert", head, tokenizer=False, sinusoidal_pos_embds=True)
    check_parity(folder, hf, "distilbert", head)


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_groups": 2},
        {"head_ratio": 1},
        {"head_ratio": 4},
        {"embedding_size": 16},
        {"conv_kernel_size": 5},
        {"num_groups": 2, "head_ratio": 4, "embedding_size": 16, "conv_kernel_size": 9},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
@pytest.mark.parametrize("head", ["base", "ner", "classify"])
def test_convbert_variants(tmp_path, head, overrides):
    folder, hf = make_checkpoint(tmp_path, "convbert", head, tokenizer=False, **overrides)
    check_parity(folder, hf, "convbert", head)


def test_convbert_embedding_projection_is_loaded(tmp_path):
    folder, hf = make_checkpoint(tmp_path, "convbert", "base", tokenizer=False, embedding_size=16)
    assert hf.embeddings_project.weight.shape == (32, 16)
    assert load_model(folder, "base").config.embedding_size == 16


@pytest.mark.parametrize("family", ["bert", "roberta", "convbert"])
def test_layer_norm_eps_is_honoured(tmp_path, family):
    # a large eps makes the difference visible above the parity tolerance
    folder, hf = make_checkpoint(tmp_path, family, "base", tokenizer=False, layer_norm_eps=1e-1)
    check_parity(folder, hf, family, "base")
    folder, hf = make_checkpoint(tmp_path / "small", family, "base", tokenizer=False, layer_norm_eps=1e-5)
    assert load_model(folder, "base").config.layer_norm_eps == 1e-5
    check_parity(folder, hf, family, "base")


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_decoder_configs_are_refused(tmp_path, family):
    folder, _ = make_checkpoint(tmp_path, family, "base", tokenizer=False)
    rewrite_config(folder, is_decoder=True)
    with pytest.raises(models.ConfigError, match="is_decoder"):
        load_model(folder, "base")


def test_unknown_model_type_lists_supported(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    rewrite_config(folder, model_type="electra")
    with pytest.raises((models.ConfigError, models.CheckpointError)) as info:
        load_model(folder, "base")
    message = str(info.value)
    assert "electra" in message
    for supported in ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "convbert"):
        assert supported in message


def test_unknown_position_embedding_type_is_refused(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "bert", "base", tokenizer=False)
    rewrite_config(folder, position_embedding_type="rotary")
    with pytest.raises(models.ConfigError, match=r"position_embedding_type.*rotary"):
        load_model(folder, "base")


def test_roberta_positions_start_after_padding_idx(tmp_path):
    folder, hf = make_checkpoint(tmp_path, "roberta", "base", tokenizer=False)
    ids = torch.tensor([[0, 7, 8, 9, 2]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = load_model(folder, "base")(ids, mask)
        after_pad = hf(input_ids=ids, attention_mask=mask, position_ids=torch.arange(2, 7)[None]).last_hidden_state
        from_zero = hf(input_ids=ids, attention_mask=mask, position_ids=torch.arange(0, 5)[None]).last_hidden_state
    assert (ours - after_pad).abs().max() <= 1e-5
    assert (ours - from_zero).abs().max() > 1e-3


def test_activation_tests_can_tell_close_activations_apart(tmp_path):
    folder, hf = make_checkpoint(tmp_path, "bert", "ner", tokenizer=False, hidden_act="gelu", initializer_range=0.2)
    rewrite_config(folder, hidden_act="gelu_new")
    with pytest.raises(AssertionError):
        check_parity(folder, hf, "bert", "ner")


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_null_position_embedding_type_means_no_positions_as_in_transformers(tmp_path, family):
    folder, hf = make_checkpoint(tmp_path, family, "ner", tokenizer=False, position_embedding_type=None)
    assert read_json(folder / "config.json")["position_embedding_type"] is None
    check_parity(folder, hf, family, "ner")


def test_distilbert_config_with_the_generic_key_names(tmp_path):
    """transformers maps hidden_size / num_attention_heads / num_hidden_layers onto dim / n_heads / n_layers."""
    folder, hf = make_checkpoint(tmp_path, "distilbert", "ner", tokenizer=False, n_heads=8)
    config = read_json(folder / "config.json")
    for generic, own in (("hidden_size", "dim"), ("num_attention_heads", "n_heads"), ("num_hidden_layers", "n_layers")):
        config[generic] = config.pop(own)
    (folder / "config.json").write_text(json.dumps(config))
    assert load_model(folder, "ner").config.num_heads == 8
    check_parity(folder, hf, "distilbert", "ner")


def test_convbert_heads_need_only_divide_after_head_ratio(tmp_path):
    folder, hf = make_checkpoint(tmp_path, "convbert", "ner", tokenizer=False, num_attention_heads=12, head_ratio=3)
    check_parity(folder, hf, "convbert", "ner")


def test_null_pad_token_id_is_refused_for_roberta_positions(tmp_path):
    folder, _ = make_checkpoint(tmp_path, "roberta", "base", tokenizer=False)
    rewrite_config(folder, pad_token_id=None)
    with pytest.raises(models.ConfigError, match="pad_token_id=None"):
        load_model(folder, "base")


@pytest.mark.parametrize(("head", "task"), [("classify", "ner"), ("ner", "classify"), ("qa", "ner")])
def test_another_tasks_head_is_refused_even_when_its_weights_fit(tmp_path, head, task):
    """BERT's token and sequence classifiers share names and shapes: config.json's architectures tell them apart."""
    folder, _ = make_checkpoint(tmp_path, "bert", head, tokenizer=False)
    with pytest.raises(models.CheckpointError, match=f"task '{task}' needs a"):
        load_model(folder, task)
    load_model(folder, "embed")     # any checkpoint embeds
