"""Where a run's files are: path settings resolved against the workspace.

Rule (for every path setting: dit, dit_high_noise, vae, text_encoder, dataset_config, network_weights, output_dir,
resume, sample_prompts, logging_dir): `{workspace}` in a value is replaced by the workspace folder, and a relative
path is taken relative to the workspace folder when one is given (`--workspace DIR`), else to the current folder.
So a preset can say `datasets/demo/concept_a/dataset.toml` or `{workspace}/datasets/...` and work in any workspace.
"""
from __future__ import annotations

from pathlib import Path

from backend.errors import UserError
from backend.models.demo import demo_transformer_file
from backend.models.registry import EXPERT_STEMS, ModelKind
from backend.workspace import Workspace

PATH_SETTINGS = ("dit", "dit_high_noise", "vae", "text_encoder", "dataset_config", "network_weights", "output_dir",
                 "resume", "sample_prompts", "logging_dir")
PLACEHOLDER = "{workspace}"


def resolve_path(value: str, workspace: Workspace | None) -> str:
    """The absolute form of one path setting (empty stays empty)."""
    if not value:
        return value
    if PLACEHOLDER in value:
        if workspace is None:
            raise UserError(f"the path `{value}` uses {PLACEHOLDER} but no workspace was given; pass --workspace DIR.")
        value = value.replace(PLACEHOLDER, str(workspace.root))
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (workspace.root if workspace is not None else Path.cwd()) / path
    return str(path.resolve())


def resolve_settings(settings, workspace: Workspace | None):
    """A copy of the settings with every path setting absolute."""
    return settings.model_copy(update={name: resolve_path(getattr(settings, name), workspace)
                                       for name in PATH_SETTINGS})


def dit_path(settings, kind: ModelKind, expert: str | None, workspace: Workspace | None) -> Path:
    """The checkpoint of one transformer: the setting, else the workspace's demo model for the demo kinds."""
    given = settings.dit_high_noise if expert == "high" else settings.dit
    if given:
        return Path(given)
    if kind.name.startswith("demo-"):
        if workspace is None:
            raise UserError(f"model_kind={kind.name} with an empty dit uses the workspace's demo model; "
                            "pass --workspace DIR (or --dit FILE).")
        return demo_transformer_file(workspace, kind.name, expert)
    flag = "--dit_high_noise" if expert == "high" else "--dit"
    what = f"the {EXPERT_STEMS[expert]} expert" if expert else "the DiT"
    raise UserError(f"no checkpoint given for {what} of {kind.label}; pass {flag} FILE.")


def output_folder(settings, workspace: Workspace | None) -> Path:
    if settings.output_dir:
        return Path(settings.output_dir)
    if workspace is None:
        raise UserError("no output folder: pass --output_dir DIR or --workspace DIR (LoRAs then go to its loras/).")
    return workspace.loras
