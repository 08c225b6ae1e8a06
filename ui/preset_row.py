"""Presets in a tab, for any job type's settings model: the handlers every tab shares (`PresetActions`, over one
`PresetStore`; the Train tab wires them by name) and the compact one-line row of the Merge and EMA tabs
(`PresetRow`: pick, Load, Save as NAME, Rename, Delete, with its message under it; Save on a name that exists and
Delete each ask first, and a second press does it).

A preset is read strictly (backend/config/presets.py): another job type's preset, a malformed file or settings the
form cannot show are one sentence in the preset message, and the form keeps every value it had.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from backend.config.presets import PresetStore
from backend.config.settings import Settings
from backend.errors import UserError
from ui.widgets import report_error

DELETE_ASKED = "preset:delete-asked"  # the preset a first Delete press asked about
EXPORT_FOLDER = Path(tempfile.gettempdir()) / "loraid-studio-exports"


def preset_choices(store: PresetStore) -> list[tuple[str, str]]:
    return [(ref.label, ref.key) for ref in store.list()]


class PresetActions:
    """The preset controls' handlers over one store. They read the controls by name (`preset`, `preset:name`,
    `preset:replace`, `preset:file`, DELETE_ASKED) and return updates by name (`preset`, `preset:message`,
    `preset:file`, `preset:exported`, DELETE_ASKED); filling the form is the tab's (`read`)."""

    def __init__(self, store: PresetStore) -> None:
        self.store = store

    def refresh(self, selected: str | None) -> dict[str, Any]:
        return {"preset": gr.update(choices=preset_choices(self.store), value=selected)}

    def choices(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """The list as it is on disk now (another page may have saved one)."""
        return {"preset": gr.update(choices=preset_choices(self.store))}

    @staticmethod
    def refused(exc: UserError) -> dict[str, Any]:
        return {"preset:message": report_error(exc)}

    def read(self, key: str | None) -> Settings:
        """The chosen preset's settings, or a UserError saying why it cannot be loaded."""
        return self.store.load(key)

    def loaded(self, key: str) -> str:
        described = self.store.description(key)
        return f"Loaded preset `{self.store.ref(key).name}`." + (f"  \n{described}" if described else "")

    def describe(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """What the chosen preset is for (its description), before it is loaded."""
        key = widgets.get("preset")
        try:
            name = self.store.ref(key).name
        except UserError as exc:
            return self.refused(exc)
        described = self.store.description(key)
        return {"preset:message": f"`{name}`: {described or 'no description.'}  \nPress **Load** to fill the form."}

    def save(self, widgets: dict[str, Any], settings_of: Callable[[], Settings]) -> dict[str, Any]:
        """Save the form's settings (`settings_of()`, a UserError when the form cannot be saved) as a user preset."""
        try:
            ref = self.store.save(widgets.get("preset:name") or "", settings_of(),
                                  replace=bool(widgets.get("preset:replace")))
        except UserError as exc:
            return self.refused(exc)
        return {**self.refresh(ref.key), "preset:message": f"Saved user preset `{ref.name}` ({ref.path})."}

    def rename(self, widgets: dict[str, Any]) -> dict[str, Any]:
        try:
            ref = self.store.rename(widgets.get("preset"), widgets.get("preset:name") or "")
        except UserError as exc:
            return self.refused(exc)
        return {**self.refresh(ref.key), "preset:message": f"Renamed to `{ref.name}`."}

    def delete(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """The first press asks; a second press on the same preset deletes it."""
        try:
            ref = self.store.ref(widgets.get("preset"))
            if widgets.get(DELETE_ASKED) != ref.key:
                if ref.source != "user":
                    self.store.delete(ref.key)  # refuses at once, saying why
                return {DELETE_ASKED: ref.key,
                        "preset:message": f"Press **Delete** again to delete user preset `{ref.name}`."}
            self.store.delete(ref.key)
        except UserError as exc:
            return {**self.refused(exc), DELETE_ASKED: None}
        return {**self.refresh(None), DELETE_ASKED: None, "preset:message": f"Deleted user preset `{ref.name}`."}

    def import_file(self, widgets: dict[str, Any]) -> dict[str, Any]:
        path = widgets.get("preset:file")
        if not path:
            return {}
        try:
            ref = self.store.import_file(Path(path), name=widgets.get("preset:name") or "",
                                         replace=bool(widgets.get("preset:replace")))
        except UserError as exc:
            return self.refused(exc)
        return {**self.refresh(ref.key), "preset:file": None,
                "preset:message": f"Imported `{Path(path).name}` as user preset `{ref.name}`; press Load to use it."}

    def export(self, widgets: dict[str, Any]) -> dict[str, Any]:
        try:
            source = self.store.export_path(widgets.get("preset"))
        except UserError as exc:
            return self.refused(exc)
        EXPORT_FOLDER.mkdir(parents=True, exist_ok=True)
        copy = Path(tempfile.mkdtemp(dir=EXPORT_FOLDER)) / source.name
        shutil.copyfile(source, copy)
        return {"preset:exported": str(copy), "preset:message": f"`{source.name}` is ready: download it below."}


class PresetRow:
    """One line of preset controls for a tab whose job type may follow a choice of the form (the Merge tab's mode):
    `stores` maps each value of that choice to its job type's presets. The tab gives `read(kind, *form values)`, the
    form's settings (a UserError when they cannot be saved), and `fill(kind, settings, *form values)`, the
    `fill_count` updates that show them (a UserError when they cannot be shown); loading changes nothing when
    either says no."""

    def __init__(self, stores: dict[str, PresetStore], elem_prefix: str, read: Callable[..., Settings],
                 fill: Callable[..., tuple], fill_count: int) -> None:
        self.actions = {kind: PresetActions(store) for kind, store in stores.items()}
        self.prefix, self.read, self.fill, self.fill_count = elem_prefix, read, fill, fill_count

    # --- widgets -----------------------------------------------------------------------------------------------
    def build(self, kind: str) -> None:
        p = self.prefix
        with gr.Row(equal_height=True, elem_id=f"{p}-presets"):
            self.picker = gr.Dropdown(preset_choices(self.actions[kind].store), value=None, label="Preset",
                                      scale=3, min_width=200, elem_id=f"{p}-preset")
            self.load = gr.Button("Load", variant="primary", scale=0, min_width=80, elem_id=f"{p}-preset-load")
            self.name = gr.Textbox("", label="Save as (name)", max_lines=1, scale=2, min_width=160,
                                   elem_id=f"{p}-preset-name")
            self.save = gr.Button("Save", scale=0, min_width=80, elem_id=f"{p}-preset-save")
            self.rename = gr.Button("Rename", scale=0, min_width=90, elem_id=f"{p}-preset-rename")
            self.delete = gr.Button("Delete", variant="stop", scale=0, min_width=80, elem_id=f"{p}-preset-delete")
        self.asked = gr.State(None)  # the preset a first Delete press asked about
        self.replace_asked = gr.State(None)  # the name a first Save press on an existing preset asked about
        self.message = gr.Markdown("", elem_id=f"{p}-preset-message")

    def wire(self, kind, form_inputs: list, fill_outputs: list, **options):
        """Connect the row; `kind` is the component whose value picks the store (a gr.State for one job type).
        Returns Load's event, for the tab to chain what follows a filled form."""
        if len(fill_outputs) != self.fill_count:
            raise ValueError(f"the preset row fills {self.fill_count} fields, not {len(fill_outputs)}")
        self.picker.focus(self.on_focus, inputs=kind, outputs=self.picker, **options)
        self.save.click(self.on_save, inputs=[kind, self.name, self.replace_asked, *form_inputs],
                        outputs=[self.picker, self.replace_asked, self.message], **options)
        self.rename.click(self.on_rename, inputs=[kind, self.picker, self.name], outputs=[self.picker, self.message],
                          **options)
        self.delete.click(self.on_delete, inputs=[kind, self.picker, self.asked],
                          outputs=[self.picker, self.asked, self.message], **options)
        return self.load.click(self.on_load, inputs=[kind, self.picker, *form_inputs],
                               outputs=[*fill_outputs, self.message], **options)

    # --- handlers (positional, in the order `wire` gives them) -------------------------------------------------
    def on_kind(self, kind):
        """Another job type (the Merge tab's mode): its presets, none chosen."""
        return gr.update(choices=preset_choices(self.actions[kind].store), value=None), ""

    def on_focus(self, kind):
        """The list as it is on disk now (another page may have saved one)."""
        return gr.update(choices=preset_choices(self.actions[kind].store))

    def on_load(self, kind, key, *values):
        """(the form's updates..., message); a preset that cannot be loaded leaves every field as it is."""
        actions = self.actions[kind]
        try:
            updates = self.fill(kind, actions.read(key), *values)
        except UserError as exc:
            return (*[gr.skip()] * self.fill_count, report_error(exc))
        return (*updates, actions.loaded(key))

    def on_save(self, kind, name, asked, *values):
        """(list, asked name, message): saving over a user preset asks first; a second press replaces it."""
        actions = self.actions[kind]
        try:
            exists = actions.store.user_exists(name or "")
        except UserError as exc:
            return gr.skip(), None, report_error(exc)
        if exists and asked != name:
            return gr.skip(), name, f"A user preset named `{name.strip()}` exists; press **Save** again to replace it."
        shown = actions.save({"preset:name": name, "preset:replace": exists}, lambda: self.read(kind, *values))
        return shown.get("preset", gr.skip()), None, shown["preset:message"]

    def on_rename(self, kind, key, name):
        shown = self.actions[kind].rename({"preset": key, "preset:name": name})
        return shown.get("preset", gr.skip()), shown["preset:message"]

    def on_delete(self, kind, key, asked):
        shown = self.actions[kind].delete({"preset": key, DELETE_ASKED: asked})
        return shown.get("preset", gr.skip()), shown[DELETE_ASKED], shown["preset:message"]
