"""The job manager: submit commands as jobs, queue them, start them detached, stop them, and find them again.

All state lives in the jobs folder (one subfolder per job), so a new manager on the same folder, e.g. after the
app restarted, sees every job as it is. Changes are made under a lock file, so two managers (or two threads)
never start the same queued job or exceed the concurrency limit. Queued jobs start when a manager refreshes
(on submit, on the app's timer, at app start) and when a running job ends: its supervisor starts the next one,
so a queue keeps moving while no page is open or the app is closed.

Two kinds of queueing: an unpinned job counts against `max_concurrent`; a job pinned to a device slot (`device`,
e.g. GPU "1", its command run with CUDA_VISIBLE_DEVICES=1) runs only when no other active job holds that slot and
is not counted against the limit, so K jobs pinned to K GPUs run side by side (the parallel LORAID slices). A job
with `after` starts once every listed job has succeeded, and is cancelled (with the reason) when one did not.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from backend.errors import UserError
from backend.fileio import atomic_write_json
from backend.jobs.lock import file_lock
from backend.jobs.logtext import log_tail, read_jsonl, read_text
from backend.jobs.processes import ProcessRef, detached_kwargs, kill_tree
from backend.jobs.protocol import EVENTS_FILE, LOG_FILE, STOP_FLAG_FILE, read_stop_request, write_stop_request
from backend.jobs.record import JOB_FILE, JOB_ID_PATTERN, SUPERVISOR_FILE, Job, load_job, new_job_id, save_job

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where `python -m backend ...` works: the default working folder
LOCK_FILE = ".lock"
QUEUE_FILE = "queue.json"  # {"max_concurrent": n}: so a supervisor can start the next queued job, app or no app
QUEUE_ORDER_FILE = "queue_order.json"  # {"order": [job ids]}: the start order chosen for queued jobs (else by age)
log = logging.getLogger(__name__)


class JobManager:
    def __init__(self, jobs_dir: Path, max_concurrent: int = 1) -> None:
        """Manage the jobs in `jobs_dir`; the concurrency limit is recorded there for the supervisors to honour."""
        if int(max_concurrent) < 1:
            raise UserError(f"The number of concurrent jobs must be at least 1 (got {max_concurrent}).")
        self._setup(jobs_dir, int(max_concurrent))
        if _recorded_limit(self.jobs_dir) != self.max_concurrent:
            atomic_write_json(self.jobs_dir / QUEUE_FILE, {"max_concurrent": self.max_concurrent})
        self.refresh()

    @classmethod
    def for_folder(cls, jobs_dir: Path) -> "JobManager":
        """A manager with the limit the app recorded in the folder (used by supervisors; does not refresh)."""
        manager = cls.__new__(cls)
        manager._setup(jobs_dir, _recorded_limit(Path(jobs_dir)) or 1)
        return manager

    def _setup(self, jobs_dir: Path, max_concurrent: int) -> None:
        self.jobs_dir = Path(jobs_dir).expanduser().resolve()
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.max_concurrent = max_concurrent
        self._supervisors: dict[str, subprocess.Popen] = {}  # launched by this manager; polled so none stays a zombie
        self._finished: dict[str, Job] = {}                   # finished jobs never change: read them once
        self._unreadable: set[str] = set()

    # --- submitting -------------------------------------------------------------------------------------------

    def submit(self, argv: list[str], *, kind: str, title: str, settings: dict | None = None,
               env: dict[str, str] | None = None, cwd: Path | None = None, device: str = "",
               after: list[str] | None = None) -> Job:
        """Queue a command as a new job; it starts at once when a slot is free, else when one frees up. `device`
        pins it to a device slot (one job per slot at a time); `after` lists jobs that must succeed first."""
        argv, env, cwd_text = _checked_command(argv, env, cwd)
        after = [str(job_id) for job_id in (after or [])]
        for job_id in after:
            self._job_dir(job_id)  # refuses an unknown id with a sentence
        settings = dict(settings or {})
        try:
            json.dumps(settings)
        except (TypeError, ValueError) as exc:
            raise UserError(f"The job's settings cannot be saved as JSON ({exc}); pass plain values.") from None
        with self._lock():
            job_dir, job_id = self._new_job_dir()
            job = Job(id=job_id, kind=str(kind), title=str(title), argv=argv, settings=settings, status="queued",
                      created=time.time(), started=None, ended=None, returncode=None, dir=job_dir, pid=None,
                      error=None, env=env, cwd=cwd_text, device=str(device), after=after)
            save_job(job)
            self._refresh_locked()
            return load_job(job_dir)

    def rerun(self, job_id: str) -> Job:
        """Submit the same command, settings, environment overrides and working folder again, as a new job."""
        job = self.get(job_id)
        return self.submit(job.argv, kind=job.kind, title=job.title, settings=job.settings, env=job.env,
                           cwd=Path(job.cwd) if job.cwd else None, device=job.device)

    # --- reading ----------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Record jobs that ended, mark jobs whose supervisor died as failed, and start queued jobs in free slots."""
        with self._lock():
            self._refresh_locked()

    def list(self) -> list[Job]:
        """Every job, newest first (after a refresh)."""
        with self._lock():
            jobs = self._refresh_locked()
        return sorted(jobs, key=lambda job: (job.created, job.id), reverse=True)

    def get(self, job_id: str) -> Job:
        with self._lock():
            return self._reconcile(load_job(self._job_dir(job_id)))

    def read_log(self, job_id: str, offset: int = 0) -> tuple[str, int]:
        """The log text written since byte `offset` (whole characters only), and the offset to pass next time."""
        return read_text(self._job_dir(job_id) / LOG_FILE, offset)

    def read_events(self, job_id: str, offset: int = 0) -> tuple[list[dict], int]:
        """The complete events written since byte `offset`, and the offset to pass next time."""
        return read_jsonl(self._job_dir(job_id) / EVENTS_FILE, offset)

    def queued(self) -> list[Job]:
        """The queued jobs in the order they will start."""
        with self._lock():
            jobs = self._refresh_locked()
            return self._in_start_order([job for job in jobs if job.status == "queued"])

    # --- changing ---------------------------------------------------------------------------------------------

    def move(self, job_id: str, offset: int) -> list[Job]:
        """Move a queued job `offset` places later in the queue (negative: earlier); returns the new queue order."""
        with self._lock():
            job = self._reconcile(load_job(self._job_dir(job_id)))
            if job.status != "queued":
                raise UserError(f"Job {job.id} is {job.status}, not queued; only queued jobs can be moved.")
            queue = self._in_start_order([j for j in self._refresh_locked() if j.status == "queued"])
            ids = [j.id for j in queue]
            if job.id not in ids:  # it started during the refresh
                raise UserError(f"Job {job.id} has just started; only queued jobs can be moved.")
            position = max(0, min(len(ids) - 1, ids.index(job.id) + int(offset)))
            ids.remove(job.id)
            ids.insert(position, job.id)
            atomic_write_json(self.jobs_dir / QUEUE_ORDER_FILE, {"order": ids})
            return self._in_start_order(queue)


    def stop(self, job_id: str, grace_s: float = 10.0) -> Job:
        """Ask a running job to stop; its supervisor kills the whole process tree after `grace_s` seconds.

        Returns at once (status 'stopping'). A queued job is cancelled; a finished job is returned unchanged.
        Stopping again updates the grace period, counted from the first request.
        """
        if grace_s < 0:
            raise UserError(f"The stop grace period must be 0 seconds or more (got {grace_s}).")
        with self._lock():
            job = self._reconcile(load_job(self._job_dir(job_id)))
            if job.status == "queued":
                return self._cancel_locked(job)
            if job.is_finished:
                return job
            stop_path = job.dir / STOP_FLAG_FILE
            requested_at = read_stop_request(stop_path, time.time())[0] if stop_path.exists() else None
            write_stop_request(job.dir, grace_s, requested_at)
            return load_job(job.dir)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job: it will never start. Cancelling a cancelled job changes nothing."""
        with self._lock():
            job = self._reconcile(load_job(self._job_dir(job_id)))
            if job.status == "cancelled":
                return job
            if job.status != "queued":
                hint = "use Stop to end it" if job.is_active else "it has already finished"
                raise UserError(f"Job {job.id} is {job.status}, not queued, so it cannot be cancelled; {hint}.")
            return self._cancel_locked(job)

    def delete(self, job_id: str) -> None:
        """Delete a finished job's folder (log, events, everything)."""
        with self._lock():
            job = self._reconcile(load_job(self._job_dir(job_id)))
            if not job.is_finished:
                how = "cancel it" if job.status == "queued" else "stop it and wait until it has ended"
                raise UserError(f"Job {job.id} is {job.status}; {how} before deleting it.")
            shutil.rmtree(job.dir)
            self._finished.pop(job.id, None)

    # --- internals (called with the lock held) ----------------------------------------------------------------

    def _lock(self):
        return file_lock(self.jobs_dir / LOCK_FILE)

    def _job_dir(self, job_id: str) -> Path:
        job_dir = self.jobs_dir / str(job_id)
        if not JOB_ID_PATTERN.match(str(job_id)) or not (job_dir / JOB_FILE).is_file():
            raise UserError(f"There is no job `{job_id}` in {self.jobs_dir}; refresh the job list.")
        return job_dir

    def _new_job_dir(self) -> tuple[Path, str]:
        while True:
            job_id = new_job_id()
            job_dir = self.jobs_dir / job_id
            try:
                job_dir.mkdir()
                return job_dir, job_id
            except FileExistsError:
                continue

    def _refresh_locked(self) -> list[Job]:
        for job_id, process in list(self._supervisors.items()):
            if process.poll() is not None:
                del self._supervisors[job_id]
        jobs = [self._reconcile(job) for job in self._scan()]
        by_id = {job.id: job for job in jobs}
        active = sum(job.is_active and not job.device for job in jobs)
        held = {job.device for job in jobs if job.is_active and job.device}
        for job in self._in_start_order([j for j in jobs if j.status == "queued"]):
            blocked = _unmet(job, by_id)
            if blocked is None:
                continue
            if blocked:
                job.error = blocked
                self._cancel_locked(job)
                continue
            if job.device:
                if job.device not in held:
                    self._launch(job)
                    if job.is_active:
                        held.add(job.device)
                continue
            if active < self.max_concurrent:
                self._launch(job)
                active += job.is_active
        for job in jobs:
            if job.is_finished:
                self._finished[job.id] = job
        return jobs

    def _in_start_order(self, queued: list[Job]) -> list[Job]:
        """Jobs placed by the user's order first (in that order), the rest after them by age."""
        order = {job_id: index for index, job_id in enumerate(_recorded_order(self.jobs_dir))}
        return sorted(queued, key=lambda j: (order.get(j.id, len(order)), j.created, j.id))

    def _scan(self) -> list[Job]:
        jobs = []
        for entry in self.jobs_dir.iterdir():
            if not JOB_ID_PATTERN.match(entry.name):
                continue
            if entry.name in self._finished:
                jobs.append(self._finished[entry.name])
                continue
            try:
                jobs.append(load_job(entry))
            except FileNotFoundError:
                continue  # a folder being created or deleted right now
            except (OSError, ValueError, TypeError) as exc:
                if entry.name not in self._unreadable:
                    self._unreadable.add(entry.name)
                    log.warning("skipping job folder %s: unreadable %s (%s)", entry, JOB_FILE, exc)
        present = {job.id for job in jobs}
        for job_id in set(self._finished) - present:
            del self._finished[job_id]
        return jobs

    def _launch(self, job: Job) -> None:
        """Start the job's detached supervisor (`python -m backend.jobs.supervise <job dir>`)."""
        job.status, job.started = "running", time.time()
        save_job(job)
        try:
            with open(job.dir / LOG_FILE, "ab") as supervisor_output:  # a supervisor crash shows in the log
                process = subprocess.Popen(
                    [sys.executable, "-m", "backend.jobs.supervise", str(job.dir)], cwd=PROJECT_ROOT,
                    stdin=subprocess.DEVNULL, stdout=supervisor_output, stderr=subprocess.STDOUT, close_fds=True,
                    **detached_kwargs())
        except OSError as exc:
            job.status, job.ended = "failed", time.time()
            job.error = f"The job runner could not start ({exc}); check that {sys.executable} still exists."
            save_job(job)
            return
        self._supervisors[job.id] = process
        ref = ProcessRef.of(process.pid) or ProcessRef(process.pid, 0.0)
        atomic_write_json(job.dir / SUPERVISOR_FILE, ref.to_dict())

    def _reconcile(self, job: Job) -> Job:
        """The job as it really is: an active job whose supervisor is gone without a result becomes 'failed'."""
        if not job.is_active:
            return job
        supervisor = _read_supervisor(job.dir)
        if supervisor is not None and supervisor.is_alive():
            return job
        job = load_job(job.dir)  # the supervisor may have written the result just before it exited
        if not job.is_active:
            return job
        return self._mark_orphaned(job, launched=supervisor is not None)

    def _mark_orphaned(self, job: Job, launched: bool) -> Job:
        if not launched:
            reason = "The job was being started when the app stopped, and it never ran; run it again."
        else:
            reason = ("The job's supervisor process ended without recording a result (it was killed, or the "
                      "computer restarted).")
        command = ProcessRef(job.pid, job.pid_create_time) if job.pid and job.pid_create_time else None
        if command is not None and command.is_alive():
            kill_tree(job.pid)
            reason += f" Its command (pid {job.pid}) was still running unsupervised and has been killed."
        with open(job.dir / LOG_FILE, "ab") as job_log:
            job_log.write(b"[job] failed: the supervisor ended without recording a result\n")
        tail = log_tail(job.dir / LOG_FILE)
        job.status, job.ended = "failed", time.time()
        job.error = f"{reason} Last lines of its log:\n{tail}"
        save_job(job)
        return job

    def _cancel_locked(self, job: Job) -> Job:
        job.status, job.ended = "cancelled", time.time()
        save_job(job)
        return job


def _unmet(job: Job, by_id: dict[str, Job]) -> str | None:
    """"" when the job may start, None while a job it waits for is unfinished, else why it never will."""
    for job_id in job.after:
        other = by_id.get(job_id)
        if other is None:
            return f"Job {job.id} waited for job {job_id}, which no longer exists; it was not run."
        if not other.is_finished:
            return None
        if other.status != "succeeded":
            return f"Job {job.id} waited for job {job_id} ({other.title}), which {other.status}; it was not run."
    return ""


def _recorded_limit(jobs_dir: Path) -> int | None:
    try:
        limit = int(json.loads((jobs_dir / QUEUE_FILE).read_text(encoding="utf-8"))["max_concurrent"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return limit if limit >= 1 else None


def _recorded_order(jobs_dir: Path) -> list[str]:
    try:
        order = json.loads((jobs_dir / QUEUE_ORDER_FILE).read_text(encoding="utf-8"))["order"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [str(job_id) for job_id in order] if isinstance(order, list) else []


def _read_supervisor(job_dir: Path) -> ProcessRef | None:
    try:
        return ProcessRef.from_dict(json.loads((job_dir / SUPERVISOR_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _checked_command(argv: list[str], env: dict[str, str] | None, cwd: Path | None) -> tuple[list[str], dict, str]:
    """Validate what a job will run; returns (argv, env overrides, absolute working folder)."""
    if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(arg, (str, Path)) for arg in argv):
        raise UserError("A job's command must be a non-empty list of arguments (program first), not a shell string.")
    env = dict(env or {})
    bad = [key for key, value in env.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise UserError(f"Environment overrides must map names to strings; fix {bad[0]!r}.")
    work_dir = Path(cwd).expanduser().resolve() if cwd is not None else PROJECT_ROOT
    if not work_dir.is_dir():
        raise UserError(f"The job's working folder {work_dir} does not exist; create it or choose another.")
    return [str(arg) for arg in argv], env, str(work_dir)
