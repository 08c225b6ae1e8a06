"""The Network group's own widgets: the network_args builder (recipes, one control per key, a paste box), the
network_args lines shown live, and the LORAID picker with the slice it owns.

Widget names: `net:<key>` for each builder key, `net:recipe`, `net:paste`, `net:text` (the lines a musubi-tuner
user pastes), `loraid` (0 = no LORAID: all blocks), `loraid:allocation`.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from backend.adapters.network_args import network_args_help
from backend.config.network_builder import (BOOL_KEYS, BUILDER_KEYS, PATTERN_KEYS, RECIPES, builder_lines,
                                            musubi_network_args)
from backend.errors import UserError
from backend.loraid.allocation import Allocation, allocation_table, describe_units
from backend.models.registry import get_model_kind
from backend.train.settings import TrainSettings
from ui.train_form import number_text

NO_LORAID = 0
TRI_STATE = ["unset", "True", "False"]  # exclude_mod: False is its meaningful value, so it is not a checkbox
HELP = network_args_help()
GROUPS = [  # (heading, keys) as the controls are laid out
    ("Scaling and learning rate", ("use_rslora", "use_dora", "loraplus_lr_ratio")),
    ("Dropout", ("dropout", "rank_dropout", "module_dropout")),
    ("Convolutions (LoCon) and LoKr", ("conv_dim", "conv_alpha", "factor")),
    ("Per-projection ranks (empty: network_dim)", ("rank_q", "rank_k", "rank_v", "rank_o", "rank_kvo", "rank_ffn")),
    ("Which modules", ("exclude_patterns", "include_patterns", "exclude_mod", "verbose")),
]


def net_key(key: str) -> str:
    return f"net:{key}"


def net_elem_id(key: str) -> str:
    return f"train-net-{key}"


def control_value(key: str, value: Any) -> Any:
    """A builder value as its widget shows it."""
    if key in PATTERN_KEYS:
        return "\n".join(value or ())
    if key == "exclude_mod":
        return "unset" if value is None else str(bool(value))
    if key in BOOL_KEYS:
        return bool(value)
    return "" if value is None else number_text(value)


def builder_values(widgets: dict[str, Any]) -> dict[str, Any]:
    return {key: widgets.get(net_key(key)) for key in BUILDER_KEYS}


def control_updates(values: dict[str, Any]) -> dict[str, Any]:
    return {net_key(key): control_value(key, values.get(key)) for key in BUILDER_KEYS}


def _control(key: str, value: Any):
    common = dict(label=key, info=HELP[key], elem_id=net_elem_id(key))
    if key in PATTERN_KEYS:
        return gr.Textbox(control_value(key, value), lines=2, placeholder="one regex per line", **common)
    if key == "exclude_mod":
        return gr.Radio(TRI_STATE, value=control_value(key, value), **common)
    if key in BOOL_KEYS:
        return gr.Checkbox(bool(value), **common)
    return gr.Textbox(control_value(key, value), max_lines=1, placeholder="empty: not set", **common)


def build_builder(components: dict[str, Any], values: dict[str, Any]) -> None:
    gr.Markdown("#### network_args builder\nPick a recipe (known-good combinations included), then adjust "
                "any key. Empty or unticked means \"not given\": the default applies.")
    with gr.Row():
        components["net:recipe"] = gr.Dropdown([(r.label, name) for name, r in RECIPES.items()], value=None,
                                               label="Recipe", elem_id="train-net-recipe", scale=2,
                                               info="Sets the network type and every key below.")
        components["net:paste"] = gr.Textbox("", label="Paste network_args (any form: lines, a TOML line, "
                                             "\"k=v\" \"k=v\")", lines=2, elem_id="train-net-paste", scale=3)
        components["net:paste-apply"] = gr.Button("Apply pasted", elem_id="train-net-paste-apply", scale=0,
                                                  min_width=130)
    for heading, keys in GROUPS:
        gr.Markdown(f"**{heading}**")
        with gr.Row():
            for key in keys:
                components[net_key(key)] = _control(key, values.get(key))


def loraid_choices(settings: TrainSettings, taken: dict[int, str]) -> list[tuple[str, int]]:
    """(label, value) for every ID of the model's layout, each with its blocks and owner; first 'none'."""
    kind = get_model_kind(settings.model_kind)
    expert = settings.expert if kind.has_experts else None
    try:
        table = allocation_table(kind.num_blocks, settings.blocks_per_loraid, expert, model=kind.name)
    except UserError:
        table = []
    choices = [("none: train all blocks", NO_LORAID)]
    for allocation in table:
        owner = f"taken by {taken[allocation.loraid]}" if allocation.loraid in taken else "free"
        choices.append((f"{allocation.loraid}: {describe_units(allocation)} ({owner})", allocation.loraid))
    if settings.loraid is not None and settings.loraid not in [value for _, value in choices]:
        choices.append((f"{settings.loraid}: owns no block of this model", settings.loraid))
    return choices


def allocation_text(settings: TrainSettings | None, allocation: Allocation | None, note: str = "") -> str:
    if settings is None:
        return ""
    kind = get_model_kind(settings.model_kind)
    if allocation is None:
        return f"No LORAID: the adapter covers all {kind.num_blocks} blocks of {kind.label}."
    expert = f" of the {allocation.expert} expert" if allocation.expert in ("high", "low") else (
        " of both experts" if allocation.expert == "both" else "")
    text = (f"LORAID {allocation.loraid} owns {describe_units(allocation)}{expert} "
            f"({allocation.unit_count} of {kind.num_blocks}, {allocation.blocks_per_loraid} per ID).")
    return f"{text}  \n⚠ {note}" if note else text


def live_lines(network_type: str, values: dict[str, Any], allocation: Allocation | None) -> str:
    """The `--network_args` lines for musubi-tuner, one per line (what a user pastes)."""
    return "\n".join(musubi_network_args(network_type, builder_lines(network_type, values), allocation))
