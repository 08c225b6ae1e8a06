"""The Train tab's settings form, generated from TrainSettings: one widget per field, grouped in accordions.

Every widget is found by its field name (`Form.components[name]`), never by position. Each field has an error
slot under it (`train-<name>-error`), shown only while that field is wrong. Widget values and setting values
convert by name too: `settings_values(widgets)` gives what TrainSettings reads, `widget_values(settings)` the
reverse. `network_args` and `loraid` have their own widgets (ui/train_network.py); `dataset_config` is a dropdown
of the workspace's dataset TOML files that also takes a typed path.
"""
from __future__ import annotations

import typing
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from backend.models.registry import MODEL_KINDS
from backend.train.settings import TrainSettings
from backend.workspace import Workspace

GROUP_ORDER = ["Model", "Dataset", "Network", "Optimizer", "Training", "Memory", "Saving", "Sampling", "Logging",
               "Distributed"]
OWN_WIDGETS = ("network_args", "loraid")  # built by ui/train_network.py
FIELDS = TrainSettings.field_info()
PATH_FIELDS = ("dit", "dit_high_noise", "vae", "text_encoder", "dataset_config", "network_weights", "output_dir",
               "resume", "sample_prompts", "logging_dir")  # given twice the width of the fields beside them


def elem_id(name: str) -> str:
    return f"train-{name}"


def error_id(name: str) -> str:
    return f"train-{name}-error"


def error_key(name: str) -> str:
    return f"error:{name}"


def field_type(name: str) -> tuple[type, bool]:
    """(int | float | str | bool | Literal, optional) of a field."""
    annotation = TrainSettings.model_fields[name].annotation
    args = typing.get_args(annotation)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def dataset_choices(workspace: Workspace, typed: str = "") -> list[str]:
    """Every `dataset.toml` under the workspace's datasets/ (relative to the workspace), after a typed path."""
    folder = workspace.datasets
    found = sorted(path.relative_to(workspace.root).as_posix() for path in folder.rglob("dataset.toml")) \
        if folder.is_dir() else []
    return [typed, *found] if typed and _in_workspace(workspace, typed) not in found else found


def _in_workspace(workspace: Workspace, typed: str) -> str:
    """A typed path as the list names it (relative to the workspace), so a file is never listed twice."""
    path = Path(typed).expanduser()
    try:
        return path.resolve().relative_to(workspace.root).as_posix() if path.is_absolute() else path.as_posix()
    except ValueError:
        return typed


def widget_value(name: str, value: Any) -> Any:
    kind, optional = field_type(name)
    if kind is str and value is None:
        return ""
    if optional and kind in (int, float):  # a text box: empty means "not set", which a number box cannot show
        return "" if value is None else number_text(value)
    return value


def number_text(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def setting_value(name: str, value: Any) -> Any:
    """A widget's value as the field takes it: an empty optional number is None, text is stripped."""
    kind, optional = field_type(name)
    if isinstance(value, str):
        value = value.strip()
    if optional and value in ("", None):
        return None
    if kind is str and value is None:
        return ""
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def settings_values(widgets: dict[str, Any]) -> dict[str, Any]:
    """The TrainSettings values of the generic widgets (network_args and loraid come from their own widgets)."""
    return {name: setting_value(name, widgets.get(name)) for name in FIELDS if name not in OWN_WIDGETS}


def widget_values(settings: TrainSettings) -> dict[str, Any]:
    return {name: widget_value(name, getattr(settings, name)) for name in FIELDS if name not in OWN_WIDGETS}


def _widget(name: str, value: Any, workspace: Workspace):
    info = FIELDS[name]
    kind, optional = field_type(name)
    common = dict(label=info["label"], info=info["help"], elem_id=elem_id(name))
    if name == "model_kind":
        choices = [(f"{MODEL_KINDS[k].label} ({k})", k) for k in info["choices"]]
        return gr.Dropdown(choices, value=value, **common)
    if name == "dataset_config":
        return gr.Dropdown(dataset_choices(workspace, value), value=value, allow_custom_value=True, **common)
    if info["choices"]:
        return gr.Dropdown(info["choices"], value=value, **common)
    if kind is bool:
        return gr.Checkbox(value=bool(value), label=info["label"], info=info["help"], elem_id=elem_id(name))
    if kind in (int, float) and optional:
        return gr.Textbox(value=value, max_lines=1, placeholder="empty: not set", **common)
    if kind in (int, float):  # no rounding in the page: 2.5 steps reaches the check and is refused at the field
        return gr.Number(value=value, **common)
    return gr.Textbox(value=value or "", max_lines=1, **common)


@dataclass
class Form:
    """Name -> widget for every generic field, plus name -> error slot."""
    components: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, gr.Markdown] = field(default_factory=dict)

    def add_error_slot(self, name: str, message: str = "") -> None:
        self.errors[name] = gr.Markdown(f"⚠ {message}" if message else "", visible=bool(message),
                                        elem_id=error_id(name), elem_classes=["train-field-error"])

    def build_fields(self, names: list[str], settings: TrainSettings, workspace: Workspace,
                     errors: dict[str, str], per_row: int = 3) -> None:
        """The fields in rows of `per_row`, each with its error slot right under it."""
        for start in range(0, len(names), per_row):
            with gr.Row(equal_height=False):
                for name in names[start:start + per_row]:
                    with gr.Column(min_width=260, scale=2 if name in PATH_FIELDS else 1):  # paths shown whole
                        self.components[name] = _widget(name, widget_value(name, getattr(settings, name)),
                                                        workspace)
                        self.add_error_slot(name, errors.get(name, ""))


def error_updates(errors: dict[str, str], names) -> dict[str, Any]:
    """Show each field's message in its slot; empty and hidden where the field is fine."""
    return {error_key(name): gr.update(value=f"⚠ {errors[name]}" if name in errors else "", visible=name in errors)
            for name in names}
