"""How config layers become one typed config: ``--set`` parsing, recipe YAML, deep-merging layers of lowest
precedence first, and coercing each value to its field's annotated type with an error naming the key. Knows nothing
of ftkit's own sections (ftkit.config)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

from ftkit.errors import UsageError

PLUGGABLE = ("task", "method")  # sections whose valid keys depend on the chosen entry's `params` dataclass


def parse_set(items: list[str]) -> dict:
    """``["train.lr=1e-4", "method.r=16"]`` -> nested dict; values parsed as YAML scalars/lists."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and "," in value and not raw.startswith(("'", '"')):
            value = [v.strip() for v in value.split(",")]
        _set_dotted(out, key, value)
    return out


def _set_dotted(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise UsageError(f"--set {dotted}: {p!r} is not a section")
    d[parts[-1]] = value


def load_yaml(path: Path) -> dict:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise UsageError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of config keys at the top level, found {type(data).__name__}")
    return data


def normalise_pluggable(layer: dict, where: str) -> dict:
    layer = dict(layer)
    for key in PLUGGABLE:
        if key in layer:
            v = layer[key]
            if isinstance(v, str):
                layer[key] = {"name": v}
            elif isinstance(v, dict):
                layer[key] = dict(v)
            else:
                raise UsageError(f"{where}: {key}: expected a name or a mapping, found {v!r}")
    return layer


def merge_layers(layers: list[tuple[str, dict]]) -> dict:
    """Deep-merge config layers, lowest precedence first. A layer that switches the task/method to another
    name drops the parameters lower layers gave the previous one (they would not apply)."""
    merged: dict = {}
    for where, layer in layers:
        layer = normalise_pluggable(layer, where)
        for key, value in layer.items():
            if key in PLUGGABLE:
                cur = merged.get(key, {})
                if "name" in value and cur.get("name") not in (None, value["name"]):
                    cur = {}
                merged[key] = {**cur, **value}
            elif isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = _deep_merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def reject_unknown(d: dict, valid: set[str], prefix: str) -> None:
    for key in d:
        if key not in valid:
            raise UsageError(f"unknown config key {prefix + str(key)!r}; valid keys: {', '.join(sorted(valid))}")


def make_dataclass(cls, values: dict, prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    reject_unknown(values, set(fields), prefix)
    hints = typing.get_type_hints(cls)
    return cls(**{k: coerce(v, hints[k], prefix + k) for k, v in values.items()})


def coerce(value, tp, key: str):
    """Check/convert ``value`` to the annotated type ``tp``; UsageError naming ``key`` otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except UsageError as e:
                errors.append(e)
        raise errors[0]
    if origin is list or tp is list:
        (item,) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise UsageError(f"config key {key!r}: expected a list, got {value!r}")
        return [coerce(v, item, key) for v in value]
    if tp is dict:
        if not isinstance(value, dict):
            raise UsageError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"config key {key!r}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UsageError(f"config key {key!r}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UsageError(f"config key {key!r}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UsageError(f"config key {key!r}: expected a string, got {value!r}")
    return value


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``; ``data.columns`` stays one value (a mapping)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "columns":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
