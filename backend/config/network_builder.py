"""The network_args builder: one control per `network_args` key, named recipes, and the exact lines they give.

A builder state is the network type (TrainSettings.network_type: lora, dora, locon, loha, lokr; it plays the role
of the `algo` key) plus a value per other key (None = not given). `builder_lines` turns a state into the canonical
`key=value` lines stored in TrainSettings.network_args (checked by the strict parser, so a bad value or a
contradiction is one sentence); `builder_state` reads lines back. lines -> state -> lines gives the canonical
lines: the same keys in a fixed order, minus entries that change nothing (`use_dora=False`, `verbose=False`: an
unticked box); `exclude_mod=False` is kept, it is the meaningful value of that key.

`musubi_network_args` is what a musubi-tuner user pastes: the network type spelled the way musubi reads it
(`use_dora=True` for DoRA on networks.lora_wan, `algo=...` for the LyCORIS types), the builder's lines, and the
LORAID slice's include/exclude patterns.

Recipes are the seed's known-good combinations plus one per adapter type. The seed's Qwen-Image persona recipe
(`exclude_mod=False`) is left out: Wan has no img_mod/txt_mod layers; the seed's "selective layer training"
(single_blocks, a Flux name) becomes its Wan form: attention only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.adapters.network_args import FIELDS, NetworkArgs, parse_network_args, render_network_args
from backend.errors import UserError
from backend.loraid.allocation import Allocation
from backend.loraid.patterns import network_args_entries

NETWORK_TYPES = ("lora", "dora", "locon", "loha", "lokr")
BUILDER_KEYS = tuple(key for key in FIELDS if key != "algo")
BOOL_KEYS = tuple(key for key in BUILDER_KEYS if FIELDS[key].metadata["parse"].__name__ == "_bool")
PATTERN_KEYS = ("exclude_patterns", "include_patterns")
LYCORIS_TYPES = ("locon", "loha", "lokr")


@dataclass(frozen=True)
class Recipe:
    label: str
    network_type: str
    values: dict[str, Any] = field(default_factory=dict)
    best_for: str = ""


RECIPES: dict[str, Recipe] = {
    "lora": Recipe("LoRA", "lora", {}, "The standard low-rank adapter."),
    "dora": Recipe("DoRA", "dora", {}, "LoRA plus a learned per-row magnitude (Linear layers, no dropout)."),
    "locon": Recipe("LoCon", "locon", {}, "LoRA that also adapts the convolution (patch_embedding)."),
    "loha": Recipe("LoHa", "loha", {}, "Hadamard product of two low-rank pairs: more expressive per parameter."),
    "lokr": Recipe("LoKr", "lokr", {"factor": -1}, "Kronecker product; factor -1 picks the most balanced split."),
    "rslora-loraplus": Recipe("RS-LoRA + LoRA+", "lora", {"use_rslora": True, "loraplus_lr_ratio": 8.0},
                              "Faster convergence with stable high-rank training."),
    "rslora": Recipe("RS-LoRA only", "lora", {"use_rslora": True},
                     "Higher-rank training (dim > 32), comparing runs of different ranks."),
    "use-dora": Recipe("DoRA only (use_dora)", "lora", {"use_dora": True},
                       "Linear-layer focused training without dropout."),
    "rslora-dora": Recipe("RS-LoRA + DoRA", "lora", {"use_rslora": True, "use_dora": True},
                          "Maximum expressiveness with stable scaling."),
    "full-combo": Recipe("Full combo (RS-LoRA + DoRA + LoRA+)", "lora",
                         {"use_rslora": True, "use_dora": True, "loraplus_lr_ratio": 8.0},
                         "High-quality persona/identity LoRAs with faster training."),
    "style-dora-dropout": Recipe("Style: DoRA + module dropout", "lora", {"use_dora": True, "module_dropout": 0.1},
                                 "Style LoRAs with regularisation (module_dropout keeps DoRA on)."),
    "attention-only": Recipe("Selective layers: attention only", "lora",
                             {"exclude_patterns": (".*ffn.*",), "use_rslora": True},
                             "Leave the feed-forward layers untouched."),
}


def empty_values() -> dict[str, Any]:
    return {key: None for key in BUILDER_KEYS}


def recipe_state(name: str) -> tuple[str, dict[str, Any]]:
    """(network type, builder values) of a recipe: every key not in the recipe is cleared."""
    if name not in RECIPES:
        raise UserError(f"Unknown network recipe `{name}`; choose one of: {', '.join(RECIPES)}.")
    recipe = RECIPES[name]
    values = {**empty_values(), **recipe.values}
    if recipe.network_type == "dora":
        values["use_dora"] = True  # the type's meaning, shown in the builder's box
    return recipe.network_type, values


def _text(key: str, value: Any) -> str | None:
    """A builder value as the text the key's parser reads; None when the key is not given."""
    if value is None or value == "" or value == ():
        return None
    if key in PATTERN_KEYS:
        patterns = value.splitlines() if isinstance(value, str) else list(value)
        patterns = [p.strip() for p in patterns if p.strip()]
        return repr(patterns) if patterns else None
    if key in BOOL_KEYS:
        if isinstance(value, str):
            return None if value.lower() in ("", "unset", "none") else value
        return None if value is False and key != "exclude_mod" else str(bool(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip() or None


def checked_args(network_type: str, values: dict[str, Any]) -> NetworkArgs:
    """The builder state as NetworkArgs (algo = the network type), through the strict parser."""
    if network_type not in NETWORK_TYPES:
        raise UserError(f"Unknown network type `{network_type}`; choose one of: {', '.join(NETWORK_TYPES)}.")
    unknown = [key for key in values if key not in FIELDS or key == "algo"]
    if unknown:
        raise UserError(f"The builder has no network_args key `{unknown[0]}`; the network type sets the algorithm.")
    if network_type == "dora":  # the type is LoRA + use_dora: the box shows it ticked and the lines leave it out
        if values.get("use_dora") is False:
            raise UserError("Network type dora always trains with use_dora; tick use_dora again, or choose network "
                            "type lora to train without DoRA.")
        values = {**values, "use_dora": None}
    entries = [f"{key}={text}" for key in BUILDER_KEYS if (text := _text(key, values.get(key))) is not None]
    if network_type != "lora":
        entries.append(f"algo={network_type}")
    return parse_network_args(entries)


def builder_lines(network_type: str, values: dict[str, Any]) -> list[str]:
    """The canonical lines for TrainSettings.network_args (without `algo`: network_type holds it)."""
    args = checked_args(network_type, values)
    return [line for line in render_network_args(args) if not line.startswith("algo=")]


def builder_state(network_type: str, lines: list[str] | str) -> tuple[str, dict[str, Any]]:
    """Read network_args (any accepted form) into (network type, builder values); an `algo=` entry sets the type."""
    args = parse_network_args(lines)
    if args.algo is not None and network_type not in ("lora", args.algo):
        raise UserError(f"network_args say algo={args.algo} but the network type is {network_type}; "
                        f"keep one of them.")
    values = {key: getattr(args, key) for key in BUILDER_KEYS}
    network_type = args.algo or network_type
    if network_type == "dora":
        values["use_dora"] = True  # what the type means, so the builder's box and the type agree
    return network_type, values


def musubi_network_args(network_type: str, lines: list[str], allocation: Allocation | None) -> list[str]:
    """The `--network_args` entries for musubi-tuner: the type as musubi reads it + our lines + the LORAID slice."""
    keys = {line.split("=", 1)[0].strip() for line in lines}
    head = []
    if network_type == "dora" and "use_dora" not in keys:
        head.append("use_dora=True")
    elif network_type in LYCORIS_TYPES:
        head.append(f"algo={network_type}")
    tail = network_args_entries(allocation) if allocation is not None else []
    return head + list(lines) + tail


def network_module(network_type: str) -> str:
    """musubi-tuner's --network_module for this type (LyCORIS types go through LyCORIS's kohya wrapper)."""
    return "lycoris.kohya" if network_type in LYCORIS_TYPES else "networks.lora_wan"
