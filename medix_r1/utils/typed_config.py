"""Typed dataclass trees from YAML and ``key=value`` strings: the machinery behind the trainer's config.

Generic (no field of the trainer is named here): :func:`set_value` sets a dotted field with its
value checked and converted against the field's annotation, an unknown name is an error that
suggests the closest one; :func:`describe_fields` lists every field with its help text.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing

import yaml


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _hints(obj) -> dict:
    try:
        return typing.get_type_hints(type(obj))
    except Exception:  # forward references the reward module may use
        return {f.name: f.type for f in dataclasses.fields(obj)}


def _coerce(value, tp, key: str):
    """Check/convert ``value`` to the annotation ``tp``; TypeError naming ``key`` otherwise."""
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
                return _coerce(value, a, key)
            except TypeError as e:
                errors.append(str(e))
        raise TypeError(f"{key}: expected {tp}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise TypeError(f"{key}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if tp is typing.Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{key}: expected a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-6' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"{key}: expected a string, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if args and args[-1] is not Ellipsis and origin is list or args and len(args) == 2 and args[1] is Ellipsis:
            value = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return (tuple if (origin is tuple or tp is tuple) else list)(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{key}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        if args:
            value = {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(tp, type) and tp is not type(None):
        try:
            return tp(value)
        except Exception:
            raise TypeError(f"{key}: expected {tp.__name__}, got {value!r}") from None
    return value


def _unknown(name: str, known, where: str) -> ValueError:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(sorted(known))}"
    return ValueError(f"unknown config field '{where}{name}'{hint}")


def set_value(cfg, dotted: str, value) -> None:
    """Set ``cfg.a.b = value`` for ``dotted='a.b'`` with type checking."""
    parts = dotted.split(".")
    obj, prefix = cfg, ""
    for part in parts[:-1]:
        fields = _fields(obj)
        if part not in fields:
            raise _unknown(part, fields, prefix)
        obj = getattr(obj, part)
        prefix += part + "."
        if not dataclasses.is_dataclass(obj):
            raise ValueError(f"config field '{prefix[:-1]}' is a value, not a section")
    name = parts[-1]
    fields = _fields(obj)
    if name not in fields:
        raise _unknown(name, fields, prefix)
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise TypeError(f"{prefix}{name}: is a section, expected a mapping, got {value!r}")
        for k, v in value.items():
            set_value(cfg, f"{prefix}{name}.{k}", v)
        return
    object.__setattr__(obj, name, _coerce(value, _hints(obj)[name], prefix + name))


def apply_mapping(cfg, mapping: dict, prefix: str = "") -> None:
    if not isinstance(mapping, dict):
        raise TypeError(f"recipe must be a YAML mapping of sections, got {type(mapping).__name__}")
    for k, v in mapping.items():
        set_value(cfg, prefix + str(k), v)


def parse_override(text: str) -> tuple[str, object]:
    """'loss.beta=0.01' -> ('loss.beta', 0.01); the value is parsed as YAML (numbers, true/false, lists)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value (e.g. loss.beta=0.01), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"--set expects key=value, got an empty key in {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(cfg, text: str) -> None:
    """Apply one ``key=value`` override. The value is read as YAML, but when that reading does not fit
    the field and the text as written does (a string field given ``Context: ...``, which YAML reads as
    a mapping, or ``yes``, which it reads as true), the text as written is used."""
    key, value = parse_override(text)
    try:
        set_value(cfg, key, value)
    except TypeError as as_yaml:
        if isinstance(value, str) or value is None:
            raise
        try:
            set_value(cfg, key, text.split("=", 1)[1])
        except TypeError:
            raise as_yaml from None


def describe_fields(cfg, prefix: str = "", defaults=None) -> list[str]:
    """One entry per field, 'section.name (type) = VALUE: help', each under its own [section] header:
    a section's own fields first, then its nested sections (so no field is listed under a nested
    header). The values are ``cfg``'s; where ``defaults`` (the same tree with the built-in defaults)
    differs, the built-in value is named too."""
    lines, nested = [], []
    hints = _hints(cfg)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        base = getattr(defaults, f.name, value) if defaults is not None else value
        if dataclasses.is_dataclass(value):
            nested.append((f.name, value, base if dataclasses.is_dataclass(base) else None))
            continue
        tp = hints.get(f.name, f.type)
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        help_text = f.metadata.get("help") or f.metadata.get("doc") or ""
        built_in = f"; built-in default {_shown(base)}" if base != value else ""
        entry = f"{prefix}{f.name} ({tname}{built_in}) = {_shown(value)}"
        lines.append(entry + (f": {help_text}" if help_text else ""))
    for name, value, base in nested:
        lines.append(f"[{prefix}{name}]")
        lines.extend(describe_fields(value, f"{prefix}{name}.", base))
    return lines


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:56] + "..." + text[-1]
