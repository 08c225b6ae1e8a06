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

from backend.compose.ema import averaging_rule, check_compatible
from backend.compose.ema_inputs import EMA_KEY, find_checkpoints
from backend.compose.ema_weights import beta_weights, gamma_from_sigma_rel, power_weights, uniform_weights
from backend.compose.merge_plan import display_path
from backend.compose.output_names import check_output, split_expert_stem
from backend.compose.settings import RULE_VALUES, RULES, EmaSettings
from backend.errors import UserError
from backend.models.checkpoint import read_safetensors_header
from backend.models.registry import EXPERT_STEMS

STATE_FOLDER_SUFFIX = "-state"
_SAVED = re.compile(r"^(?P<name>.+)-(?:step|epoch)\d{6}$")
DELTA_ALGOS = ("lora", "locon")
LABELS = {name: info["label"] for name, info in EmaSettings.field_info().items()}


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
    stem, expert = split_expert_stem(path.stem)
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


def rule_problems(rule: str, sigma_rel: float | None, beta: float | None,
                  beta2: float | None) -> dict[str, str]:
    """{field: sentence} for each empty or out-of-range value of the chosen rule, worded with the fields' labels (a
    form shows each beside its field); the values of the other rules are not looked at."""
    if rule not in RULES:
        return {"rule": f"Unknown averaging rule `{rule}`; use power, beta or uniform."}
    checks = {"sigma_rel": (lambda: gamma_from_sigma_rel(sigma_rel), "type the EMA width, e.g. 0.2 (typical values "
                                                                      "are 0.05-0.25)"),
              "beta": (lambda: beta_weights(2, beta), "type the decay at the second checkpoint, e.g. 0.95"),
              "beta2": (lambda: beta_weights(2, 0.5, beta2), None)}
    values = {"sigma_rel": sigma_rel, "beta": beta, "beta2": beta2}
    problems = {}
    for name in RULE_VALUES[rule]:
        check, when_empty = checks[name]
        if values[name] is None:
            if when_empty:
                problems[name] = f"{LABELS[name]} is empty; {when_empty}."
            continue
        try:
            check()
        except UserError as exc:
            problems[name] = str(exc)
    return problems


def rule_problem(rule: str, sigma_rel: float | None, beta: float | None, beta2: float | None) -> str | None:
    """The first of `rule_problems`, or None."""
    return next(iter(rule_problems(rule, sigma_rel, beta, beta2).values()), None)


def rule_weights(settings: EmaSettings, steps: Sequence[int]) -> tuple[list[float], float | None]:
    """(the weight of each checkpoint, γ for the power EMA) exactly as the `ema` job computes them."""
    problem = rule_problem(settings.rule, settings.sigma_rel, settings.beta, settings.beta2)
    if problem:
        raise UserError(problem)
    values = settings.rule_values()
    method, gamma = averaging_rule(values["sigma_rel"], values["beta"], values["beta2"], values["uniform"])
    if method == "uniform":
        return uniform_weights(len(steps)), None
    if method == "beta":
        return beta_weights(len(steps), values["beta"], values["beta2"]), None
    return power_weights(steps, gamma), gamma


def check_request(settings: EmaSettings) -> Discovered:
    """Raise a UserError for bad input (nothing is written); returns the checkpoints the job will average."""
    if not settings.inputs:
        raise UserError("No checkpoints are chosen; pick a run or type a run folder or checkpoint files.")
    found = discover([Path(p) for p in settings.inputs])
    rule_weights(settings, found.steps)
    if settings.space == "delta" and not found.delta_space_ok:
        raise UserError(f"The checkpoints are {found.algo}: the delta space re-factorizes into plain LoRA "
                        f"factors, so choose the factors space.")
    check_output(Path(settings.out), settings.overwrite, found.files, lora_output=True)
    return found
