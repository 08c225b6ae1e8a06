"""The Dataset tab's handlers. Each takes the page's values and returns {output name: value} (names in OUTPUTS);
a name left out keeps what the page shows. All work is done by `backend.data`; a user error becomes one sentence
beside the control (and a toast), and the previous scan, plan and files stay as they were."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import gradio as gr

from backend.data.caption_edits import BulkEdit, CaptionEditPlan, apply_plan, plan_bulk_edit, save_caption
from backend.data.cache_settings import CACHE_SETTINGS, CacheSettings, in_workspace
from backend.data.captions import read_caption
from backend.data.dataset_folder import Entry, FolderScan, resolve_folder, scan_tree
from backend.data.dataset_form import DatasetForm, FormProblems, existing_form, form_problems, read_form, render_form_toml
from backend.data.dataset_preview import bucket_summary, cache_counts, windows_by_mode
from backend.data.frames import rounding_note
from backend.data.dataset_toml_file import (read_toml_text, ready_for_cache, resolve_toml_path, toml_path_problem,
                                            write_dataset_toml)
from backend.data.media import MediaError
from backend.data.thumbnails import thumbnail
from backend.errors import UserError
from backend.jobs import Job
from backend.jobs.progress import read_progress
from ui import dataset_views as views
from ui.context import AppContext
from ui.log_view import LogView
from ui.settings_form import SettingsForm, slot_update
from ui.widgets import progress_bar, report_error

FORM_FIELDS = list(DatasetForm.model_fields)
FORM_OUTPUTS = [f"form.{name}" for name in FORM_FIELDS]
FORM_SLOTS = [f"form_problem.{name}" for name in FORM_FIELDS]
FIX_THE_FORM = "⚠ Fix the setting marked ⚠ under Settings first."
FIX_THE_PATH = "⚠ Not written: fix the TOML file marked ⚠ above."
CACHE_FIELDS = ["device", "dtype", "batch_size", "skip_existing", "i2v", "vae_tiling", "max_sequence_length",
                "model_kind", "vae", "text_encoder", "tokenizer"]
CACHE_SLOTS = [f"cache_problem.{name}" for name in CACHE_FIELDS]
OUTPUTS = {  # every output a handler may set, by name
    "scan", "summary", "problems", "gallery", "items", "item", "preview", "item_info", "caption", "caption_message",
    "scope", "plan", "changes", "bulk_message", "buckets", "dropped", "buckets_message", "frames_video", "frames",
    "frames_strip", "frames_message", "toml_path", "toml_path_problem", "toml", "toml_message", "cache_view", "cache_status", "cache_log",
    "cache_progress", "timer", *FORM_OUTPUTS, *FORM_SLOTS, *CACHE_SLOTS}
ALL_FOLDERS = "all folders"
GALLERY_LIMIT = 120
PREVIEW_SIDE = 256
LOG_LINES = 30


def form_values(form: DatasetForm) -> dict:
    values = {f"form.{name}": getattr(form, name) for name in FORM_FIELDS}
    values["form.target_frames"] = ", ".join(str(n) for n in form.target_frames)
    return values


def form_slot_values(problems: dict[str, str]) -> dict:
    return {f"form_problem.{name}": slot_update(problems.get(name)) for name in FORM_FIELDS}


def failure(message_name: str, exc: UserError) -> dict:
    """A handler's failure: wrong settings are shown beside their fields (the message only points there); any
    other problem is one sentence in the message (and a toast)."""
    if isinstance(exc, FormProblems):
        return {message_name: FIX_THE_FORM, **form_slot_values(exc.problems)}
    return {message_name: f"⚠ {report_error(exc)}"}


def gallery_items(scan: FolderScan) -> list[tuple]:
    items = []
    for entry in scan.entries[:GALLERY_LIMIT]:
        try:
            items.append((thumbnail(entry.item.path), PurePosixPath(entry.name).name))  # the table has the path
        except MediaError:
            continue
    return items


def cache_form(start: dict | None = None, choices: dict | None = None) -> SettingsForm:
    """The Dataset tab's cache options: the shared ones, then the latents' and the text's own."""
    return SettingsForm((CacheSettings, *CACHE_SETTINGS.values()), CACHE_FIELDS, "dataset-cache", start, choices)


def cache_problems(what: str, values: dict, root: Path) -> dict[str, str]:
    """The problems of the options one cache job (`what`) uses, worded for the page, by field name."""
    return cache_form().problems(CACHE_SETTINGS[what], in_workspace(what, values, root))


def cache_slot_values(problems: dict[str, str]) -> dict:
    return {f"cache_problem.{name}": slot_update(problems.get(name)) for name in CACHE_FIELDS}


def cache_bar(job: Job) -> str:
    """The cache job's moving count (items done of all, ETA) as a bar, from the progress events it writes."""
    return progress_bar(read_progress(job.events_path), job.status, "cache-progress")


def _require_scan(scan: FolderScan | None) -> FolderScan:
    if scan is None:
        raise UserError("No folder has been scanned yet; choose a folder and click Scan first.")
    return scan


class DatasetPanel:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    # ---- scanning ------------------------------------------------------------------------------------------

    def scan(self, folder_text: str, last_scan: FolderScan | None, *values) -> dict:
        """Scan the folder; the form takes the settings of its dataset.toml when it has one, and the bucket and
        frame previews and the TOML editor are filled from the form. A folder that cannot be scanned changes
        nothing else, and the message says whose files the page still shows."""
        try:
            root = resolve_folder(folder_text, self.ctx.workspace.root)
            existing, note = existing_form(root)
            form = existing or read_form(dict(zip(FORM_FIELDS, values)))
            scan = scan_tree(root, form.caption_extension)
        except UserError as exc:
            refused = failure("summary", exc)
            if last_scan is not None:
                refused["summary"] += f"  \nThe files below are still those of the last scan ({last_scan.root})."
            return refused
        first = (scan.missing_captions or scan.entries)[0].name if scan.entries else None
        videos = [entry.name for entry in scan.entries if entry.item.kind == "video"]
        out = {"scan": scan, "summary": views.summary_markdown(scan), "problems": views.problems_markdown(scan),
               "gallery": gallery_items(scan), "items": views.item_rows(scan), "plan": None, "changes": [],
               "bulk_message": "", "toml_path": str(root / "dataset.toml"),
               "toml_path_problem": slot_update(None),  # a new path: Write TOML (or leaving the field) checks it
               "item": gr.update(choices=views.item_choices(scan), value=first),
               "scope": gr.update(choices=[ALL_FOLDERS, *scan.sources_by_label()], value=ALL_FOLDERS),
               "frames_video": gr.update(choices=videos, value=videos[0] if videos else None),
               **(form_values(existing) if existing else {}), **form_slot_values({})}
        previews = [("buckets_message", lambda: self._buckets(scan, form)),
                    ("toml_message", lambda: {"toml": render_form_toml(scan, form, root / "dataset.toml"),
                                              "toml_message": note or "Generated from the form; not written yet."})]
        if videos:
            previews.append(("frames_message", lambda: self._frames(scan, videos[0], form)))
        for message_name, preview in previews:
            try:
                out.update(preview())
            except UserError as exc:  # a form value the previews cannot use; the scan itself stands
                out[message_name] = f"⚠ {exc}"
        return out

    def _refreshed(self, scan: FolderScan, name: str | None) -> dict:
        return {"scan": scan, "summary": views.summary_markdown(scan), "problems": views.problems_markdown(scan),
                "items": views.item_rows(scan), "item": gr.update(choices=views.item_choices(scan), value=name)}

    # ---- one caption ---------------------------------------------------------------------------------------

    def select_item(self, scan: FolderScan | None, name: str | None) -> dict:
        if scan is None or not name:
            return {"preview": None, "item_info": "", "caption": "", "caption_message": ""}
        try:
            entry = scan.entry(name)
            picture = thumbnail(entry.item.path, PREVIEW_SIDE)
        except (UserError, MediaError) as exc:
            return {"caption_message": f"⚠ {report_error(exc)}"}
        return {"preview": picture, "item_info": views.item_info(entry), "caption": entry.item.caption or "",
                "caption_message": ""}

    def next_missing(self, scan: FolderScan | None, name: str | None) -> dict:
        try:
            missing = [e.name for e in _require_scan(scan).missing_captions]
        except UserError as exc:
            return {"caption_message": f"⚠ {report_error(exc)}"}
        if not missing:
            return {"caption_message": "Every file has a caption."}
        after = [m for m in missing if name is None or m > name]
        return {"item": (after or missing)[0]}

    def save_caption(self, scan: FolderScan | None, name: str | None, text: str) -> dict:
        try:
            scan = _require_scan(scan)
            if not name:
                raise UserError("No file is selected; pick one in the list, the table or the thumbnails first.")
            entry = scan.entry(name)
            written = save_caption(entry.item.path, text, scan.caption_extension)
            entry.item.caption = read_caption(entry.item.path, scan.caption_extension)
        except UserError as exc:
            return {"caption_message": f"⚠ {report_error(exc)}"}
        return {**self._refreshed(scan, name), "caption": entry.item.caption, "item_info": views.item_info(entry),
                "caption_message": f"Saved {written.name}."}

    # ---- bulk edits ----------------------------------------------------------------------------------------

    def _in_scope(self, scan: FolderScan, scope: str | None) -> list[Entry]:
        if not scope or scope == ALL_FOLDERS:
            return scan.entries
        source = scan.sources_by_label().get(scope)
        if source is None:
            raise UserError(f"The folder {scope} is not in the last scan; scan again and pick a folder from the list.")
        return [entry for entry in scan.entries if entry.source == source]

    def bulk_preview(self, scan: FolderScan | None, operation: str, scope: str, text: str, replacement: str,
                     position: str, regex: bool, case_sensitive: bool) -> dict:
        try:
            scan = _require_scan(scan)
            entries = self._in_scope(scan, scope)
            captions = {e.item.path: read_caption(e.item.path, scan.caption_extension) for e in entries}
            edit = BulkEdit(operation, text or "", replacement or "", position or "start", bool(regex),
                            bool(case_sensitive))
            plan = plan_bulk_edit(captions, edit)
        except UserError as exc:
            return {"plan": None, "changes": [], "bulk_message": f"⚠ {report_error(exc)}"}
        hint = " Click Apply to write them." if plan.changes else ""
        return {"plan": plan, "changes": views.change_rows(plan, scan), "bulk_message": plan.summary + hint}

    def bulk_apply(self, scan: FolderScan | None, plan: CaptionEditPlan | None, name: str | None) -> dict:
        try:
            scan = _require_scan(scan)
            if plan is None:
                raise UserError("There is no previewed edit to apply; click Preview first and check the changes.")
            result = apply_plan(plan, scan.caption_extension)
        except UserError as exc:
            return {"bulk_message": f"⚠ {report_error(exc)}"}
        for entry in scan.entries:
            if entry.item.path in plan.changes:
                entry.item.caption = read_caption(entry.item.path, scan.caption_extension)
        out = {**self._refreshed(scan, name), "plan": None, "changes": [], "bulk_message": result.summary}
        if name:
            out["caption"], out["item_info"] = scan.entry(name).item.caption or "", views.item_info(scan.entry(name))
        return out

    # ---- previews ------------------------------------------------------------------------------------------

    def _buckets(self, scan: FolderScan, form: DatasetForm) -> dict:
        summary = bucket_summary(scan, form)
        dropped = summary.dropped or [["(none)", "every item fits a bucket"]]
        return {"buckets": views.bucket_rows(summary), "dropped": [list(row) for row in dropped],
                "buckets_message": views.bucket_message(summary, (form.resolution_width, form.resolution_height))}

    def check_form(self, *values) -> dict:
        """Each setting's problem beside it (the page's check while editing)."""
        return form_slot_values(form_problems(dict(zip(FORM_FIELDS, values))))

    def buckets(self, scan: FolderScan | None, *values) -> dict:
        try:
            return {**self._buckets(_require_scan(scan), read_form(dict(zip(FORM_FIELDS, values)))),
                    **form_slot_values({})}
        except UserError as exc:  # the tables of other settings go: they would sit beside this error as its answer
            return {**failure("buckets_message", exc), "buckets": [], "dropped": []}

    def _frames(self, scan: FolderScan, name: str | None, form: DatasetForm) -> dict:
        if not name:
            raise UserError("No video is chosen; pick one of the scanned videos (this folder may have none).")
        entry = scan.entry(name)
        if entry.item.kind != "video":
            raise UserError(f"{name} is an image; frame extraction applies to videos only, so pick a video.")
        count = entry.item.frame_count or 0
        by_mode = windows_by_mode(count, form)
        return {"frames": views.frame_rows(by_mode),
                "frames_strip": views.frame_strip_html(by_mode[form.frame_extraction], count, form.frame_extraction),
                "frames_message": " ".join(filter(None, [
                    f"{name}: {count} frames; the table shows every mode with these settings.",
                    rounding_note(form.target_frames)]))}

    def frames(self, scan: FolderScan | None, name: str | None, *values) -> dict:
        try:
            return {**self._frames(_require_scan(scan), name, read_form(dict(zip(FORM_FIELDS, values)))),
                    **form_slot_values({})}
        except UserError as exc:  # as for buckets: no table of other settings beside the error
            return {**failure("frames_message", exc), "frames": [], "frames_strip": ""}

    # ---- the TOML ------------------------------------------------------------------------------------------

    def generate_toml(self, scan: FolderScan | None, toml_path: str, *values) -> dict:
        try:
            scan = _require_scan(scan)
            path = resolve_toml_path(toml_path, self.ctx.workspace.root)
            text = render_form_toml(scan, read_form(dict(zip(FORM_FIELDS, values))), path)
        except UserError as exc:
            return failure("toml_message", exc)
        return {**form_slot_values({}), "toml": text, "toml_message": f"Generated from the form; nothing is written until you click "
                                              f"Write TOML ({path})."}

    def load_toml(self, toml_path: str) -> dict:
        try:
            path = resolve_toml_path(toml_path, self.ctx.workspace.root)
            text = read_toml_text(path)
        except UserError as exc:
            return {"toml_message": f"⚠ {report_error(exc)}"}
        return {"toml": text, "toml_message": f"Loaded {path}."}

    def check_toml_path(self, toml_path: str, outside: bool) -> dict:
        """The TOML file's problem beside it (a place outside the workspace needs the confirmation box)."""
        return {"toml_path_problem": slot_update(toml_path_problem(toml_path, self.ctx.workspace, bool(outside)))}

    def write_toml(self, toml_path: str, text: str, outside: bool) -> dict:
        """Write the editor's TOML; a path that may not be written is refused beside it and nothing is written."""
        problem = toml_path_problem(toml_path, self.ctx.workspace, bool(outside))
        if problem:
            return {"toml_path_problem": slot_update(problem), "toml_message": FIX_THE_PATH}
        try:
            path = resolve_toml_path(toml_path, self.ctx.workspace.root)
            config = write_dataset_toml(path, text, self.ctx.workspace, bool(outside))
        except UserError as exc:
            return {"toml_path_problem": slot_update(None), "toml_message": f"⚠ {report_error(exc)} Nothing was written."}
        return {"toml_path_problem": slot_update(None),
                "toml_message": f"Wrote {path}: {len(config.datasets)} [[datasets]] entries, valid."}

    # ---- caching jobs --------------------------------------------------------------------------------------

    def check_cache(self, toml_path: str, *values) -> dict:
        """Each cache option's problem beside it, as either cache would see it (the page's check while editing)."""
        given = {"dataset_config": toml_path or "dataset.toml", **cache_form().values(values)}
        problems = {}
        for what in CACHE_SETTINGS:
            problems = {**cache_problems(what, given, self.ctx.workspace.root), **problems}
        return cache_slot_values(problems)

    def start_cache(self, what: str, toml_path: str, editor_text: str, *values) -> dict:
        """Start a cache job from the page's TOML and cache options; a wrong option is shown beside it instead."""
        try:
            path = resolve_toml_path(toml_path, self.ctx.workspace.root)
            ready_for_cache(path, editor_text)
        except UserError as exc:
            return {"cache_status": f"⚠ {report_error(exc)}"}
        values = in_workspace(what, {"dataset_config": str(path), **cache_form().values(values)},
                              self.ctx.workspace.root)
        problems = cache_form().problems(CACHE_SETTINGS[what], values)
        if problems:
            return {**cache_slot_values(problems),
                    "cache_status": "Not started: fix the cache option marked ⚠ above."}
        settings = CACHE_SETTINGS[what](**values)
        try:
            job = self.ctx.jobs.submit(settings.job_argv(), kind="cache", title=settings.job_title(),
                                       settings=settings.job_record())
        except UserError as exc:
            return {"cache_status": f"⚠ {report_error(exc)}"}
        return {**cache_slot_values({}), "cache_view": LogView(job.id), "cache_status": self._status_line(job, what),
                "cache_log": "", "cache_progress": cache_bar(job), "timer": gr.Timer(active=True)}

    def _status_line(self, job: Job, what: str | None = None) -> str:
        what = what or job.settings.get("what", "")
        if not job.is_finished:
            count = read_progress(job.events_path).line()
            return f"Cache {what} job {job.id}: {job.status}…" + (f" {count} items" if count else "")
        if job.status != "succeeded":
            return f"Cache {what} job {job.id} ended ({job.status}); its log below says why."
        try:
            counts = cache_counts(ready_for_cache(Path(job.settings["dataset_config"]), None))
        except UserError:
            return f"Cache {what} job {job.id} succeeded."
        return f"Cache {what} job {job.id} succeeded: {views.cache_message(counts)}"

    def poll_cache(self, view: LogView | None) -> dict:
        if view is None:  # a page just opened: follow a cache job that is still running, as a reload would expect
            running = next((job for job in self.ctx.jobs.list() if job.kind == "cache" and not job.is_finished), None)
            view = LogView(running.id if running else None)
        if view.job_id is None:
            return {"cache_view": view, "timer": gr.Timer(active=False)}
        try:
            self.ctx.jobs.refresh()  # starts it if it was queued
            job = self.ctx.jobs.get(view.job_id)
        except UserError as exc:  # deleted in the Jobs tab meanwhile
            return {"cache_status": str(exc), "timer": gr.Timer(active=False)}
        chunk, view.offset = self.ctx.jobs.read_log(job.id, view.offset)
        view.append(chunk)
        out = {"cache_view": view, "cache_status": self._status_line(job), "cache_progress": cache_bar(job),
               "cache_log": "\n".join(view.text.splitlines()[-LOG_LINES:])}
        if job.is_finished:
            out["timer"] = gr.Timer(active=False)
        return out
