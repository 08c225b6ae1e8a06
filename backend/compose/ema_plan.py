"""What a post-hoc EMA looks like before it runs: the runs found in a folder, a run's checkpoints in step order with
the weight each gets, and the checked `python -m backend ema` arguments.

A run is the files training writes into one folder under one output name: `NAME-stepNNNNNN.safetensors`,
`NAME-epochNNNNNN.safetensors` and the final `NAME.safetensors` (per Wan2.2 expert, with `-high_noise` / `-low_noise`
after the stem); `-state` folders (resume state) and earlier EMA results are not runs' checkpoints. The checkpoints
and weights shown come from the same functions the `ema` job uses (`ema_inputs.find_checkpoints`, `ema_weights`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from backend.compose.ema import PRECISIONS, SPACES, averaging_rule, check_compatible
from backend.compose.ema_inputs import EMA_KEY, find_checkpoints
from backend.compose.ema_weights import beta_weights, power_weights, uniform_weights
from backend.compose.merge_plan import display_path
from backend.compose.output_names import check_output
from backend.errors import UserError
from backend.models.checkpoint import read_safetensors_header
from backend.models.registry import EXPERT_STEMS

STATE_FOLDER_SUFFIX = "-state"
_SAVED = re.compile(r"^(?P<name>.+)-(?:step|epoch)\d{6}$")
DELTA_ALGOS = ("lora", "locon")
RULES = ("power", "beta", "uniform")


@dataclass(frozen=True)
class RunGroup:
    name: str
    expert: str | None
    folder: Path
    files: tuple[Path, ...]

    def key(self, root: Path) -> str:
        where = display_path(root, self.folder)
        return f"{where}/{self.name}" + (f" ({EXPERT_STEMS[self.expert]})" if self.expert else "")

    def label(self, root: Path) -> str:
        expert = f" ({EXPERT_STEMS[self.expert].replace('_', '-')} expert)" if self.expert else ""
        return f"{self.name}{expert}: {len(self.files)} files in {display_path(root, self.folder)}/"


def _split_stem(path: Path) -> tuple[str, str | None, bool]:
    """(run name, expert, is an intermediate step/epoch file)."""
    stem, expert = path.stem, None
    for name, expert_stem in EXPERT_STEMS.items():
        if stem.endswith(f"-{expert_stem}"):
            stem, expert = stem[: -len(expert_stem) - 1], name
    match = _SAVED.match(stem)
    return (match.group("name"), expert, True) if match else (stem, expert, False)


def _is_ema_result(path: Path) -> bool:
    try:
        return EMA_KEY in read_safetensors_header(path)[1]
    except UserError:
        return True  # unreadable: not offered as a checkpoint


def list_runs(folder: Path) -> list[RunGroup]:
    """Every run in `folder` (sub-folders included) with at least one step/epoch file and two files in all."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    groups: dict[tuple, list[Path]] = {}
    saved: set[tuple] = set()
    for path in sorted(folder.rglob("*.safetensors")):
        if any(part.endswith(STATE_FOLDER_SUFFIX) for part in path.relative_to(folder).parts[:-1]):
            continue
        name, expert, intermediate = _split_stem(path)
        key = (path.parent, name, expert)
        groups.setdefault(key, []).append(path)
        if intermediate:
            saved.add(key)
    runs = [RunGroup(name, expert, parent, tuple(p for p in paths if not _is_ema_result(p)))
            for (parent, name, expert), paths in groups.items() if (parent, name, expert) in saved]
    return sorted((run for run in runs if len(run.files) >= 2), key=lambda r: (str(r.folder), r.name, r.expert or ""))


def run_name(inputs: Sequence[Path]) -> str:
    """The name an EMA of these inputs is called after: the run's output name, else the folder's name."""
    first = Path(inputs[0])
    return _split_stem(first)[0] if first.is_file() else first.name


@dataclass(frozen=True)
class Discovered:
    files: list[Path]
    steps: list[int]
    steps_known: bool
    algo: str
    delta_space_ok: bool
    notes: list[str]


def discover(inputs: Sequence[Path]) -> Discovered:
    """The checkpoints the `ema` job would average, in its order, checked to be of one run."""
    run = find_checkpoints(inputs)
    loras = [checkpoint.lora for checkpoint in run.checkpoints]
    check_compatible(loras)
    first = loras[0]
    algo = "dora" if first.flags.get("use_dora") else first.algo
    delta_ok = algo in DELTA_ALGOS and all(a in DELTA_ALGOS for a in first.module_algos.values())
    return Discovered([c.path for c in run.checkpoints], list(run.steps), run.steps_known, algo, delta_ok,
                      list(run.notes))


@dataclass(frozen=True)
class Rule:
    """The averaging rule as the user set it; `rule` is one of RULES."""
    rule: str = "power"
    sigma_rel: float | None = 0.2
    beta: float | None = None
    beta2: float | None = None

    def cli_values(self) -> dict:
        if self.rule not in RULES:
            raise UserError(f"Unknown averaging rule `{self.rule}`; use power, beta or uniform.")
        if self.rule == "power":
            if self.sigma_rel is None:
                raise UserError("σ_rel is empty; type the EMA width, e.g. 0.2 (typical values are 0.05-0.25).")
            return {"sigma_rel": self.sigma_rel, "beta": None, "beta2": None, "uniform": False}
        if self.rule == "beta":
            if self.beta is None:
                raise UserError("β is empty; type the decay at the second checkpoint, e.g. 0.95.")
            return {"sigma_rel": None, "beta": self.beta, "beta2": self.beta2, "uniform": False}
        return {"sigma_rel": None, "beta": None, "beta2": None, "uniform": True}

    def weights(self, steps: Sequence[int]) -> tuple[list[float], float | None]:
        """(the weight of each checkpoint, γ for the power EMA) exactly as the `ema` job computes them."""
        values = self.cli_values()
        method, gamma = averaging_rule(values["sigma_rel"], values["beta"], values["beta2"], values["uniform"])
        if method == "uniform":
            return uniform_weights(len(steps)), None
        if method == "beta":
            return beta_weights(len(steps), values["beta"], values["beta2"]), None
        return power_weights(steps, gamma), gamma


@dataclass(frozen=True)
class EmaRequest:
    inputs: list[Path]
    out: Path
    rule: Rule
    space: str = "factors"
    precision: str = "same"
    overwrite: bool = False

    def check(self) -> Discovered:
        """Raise a UserError for bad input (nothing is written); returns the checkpoints the job will average."""
        if not self.inputs:
            raise UserError("No checkpoints are chosen; pick a run or type a run folder or checkpoint files.")
        if self.space not in SPACES:
            raise UserError(f"Unknown averaging space `{self.space}`; use factors or delta.")
        if self.precision not in PRECISIONS:
            raise UserError(f"Unknown precision `{self.precision}`; use one of {', '.join(PRECISIONS)}.")
        self.rule.cli_values()
        found = discover(self.inputs)
        self.rule.weights(found.steps)
        if self.space == "delta" and not found.delta_space_ok:
            raise UserError(f"The checkpoints are {found.algo}: the delta space re-factorizes into plain LoRA "
                            f"factors, so choose the factors space.")
        check_output(self.out, self.overwrite, found.files, lora_output=True)
        return found

    def arguments(self) -> list[str]:
        values = self.rule.cli_values()
        args = ["ema", *map(str, self.inputs), "--out", str(self.out), "--space", self.space,
                "--precision", self.precision]
        if values["uniform"]:
            return args + ["--uniform"]
        if values["beta"] is not None:
            args += ["--beta", repr(values["beta"])]
            return args + (["--beta2", repr(values["beta2"])] if values["beta2"] is not None else [])
        return args + ["--sigma_rel", repr(values["sigma_rel"])]
