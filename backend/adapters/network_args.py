"""`network_args`: the `key=value` strings musubi-tuner / blissful-tuner users already write, parsed strictly.

Accepted forms (all give the same `NetworkArgs`):
- a list of strings, as argparse gives `--network_args "use_dora=True" "loraplus_lr_ratio=8"` or as TOML gives
  `network_args = ["use_dora=True", "loraplus_lr_ratio=8"]` after parsing;
- one string: a TOML array (`["use_dora=True"]`), a TOML snippet containing `network_args = [...]` (also inside a
  `[network]` table), or whitespace-separated entries (`use_dora=True loraplus_lr_ratio=8`; entries wrapped in
  double quotes are split like a shell would).

Each entry splits on its first `=` only (a regex may contain `=`). An unknown key, a repeated key, a bad value or a
bad regex is a UserError naming the key (and for an unknown key the closest valid one). Keys that are never set
stay None, so `parse_network_args(render_network_args(args)) == args`.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
import re
import shlex
import tomllib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from backend.errors import UserError

ALGOS = ("lora", "dora", "locon", "loha", "lokr")


# --- value parsers: (key, text) -> value; render: value -> text ---------------------------------------------------
def _bool(key: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise UserError(f"network_args {key}={text!s}: expected True or False, e.g. `{key}=True`.")


def _float(minimum: float, maximum: float | None = None, *, below_maximum: bool = False,
           above_minimum: bool = False) -> Callable[[str, str], float]:
    def parse(key: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        low_ok = value > minimum if above_minimum else value >= minimum
        high_ok = maximum is None or (value < maximum if below_maximum else value <= maximum)
        if not (math.isfinite(value) and low_ok and high_ok):
            low = f"above {minimum:g}" if above_minimum else f"at least {minimum:g}"
            high = "" if maximum is None else f" and {'below' if below_maximum else 'at most'} {maximum:g}"
            raise UserError(f"network_args {key}={text}: expected a number {low}{high}, e.g. `{key}={_EXAMPLES[key]}`.")
        return value
    return parse


def _int(minimum: int, *, allow_minus_one: bool = False) -> Callable[[str, str], int]:
    def parse(key: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not (value >= minimum or (allow_minus_one and value == -1)):
            extra = " (or -1 for automatic)" if allow_minus_one else ""
            raise UserError(f"network_args {key}={text}: expected a whole number of at least {minimum}{extra}, "
                            f"e.g. `{key}={_EXAMPLES[key]}`.")
        return value
    return parse


def _algo(key: str, text: str) -> str:
    if text.lower() not in ALGOS:
        raise UserError(f"network_args algo={text}: expected one of {', '.join(ALGOS)}, e.g. `algo=lokr`.")
    return text.lower()


def _patterns(key: str, text: str) -> tuple[str, ...]:
    """A Python-literal list of regex strings, read with ast.literal_eval (never eval)."""
    try:
        with warnings.catch_warnings():  # users write '\.' in plain (non-raw) literals, as musubi's docs do
            warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
            value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise UserError(f"network_args {key}={text}: expected a Python list of regex strings, "
                        f"e.g. `{key}={_EXAMPLES[key]}`.")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserError(f"network_args {key}: `{pattern}` is not a valid regular expression ({exc}).") from None
    return tuple(value)


def _render(value: Any) -> str:
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value) if isinstance(value, float) else str(value)


_EXAMPLES = {"loraplus_lr_ratio": "8", "dropout": "0.1", "rank_dropout": "0.1", "module_dropout": "0.1",
             "conv_dim": "8", "conv_alpha": "4", "exclude_patterns": "['.*ffn.*']",
             "include_patterns": r"['blocks\\.(0|1)\\..*']", "factor": "8", "rank_q": "8", "rank_k": "8",
             "rank_v": "8", "rank_o": "8", "rank_kvo": "8", "rank_ffn": "8"}
_PROBABILITY = _float(0.0, 1.0, below_maximum=True)


def _arg(parse: Callable[[str, str], Any], help_text: str) -> Any:
    return field(default=None, metadata={"parse": parse, "help": help_text})


@dataclass(frozen=True)
class NetworkArgs:
    """Every `network_args` key; None means "not given" (the default applies, see NetworkConfig)."""

    algo: str | None = _arg(_algo, "Adapter algorithm: lora, dora (LoRA + use_dora), locon (LoRA also on "
                                   "convolutions), loha or lokr. Default lora.")
    use_rslora: bool | None = _arg(_bool, "Rank-stabilised scale alpha/sqrt(r) instead of alpha/r.")
    use_dora: bool | None = _arg(_bool, "DoRA: learn a per-row magnitude (Linear layers without dropout only).")
    loraplus_lr_ratio: float | None = _arg(_float(0.0, above_minimum=True),
                                           "LoRA+: the up/B-side learning rate is learning_rate x this ratio.")
    dropout: float | None = _arg(_PROBABILITY, "Neuron dropout on the adapter input (training only).")
    rank_dropout: float | None = _arg(_PROBABILITY, "Dropout of whole rank slices, rescaled 1/(1-p) (training only).")
    module_dropout: float | None = _arg(_PROBABILITY, "Probability of skipping a whole adapter for a step.")
    conv_dim: int | None = _arg(_int(0), "Rank for convolution layers (patch_embedding); setting it adapts them, "
                                         "0 leaves them out. Default network_dim under algo=locon.")
    conv_alpha: float | None = _arg(_float(0.0), "Alpha for convolution layers. Default network_alpha.")
    exclude_patterns: tuple[str, ...] | None = _arg(_patterns, "Regexes (fullmatch on original Wan names) of "
                                                               "modules to skip, e.g. ['.*ffn.*'].")
    include_patterns: tuple[str, ...] | None = _arg(_patterns, "Regexes of modules kept even when excluded; "
                                                               "alone they restrict nothing.")
    exclude_mod: bool | None = _arg(_bool, "Qwen-Image only (its img_mod/txt_mod layers); Wan has no such "
                                           "layers, so it changes nothing here and a warning says so.")
    verbose: bool | None = _arg(_bool, "Log every adapted module with its algorithm, rank, alpha and size.")
    rank_q: int | None = _arg(_int(1), "Rank of the q projections (self and cross attention).")
    rank_k: int | None = _arg(_int(1), "Rank of the k projections (and k_img).")
    rank_v: int | None = _arg(_int(1), "Rank of the v projections (and v_img).")
    rank_o: int | None = _arg(_int(1), "Rank of the attention output projections.")
    rank_kvo: int | None = _arg(_int(1), "Rank of k, v and o together (rank_k/rank_v/rank_o override it).")
    rank_ffn: int | None = _arg(_int(1), "Rank of the feed-forward layers ffn.0 and ffn.2.")
    factor: int | None = _arg(_int(1, allow_minus_one=True), "LoKr Kronecker factor (-1: most balanced split).")

    def __post_init__(self) -> None:
        if self.algo == "dora" and self.use_dora is False:
            raise UserError("network_args algo=dora contradicts use_dora=False; drop one of them.")
        if self.factor is not None and self.algo != "lokr":
            raise UserError("network_args factor only applies to LoKr; add algo=lokr or remove factor.")
        if self.algo == "locon" and self.conv_dim == 0:
            raise UserError("network_args algo=locon adapts convolutions but conv_dim=0 turns them off; "
                            "use algo=lora or a positive conv_dim.")
        if self.conv_alpha is not None and not self.conv_dim and self.algo != "locon":
            raise UserError("network_args conv_alpha has no effect without conv_dim or algo=locon; "
                            "set conv_dim (e.g. conv_dim=8) or remove conv_alpha.")


FIELDS = {f.name: f for f in dataclasses.fields(NetworkArgs)}
VALID_KEYS = tuple(FIELDS)


def parse_network_args(value: Sequence[str] | str | None) -> NetworkArgs:
    """Parse any accepted form (see the module docstring) into NetworkArgs."""
    values: dict[str, Any] = {}
    for entry in _entries(value):
        key, separator, text = entry.partition("=")
        key, text = key.strip(), text.strip()
        if not separator or not key:
            raise UserError(f"network_args entry `{entry}` is not key=value; write e.g. `use_dora=True`.")
        if key not in FIELDS:
            raise UserError(f"Unknown network_args key `{key}`; did you mean `{closest_key(key)}`?")
        if key in values:
            raise UserError(f"network_args sets `{key}` twice; keep one `{key}=...` entry.")
        if not text:
            raise UserError(f"network_args `{key}=` has no value; write e.g. `{key}={_example(key)}`.")
        values[key] = FIELDS[key].metadata["parse"](key, text)
    return NetworkArgs(**values)


def closest_key(key: str) -> str:
    return (difflib.get_close_matches(key, VALID_KEYS, n=1, cutoff=0.0) or [VALID_KEYS[0]])[0]


def render_network_args(args: NetworkArgs) -> list[str]:
    """The `key=value` lines a musubi user pastes, for the keys that are set, in a fixed order."""
    return [f"{name}={_render(getattr(args, name))}" for name in VALID_KEYS if getattr(args, name) is not None]


def render_network_args_toml(args: NetworkArgs) -> str:
    """`network_args = ["use_dora=True", ...]`, a valid TOML line (JSON string escapes are TOML's)."""
    return "network_args = [" + ", ".join(json.dumps(line) for line in render_network_args(args)) + "]"


def network_args_help() -> dict[str, str]:
    return {name: f.metadata["help"] for name, f in FIELDS.items()}


def _example(key: str) -> str:
    return _EXAMPLES.get(key, "True" if FIELDS[key].metadata["parse"] is _bool else "lora")


def _entries(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return _split_text(value)
    entries = list(value)
    for entry in entries:
        if not isinstance(entry, str):
            raise UserError(f"network_args entries must be strings like \"use_dora=True\", got {entry!r}.")
    return entries


def _split_text(text: str) -> list[str]:
    stripped = text.strip()
    if not stripped:
        return []
    if re.search(r"(?m)^\s*network_args\s*=", stripped):
        found = _find_network_args(_toml(stripped))
        if found is None:
            raise UserError("The TOML snippet has no `network_args = [...]` list; paste the whole line.")
        return _entries(found)
    if stripped.startswith("["):
        return _entries(_toml(f"network_args = {stripped}")["network_args"])
    if stripped.startswith('"'):
        try:
            return shlex.split(stripped)
        except ValueError as exc:
            raise UserError(f"network_args text has unbalanced quotes ({exc}); quote each entry once.") from None
    return stripped.split()


def _toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"network_args is not valid TOML ({exc}); write e.g. network_args = [\"use_dora=True\"].") \
            from None


def _find_network_args(table: dict[str, Any]) -> Any:
    if "network_args" in table:
        found = table["network_args"]
        if not isinstance(found, list):
            raise UserError("TOML network_args must be a list of strings, e.g. network_args = [\"use_dora=True\"].")
        return found
    for value in table.values():
        if isinstance(value, dict) and (found := _find_network_args(value)) is not None:
            return found
    return None
