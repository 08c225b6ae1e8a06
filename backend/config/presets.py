"""Presets on disk: the shipped ones (read-only, `presets/` in the app folder) and the user's (`<workspace>/presets/`).

A preset file is `{"schema_version", "kind", "name", "description"?, "settings"}` (Settings.to_preset). Reading one
is strict: bad JSON, another kind, a top-level key that is not part of the format, any unknown setting (all of
them are named) or an invalid value is a UserError, and nothing is changed. Older schema versions are migrated by
the settings class. Writes are atomic; a name is never silently replaced.

Presets are addressed by key `shipped:<name>` or `user:<name>`; a name is the file stem. Train presets lie in those
folders themselves; every other job type's in a sub-folder named after the job type (`<workspace>/presets/merge/`,
`<workspace>/presets/ema/`, ...), so the kinds never mix in a list (`job_presets`).
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from backend.errors import UserError
from backend.fileio import atomic_write_json

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "presets"
SOURCES = ("shipped", "user")
ENVELOPE_KEYS = ("schema_version", "kind", "name", "description", "settings")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")


@dataclass(frozen=True)
class PresetRef:
    source: str
    name: str
    path: Path

    @property
    def key(self) -> str:
        return f"{self.source}:{self.name}"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.source})"


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_PATTERN.match(name) or name.endswith("."):
        raise UserError(f"The preset name {name!r} is not usable as a file name; use up to 64 letters, digits, "
                        "spaces, '_', '-', '+' or '.', starting with a letter or digit.")
    return name


def parse_preset(text: str, settings_cls, source: str):
    """The settings a preset text holds, or a UserError naming the problem (see the module docstring)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix the "
                        "file, or save the preset again.") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise UserError(f"{source} is not a LORAID Studio preset (no `settings` object); choose a preset JSON file.")
    extra = [key for key in data if key not in ENVELOPE_KEYS]
    if extra:
        raise UserError(f"{source} has unknown top-level key(s) {_names(extra)}; a preset holds only "
                        f"{', '.join(ENVELOPE_KEYS)}. Remove them and load it again.")
    kind = data.get("kind", settings_cls.preset_kind())
    if kind != settings_cls.preset_kind():
        raise UserError(f"{source} is {_kind_words(kind)} preset, not {_kind_words(settings_cls.preset_kind())} "
                        "one; load it in the tab it belongs to.")
    version = data.get("schema_version")
    if isinstance(version, int) and 1 <= version <= settings_cls.SCHEMA_VERSION:
        migrated = settings_cls.migrate(dict(data["settings"]), version)
        unknown = [key for key in migrated if key not in settings_cls.model_fields]
        if unknown:
            hints = [f"`{key}` (did you mean `{close[0]}`?)" if (close := difflib.get_close_matches(
                key, settings_cls.model_fields, n=1)) else f"`{key}`" for key in unknown]
            raise UserError(f"{source} has unknown setting(s) {', '.join(hints)}; rename or remove them, nothing "
                            "was loaded.")
    return settings_cls.from_preset(data, source)


def _kind_words(kind) -> str:
    """A preset's kind as the job type it belongs to, with its article: a `merge`, an `ema`, a `train`."""
    from backend.config.job_settings import JOB_SETTINGS  # the registry imports every job's settings

    job = next((job for job, cls in JOB_SETTINGS.items() if cls.preset_kind() == kind), kind)
    return f"{'an' if str(job)[:1].lower() in 'aeiou' else 'a'} `{job}`"


def _names(keys: list[str]) -> str:
    return ", ".join(f"`{key}`" for key in keys)


def job_presets(user_root: Path, job_type: str, shipped_root: Path = SHIPPED_DIR) -> "PresetStore":
    """The presets of one job type (backend/config/job_settings.py), in `user_root` for training and in its
    `<job type>/` sub-folder (of `user_root` and of the shipped folder) for the others."""
    from backend.config.job_settings import settings_model  # the registry imports every job's settings

    if job_type == "train":
        return PresetStore(user_root, settings_model(job_type), shipped_root)
    return PresetStore(Path(user_root) / job_type, settings_model(job_type), Path(shipped_root) / job_type)


class PresetStore:
    def __init__(self, user_dir: Path, settings_cls, shipped_dir: Path = SHIPPED_DIR) -> None:
        self.user_dir = Path(user_dir)
        self.shipped_dir = Path(shipped_dir)
        self.settings_cls = settings_cls

    # --- finding -----------------------------------------------------------------------------------------------
    def list(self) -> list[PresetRef]:
        """Shipped presets first, then the user's, each sorted by name."""
        refs = []
        for source, folder in (("shipped", self.shipped_dir), ("user", self.user_dir)):
            if folder.is_dir():
                refs += [PresetRef(source, path.stem, path) for path in sorted(folder.glob("*.json"))]
        return refs

    def ref(self, key: str) -> PresetRef:
        source, _, name = (key or "").partition(":")
        if source not in SOURCES or not name:
            raise UserError("No preset is selected; pick one from the preset list.")
        folder = self.shipped_dir if source == "shipped" else self.user_dir
        path = folder / f"{name}.json"
        if not path.is_file():
            raise UserError(f"The {source} preset `{name}` no longer exists ({path}); refresh the preset list.")
        return PresetRef(source, name, path)

    def _user_path(self, name: str) -> Path:
        return self.user_dir / f"{check_name(name)}.json"

    def user_exists(self, name: str) -> bool:
        """Whether a user preset of this name exists (a name that is not usable is a UserError)."""
        return self._user_path(name).exists()

    # --- reading -----------------------------------------------------------------------------------------------
    def load(self, key: str):
        ref = self.ref(key)
        return self.read_file(ref.path, f"preset `{ref.name}`")

    def description(self, key: str) -> str:
        """The preset's own description ("" when it has none or cannot be read: loading it says why)."""
        try:
            data = json.loads(self.ref(key).path.read_text(encoding="utf-8"))
        except (UserError, OSError, UnicodeDecodeError, json.JSONDecodeError):
            return ""
        text = data.get("description") if isinstance(data, dict) else None
        return text.strip() if isinstance(text, str) else ""

    def read_file(self, path: Path, source: str | None = None):
        path = Path(path)
        source = source or path.name
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{source} is not a text file; choose a preset JSON file.") from None
        except OSError as exc:
            raise UserError(f"{source} cannot be read ({exc.strerror}); check the file.") from None
        return parse_preset(text, self.settings_cls, source)

    # --- changing ----------------------------------------------------------------------------------------------
    def save(self, name: str, settings, replace: bool = False, description: str = "") -> PresetRef:
        path = self._user_path(name)
        if path.exists() and not replace:
            raise UserError(f"A user preset named `{path.stem}` already exists; choose another name or tick "
                            "'Replace an existing preset'.")
        document = settings.to_preset(path.stem)
        if description:
            document["description"] = description
        atomic_write_json(path, document)
        return PresetRef("user", path.stem, path)

    def rename(self, key: str, new_name: str) -> PresetRef:
        ref = self.ref(key)
        if ref.source != "user":
            raise UserError(f"`{ref.name}` is a shipped preset and cannot be renamed; save it as a user preset first.")
        target = self._user_path(new_name)
        if target.exists():
            raise UserError(f"A user preset named `{target.stem}` already exists; choose another name.")
        settings = self.read_file(ref.path, f"preset `{ref.name}`")  # a broken file is not carried along
        document = json.loads(ref.path.read_text(encoding="utf-8"))
        document.update(settings.to_preset(target.stem))
        atomic_write_json(target, document)
        ref.path.unlink()
        return PresetRef("user", target.stem, target)

    def delete(self, key: str) -> None:
        ref = self.ref(key)
        if ref.source != "user":
            raise UserError(f"`{ref.name}` is a shipped preset and cannot be deleted; only user presets can.")
        ref.path.unlink()

    def import_file(self, path: Path, name: str = "", replace: bool = False) -> PresetRef:
        """Check a preset file and save it (migrated to the current schema) as a user preset."""
        path = Path(path)
        settings = self.read_file(path, path.name)
        try:
            stored_name = json.loads(path.read_text(encoding="utf-8")).get("name") or ""
        except (OSError, ValueError):
            stored_name = ""
        if not name:
            name = stored_name if NAME_PATTERN.match(str(stored_name)) else path.stem
        return self.save(name, settings, replace=replace)

    def export_path(self, key: str) -> Path:
        """The file to download for a preset (its own file: shipped and user presets are already complete)."""
        ref = self.ref(key)
        self.read_file(ref.path, f"preset `{ref.name}`")
        return ref.path
