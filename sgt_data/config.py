"""Dataclass schemas filled from YAML plus `key=value` overrides.

One mechanism for pipelines (`pipelines/*.yaml`) and recipes (`recipes/*.yaml`): the YAML is parsed, overrides
such as `optim.lr=2e-5` or `mixing.ratio.seg=3` are applied to the raw mapping, and the result is converted into
nested dataclasses. Every problem (unknown key, wrong type, missing required value) is collected, so the user
sees the whole list at once instead of fixing one key per run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """Raised with every problem found in a config, one per line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


MISSING = dataclasses.MISSING


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level must be a mapping, got {type(data).__name__}"])
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML, so 1e-4, true, [1,2] keep their types)."""
    if "=" not in item:
        raise ConfigError("overrides", [f"{item!r} is not key=value (e.g. optim.lr=2e-5)"])
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    # yaml reads 1e-4 as a string (no dot); numbers in overrides are far likelier than such strings.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def _field_default(cls: Any, name: str) -> Any:
    """The default value of dataclass field `name` as plain data (MISSING when none or not a dataclass)."""
    if not dataclasses.is_dataclass(cls):
        return MISSING
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return to_dict(f.default)
            if f.default_factory is not MISSING:
                return to_dict(f.default_factory())
    return MISSING


def _field_type(cls: Any, name: str) -> Any:
    if not dataclasses.is_dataclass(cls):
        return None
    tp = typing.get_type_hints(cls).get(name)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: Any = None) -> dict[str, Any]:
    """Apply `key=value` overrides in place and return `data`.

    With the schema `cls`, a mapping the YAML left out starts from the schema's default, so `mixing.ratio.seg=3`
    changes one entry of the default ratio instead of replacing the whole mapping."""
    for item in overrides:
        path, value = parse_override(item)
        node, node_cls = data, cls
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                default = _field_default(node_cls, part)
                child = default if isinstance(default, dict) else {}
                node[part] = child
            node, node_cls = child, _field_type(node_cls, part)
        node[path[-1]] = value
    return data


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a dataclass, for `--help` listings."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(getattr(nxt, "value", None), ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Convert `value` to type `tp`, appending a problem (and returning the value as is) when it does not fit."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            trial: list[str] = []
            out = _convert(value, option, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
            return value
        return _build(tp, value, where + ".", problems)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return value
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _convert(v, val_tp, f"{where}.{k}", problems) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            problems.append(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        problems.append(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str, problems: list[str]) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = [name for name in fields if name.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(fields)})"
            problems.append(f"{prefix}{key}: unknown key{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], prefix + name, problems)
        elif f.default is MISSING and f.default_factory is MISSING:
            problems.append(f"{prefix}{name}: required, no value given")
    if any(p.startswith(prefix) for p in problems):
        # Build what we can so nested problems are all found, but never return a half-filled object.
        return None  # type: ignore[return-value]
    return cls(**kwargs)


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Convert a mapping into dataclass `cls`; raise ConfigError listing every problem."""
    problems: list[str] = []
    obj = _build(cls, data, "", problems)
    if problems:
        raise ConfigError(source, problems)
    if hasattr(obj, "validate"):
        more = obj.validate()
        if more:
            raise ConfigError(source, list(more))
    return obj


def load(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Read YAML at `path`, apply overrides, convert into `cls` (errors list every bad key at once)."""
    data = apply_overrides(load_yaml(path), list(overrides or []), cls)
    return from_dict(cls, data, source=str(path))


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) -> plain mapping, for manifests and checkpoints."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
