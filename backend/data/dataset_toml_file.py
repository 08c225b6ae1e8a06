"""The dataset TOML file on disk as the Dataset tab handles it: the typed path checked, text validated before it is
written (atomically, so an invalid edit never replaces a valid file), and the file checked again before a cache
job is started from it."""
from __future__ import annotations

from pathlib import Path

from backend.data.dataset_config import DatasetConfig, load_dataset_config, parse_dataset_toml
from backend.errors import UserError
from backend.fileio import atomic_write_text
from backend.output_guard import typed_path


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


def read_toml_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path} does not exist yet; generate the TOML from the form and write it.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path.name} is not UTF-8 text; save it as UTF-8 TOML.") from None


def write_dataset_toml(path: Path, text: str) -> DatasetConfig:
    """Validate `text` as the dataset config it would become at `path` (media folders must exist), then write it
    atomically. On any error nothing is written."""
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
