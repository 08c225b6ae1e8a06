"""The Generate tab's handlers: LoRA multiplier slots and conflicts, live settings check, Run as a job with its
progress, the gallery of results with their settings, and "reuse these settings". Every check and file operation is
in `backend.generate`; this module turns widget values into calls and results into widget updates."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import gradio as gr

from backend.errors import UserError
from backend.generate.lora_catalog import catalog, conflict_lines, resolve_lora, summarize
from backend.generate.model_options import DEMO_NOTE, is_tiny_demo, kind_options, model_options, read_model
from backend.generate.request import GenerateRequest
from backend.generate.results import GeneratedResult, list_results, read_result
from backend.generate.start_images import keep_start_image
from backend.jobs import Job
from backend.jobs.logtext import render_log
from ui.context import AppContext
from ui.generate_form import MAX_LORAS, GenerateForm
from ui.settings_form import slot_update
from ui.widgets import report_error

JOB_KIND = "generate"
ERROR_PREFIX = "error: "
_served: set[Path] = set()
UNREADABLE = "not readable: see the message below the list"


def serve_files(paths) -> None:
    """Let the page load these result files wherever the workspace lies (only these files, not their folders)."""
    new = [Path(p).resolve() for p in paths if p and Path(p).resolve() not in _served]
    if new:
        gr.set_static_paths(new)
        _served.update(new)


@dataclass
class FollowedGeneration:
    """What one page follows: the generate job it started (or picked up) and what its events said so far."""
    job_id: str | None = None
    events_offset: int = 0
    step: int = 0
    total: int = 0
    media: list[str] = field(default_factory=list)  # results the job wrote so far
    warnings: list[str] = field(default_factory=list)
    loaded: bool = False  # the gallery was filled once for this page


def progress_html(step: int, total: int, text: str = "") -> str:
    share = f" ({step / total:.0%})" if total else ""
    return (f'<div class="gen-progress"><progress value="{step}" max="{max(total, 1)}" data-step="{step}" '
            f'data-total="{total}"></progress> <span>{escape(text or f"step {step}/{total}{share}")}</span></div>')


def conflicts_html(lines: list[str], problems: list[str], readable: int) -> str:
    parts = [f'<p class="gen-lora-problem" style="color: #c0392b;">⚠ {escape(p)}</p>' for p in problems]
    if lines:
        items = "".join(f'<li class="gen-conflict" style="color: #c0392b;">{escape(line)}</li>' for line in lines)
        parts.append(f'<p style="color: #c0392b;"><b>Conflict:</b> these LoRAs change the same weights, so Run is '
                     f'refused unless you tick “Allow overlap” (their changes then add up).</p><ul>{items}</ul>')
    elif readable >= 2:
        parts.append(f'<p class="gen-no-conflict"><b>No conflict:</b> the {readable} LoRAs change disjoint weights, '
                     f"so applying one never changes another's.</p>")
    return "".join(parts)


def failure_sentence(log: str) -> str | None:
    lines = [line[len(ERROR_PREFIX):] for line in render_log(log).splitlines() if line.startswith(ERROR_PREFIX)]
    return lines[-1] if lines else None


def gallery_items(results: list[GeneratedResult]) -> list[tuple[str, str]]:
    serve_files(result.media for result in results)
    return [(str(result.media), result.caption) for result in results]


RECORD_ORDER = ("settings", "seed", "loras", "lora_mode", "allow_overlap", "model", "memory", "outputs")


def record_text(result: GeneratedResult) -> str:
    """The sidecar JSON, what a user reads first on top: the settings, then the LoRAs, then the rest."""
    record = result.record
    ordered = {key: record[key] for key in RECORD_ORDER if key in record}
    ordered.update({key: value for key, value in sorted(record.items()) if key not in ordered})
    ordered["settings"] = dict(sorted(record["settings"].items(), key=lambda item: item[0] != "prompt"))
    return json.dumps(ordered, indent=2, ensure_ascii=False)


def _slot_updates(problems: dict[str, str]) -> list:
    """One update per checked setting (FIELD_ERRORS' order): its message under it, or hidden."""
    from ui.tabs.generate import FIELD_ERRORS

    return [slot_update(problems.get(name)) for name in FIELD_ERRORS]


class GeneratePanel:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    @property
    def ws(self):
        return self.ctx.workspace

    # --- choices ----------------------------------------------------------------------------------------------
    def model_choices(self) -> list[tuple[str, str]]:
        return [(option.label, option.value) for option in model_options(self.ws)]

    def kind_choices(self) -> list[tuple[str, str]]:
        return [(option.label, option.value) for option in kind_options()]

    def lora_choices(self) -> list[tuple[str, str]]:
        return [(f"{summary.name} — {summary.describe()}", summary.name) for summary in catalog(self.ws.loras)]

    def refresh(self, model, files):
        """(model choices, LoRA choices, gallery, results): after a merge, a new LoRA or a result from elsewhere."""
        models = self.model_choices()
        results = list_results(self.ws.outputs)
        return (gr.update(choices=models, value=model), gr.update(choices=self.lora_choices(), value=files or []),
                gr.update(value=gallery_items(results), selected_index=None), [str(r.sidecar) for r in results])

    # --- LoRAs ------------------------------------------------------------------------------------------------
    def _roles(self, model, model_kind) -> list[str]:
        try:
            return read_model(self.ws, model, model_kind).roles
        except UserError:
            return ["main"]  # the model's own message says what is wrong with it

    def lora_slots(self, model, model_kind, files, slot_files, *multipliers):
        """(slot files, conflicts, one slider update per slot): multipliers typed for a file stay with it."""
        files = list(files or [])
        kept = dict(zip(slot_files or [], multipliers))
        lines, problems, infos = self._lora_findings(model, model_kind, files)
        sliders = [gr.update(visible=True, label=f"{name} multiplier", info=info, value=kept.get(name, 1.0))
                   for name, info in zip(files, infos)]
        sliders += [gr.update(visible=False)] * (MAX_LORAS - len(sliders))
        readable = sum(info is not UNREADABLE for info in infos)
        return (files, conflicts_html(lines, problems, readable), *sliders[:MAX_LORAS])

    def _lora_findings(self, model, model_kind, files) -> tuple[list[str], list[str], list[str]]:
        """(conflict lines, problems, one slider hint per file shown): what the list's message says."""
        problems, readable, infos = [], [], []
        if len(files) > MAX_LORAS:
            problems.append(f"{len(files)} LoRAs are chosen; this tab applies up to {MAX_LORAS} at once (merge some "
                            f"in the Merge tab, or use `python -m backend generate`).")
        for name in files[:MAX_LORAS]:
            try:
                path = resolve_lora(self.ws.root, self.ws.loras, name)
                infos.append(summarize(path).describe())
                readable.append(path)
            except UserError as exc:
                problems.append(str(exc))
                infos.append(UNREADABLE)
        try:
            lines = conflict_lines(readable, self._roles(model, model_kind)) if len(readable) > 1 else []
        except UserError as exc:
            lines, problems = [], problems + [str(exc)]
        return lines, problems, infos

    # --- live checks ------------------------------------------------------------------------------------------
    def model_message(self, model, model_kind) -> str:
        try:
            pick = read_model(self.ws, model, model_kind)
        except UserError as exc:
            return f"⚠ {exc}"
        if pick.demo:
            return f"ℹ {DEMO_NOTE}"
        experts = " (an expert pair: high-noise, then low-noise)" if pick.is_pair else ""
        files = f"{len(pick.dit)} file{'s' * (len(pick.dit) != 1)}{experts}, model type {pick.model_kind or 'detected'}."
        return f"{files}  \nℹ {DEMO_NOTE}" if is_tiny_demo(pick) else files

    def is_pair(self, model, model_kind) -> bool:
        """Whether the chosen model is an A14B expert pair (its own fields apply); an unreadable choice shows them."""
        try:
            return read_model(self.ws, model, model_kind).is_pair
        except UserError:
            return True

    def pair_fields(self, model, model_kind):
        """The A14B-only fields (the second guidance scale) show only for an expert pair."""
        return gr.update(visible=self.is_pair(model, model_kind))

    def field_errors(self, *values) -> list:
        """One update per checked setting (FIELD_ERRORS' order): its message under it while it is wrong."""
        return _slot_updates(GenerateForm.from_values(*values).problems(self.ws))

    # --- running ----------------------------------------------------------------------------------------------
    def submit(self, form: GenerateForm) -> tuple[Job, list[str]]:
        """Check everything, then queue the job; a UserError means nothing was submitted."""
        request: GenerateRequest = form.request(self.ws)
        warnings = request.check()
        if request.settings.image:  # the upload is temporary: the job and the result's record use a kept copy
            request = request.with_image(keep_start_image(self.ws.outputs, request.settings.image))
        title = f"Generate: {request.settings.prompt.strip()[:48]}"
        job = self.ctx.jobs.submit([sys.executable, "-m", "backend", *request.arguments(self.ws.root)],
                                   kind=JOB_KIND, title=title, settings=request.job_settings())
        return job, warnings

    def run(self, followed: FollowedGeneration, *values):
        """(followed, status, progress, timer, model message, LoRA list message, one update per field's error slot).
        A wrong setting, model or LoRA pick is said once, beside it; the status then only says that nothing started.
        No stale bar beside an error."""
        form = GenerateForm.from_values(*values)
        wrong_fields = form.problems(self.ws)
        slots = _slot_updates(wrong_fields)
        model = self.model_message(form.model, form.model_kind)
        lines, lora_problems, _ = self._lora_findings(form.model, form.model_kind, list(form.lora_files))
        readable = len(form.lora_files) - len(lora_problems)
        conflicts = conflicts_html(lines, lora_problems, readable)
        problems = len(wrong_fields) + model.startswith("⚠") + bool(
            lora_problems or lines and not form.allow_overlap)
        if problems:
            count = f"{problems} settings need" if problems > 1 else "1 setting needs"
            return (followed, f"⚠ Not started: {count} attention; each says why beside it.", "", gr.skip(), model,
                    conflicts, *slots)
        try:
            job, warnings = self.submit(form)
        except UserError as exc:
            return followed, f"⚠ {report_error(exc)}", "", gr.skip(), model, conflicts, *slots
        notes = "".join(f"  \n⚠ Allowed overlap: {warning}" for warning in warnings)
        followed = FollowedGeneration(job.id, loaded=True)
        return (followed, f"Job {job.id}: {job.status}…{notes}", progress_html(0, 0, "starting…"),
                gr.Timer(active=True), model, conflicts, *slots)

    def stop(self, followed: FollowedGeneration) -> str:
        if followed is None or not followed.job_id:
            return "No generation is running from this page."
        try:
            self.ctx.jobs.stop(followed.job_id)
        except UserError as exc:
            return f"⚠ {report_error(exc)}"
        return f"Asked job {followed.job_id} to stop after its current step."

    def _read_events(self, followed: FollowedGeneration) -> bool:
        """Fold new events into `followed`; True when a new result was written."""
        events, followed.events_offset = self.ctx.jobs.read_events(followed.job_id, followed.events_offset)
        wrote = False
        for event in events:
            name = event.get("event")
            if name in ("start", "progress"):
                followed.total = int(event.get("total") or followed.total)
                followed.step = int(event.get("step") or followed.step)
            elif name == "sample" and event.get("path"):
                followed.media.append(str(event["path"]))
                wrote = True
            elif name == "warning" and event.get("message"):
                followed.warnings.append(str(event["message"]))
        return wrote

    def _gallery(self, select_media: str | None):
        """(gallery update, results, selected sidecar, its settings) with `select_media` opened when it is listed."""
        results = list_results(self.ws.outputs)
        index = next((i for i, r in enumerate(results) if select_media and r.media.resolve() == Path(
            select_media).resolve()), None)
        gallery = gr.update(value=gallery_items(results), selected_index=index)
        sidecars = [str(r.sidecar) for r in results]
        if index is None:
            return gallery, sidecars, gr.skip(), gr.skip()
        return gallery, sidecars, sidecars[index], record_text(results[index])

    def _pick_up(self, followed: FollowedGeneration) -> FollowedGeneration:
        job = next((j for j in self.ctx.jobs.list() if j.kind == JOB_KIND and not j.is_finished), None)
        return FollowedGeneration(job.id, loaded=followed.loaded) if job else followed

    def tick(self, followed: FollowedGeneration):
        """(followed, status, progress, gallery, results, selected, selected settings, timer)."""
        followed = followed or FollowedGeneration()
        if followed.job_id is None:
            followed = self._pick_up(followed)
        if followed.job_id is None:  # nothing to follow: fill the gallery once for this page and rest
            followed.loaded = True
            gallery, results, _, _ = self._gallery(None)
            return followed, gr.skip(), gr.skip(), gallery, results, gr.skip(), gr.skip(), gr.Timer(active=False)
        self.ctx.jobs.refresh()  # starts it if it was queued
        try:
            job = self.ctx.jobs.get(followed.job_id)
        except UserError as exc:  # deleted in the Jobs tab meanwhile
            return FollowedGeneration(loaded=True), str(exc), "", gr.skip(), gr.skip(), gr.skip(), gr.skip(), \
                gr.Timer(active=False)
        wrote = self._read_events(followed)
        first_fill = not followed.loaded
        followed.loaded = True
        warnings = "".join(f"  \n⚠ {w}" for w in followed.warnings)
        if not job.is_finished:
            status = f"Job {job.id}: {job.status}… {followed.step}/{followed.total or '?'} steps{warnings}"
            updates = self._gallery(followed.media[-1] if wrote else None) if wrote or first_fill else \
                (gr.skip(),) * 4
            return (followed, status, progress_html(followed.step, followed.total), *updates, gr.skip())
        if job.status == "succeeded":
            names = ", ".join(Path(p).name for p in followed.media) or "nothing"
            status = f"Job {job.id} succeeded: wrote {names}.{warnings}"
            progress = progress_html(followed.total, followed.total, "done")
        else:
            log, _ = self.ctx.jobs.read_log(job.id)
            status = f"Job {job.id} ended ({job.status}): {failure_sentence(log) or 'its log says why'}"
            progress = progress_html(followed.step, followed.total, job.status)
        updates = self._gallery(followed.media[-1] if followed.media else None)
        return (FollowedGeneration(loaded=True), status, progress, *updates, gr.Timer(active=False))

    # --- results ----------------------------------------------------------------------------------------------
    def select(self, results, event: gr.SelectData):
        """(selected sidecar, its settings) for the clicked gallery item."""
        index = event.index if isinstance(event.index, int) else None
        if index is None or not results or index >= len(results):
            return gr.skip(), gr.skip()
        try:
            result = read_result(results[index])
        except UserError as exc:
            return None, f"⚠ {report_error(exc)}"
        return str(result.sidecar), record_text(result)

    def reuse(self, selected, *values):
        """The form's values from the selected result's settings, then a message; the form is kept on an error."""
        keep = [gr.skip()] * len(values)
        try:
            if not selected:
                raise UserError("No result is selected; click a result in the gallery first.")
            result = read_result(selected)
            form = GenerateForm.from_request(self.ws, GenerateRequest.from_record(result.record))
        except UserError as exc:
            return (*keep, f"⚠ {report_error(exc)}")
        serve_files([form.image] if form.image else [])
        return (*form.values(), f"Filled the form with the settings of {result.media.name}; press Run to make it "
                                f"again.")
