"""Typed dataclass configs <-> plain JSON dicts (nested dataclasses and tuples included)."""
from __future__ import annotations

import dataclasses
import typing


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, data: dict):
    """Build dataclass `cls` from a dict, recursing into nested dataclass fields; unknown keys fail."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = from_dict(kind, value)
        elif typing.get_origin(kind) is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def updated(config, overrides: dict):
    """A copy of `config` with nested overrides applied, e.g. {"unet": {"widths": (32, 64)}}."""
    values = {}
    for name, value in overrides.items():
        if name not in {f.name for f in dataclasses.fields(config)}:
            raise ValueError(f"{type(config).__name__} has no field {name!r}")
        current = getattr(config, name)
        nested = dataclasses.is_dataclass(current) and isinstance(value, dict)
        values[name] = updated(current, value) if nested else value
    return dataclasses.replace(config, **values)
