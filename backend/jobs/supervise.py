"""`python -m backend.jobs.supervise <job dir>`: the detached process that runs one job and records how it ended.

The app starts this supervisor detached (its own session), so the job and its record outlive the app. The
supervisor starts the job's command in its own process group with stdout+stderr appended to `log.txt`, watches
the stop flag, and after the grace period terminates and then kills the command's whole process tree. When the
command ends it writes the final status into `job.json`: succeeded (exit 0), stopped (a stop was requested and
the command exited 0 or was killed), or failed (anything else, with the log tail as the error).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from backend.jobs.logtext import log_tail
from backend.jobs.processes import IS_WINDOWS, ProcessRef, kill_group_leftovers, kill_tree, own_group_kwargs, \
    terminate_tree
from backend.jobs.protocol import DEFAULT_GRACE_S, JOB_DIR_ENV, grace_needed, read_stop_request, stop_outcome, \
    write_stop_request
from backend.jobs.record import load_job, save_job

POLL_S = 0.1
TERM_TO_KILL_S = 2.0  # after the grace period: SIGTERM, then this long before SIGKILL


def command_line(argv: list[str]) -> str:
    return subprocess.list2cmdline(argv) if IS_WINDOWS else shlex.join(argv)


class Supervisor:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.job = load_job(job_dir)
        self.log = open(self.job.log_path, "ab", buffering=0)
        self.terminate_received = False

    def note(self, message: str) -> None:
        """A line of the runner's own in the log, marked so it is not mistaken for the command's output."""
        try:
            self.log.write(f"[job] {message}\n".encode("utf-8"))
        except OSError:
            pass

    def run(self) -> int:
        self.run_command()
        start_next_jobs(self.job_dir.parent)
        return 0

    def run_command(self) -> None:
        job = self.job
        self.note(f"$ {command_line(job.argv)}   (in {job.cwd})")
        env = job_environment(job.env, self.job_dir)
        try:
            child = subprocess.Popen(job.argv, cwd=job.cwd or None, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, close_fds=True, **own_group_kwargs())
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.note(f"could not start the command: {reason}")
            self.finish("failed", None, f"The command could not start ({reason}: {exc.filename or job.argv[0]}); "
                                        f"check the program path and the working folder.")
            return
        ref = ProcessRef.of(child.pid)
        job.pid, job.pid_create_time = child.pid, (ref.create_time if ref else None)
        save_job(job)
        returncode, signalled = self.watch(child)
        kill_group_leftovers(child.pid)
        self.record_result(returncode, signalled)

    def watch(self, child: subprocess.Popen) -> tuple[int, bool]:
        """Wait for the command; enforce a stop request. Returns (exit code, whether we had to signal it)."""
        stop_path = self.job.stop_path
        first_seen: float | None = None
        terminated_at: float | None = None
        tree: list = []
        killed = False
        while True:
            try:
                return child.wait(timeout=POLL_S), terminated_at is not None
            except subprocess.TimeoutExpired:
                pass
            if self.terminate_received and not stop_path.exists():
                write_stop_request(self.job_dir, DEFAULT_GRACE_S)
            if not stop_path.exists():
                continue
            now = time.time()
            requested_at, grace_s = read_stop_request(stop_path, first_seen or now)
            grace_s = grace_needed(self.job_dir, grace_s)
            if first_seen is None:
                first_seen = now
                self.note(f"stop requested; the command has {grace_s:g} s to exit before it is killed")
            if terminated_at is None and now - requested_at >= grace_s:
                waited = now - requested_at
                self.note(f"still running {waited:.1f} s after the stop request; terminating its process tree")
                tree = terminate_tree(child.pid)
                terminated_at = now
            elif terminated_at is not None and not killed and now - terminated_at >= TERM_TO_KILL_S:
                self.note("still running after SIGTERM; killing its process tree")
                kill_tree(child.pid, tree)
                killed = True

    def record_result(self, returncode: int, signalled: bool) -> None:
        stop_requested = self.job.stop_path.exists()
        if stop_requested and (returncode == 0 or signalled):
            how = "killed after the grace period" if signalled else "exited cleanly"
            self.note(f"stopped ({how}; exit code {returncode})")
            outcome = stop_outcome(self.job.events_path) if not signalled else None
            self.finish("stopped", returncode, None,
                        outcome or ("stopped, nothing saved (killed after the grace period)" if signalled else None))
        elif returncode == 0:
            self.note("succeeded (exit code 0)")
            self.finish("succeeded", 0, None)
        else:
            reason = describe_exit(returncode)
            self.note(f"failed ({reason})")
            tail = log_tail(self.job.log_path)
            self.finish("failed", returncode, f"The command {reason}. Last lines of its log:\n{tail}")

    def finish(self, status: str, returncode: int | None, error: str | None, outcome: str | None = None) -> None:
        job = load_job(self.job_dir)
        job.status, job.returncode, job.error, job.ended = status, returncode, error, time.time()
        job.outcome = outcome
        save_job(job)
        self.log.close()


def start_next_jobs(jobs_dir: Path) -> None:
    """This job's slot is free: start queued jobs now rather than at the app's next refresh (the app may be closed)."""
    from backend.jobs.manager import JobManager

    try:
        JobManager.for_folder(jobs_dir).refresh()
    except Exception as exc:  # the queue waits for the app's next refresh instead; this job's result stands
        print(f"[job] could not start the next queued job: {exc}", file=sys.stderr, flush=True)


def job_environment(overrides: dict[str, str], job_dir: Path) -> dict[str, str]:
    """The app's environment + the job's overrides + the protocol's variables. Python output is unbuffered and,
    unless the job says otherwise, UTF-8 (the log is read as UTF-8, also on Windows)."""
    env = {**os.environ, **overrides, JOB_DIR_ENV: str(job_dir), "PYTHONUNBUFFERED": "1"}
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def describe_exit(returncode: int) -> str:
    if returncode < 0 and not IS_WINDOWS:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m backend.jobs.supervise <job dir>", file=sys.stderr)
        return 2
    supervisor = Supervisor(Path(args[0]))

    def on_terminate(signum: int, frame: object) -> None:  # e.g. the machine shuts down: stop the job politely
        supervisor.terminate_received = True

    signal.signal(signal.SIGTERM, on_terminate)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
