"""The dataset TOML file on disk as the Dataset tab handles it: the typed path checked (a place outside the
workspace only once the user confirmed it, as for every output the app writes), text validated before it is
written (atomically, so an invalid edit never replaces a valid file), and the file checked again before a cache
job is started from it."""
from __future__ import annotations

from pathlib import Path

from backend.data.dataset_config import DatasetConfig, load_dataset_config, parse_dataset_toml
from backend.errors import UserError
from backend.fileio import atomic_write_text
from backend.output_guard import check_folder, typed_path
from backend.workspace import Workspace


def resolve_toml_path(text: str | None, base: Path) -> Path:
    """Where the TOML goes (relative paths start at `base`): a .toml file in an existing folder."""
    typed = (text or "").strip().strip('"').strip("'")
    if not typed:
        raise UserError("No TOML file is given; type where the dataset TOML should be written, e.g. "
                        "datasets/demo/dataset.toml.")
    path = typed_path(typed, base, "The TOML path")
    if path.suffix.lower() != ".toml":
        raise UserError(f"{path.name} does not end in .toml; name the dataset config e.g. dataset.toml.")
    if path.is_dir():
        raise UserError(f"{path} is a folder; add a file name such as {path / 'dataset.toml'}.")
    if not path.parent.is_dir():
        raise UserError(f"The folder {path.parent} does not exist; create it or choose another place for the TOML.")
    return path


def toml_path_problem(text: str | None, workspace: Workspace, outside_confirmed: bool) -> str | None:
    """The TOML file field's problem as the form shows it beside the field (None when the TOML may be written
    there): the checks of `resolve_toml_path`, then a folder outside the workspace that was not confirmed."""
    try:
        check_folder(resolve_toml_path(text, workspace.root).parent, workspace, outside_confirmed, creating=False)
    except UserError as exc:
        return str(exc)
    return None


def read_toml_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path} does not exist yet; generate the TOML from the form and write it.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path.name} is not UTF-8 text; save it as UTF-8 TOML.") from None


def write_dataset_toml(path: Path, text: str, workspace: Workspace | None = None,
                       outside_confirmed: bool = True) -> DatasetConfig:
    """Validate `text` as the dataset config it would become at `path` (media folders must exist), then write it
    atomically; with a `workspace`, a place outside it needs `outside_confirmed`. On any error nothing is written."""
    check_folder(path.parent, workspace, outside_confirmed, creating=False)
    if not (text or "").strip():
        raise UserError("The TOML editor is empty; generate the TOML from the form first.")
    if path.exists() and not _is_dataset_toml(path):
        raise UserError(f"{path} already exists and is not a dataset config; choose another file name so it is kept.")
    config = parse_dataset_toml(text, source_name=path.name, base_dir=path.parent, check_paths=True)
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")
    return config


def _is_dataset_toml(path: Path) -> bool:
    try:
        parse_dataset_toml(path.read_text(encoding="utf-8"), source_name=path.name, base_dir=path.parent,
                           check_paths=False)
    except (UserError, OSError, UnicodeDecodeError):
        return False
    return True


def ready_for_cache(path: Path, editor_text: str | None) -> DatasetConfig:
    """The written config a cache job would read; refused when the editor holds changes not yet written."""
    if not path.is_file():
        raise UserError(f"{path} has not been written yet; click Write TOML before caching.")
    if editor_text is not None and editor_text.strip() and editor_text.strip() != read_toml_text(path).strip():
        raise UserError(f"The TOML in the editor differs from {path.name} on disk; click Write TOML first so the "
                        "cache uses what you see.")
    return load_dataset_config(path)


PATH_KEYS = ("image_directory", "image_jsonl_file", "video_directory", "video_jsonl_file", "cache_directory",
             "control_directory")
OWN_KEYS = ("mask_directory", "expert_label")  # this app's LoRA-MoE keys; musubi-tuner refuses unknown keys
MUSUBI_SUFFIX = ".musubi.toml"


def musubi_config(config: DatasetConfig) -> tuple[DatasetConfig, list[str]]:
    """The same datasets as musubi-tuner must read them: every path absolute (musubi resolves relative paths against
    its working directory, not the TOML's folder) and this app's own keys left out; (config, keys left out)."""
    from dataclasses import replace

    dropped: list[str] = []
    sections = []
    for section in config.datasets:
        changes = {key: str(_absolute_path(config, getattr(section, key))) for key in PATH_KEYS
                   if getattr(section, key) is not None}
        for key in OWN_KEYS:
            if getattr(section, key) is not None:
                changes[key] = None
                dropped.append(key)
        sections.append(replace(section, **changes))
    return replace(config, datasets=sections), sorted(set(dropped))


def _absolute_path(config: DatasetConfig, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (config.base_dir / path).resolve()


def needs_musubi_copy(config: DatasetConfig) -> bool:
    converted, dropped = musubi_config(config)
    return bool(dropped) or converted.datasets != config.datasets


def export_for_musubi(path: Path) -> tuple[Path, str | None]:
    """The TOML musubi-tuner should read for `path`: the file itself when it already has absolute paths and only
    musubi's keys, else `<stem>.musubi.toml` beside it, written atomically; (path, one-sentence note or None)."""
    from backend.data.dataset_config import render_dataset_toml

    config = load_dataset_config(path, check_paths=False)
    if not needs_musubi_copy(config):
        return path, None
    converted, dropped = musubi_config(config)
    target = path.with_name(path.name.removesuffix(".toml") + MUSUBI_SUFFIX)
    header = (f"{path.name} for musubi-tuner: the same datasets with absolute paths (musubi-tuner resolves relative "
              f"paths against its working directory).\nWritten by LORAID Studio; edit {path.name}, not this file.\n")
    atomic_write_text(target, render_dataset_toml(converted, header))
    left_out = f"; left out {', '.join(dropped)} (keys musubi-tuner does not have)" if dropped else ""
    return target, (f"{path.name} uses paths relative to its folder, which musubi-tuner would resolve against its "
                    f"working directory; the command reads {target.name} beside it, the same datasets with absolute "
                    f"paths{left_out}.")
