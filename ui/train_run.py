"""The Train tab's run panel: Start / Stop / Resume a training job and follow it live from its events and log.

A page follows one job (`RunSession`); with none chosen it adopts the workspace's newest training job, so a
reloaded page or a restarted app re-attaches. Each tick reads only the bytes added since the last one. Outputs are
keyed by name (`run:*`); see `RUN_OUTPUTS`.
"""
from __future__ import annotations

import hashlib
import html
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from backend.errors import UserError
from backend.jobs import Job
from backend.train.command import train_argv, write_run_config
from backend.train.run_events import RunProgress
from backend.train.settings import TrainSettings
from ui.context import AppContext
from ui.log_view import LogView

TRAIN_KIND = "train"
RUN_OUTPUTS = ("run:session", "run:job", "run:progress", "run:stats", "run:loss", "run:lr", "run:samples",
               "run:log", "run:timer")
FOLLOW_SECONDS = 1.0  # poll interval while the followed job runs
IDLE_SECONDS = 5.0  # and while nothing runs: each poll costs the page CPU in proportion to its size
SAMPLES_LABEL = "Samples (step: prompt)"
SAMPLES_FOLDER = Path(tempfile.gettempdir()) / "loraid-studio-samples"  # the page serves files from the temp dir


@dataclass
class RunSession:
    job_id: str | None = None
    events_offset: int = 0
    progress: RunProgress = field(default_factory=RunProgress)
    log: LogView = field(default_factory=LogView)
    shown_points: tuple = ()  # (points, step) as last drawn
    shown_samples: int = -1
    adopted: bool = False  # looked for the newest training job once already
    shown: dict = field(default_factory=dict)  # the text outputs as last sent to the page

    @classmethod
    def following(cls, job_id: str) -> "RunSession":
        return cls(job_id=job_id, log=LogView(job_id), adopted=True)

    @classmethod
    def resuming(cls, job_id: str, stopped: RunProgress) -> "RunSession":
        """Follows a resumed job; its charts start with the stopped job's points, so the curves continue."""
        session = cls.following(job_id)
        session.progress.points = [point for point in stopped.points if point["step"] <= stopped.step]
        return session


def train_title(settings: TrainSettings) -> str:
    loraid = f" LORAID {settings.loraid}" if settings.loraid is not None else ""
    resumed = f" (resume {Path(settings.resume).name})" if settings.resume else ""
    return f"Train {settings.output_name}{loraid}{resumed}"


LOSS_SERIES = ("loss", "avg_loss")
# The browser's chart fixes its axis types and its series colours from the first value it is given and keeps them
# when only the data changes: so every frame has numeric columns (an empty object column reads as categorical), and
# the first one names both series with rows that draw nothing (NaN is left out of lines and scales).
LOSS_TYPES = {"step": "int64", "value": "float64", "series": "string"}
LR_TYPES = {"step": "int64", "lr": "float64"}


def loss_frame(progress: RunProgress) -> pd.DataFrame:
    return pd.DataFrame(progress.loss_rows(), columns=list(LOSS_TYPES)).astype(LOSS_TYPES)


def lr_frame(progress: RunProgress) -> pd.DataFrame:
    return pd.DataFrame(progress.lr_rows(), columns=list(LR_TYPES)).astype(LR_TYPES)


def first_loss_frame() -> pd.DataFrame:
    """The loss chart's value when the page is built: no points, both series named (see LOSS_TYPES)."""
    rows = [{"step": 0, "value": float("nan"), "series": series} for series in LOSS_SERIES]
    return pd.DataFrame(rows, columns=list(LOSS_TYPES)).astype(LOSS_TYPES)


def chart_label(name: str, progress: RunProgress) -> str:
    """`Loss (step 12 of 60)`: the trainer's step, not the number of logged points."""
    if progress.total is None and not progress.points:
        return f"{name} (no steps yet)"
    return f"{name} (step {progress.step} of {progress.total or '?'})"



def progress_html(progress: RunProgress, status: str) -> str:
    total = progress.total or 0
    return (f'<div class="train-progress" data-step="{progress.step}" data-total="{total}" '
            f'data-status="{html.escape(status)}"><progress value="{progress.step}" max="{max(total, 1)}" '
            f'style="width:100%"></progress></div>')


def samples_label(job: Job) -> str:
    """The samples' title; a tiny demo model's samples are said to be coloured noise, which is what it draws."""
    demo = str(job.settings.get("model_kind", "")).startswith("demo-")
    return SAMPLES_LABEL + (" · the tiny demo model draws coloured noise, as expected" if demo else "")


def _sample_gallery(progress: RunProgress) -> list[tuple[str, str]]:
    """Copies of the sample files in a temporary folder (the page serves only files from there)."""
    shown = []
    for path, caption in progress.samples:
        source = Path(path)
        if not source.is_file():
            continue
        copy = SAMPLES_FOLDER / f"{hashlib.sha1(str(source).encode()).hexdigest()[:12]}-{source.name}"
        if not copy.exists():
            SAMPLES_FOLDER.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
        shown.append((str(copy), caption))
    return shown


class RunPanel:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    # --- following ---------------------------------------------------------------------------------------------
    def _newest_training_job(self) -> Job | None:
        return next((job for job in self.ctx.jobs.list() if job.kind == TRAIN_KIND), None)

    def unfinished_training(self) -> Job | None:
        return next((job for job in self.ctx.jobs.list() if job.kind == TRAIN_KIND and not job.is_finished), None)

    def tick(self, session: RunSession) -> dict:
        if session.job_id is None and not session.adopted:
            newest = self._newest_training_job()
            session = RunSession.following(newest.id) if newest else RunSession(adopted=True)
        if session.job_id is None:
            return {"run:session": session, **self._poll_every(session, IDLE_SECONDS)}
        try:
            self.ctx.jobs.refresh()
            job = self.ctx.jobs.get(session.job_id)
        except UserError:  # deleted in the Jobs tab
            return {"run:session": RunSession(adopted=True), "run:job": "The followed job was deleted."}
        events, session.events_offset = self.ctx.jobs.read_events(job.id, session.events_offset)
        session.progress.apply(events)
        chunk, session.log.offset = self.ctx.jobs.read_log(job.id, session.log.offset)
        if chunk:
            session.log.append(chunk)
        return {**self._view(session, job), "run:session": session}

    def _view(self, session: RunSession, job: Job) -> dict:
        progress = session.progress
        texts = {"run:job": self._job_line(job, progress), "run:progress": progress_html(progress, job.status),
                 "run:stats": self._stats(progress, job), "run:log": session.log.text}
        updates: dict = {key: gr.skip() if session.shown.get(key) == text else text for key, text in texts.items()}
        session.shown.update(texts)  # unchanged outputs are skipped: re-rendering them every second costs CPU
        updates.update(self._poll_every(session, IDLE_SECONDS if job.is_finished else FOLLOW_SECONDS))
        if (len(progress.points), progress.step) != session.shown_points:
            session.shown_points = (len(progress.points), progress.step)
            updates["run:loss"] = gr.update(value=loss_frame(progress), label=chart_label("Loss", progress))
            updates["run:lr"] = gr.update(value=lr_frame(progress), label=chart_label("Learning rate", progress))
        if len(progress.samples) != session.shown_samples:
            session.shown_samples = len(progress.samples)
            updates["run:samples"] = gr.update(value=_sample_gallery(progress), label=samples_label(job))
        return updates

    @staticmethod
    def _poll_every(session: RunSession, seconds: float) -> dict:
        if session.shown.get("run:timer") == seconds:
            return {}
        session.shown["run:timer"] = seconds
        return {"run:timer": gr.Timer(seconds, active=True)}

    @staticmethod
    def _job_line(job: Job, progress: RunProgress) -> str:
        line = f"**{job.title}** · job `{job.id}` · **{job.status}**"
        if job.is_finished and job.error:
            line += f"  \n{job.error.splitlines()[0]}"
        elif progress.error:
            line += f"  \n{progress.error}"
        return line

    @staticmethod
    def _stats(progress: RunProgress, job: Job) -> str:
        lines = [progress.summary() if job.status != "queued" else "queued: waiting for a free job slot"]
        if progress.checkpoints:
            lines.append(f"last checkpoint: `{progress.checkpoints[-1]}`")
        if progress.latest_state:
            lines.append(f"resume state: `{progress.latest_state}`")
        lines += [f"⚠ {warning}" for warning in progress.warnings[-3:]]
        return "  \n".join(lines)

    # --- actions -----------------------------------------------------------------------------------------------
    def submit(self, settings: TrainSettings, num_processes: int) -> Job:
        config = write_run_config(settings, self.ctx.workspace)
        return self.ctx.jobs.submit(train_argv(config, self.ctx.workspace, num_processes, settings=settings),
                                    kind=TRAIN_KIND,
                                    title=train_title(settings), settings=settings.model_dump(mode="json"))

    def stop(self, session: RunSession) -> str:
        job = self._followed(session)
        if job.is_finished:
            raise UserError(f"Job {job.id} has already ended ({job.status}); there is nothing to stop.")
        self.ctx.jobs.stop(job.id)
        if job.status == "queued":
            return f"Cancelled queued job {job.id}."
        if not job.settings.get("save_state"):
            return (f"Asked job {job.id} to stop: it finishes the step under way and saves it (the Jobs tab says which "
                    "step). This run does not save training state, so it cannot be resumed.")
        return (f"Asked job {job.id} to stop: it finishes the step under way and saves it with its training state (the "
                "Jobs tab says which step).")

    def resume(self, session: RunSession, num_processes: int) -> Job:
        job = self._followed(session)
        if job.status == "stopping":
            raise UserError(f"Job {job.id} is still stopping (saving its checkpoint); press Resume again in a moment.")
        if not job.is_finished:
            raise UserError(f"Job {job.id} is {job.status}; press Stop and wait until it has stopped, then resume.")
        if job.status == "succeeded":
            raise UserError(f"Job {job.id} finished all its steps; raise Max steps and start a new run instead.")
        if job.status == "cancelled":
            raise UserError(f"Job {job.id} was cancelled before it ran; press Start to run it.")
        state = session.progress.latest_state
        if state is None:
            hint = ("it was started without Save training state; tick it and start again" if not
                    job.settings.get("save_state") else "it stopped before its first checkpoint; start it again")
            raise UserError(f"Job {job.id} saved no training state to resume from: {hint}.")
        settings = TrainSettings.from_mapping({**job.settings, "resume": state}, f"job {job.id}'s settings")
        return self.submit(settings, num_processes)

    def _followed(self, session: RunSession) -> Job:
        if session.job_id is None:
            raise UserError("No training run is shown here yet; press Start first.")
        self.ctx.jobs.refresh()
        return self.ctx.jobs.get(session.job_id)
