"""A job form built from a settings model, by field name: each field's widget takes the field's label, help (as
the hint under it), choices and starting value, and has a slot right under it for that field's problem. Values
are read back by name, unrounded, so `2.5` reaches the model's check and is refused at the field."""
from __future__ import annotations

import re
import typing
from typing import Any

import gradio as gr

from backend.config.field_checks import field_problems
from backend.config.settings import Settings, _field_kind

RADIO_MAX_CHOICES = 4


def widget(cls: type[Settings], name: str, value: Any, elem_id: str, choices: list | None = None,
           typed: bool = False):
    """The widget of one field (`choices` narrows the field's own, e.g. to the devices this machine has, or gives a
    text field the files it may pick; `typed`: a value not among them may be typed, e.g. a path)."""
    info = cls.field_info()[name]
    kind = _field_kind(cls, name)
    common = dict(label=info["label"], info=info["help"], elem_id=elem_id, value=value)
    options = choices if choices is not None else info["choices"]
    if options is not None and (options or typed):
        field = cls.model_fields[name]
        options = choice_list(cls, name, options)
        if field.default is None and not field.is_required():
            common["value"] = "" if value is None else value
        if typed:
            return gr.Dropdown(list(options), allow_custom_value=True, **common)
        return (gr.Radio(list(options), **common) if len(options) <= RADIO_MAX_CHOICES
                else gr.Dropdown(list(options), **common))
    if kind is bool:
        return gr.Checkbox(**common)
    if kind in (int, float):
        return gr.Number(**common)  # no precision: the check, not the page, refuses a fraction
    if typing.get_origin(kind) is list:
        return gr.Textbox(**{**common, "value": ", ".join(map(str, value or []))})
    return gr.Textbox(**{**common, "value": value or ""}, max_lines=1)


def choice_list(cls: type[Settings], name: str, options: list) -> list:
    """A field's choices as its widget lists them: for an optional field, "not given" first (its `unset` name, read
    back as None), then each option."""
    field = cls.model_fields[name]
    if field.default is None and not field.is_required():
        unset = (field.json_schema_extra or {}).get("unset", "(not set)")
        return [(unset, ""), *((option, option) for option in options)]
    return list(options)


class SettingsForm:
    """Widgets and problem slots for `names`, each field taken from the first of `models` that declares it;
    `start` gives starting values (default: the field's), `choices` narrows a field's choices."""

    def __init__(self, models: type[Settings] | tuple[type[Settings], ...], names: list[str], elem_prefix: str,
                 start: dict | None = None, choices: dict[str, list] | None = None) -> None:
        models = models if isinstance(models, tuple) else (models,)
        self.owner = {name: next(m for m in models if name in m.model_fields) for name in names}
        self.names, self.elem_prefix = list(names), elem_prefix
        self.start = {name: self.owner[name].field_info()[name]["default"] for name in names} | (start or {})
        self.choices = choices or {}
        self.widgets: dict[str, Any] = {}
        self.slots: dict[str, gr.Markdown] = {}

    def elem_id(self, name: str) -> str:
        return f"{self.elem_prefix}-{name.replace('_', '-')}"

    def build(self, names: list[str] | None = None, per_row: int = 4) -> None:
        """Lay out `names` (default: all not built yet) in rows, each widget over its problem slot."""
        names = [n for n in self.names if n not in self.widgets] if names is None else names
        for first in range(0, len(names), per_row):
            with gr.Row(equal_height=False):
                for name in names[first:first + per_row]:
                    with gr.Column(min_width=200):
                        self.widgets[name] = widget(self.owner[name], name, self.start[name], self.elem_id(name),
                                                    self.choices.get(name))
                        self.slots[name] = gr.Markdown("", visible=False, elem_id=f"{self.elem_id(name)}-error",
                                                       elem_classes=["field-error"])

    @property
    def inputs(self) -> list:
        return [self.widgets[name] for name in self.names]

    @property
    def outputs(self) -> list:
        return [self.slots[name] for name in self.names]

    def values(self, raw: typing.Sequence) -> dict[str, Any]:
        """The widgets' values by field name (a blank number is None; a list field is read from its text)."""
        values = {}
        for name, value in zip(self.names, raw):
            kind = _field_kind(self.owner[name], name)
            if typing.get_origin(kind) is list and isinstance(value, str):
                value = [part for part in re.split(r"[,;\s]+", value) if part]
            elif value == "" and (kind is not str or not self.owner[name].model_fields[name].is_required()
                                  and self.owner[name].model_fields[name].default is None):
                value = None  # a blank number, or a blank text whose default is "not given"
            if isinstance(value, float) and kind is int and value.is_integer():
                value = int(value)
            values[name] = value
        return values

    def problems(self, model: type[Settings], values: dict[str, Any]) -> dict[str, str]:
        """{field: sentence} for `model` given `values`, worded with the fields' labels; only the form's fields."""
        return {name: message for name, message in field_problems(model, values).items() if name in self.names}

    def slot_updates(self, problems: dict[str, str]) -> list:
        """Each slot shows its field's problem, or hides; in `outputs` order."""
        return [slot_update(problems.get(name)) for name in self.names]


def slot_update(problem: str | None):
    """A problem slot showing `problem`, or hidden."""
    return gr.update(value=f"⚠ {problem}" if problem else "", visible=bool(problem))
