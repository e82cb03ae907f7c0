"""Command line + YAML → a validated job config, shared by every job in jobs/.

Flags are generated from the config model's fields (`text_column` → `--text-column`), so a new
option is one field. `--config job.yaml` supplies values; flags given on the command line win.
Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

SECRET_OPTIONS = ("storage_options",)  # their values never appear in an error message


class UsageError(Exception):
    """A configuration problem the user must fix; printed as one line."""


def build_parser(config_cls: type[BaseModel], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)  # --over is no --overwrite
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of the options below (flags win)")
    for name, field in config_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = "" if field.is_required() or field.default is None else f" (default: {_show(field.default)})"
        help_text = f"{field.description or ''}{default}"
        if (field.json_schema_extra or {}).get("hidden"):   # parsed (and checked), not listed
            help_text = argparse.SUPPRESS
        kind = _kind(field.annotation)
        if kind is dict:  # nested options (a multi-task run's `tasks`) come from the YAML file only
            continue
        if kind in (bool, "bool | None"):  # --flag / --no-flag: a flag can undo the YAML either way
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif kind is tuple:
            parser.add_argument(flag, dest=name, nargs="*", metavar="VALUE", default=argparse.SUPPRESS, help=help_text)
        else:
            literal = without_none(field.annotation)
            choices = typing.get_args(literal) if typing.get_origin(literal) is typing.Literal else None
            parser.add_argument(flag, dest=name, choices=choices, metavar=_metavar(name, choices),
                                default=argparse.SUPPRESS, help=help_text)
    return parser


def parse_config(config_cls: type[BaseModel], argv: list[str], prog: str, description: str):
    """Validated config from flags and the optional YAML file; raises UsageError with one line."""
    args = vars(build_parser(config_cls, prog, description).parse_args(argv))
    values: dict = {}
    config_file = args.pop("config", None)
    if config_file is not None:
        if not config_file.strip():
            raise UsageError("--config '': name a YAML file")
        values.update(_read_yaml(config_file, config_cls))
    for alternatives in getattr(config_cls, "ALTERNATIVES", ()):   # flags win: one given replaces the YAML's other
        if args.keys() & set(alternatives):
            for name in alternatives:
                values.pop(name, None)
    values.update(args)
    for name, field in config_cls.model_fields.items():   # nested options have no flag to name
        if _kind(field.annotation) is dict and field.is_required() and name not in values:
            raise UsageError(f"`{name}` is required in the --config YAML file: {field.description}")
    try:
        return config_cls(**values)
    except ValidationError as error:
        raise UsageError(_one_line(error)) from None


def fail(prog: str, message: str, status: int = 2) -> typing.NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def one_line_reason(error: BaseException) -> str:
    """`Type: first line` of the root cause: Ray wraps a worker's error in its own exceptions."""
    chain, stack = [], [error]
    while stack:
        current = stack.pop()
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        for inner in (getattr(current, "cause", None), current.__cause__, current.__context__):
            if isinstance(inner, BaseException):
                stack.append(inner)
    ours = [e for e in chain if not type(e).__module__.startswith("ray.")]
    if ours:
        lines = str(ours[-1]).strip().splitlines()
        return f"{type(ours[-1]).__name__}: {lines[0] if lines else ''}"
    # An actor that failed in __init__ reaches the driver as text only: its traceback inside Ray's message.
    for line in reversed(_ANSI.sub("", "\n".join(str(e) for e in chain)).splitlines()):
        match = _RAISED.match(line.strip())
        if match and not match.group(1).startswith("ray."):
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def _read_yaml(path: str, config_cls: type[BaseModel]) -> dict:
    from pipeline.config import underscored

    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeys) or {}
    except (OSError, yaml.YAMLError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        why = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UsageError(f"--config {path}: {why}{where}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of option names to values")
    try:
        values = underscored(data, f"--config {path}")
    except ValueError as error:
        raise UsageError(str(error)) from None
    unknown = sorted(set(values) - set(config_cls.model_fields))
    if unknown:
        raise UsageError(f"--config {path}: unknown options {unknown}; allowed: {sorted(config_cls.model_fields)}")
    return values


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (it would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue   # the base class refuses it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line naming each bad option as its flag."""
    return _one_line(error)


def _one_line(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        if loc[:1] == ["tasks"]:   # YAML only: its path in the file
            where = ".".join(loc)
        else:
            where = "--" + "-".join(loc).replace("_", "-") if loc else "config"
        message = item["msg"].removeprefix("Value error, ")
        shown = item["loc"] and item["type"] != "missing" and item["loc"][0] not in SECRET_OPTIONS
        got = f" (got {item['input']!r})" if shown else ""
        parts.append(f"{where}: {message}{got}")
    return "; ".join(parts)


def _kind(annotation) -> type | str | None:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return bool
    if without_none(annotation) is bool and annotation is not bool:
        return "bool | None"
    if annotation is dict or origin is dict:
        return dict
    if annotation is tuple or origin is tuple:
        return tuple
    return None


def without_none(annotation):
    """`X | None` -> X (one X only); anything else unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _metavar(name: str, choices) -> str:
    return "{" + ",".join(choices) + "}" if choices else name.upper()


def _show(value) -> str:
    if isinstance(value, tuple):
        return " ".join(value) if value else "none"
    return str(value)
