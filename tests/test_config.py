"""Flags + YAML → validated job config (no Ray, no model)."""

from __future__ import annotations

import pytest

from pipeline.cli import UsageError, build_parser, one_line_reason, parse_config
from pipeline.config import NerConfig

REQUIRED = ["--input", "in/", "--output", "out/", "--model", "m/"]


def parse(*argv: str) -> NerConfig:
    return parse_config(NerConfig, list(argv), "ner_corpus.py", "test")


def test_defaults_follow_the_hf_pipeline():
    config = parse(*REQUIRED)
    assert (config.aggregation, config.ignore_labels, config.stride, config.device) == ("simple", ("O",), 0, "auto")
    assert config.result_columns == ("id",)


def test_flags_override_yaml(tmp_path):
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text("input: a/\noutput: b/\nmodel: m/\nbatch-tokens: 100\naggregation: first\n"
                         "keep_columns: [date, lang]\n")
    config = parse("--config", str(yaml_file), "--aggregation", "max", "--ignore-labels", "O,MISC")
    assert (config.input, config.batch_tokens, config.aggregation) == ("a/", 100, "max")
    assert config.keep_columns == ("date", "lang") and config.ignore_labels == ("O", "MISC")


def test_a_flag_turns_a_yaml_boolean_off(tmp_path):
    from pipeline.config import QaConfig

    yaml_file, qa_file = tmp_path / "job.yaml", tmp_path / "qa.yaml"
    yaml_file.write_text("input: a/\noutput: b/\nmodel: m/\noverwrite: true\n")
    qa_file.write_text(yaml_file.read_text() + "question: Who?\nhandle_impossible_answer: true\n")
    assert parse("--config", str(yaml_file)).overwrite
    assert not parse("--config", str(yaml_file), "--no-overwrite").overwrite
    qa = parse_config(QaConfig, ["--config", str(qa_file), "--no-handle-impossible-answer"], "qa_corpus.py", "")
    assert not qa.handle_impossible_answer and qa.overwrite


def test_help_states_each_tasks_own_defaults():
    from pipeline.config import EmbedConfig, QaConfig

    qa = build_parser(QaConfig, "qa_corpus.py", "").format_help()
    assert "at most 384" in qa and "--stride" not in qa.replace("--doc-stride", "")   # QA windows with --doc-stride
    assert "max_seq_length" in build_parser(EmbedConfig, "embed_corpus.py", "").format_help()
    assert "--stride" in build_parser(NerConfig, "ner_corpus.py", "").format_help()
    with pytest.raises(UsageError, match="question answering windows with --doc-stride"):   # still parsed
        parse_config(QaConfig, [*REQUIRED, "--question", "Who?", "--stride", "8"], "qa_corpus.py", "")
    with pytest.raises(UsageError, match="stride=8: --long-text truncate embeds each text's first window only"):
        parse_config(EmbedConfig, [*REQUIRED, "--stride", "8"], "embed_corpus.py", "")
    assert parse_config(EmbedConfig, [*REQUIRED, "--stride", "8", "--long-text", "mean"], "embed_corpus.py", "").stride


def test_partition_column_is_kept():
    config = parse(*REQUIRED, "--keep-columns", "date", "--partition-by", "lang")
    assert config.result_columns == ("id", "date", "lang")


def test_keep_columns_split_at_commas_and_flags_are_never_abbreviated(tmp_path):
    """NER's own comma splitter (--ignore-labels) once replaced the one --keep-columns shares with every job."""
    assert parse(*REQUIRED, "--keep-columns", "date,lang").keep_columns == ("date", "lang")
    with pytest.raises(SystemExit):
        parse(*REQUIRED, "--over")           # argparse would take it for --overwrite
    # ... so a column whose name holds a comma is kept in double quotes, as in CSV; unquoted, the refusal says how
    import pyarrow as pa

    from pipeline.read import InputError, check_columns

    schema = pa.schema([("id", pa.string()), ("lat, lon", pa.string()), ('say "hi"', pa.string())])
    with pytest.raises(InputError, match=r"""'lat': no such column in the input \('lat, lon' holds a comma, at which """
                                         r"""--keep-columns splits its names: put it in double quotes, '"lat, lon"'\)"""):
        check_columns(schema, [("--keep-columns", c) for c in parse(*REQUIRED, "--keep-columns", "lat, lon").keep_columns])
    kept = parse(*REQUIRED, "--keep-columns", '"lat, lon", date', '"say ""hi"""').keep_columns
    assert kept == ("lat, lon", "date", 'say "hi"')
    check_columns(schema, [("--keep-columns", c) for c in kept[::2]])
    (tmp_path / "job.yaml").write_text("keep_columns: ['\"lat, lon\"', date]\n")
    assert parse(*REQUIRED, "--config", str(tmp_path / "job.yaml")).keep_columns == ("lat, lon", "date")


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-tokens", "0"], "--batch-tokens: Input should be greater than or equal to 1 (got '0')"),
    (["--max-length", "64", "--stride", "64"], "stride=64 must be smaller than max_length=64"),
    (["--keep-columns", "_file"], "reserved for the pipeline"),
])
def test_bad_values_give_one_line(argv, message):
    with pytest.raises(UsageError) as error:
        parse(*REQUIRED, *argv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_required_and_unknown_yaml_keys(tmp_path):
    with pytest.raises(UsageError, match="--model: Field required"):
        parse("--input", "a", "--output", "b")
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text("inptu: a/\n")
    with pytest.raises(UsageError, match=r"unknown options \['inptu'\]"):
        parse("--config", str(yaml_file))


def test_choices_are_enforced_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser(NerConfig, "ner_corpus.py", "test").parse_args([*REQUIRED, "--aggregation", "mean"])
    assert "invalid choice: 'mean'" in capsys.readouterr().err


def test_one_line_reason_finds_the_root_cause():
    try:
        try:
            raise KeyError("weights")
        except KeyError as inner:
            raise RuntimeError("wrapper\nmore") from inner
    except RuntimeError as error:
        assert one_line_reason(error) == "KeyError: 'weights'"
    text_only = RuntimeError("actor died:\nTraceback ...\nmodels.loading.CheckpointError: head missing")
    assert one_line_reason(text_only) == "RuntimeError: actor died:"


def test_a_multi_task_run_without_tasks_names_the_yaml_section_not_a_flag():
    """`tasks` has no flag (nested options come from the YAML only): the error said "--tasks: Field required"."""
    from pipeline.config import MultiConfig

    with pytest.raises(UsageError) as error:
        parse_config(MultiConfig, ["--input", "in", "--output", "out"], "multi_corpus.py", "")
    assert str(error.value).startswith("`tasks` is required in the --config YAML file: result column ->")
    assert "--tasks" not in str(error.value)


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("max_chars: true\n", "--max-chars: expected a number, got a boolean"),    # pydantic would make it 1
    ("batch_tokens: true\n", "--batch-tokens: expected a number, got a boolean"),
    ("overwrite: 'yes'\n", "--overwrite: expected true or false"),             # pydantic would make it true
    ("batch-tokens: 100\nbatch_tokens: 200\n", "'batch-tokens' and 'batch_tokens' are the same option"),
    ("batch_tokens: 100\nbatch_tokens: 200\n", "key 'batch_tokens' given twice (line 2, column 1)"),
])
def test_yaml_values_are_taken_as_written(tmp_path, yaml_text, message):
    (tmp_path / "job.yaml").write_text(yaml_text)
    with pytest.raises(UsageError) as error:
        parse(*REQUIRED, "--config", str(tmp_path / "job.yaml"))
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("argv", "message"), [
    (["--input", ""], "--input: must not be empty"),          # os.path.abspath('') is the current folder
    (["--output", " "], "--output: must not be empty"),
    (["--text-column", ""], "--text-column: must not be empty"),
    (["--config", ""], "--config '': name a YAML file"),
    (["--max-chars", "99999999999999999999"], "--max-chars: at most 9223372036854775807"),  # Arrow's int64
    (["--partition-by", "text"], "the text or id column would make a folder per document"),
    (["--partition-by", "id"], "the text or id column would make a folder per document"),
    (["--keep-columns", "date", "date"], "['date'] named twice"),
    (["--dtype", "int8", "--device", "cuda"], "dtype int8 (dynamic quantisation) runs on CPU only"),
])
def test_empty_huge_and_contradictory_values_are_refused(argv, message):
    with pytest.raises(UsageError) as error:
        parse(*REQUIRED, *argv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_task_options_that_contradict_or_name_nothing_are_refused():
    from pipeline.config import ClassifyConfig, QaConfig

    def refused(config_cls, *argv):
        with pytest.raises(UsageError) as error:
            parse_config(config_cls, [*REQUIRED, *argv], "job", "")
        return str(error.value)

    assert "--text-pair-column: must not be empty" in refused(ClassifyConfig, "--text-pair-column", "")
    assert "give one of --top-k 2 and --all-labels" in refused(ClassifyConfig, "--top-k", "2", "--all-labels")
    assert "--question-column: must not be empty" in refused(QaConfig, "--question-column", "")
    assert "a folder per document" in refused(QaConfig, "--question-column", "q", "--partition-by", "q")
    assert parse_config(ClassifyConfig, [*REQUIRED, "--all-labels"], "job", "").effective_top_k is None


def test_multi_task_yaml_errors_name_the_task(tmp_path):
    from pipeline.config import MultiConfig

    def refused(yaml_text):
        (tmp_path / "multi.yaml").write_text(yaml_text)
        with pytest.raises(UsageError) as error:
            parse_config(MultiConfig, ["--config", str(tmp_path / "multi.yaml"), "--input", "i", "--output", "o"],
                         "multi_corpus.py", "")
        return str(error.value)

    # yaml.safe_load kept the second `a` and dropped the NER task without a word
    assert "key 'a' given twice (line 3, column 3)" in refused(
        "tasks:\n  a: {task: ner, model: m}\n  a: {task: embed, model: m}\n")
    assert refused("tasks:\n  a: 3\n") == "tasks.a: Input should be a valid dictionary (got 3)"   # was --tasks-a
    assert "tasks.a: 'doc-stride' and 'doc_stride' are the same option" in refused(
        "tasks:\n  a: {task: qa, question: q, model: m, doc-stride: 3, doc_stride: 4}\n")
    assert "nor be empty" in refused("tasks:\n  '': {task: ner, model: m}\n")
