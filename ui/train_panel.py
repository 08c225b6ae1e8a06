"""The Train tab's handlers. Each takes the page's values keyed by name and returns updates keyed by name, so the
tab wires them with sets of components and a test can call them with plain dicts.

Names: the TrainSettings fields (generic widgets, ui/train_form.py), `loraid` and `net:*` (ui/train_network.py),
`error:<field>` (a field's error slot), `summary`, `preset*`, `command:*`, `run:*` (ui/train_run.py).
A handler that refuses bad input returns only messages: no widget value changes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from backend.config.model_fields import fields_for
from backend.config.network_builder import builder_lines, builder_state, recipe_state
from backend.config.presets import PresetStore, job_presets
from backend.config.train_checks import FormCheck, check_train_settings
from backend.errors import UserError
from backend.loraid.allocation import allocation_table
from backend.loraid.owners import taken_ids
from backend.models.registry import get_model_kind
from backend.train.command import musubi_command, run_toml, shown_command
from backend.train.paths import resolve_path
from backend.system.devices import check_processes
from backend.train.settings import TrainSettings
from ui.context import AppContext
from ui.train_form import FIELDS, dataset_choices, error_key, error_updates, settings_values, widget_values
from ui.train_network import (NO_LORAID, allocation_text, builder_values, control_updates, live_lines,
                              loraid_choices, net_key)
from ui.preset_row import PresetActions
from ui.train_run import RunPanel, RunSession
from ui.widgets import report_error

OUTSIDE = "output:outside"  # the checkbox that confirms an output folder outside the workspace
OPENED = "preset:opened"  # {"key", "job"}: a job's settings the Jobs tab saved as a preset, to load here


class TrainPanel:
    def __init__(self, ctx: AppContext, store: PresetStore | None = None) -> None:
        self.ctx = ctx
        self.store = store or job_presets(ctx.workspace.presets, "train")
        self.presets = PresetActions(self.store)
        self.run = RunPanel(ctx)

    # --- reading the form --------------------------------------------------------------------------------------
    def read(self, widgets: dict[str, Any], deep: bool = False) -> FormCheck:
        values = settings_values(widgets)
        loraid = widgets.get("loraid")
        values["loraid"] = None if loraid in (None, "", NO_LORAID) else loraid
        builder_error = None
        try:
            values["network_args"] = builder_lines(values.get("network_type") or "lora", builder_values(widgets))
        except UserError as exc:
            values["network_args"], builder_error = [], str(exc)
        check = check_train_settings(values, self.ctx.workspace, deep=deep,
                                     outside_confirmed=bool(widgets.get(OUTSIDE)))
        if builder_error:
            check.errors = {"network_args": builder_error, **check.errors}
            check.settings = None
        return check

    def settings(self, widgets: dict[str, Any]) -> TrainSettings:
        """The form as TrainSettings, or a UserError naming the first wrong field."""
        check = self.read(widgets)
        if check.settings is None:
            raise UserError(f"Fix the form first: {check.first_error()}")
        return check.settings

    def _taken(self, settings: TrainSettings) -> dict[int, str]:
        """ID -> its owners: the workspace's LoRA files and the runs training a slice right now."""
        kind = get_model_kind(settings.model_kind)
        expert = settings.expert if kind.has_experts else None
        ws = self.ctx.workspace
        try:
            table = allocation_table(kind.num_blocks, settings.blocks_per_loraid, expert, model=kind.name)
        except UserError:
            return {}
        folders = [ws.loras, Path(resolve_path(settings.output_dir, ws)) if settings.output_dir else ws.loras]
        return {loraid: ", ".join(owners) for loraid, owners in taken_ids(ws, table, folders).items()}

    def validation(self, widgets: dict[str, Any], check: FormCheck | None = None) -> dict[str, Any]:
        """Every field's error slot, the summary, the live network_args lines and the LORAID picker."""
        check = check or self.read(widgets)
        updates = error_updates(check.errors, FIELDS)
        problems = len(check.errors)
        notes = [f"ℹ {note}" for name, note in check.notes.items() if name not in check.errors]
        updates["summary"] = "  \n".join(
            [f"⚠ {problems} setting(s) need attention; each says why under it." if problems
             else "✓ All settings are valid.", *notes])
        if "network_args" not in check.errors and check.settings is not None:
            s = check.settings
            updates["net:text"] = live_lines(s.network_type, builder_values(widgets), check.allocation)
        if check.settings is not None:
            updates["loraid"] = gr.update(choices=loraid_choices(check.settings, self._taken(check.settings)))
            updates["loraid:allocation"] = allocation_text(check.settings, check.allocation,
                                                           check.notes.get("loraid", ""))
        if widgets.get("command:ours"):  # the Command panel, once shown, follows the form
            updates.update(self.commands(check.settings, widgets))
        return updates

    def validate(self, widgets: dict[str, Any]) -> dict[str, Any]:
        return self.validation(widgets)

    # --- filling the form --------------------------------------------------------------------------------------
    def fill(self, settings: TrainSettings, widgets: dict[str, Any]) -> dict[str, Any]:
        """Updates that put `settings` into the form, with the validation of the result."""
        network_type, values = builder_state(settings.network_type, settings.network_args)
        filled = {**widget_values(settings), **control_updates(values), "network_type": network_type,
                  "loraid": settings.loraid if settings.loraid is not None else NO_LORAID}
        checked = self.validation({**widgets, **filled})
        for name, applies in fields_for(settings.model_kind).items():  # fields of other models are hidden
            filled[name] = gr.update(value=filled[name], visible=applies)
        if "loraid" in checked:  # the picker gets the new value and the choices that go with it
            checked["loraid"] = gr.update(value=filled["loraid"], choices=checked["loraid"]["choices"])
        return {**filled, **checked}

    def apply_recipe(self, widgets: dict[str, Any]) -> dict[str, Any]:
        name = widgets.get("net:recipe")
        if not name:
            return {}
        network_type, values = recipe_state(name)
        filled = {"network_type": network_type, **control_updates(values)}
        return {**filled, **self.validation({**widgets, **filled})}

    def on_model_kind(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """Show the fields that apply to the chosen model (A14B expert fields, the TI2V task), then check the form."""
        shown = {name: gr.update(visible=applies) for name, applies in fields_for(widgets.get("model_kind")).items()}
        return {**shown, **self.validation(widgets)}

    def on_network_type(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """Network type dora ticks the builder's use_dora box (the type is LoRA with use_dora), then checks the form."""
        ticked = {net_key("use_dora"): True} if widgets.get("network_type") == "dora" else {}
        return {**ticked, **self.validation({**widgets, **ticked})}

    def apply_paste(self, widgets: dict[str, Any]) -> dict[str, Any]:
        try:
            network_type, values = builder_state(widgets.get("network_type") or "lora", widgets.get("net:paste") or "")
        except UserError as exc:
            return {error_key("network_args"): gr.update(value=f"⚠ {exc}", visible=True)}
        filled = {"network_type": network_type, **control_updates(values)}
        return {**filled, **self.validation({**widgets, **filled})}

    # --- presets (the shared handlers, ui/preset_row.py) ---------------------------------------------------------
    def _preset_refresh(self, selected: str | None) -> dict[str, Any]:
        return self.presets.refresh(selected)

    def load_preset(self, widgets: dict[str, Any]) -> dict[str, Any]:
        key = widgets.get("preset")
        try:
            settings = self.presets.read(key)
        except UserError as exc:
            return self.presets.refused(exc)
        try:
            updates = self.fill(settings, widgets)
        except UserError as exc:  # network_args the builder cannot show
            return self.presets.refused(UserError(f"preset `{self.store.ref(key).name}`: {exc}"))
        return {**updates, "preset:message": self.presets.loaded(key)}

    def open_preset(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """Load the preset the Jobs tab made from a job's settings, and say whose settings the form now shows."""
        opened = widgets.get(OPENED) or {}
        if not opened.get("key"):
            return {}
        updates = self.load_preset({**widgets, "preset": opened["key"]})
        if not any(name in updates for name in FIELDS):  # refused: the message says why, the form is kept
            return updates
        name = self.store.ref(opened["key"]).name
        return {**updates, **self._preset_refresh(opened["key"]),
                "preset:message": f"The form shows the settings of job {opened['job']} (user preset `{name}`); "
                                  "change what you like and press **Start training**."}

    def describe_preset(self, widgets: dict[str, Any]) -> dict[str, Any]:
        return self.presets.describe(widgets)

    def save_preset(self, widgets: dict[str, Any]) -> dict[str, Any]:
        return self.presets.save(widgets, lambda: self.settings(widgets))

    def rename_preset(self, widgets: dict[str, Any]) -> dict[str, Any]:
        return self.presets.rename(widgets)

    def delete_preset(self, widgets: dict[str, Any]) -> dict[str, Any]:
        return self.presets.delete(widgets)

    def import_preset(self, widgets: dict[str, Any]) -> dict[str, Any]:
        return self.presets.import_file(widgets)

    def export_preset(self, widgets: dict[str, Any]) -> dict[str, Any]:
        return self.presets.export(widgets)

    def refresh_presets(self, widgets: dict[str, Any]) -> dict[str, Any]:
        return self.presets.choices(widgets)

    def refresh_datasets(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """The workspace's dataset TOML files as they are now (the Dataset tab may have written one)."""
        typed = (widgets.get("dataset_config") or "").strip()
        return {"dataset_config": gr.update(choices=dataset_choices(self.ctx.workspace, typed))}

    # --- commands and runs -------------------------------------------------------------------------------------
    def show_command(self, widgets: dict[str, Any]) -> dict[str, Any]:
        try:
            settings = self.settings(widgets)
            self._processes(widgets)
        except UserError as exc:  # the commands of earlier settings go too: they are not these settings'
            return {**self.commands(None, {}), "run:message": report_error(exc)}
        return {**self.commands(settings, widgets),
                "run:message": "The commands for these settings are shown under Command."}

    def commands(self, settings: TrainSettings | None, widgets: dict[str, Any]) -> dict[str, Any]:
        """The Command panel for `settings`; emptied, with a note saying why, when the form cannot run."""
        try:
            processes = self._processes(widgets) if settings is not None else None
        except UserError:
            settings = None
        if settings is None:
            return {"command:ours": "", "command:toml": "", "command:musubi": "",
                    "command:notes": "No command while a setting needs attention; fix the form and it shows here."}
        musubi = musubi_command(settings, self.ctx.workspace)
        notes = "\n".join(f"- {note}" for note in musubi.notes)
        return {"command:ours": shown_command("run.toml", self.ctx.workspace, processes, settings),
                "command:toml": run_toml(settings), "command:musubi": musubi.text(),
                "command:notes": f"Start saves the TOML as `runs/<time>-{settings.output_name}.toml` in the "
                                 f"workspace.\n\nmusubi-tuner notes:\n{notes}" if notes else ""}

    def _processes(self, widgets: dict[str, Any]) -> int:
        value = widgets.get("run:processes")
        if value in (None, "") or float(value) != int(float(value)) or int(float(value)) < 1:
            raise UserError(f"Processes is {value!r}; enter a whole number of 1 or more (one per GPU).")
        return check_processes(int(float(value)))

    def start(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """Start the form's training; while another training is unfinished, ask first (Queue it / leave it)."""
        busy = self.run.unfinished_training()
        if busy is not None:
            asked = {"run:message": f"Training job {busy.id} is {busy.status}. Press **Queue after it** to run these "
                                    f"settings when it ends, or change nothing.",
                     "run:queue": gr.update(visible=True)}
            session = widgets.get("run:session")
            if session is not None:  # the page's ticks hide the question once nothing runs
                session.shown["run:queue"] = True
                asked["run:session"] = session
            return asked
        return self.queue(widgets)

    def queue(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """Start the form's training (queued behind a running one when the job slots are full)."""
        check = self.read(widgets, deep=True)
        if not check.ok:
            return {**self.validation(widgets, check), "run:message": report_error(UserError(
                f"Not started: {len(check.errors)} setting(s) need attention; each says why under it."))}
        try:
            job = self.run.submit(check.settings, self._processes(widgets))
        except UserError as exc:
            return {"run:message": report_error(exc), "run:queue": gr.update(visible=False)}
        return {**self.run.tick(RunSession.following(job.id)), "run:queue": gr.update(visible=False),
                "run:message": f"Started training job {job.id} ({job.status})."}

    def stop(self, widgets: dict[str, Any]) -> dict[str, Any]:
        session = widgets.get("run:session") or RunSession()
        try:
            message = self.run.stop(session)
        except UserError as exc:
            return {"run:message": report_error(exc)}
        return {**self.run.tick(session), "run:message": message}

    def resume(self, widgets: dict[str, Any]) -> dict[str, Any]:
        session = widgets.get("run:session") or RunSession()
        try:
            job = self.run.resume(session, self._processes(widgets))
        except UserError as exc:
            return {"run:message": report_error(exc)}
        return {**self.run.tick(RunSession.resuming(job.id, session.progress)),
                "run:message": f"Resumed from {Path(job.settings['resume']).name} as job {job.id}."}

    def tick(self, widgets: dict[str, Any]) -> dict[str, Any]:
        """The followed run's view; when a page adopts an unfinished training (a reload, a second tab), the form
        shows that job's settings: the running job owns the form."""
        session = widgets.get("run:session") or RunSession()
        adopting = session.job_id is None and not session.adopted
        updates = self.run.tick(session)
        followed = updates["run:session"].job_id
        if session.shown.get("run:queue") and self.run.unfinished_training() is None:
            session.shown["run:queue"] = False  # nothing left to queue behind: the question goes
            updates["run:queue"] = gr.update(visible=False)
        if adopting and followed is not None:
            job = self.ctx.jobs.get(followed)
            if not job.is_finished:
                updates.update(self.show_job(job))
        return updates

    def show_job(self, job) -> dict[str, Any]:
        """The job's settings in the form (the preset message says so); {} when they no longer fit the form."""
        try:
            settings = TrainSettings.from_mapping(job.settings, f"job {job.id}'s settings")
            filled = self.fill(settings, {})
        except UserError:
            return {}
        return {**filled, "preset:message": f"The form shows the settings of training job {job.id} ({job.status})."}
