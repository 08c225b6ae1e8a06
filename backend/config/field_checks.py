"""Every wrong field of a settings model at once, one sentence each, worded for where it is shown.

A form shows each sentence next to its field and names the field by its label ("Batch size is 0; ..."); the
command line names the flag ("--batch_size is 0; ..."). Both come from the same checks: pydantic's (types,
ranges), the field's choices, and the model's own `rules(name_of)` for what depends on other fields or on this
machine (e.g. a GPU that is not there).
"""
from __future__ import annotations

import typing
from typing import Any, Callable

from pydantic import ValidationError

from backend.config.settings import Settings, _field_kind
from backend.errors import refuse_first

NameOf = Callable[[str], str]
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "above"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "below")}


def label_of(cls: type[Settings]) -> NameOf:
    """A field as a form shows it: its label."""
    info = cls.field_info()
    return lambda name: info[name]["label"] if name in info else name


def flag_of(name: str) -> str:
    """A field as the command line knows it: its flag."""
    return f"--{name}"


_KINDS = {int: "a whole number", float: "a number", str: "a text", bool: "true or false"}


def expected(cls: type[Settings], name: str) -> str:
    kind = _field_kind(cls, name)
    if typing.get_origin(kind) is list:
        item = (typing.get_args(kind) or (str,))[0]
        return {int: "whole numbers", float: "numbers"}.get(item, "values")
    return _KINDS.get(kind, "a value")


def _sentence(cls: type[Settings], name: str, error: dict, name_of: NameOf) -> str:
    value, kind, ctx = error.get("input"), error["type"], error.get("ctx") or {}
    what = name_of(name)
    if len(error["loc"]) > 1:  # one value of a list
        item = _KINDS.get((typing.get_args(_field_kind(cls, name)) or (str,))[0], "a value")
        return f"{what} holds {value!r}, which is not {item}; enter {expected(cls, name)} separated by commas."
    if value is None or value == "" or value == []:
        return f"{what} is empty; enter {expected(cls, name)}."
    if kind == "multiple_of":
        step = ctx["multiple_of"]
        low = int(value // step * step)
        nearest = f"{low} or {low + step}" if low >= step else f"{low + step}"
        return f"{what} is {value!r}, not a multiple of {step}; use {nearest}."
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        bound = ctx[key]
        return f"{what} is {value!r}; it must be {words} {bound:g}." if isinstance(bound, (int, float)) else \
            f"{what} is {value!r}; it must be {words} {bound}."
    if kind == "int_from_float":
        return f"{what} is {value!r}, not a whole number; enter a whole number such as {int(value)}."
    if kind == "finite_number":
        return f"{what} is {value!r}; enter a finite number."
    return f"{what} = {value!r} is not {expected(cls, name)}; enter {expected(cls, name)}."


def field_problems(cls: type[Settings], values: dict[str, Any], name_of: NameOf | None = None) -> dict[str, str]:
    """{field: sentence} for every wrong field, in the model's order; empty when `values` make valid settings."""
    name_of = name_of or label_of(cls)
    problems: dict[str, str] = {}
    info = cls.field_info()
    for name, value in values.items():
        choices = info.get(name, {}).get("choices")
        if choices and value is not None and value not in choices:
            problems[name] = f"{name_of(name)} is {value!r}; choose one of {', '.join(map(str, choices))}."
    try:
        cls(**{k: v for k, v in values.items() if k not in problems})
    except ValidationError as exc:
        for error in exc.errors():
            if error["loc"]:
                problems.setdefault(str(error["loc"][0]), _sentence(cls, str(error["loc"][0]), error, name_of))
    try:  # the rules across fields and about this machine, with the wrong fields left at their defaults
        settings = cls(**{k: v for k, v in values.items() if k not in problems})
    except ValidationError:  # a wrong field has no default: its sentence says enough
        pass
    else:
        rules = getattr(settings, "rules", None)
        for name, message in (rules(name_of) if rules is not None else {}).items():
            problems.setdefault(name, message)
    order = {name: index for index, name in enumerate(cls.model_fields)}
    return dict(sorted(problems.items(), key=lambda item: order.get(item[0], len(order))))


def checked(cls: type[Settings], values: dict[str, Any], name_of: NameOf = flag_of):
    """The settings, or a UserError with the first wrong field's sentence (the command line's flags by default)."""
    refuse_first(field_problems(cls, values, name_of))
    return cls(**values)
