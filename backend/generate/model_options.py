"""Which transformer a generation runs on, as the Generate tab offers it: the workspace's demo models, the merged DiTs
in `outputs/merged/` (a Wan2.2 A14B pair merged as NAME-high_noise / NAME-low_noise is one choice), or a typed path.

A choice is one text value: a demo model's name (`demo-t2v`), a checkpoint path (relative to the workspace or
absolute), or two paths `HIGH | LOW` for an expert pair. `read_model` turns it into a checked `ModelPick`, which
knows its `python -m backend generate` arguments and which transformers (roles) it loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.compose.output_names import MERGED_DIT_FOLDER
from backend.errors import UserError
from backend.generate.options import DEMO_MODELS, ModelSource
from backend.generate.pipeline import ModelChoice
from backend.models.checkpoint import read_checkpoint_shapes
from backend.models.registry import EXPERT_STEMS, MODEL_KINDS, check_model_kind, get_model_kind, kinds_matching
from backend.workspace import Workspace

PAIR_SEPARATOR = " | "
AUTO_KIND = ""  # "detect the model type from the file"


@dataclass(frozen=True)
class ModelOption:
    label: str
    value: str


def merged_folder(ws: Workspace) -> Path:
    return ws.root.joinpath(*MERGED_DIT_FOLDER)


def relative_text(ws: Workspace, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(ws.root).as_posix()
    except ValueError:
        return str(path)


def _pair_stem(path: Path, expert: str) -> str | None:
    suffix = f"-{EXPERT_STEMS[expert]}"
    return path.stem[:-len(suffix)] if path.stem.endswith(suffix) else None


def merged_options(ws: Workspace) -> list[ModelOption]:
    """The merged DiTs, newest name order; a complete -high_noise / -low_noise pair is one option."""
    folder = merged_folder(ws)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    names = {path.name for path in files}
    options, in_pairs = [], set()
    for path in files:
        stem = _pair_stem(path, "high")
        partner = f"{stem}-{EXPERT_STEMS['low']}.safetensors" if stem else None
        if partner in names:
            high, low = relative_text(ws, path), relative_text(ws, folder / partner)
            options.append(ModelOption(f"Merged A14B pair: {stem} (high + low noise)", high + PAIR_SEPARATOR + low))
            in_pairs |= {path.name, partner}
    options += [ModelOption(f"Merged: {path.name}", relative_text(ws, path)) for path in files
                if path.name not in in_pairs]
    return options


def model_options(ws: Workspace) -> list[ModelOption]:
    demos = [ModelOption(f"Demo T2V ({get_model_kind('demo-t2v').label})", "demo-t2v") if ws.demo_t2v.is_dir()
             else None,
             ModelOption(f"Demo A14B pair ({get_model_kind('demo-a14b').label})", "demo-a14b")
             if ws.demo_a14b.is_dir() else None,
             ModelOption(f"Demo TI2V ({get_model_kind('demo-ti2v').label})", "demo-ti2v")
             if ws.demo_ti2v.is_dir() else None]
    return [option for option in demos if option] + merged_options(ws)


def kind_options() -> list[ModelOption]:
    return [ModelOption("Detect from the file", AUTO_KIND)] + [ModelOption(f"{kind.label} ({name})", name)
                                                                 for name, kind in MODEL_KINDS.items()]


@dataclass(frozen=True)
class ModelPick:
    """A checked model choice: a demo model, or 1 / 2 transformer files with an optional model type."""
    demo: str | None = None
    dit: tuple[Path, ...] = ()
    model_kind: str | None = None

    def choice(self, workspace: Path) -> ModelChoice:
        return ModelChoice(workspace=workspace, model=self.demo, dit=tuple(str(p) for p in self.dit),
                           model_kind=self.model_kind)

    @property
    def roles(self) -> list[str]:
        return self.choice(Path(".")).roles

    @property
    def kind(self):
        name = self.demo or self.model_kind
        return get_model_kind(name) if name else None

    @property
    def is_pair(self) -> bool:
        return len(self.roles) == 2

    @property
    def task(self) -> str:
        """t2v / i2v / ti2v: from the model type, else from the first file's shapes."""
        if self.kind is not None:
            return self.kind.task
        found = kinds_matching(read_checkpoint_shapes(self.dit[0]), self.dit[0].name)
        return MODEL_KINDS[found[0]].task if found else "t2v"

    def arguments(self) -> list[str]:
        return ModelSource(model=self.demo, dit=[str(path) for path in self.dit],
                           model_kind=None if self.demo else self.model_kind).flag_arguments()

    def value(self, ws: Workspace) -> str:
        """The text value the model dropdown shows for this pick."""
        return self.demo or PAIR_SEPARATOR.join(relative_text(ws, path) for path in self.dit)


def _path_in(ws: Workspace, text: str) -> Path:
    path = Path(text.strip().strip('"')).expanduser()
    return (path if path.is_absolute() else ws.root / path).resolve()


def _check_transformer(path: Path) -> list[str]:
    """The model types the file's shapes fit (a readable Wan transformer is required)."""
    if not path.exists():
        raise UserError(f"The model file {path} does not exist; pick a model from the list or check the path.")
    return kinds_matching(read_checkpoint_shapes(path), path.name)


def read_model(ws: Workspace, value: str | None, model_kind: str | None = None) -> ModelPick:
    """The model dropdown's value (and the model type box) checked; every problem is one UserError sentence."""
    text = (value or "").strip()
    if not text:
        raise UserError("No model is chosen; pick a demo model or a merged model, or type a checkpoint path.")
    if text in DEMO_MODELS:
        folder = {"demo-t2v": ws.demo_t2v, "demo-a14b": ws.demo_a14b, "demo-ti2v": ws.demo_ti2v}[text]
        if not folder.is_dir():
            raise UserError(f"The workspace has no {text} model ({folder} is missing); recreate it with "
                            f"`python -m backend demo --workspace {ws.root}` or pick another model.")
        return ModelPick(demo=text)
    kind = (model_kind or "").strip() or None
    if kind is not None and kind not in MODEL_KINDS:
        get_model_kind(kind)  # raises the sentence naming the closest type
    paths = tuple(_path_in(ws, part) for part in text.split("|") if part.strip())
    if len(paths) > 2:
        raise UserError(f"The model names {len(paths)} files; give one checkpoint, or two for an A14B pair "
                        f"written as `HIGH_NOISE{PAIR_SEPARATOR}LOW_NOISE`.")
    matches = [_check_transformer(path) for path in paths]
    for path, fits in zip(paths, matches):
        if kind is not None and kind not in fits:
            check_model_kind(read_checkpoint_shapes(path), kind, path.name)  # raises: expected vs found
    if len(paths) == 2:
        pair_kinds = [name for name in matches[0] if MODEL_KINDS[name].has_experts]
        if kind is None:
            if not pair_kinds:
                raise UserError(f"{paths[0].name} fits no two-expert model type; pick the model type of the pair.")
            kind = pair_kinds[0]
        elif not get_model_kind(kind).has_experts:
            raise UserError(f"{get_model_kind(kind).label} has one transformer, but two files were given; pick an "
                            f"A14B model type or a single file.")
    elif kind is not None and get_model_kind(kind).has_experts:
        raise UserError(f"{get_model_kind(kind).label} is a pair of experts; give both files as "
                        f"`HIGH_NOISE{PAIR_SEPARATOR}LOW_NOISE` or pick a single-transformer model type.")
    return ModelPick(dit=paths, model_kind=kind)


DEMO_NOTE = ("A tiny demo model with random weights: what it makes is coloured noise, as expected. It shows the "
             "whole workflow in seconds on a CPU, not picture quality; pick a real Wan checkpoint for real videos.")


def is_tiny_demo(pick: ModelPick) -> bool:
    """A demo model, or a file shaped like one (e.g. a LoRA merged into the demo DiT)."""
    if pick.demo:
        return True
    fits = [kinds_matching(read_checkpoint_shapes(path), path.name) for path in pick.dit]
    return bool(fits) and all(kinds and all(kind.startswith("demo-") for kind in kinds) for kinds in fits)


def pick_from_record(model: dict) -> ModelPick:
    """The model of a result's sidecar (`record["model"]`), unchecked: its files may have moved since."""
    if model.get("model") in DEMO_MODELS:
        return ModelPick(demo=model["model"])
    kind = model.get("model_kind")
    return ModelPick(dit=tuple(Path(p) for p in model.get("dit") or ()),
                     model_kind=kind if kind in MODEL_KINDS else None)
