"""Typed settings: the one source of truth for a job type's options.

A settings model is a pydantic model whose fields are declared with `setting(...)`, which carries the label, help,
group and choices a form needs. From the same model come: validation, preset JSON, TOML files, and command-line
arguments (`--name value`), so a UI form, a preset and the CLI can never drift apart.
"""
from __future__ import annotations

import argparse
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import toml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.errors import UserError


def setting(default: Any, *, label: str, help: str, group: str, choices: list | None = None,
            metavar: str | None = None, unset: str | None = None, **constraints) -> Any:
    """Declare one setting with what a form needs to show it (and, for the command line, the metavar of its value).
    `...` as the default makes the setting required (a job cannot run without it). `unset`: how a form's choice
    names "not given" for an optional setting with choices (default "(not set)")."""
    extra = {"label": label, "group": group}
    if unset is not None:
        extra["unset"] = unset
    if choices is not None:
        extra["choices"] = list(choices)
    if metavar is not None:
        extra["metavar"] = metavar
    if isinstance(default, list):  # a fresh list per instance
        return Field(default_factory=lambda: list(default), description=help, json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """Turn pydantic's report into one sentence naming the field and the bad value."""
    first = exc.errors()[0]
    if not first["loc"]:  # a rule across settings (min_timestep < max_timestep): its own sentence says it all
        return f"{source}: {first['msg'].removeprefix('Value error, ')}; fix those values and try again."
    name = ".".join(str(part) for part in first["loc"])
    value = first.get("input")
    return f"{source}: setting `{name}` = {value!r} is invalid ({first['msg'].rstrip('.')}); fix that value and try again."


class Settings(BaseModel):
    """Base for every job type's settings. Subclasses declare fields with `setting(...)`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    SCHEMA_VERSION: ClassVar[int] = 1

    # ---- introspection for forms -------------------------------------------------------------
    @classmethod
    def field_info(cls) -> dict[str, dict]:
        info = {}
        for name, field in cls.model_fields.items():
            extra = field.json_schema_extra or {}
            info[name] = {"label": extra.get("label", name), "help": field.description or "",
                          "group": extra.get("group", "Other"), "choices": extra.get("choices"),
                          "default": None if field.is_required() else field.get_default(call_default_factory=True)}
        return info

    @classmethod
    def named(cls, name: str) -> str:
        """`Frames (frames)`: the form's label and the setting's name (the command line's flag is `--frames`), so a
        backend message reads right in the page and on the command line alike."""
        label = cls.field_info()[name]["label"] if name in cls.model_fields else name
        return label if name in label else f"{label} ({name})"

    @classmethod
    def groups(cls) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for name, info in cls.field_info().items():
            grouped.setdefault(info["group"], []).append(name)
        return grouped

    # ---- construction with clear errors ------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: dict, source: str = "settings"):
        unknown = [key for key in values if key not in cls.model_fields]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, cls.model_fields, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else "; remove it."
            raise UserError(f"{source}: unknown setting `{key}`{hint}")
        for key, value in values.items():
            annotation = str(cls.model_fields[key].annotation)
            if isinstance(value, bool) and "bool" not in annotation and ("int" in annotation or "float" in annotation):
                raise UserError(f"{source}: setting `{key}` = {str(value).lower()} is true/false, not a number; give "
                                "a number.")
        try:
            return cls(**values)
        except ValidationError as exc:
            raise UserError(describe_validation_error(exc, source)) from None

    def with_overrides(self, overrides: dict, source: str = "command line"):
        return type(self).from_mapping({**self.model_dump(), **overrides}, source)

    def preset_defaults(self, given: set[str]) -> dict:
        """The values a preset gives a command's flags as defaults (backend/config/preset_cli.py); `given`: the
        settings the command line sets itself, which win anyway."""
        return self.model_dump()

    def changed_fields(self) -> dict:
        """Only the settings that differ from their defaults (what a short preset or TOML needs)."""
        defaults = type(self)()
        return {k: v for k, v in self.model_dump().items() if getattr(defaults, k) != v}

    # ---- files -------------------------------------------------------------------------------
    def to_toml(self) -> str:
        data = {k: v for k, v in self.model_dump(mode="json").items() if v is not None}
        return toml.dumps(data)

    @classmethod
    def from_toml_text(cls, text: str, source: str = "TOML"):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{source} is not valid TOML ({exc}); fix the syntax and try again.") from None
        return cls.from_mapping(data, source)

    def to_preset(self, name: str = "") -> dict:
        return {"schema_version": self.SCHEMA_VERSION, "kind": self.preset_kind(), "name": name,
                "settings": self.model_dump(mode="json")}

    @classmethod
    def preset_kind(cls) -> str:
        return cls.__name__

    @classmethod
    def from_preset(cls, preset: dict, source: str = "preset"):
        if not isinstance(preset, dict) or "settings" not in preset:
            raise UserError(f"{source} is not a LORAID Studio preset (no `settings` object); choose a preset JSON file.")
        version = preset.get("schema_version")
        if not isinstance(version, int) or version < 1 or version > cls.SCHEMA_VERSION:
            raise UserError(f"{source} has schema_version {version!r}, this app reads 1..{cls.SCHEMA_VERSION}; "
                            "update the app or re-export the preset.")
        return cls.from_mapping(cls.migrate(dict(preset["settings"]), version), source)

    @classmethod
    def migrate(cls, settings: dict, from_version: int) -> dict:
        """Bring older preset settings up to SCHEMA_VERSION. Subclasses extend this when fields change."""
        return settings

    @classmethod
    def load_file(cls, path: str | Path):
        """A run TOML or a preset JSON, by extension."""
        path = Path(path)
        if path.is_dir():
            raise UserError(f"config file {path} is a folder; pass the path of a run TOML or preset JSON inside it.")
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; pass the path of a run TOML or preset JSON.")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            from backend.config.presets import parse_preset  # the same strict reading as the app's preset loader

            return parse_preset(text, cls, path.name)
        return cls.from_toml_text(text, path.name)

    # ---- command line ------------------------------------------------------------------------
    def to_cli_args(self, only_changed: bool = True) -> list[str]:
        values = self.changed_fields() if only_changed else self.model_dump()
        args: list[str] = []
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                args += [f"--{name}", "true" if value else "false"]
            elif isinstance(value, (list, tuple)):
                args += [f"--{name}", *[str(v) for v in value]] if value else []
            else:
                args += [f"--{name}", str(value)]
        return args

    def flag_arguments(self, *, leave_out: tuple[str, ...] = (), only_changed: bool = False) -> list[str]:
        """The argv that `add_setting_arguments`' flags read back: `--name=value` (`=` so a value may start with a
        dash), a switch as `--name` (on) or `--no_name` (off) when it differs from its default, a list as
        `--name V1 V2 ...`; None and empty lists are left out."""
        values = self.changed_fields() if only_changed else self.model_dump()
        fields = type(self).model_fields
        args: list[str] = []
        for name, value in values.items():
            if name in leave_out or value is None or value == []:
                continue
            if isinstance(value, bool):
                if value != bool(fields[name].default):
                    args.append(f"--{name}" if value else f"--no_{name}")
            elif isinstance(value, (list, tuple)):
                args += [f"--{name}", *(str(item) for item in value)]
            else:
                args.append(f"--{name}={value}")
        return args

    @classmethod
    def parse_cli_overrides(cls, argv: list[str]) -> dict:
        """`--name value [value...]` pairs into a dict of raw values that pydantic then validates."""
        overrides: dict[str, Any] = {}
        i = 0
        while i < len(argv):
            token = argv[i]
            if not token.startswith("--"):
                raise UserError(f"unexpected argument `{token}`; settings are given as `--name value`.")
            name = token[2:].replace("-", "_")
            if "=" in name:
                name, value = name.split("=", 1)
                values = [value]
                i += 1
            else:
                values = []
                i += 1
                while i < len(argv) and not argv[i].startswith("--"):
                    values.append(argv[i])
                    i += 1
            if name not in cls.model_fields:
                close = difflib.get_close_matches(name, cls.model_fields, n=1)
                hint = f"; did you mean `--{close[0]}`?" if close else "."
                raise UserError(f"unknown option `--{name}`{hint}")
            overrides[name] = _coerce_cli_values(cls, name, values, overrides.get(name))
        return overrides


def _coerce_cli_values(cls: type[Settings], name: str, values: list[str], previous: Any) -> Any:
    annotation = str(cls.model_fields[name].annotation)
    is_list = annotation.startswith("list") or "List" in annotation
    if is_list:
        return list(previous or []) + values
    if not values:
        if "bool" in annotation:
            return True
        raise UserError(f"option `--{name}` needs a value.")
    if len(values) > 1:
        raise UserError(f"option `--{name}` takes one value, got {len(values)}: {' '.join(values)}.")
    value = values[0]
    if "bool" in annotation:
        lowered = value.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise UserError(f"option `--{name}` expects true or false, got `{value}`.")
    return value


class _Extend(argparse.Action):
    """`--name A B` and `--name A --name B` both give [A, B]; the first use replaces the default list."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, None)
        fresh = items is None or items is self.default
        setattr(namespace, self.dest, list(values) if fresh else [*items, *values])


def add_setting_arguments(group, cls: type[Settings], names: list[str] | None = None, **defaults: Any) -> None:
    """One argparse `--name` per field of `cls` (all, or `names`): its type, choices, help and default come from the
    field, so the command line cannot drift from the model; `defaults` names the few flags whose absence means
    something of its own (e.g. `seed=None`: pick a random seed). A required field is a required flag. A true/false
    field is a switch: `--name` turns on one that is off by default, `--no_name` turns off one that is on; a list
    field takes one or more values and may be repeated (`--lora A --lora B`)."""
    for name in names or list(cls.model_fields):
        field = cls.model_fields[name]
        kind = field.annotation
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `int | None`: the flag takes an int
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        extra = field.json_schema_extra or {}
        required = field.is_required() and name not in defaults
        default = defaults.get(name, None if required else field.get_default(call_default_factory=True))
        common = dict(help=(field.description or "").replace("%", "%%") or None)  # argparse formats help with %
        if extra.get("metavar"):
            common["metavar"] = extra["metavar"]
        if kind is bool:
            common.pop("metavar", None)
            if default:
                group.add_argument(f"--no_{name}", dest=name, action="store_false", default=True, **common)
            else:
                group.add_argument(f"--{name}", action="store_true", default=default, **common)
            continue
        many = typing.get_origin(kind) is list
        item = (typing.get_args(kind) or (str,))[0] if many else kind
        if typing.get_origin(item) is typing.Literal:
            item = type(typing.get_args(item)[0])
        group.add_argument(f"--{name}", type=item if item in (int, float) else str, default=default,
                           required=required, choices=extra.get("choices"),
                           **(dict(nargs="+", action=_Extend) if many else {}), **common)


def _field_kind(cls: type[Settings], name: str):
    kind = cls.model_fields[name].annotation
    options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    return options[0] if options and typing.get_origin(kind) is not list else kind
