"""Jobs: heavy work runs as a detached subprocess with its own folder (job.json, log.txt, events.jsonl).

    mgr = JobManager(workspace.jobs, max_concurrent=1)
    job = mgr.submit([sys.executable, "-m", "backend", "selfcheck"], kind="selfcheck", title="Self-check")
    text, offset = mgr.read_log(job.id, offset)      # poll on a timer; render with render_log(text)
    mgr.stop(job.id)                                  # cooperative, then the whole process tree is killed

A job process talks back through `JobContext` (backend.jobs.protocol): events and the stop request.
"""
from backend.jobs.logtext import render_log
from backend.jobs.manager import JobManager
from backend.jobs.protocol import JobContext
from backend.jobs.record import FINISHED_STATUSES, STATUSES, Job

__all__ = ["FINISHED_STATUSES", "Job", "JobContext", "JobManager", "STATUSES", "render_log"]
