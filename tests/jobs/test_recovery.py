"""Jobs outlive the app: a new manager re-attaches to running jobs and notices jobs that died while it was down."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from backend.jobs import JobManager, render_log

COUNTER = """
    import time
    for i in range(1, 21):
        print(f"line {i}", flush=True)
        time.sleep(0.05)
    print("complete", flush=True)
"""


def submit_from_another_app(jobs_dir: Path, argv: list[str], project_root: Path) -> str:
    """Start a job from a separate Python process that exits right after: the app going down mid-job."""
    code = textwrap.dedent(f"""
        from pathlib import Path
        from backend.jobs import JobManager
        job = JobManager(Path({str(jobs_dir)!r})).submit({argv!r}, kind="test", title="survivor")
        print(job.id, job.status)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=project_root, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    job_id, status = done.stdout.split()
    assert status == "running"
    return job_id


def test_restart_reattaches_to_a_running_job_and_sees_its_complete_log(tmp_path: Path, script, jobtools) -> None:
    jobs_dir = tmp_path / "jobs"
    job_id = submit_from_another_app(jobs_dir, script("counter", COUNTER), jobtools.project_root)
    restarted = JobManager(jobs_dir)
    assert restarted.get(job_id).status == "running"
    assert [job.id for job in restarted.list()] == [job_id]
    job = jobtools.wait_finished(restarted, job_id)
    assert job.status == "succeeded" and job.returncode == 0
    output = [line for line in render_log(restarted.read_log(job_id)[0]).splitlines() if not line.startswith("[job]")]
    assert output == [f"line {i}" for i in range(1, 21)] + ["complete"]


SLEEPER = """
    import time
    for i in range(1, 4):
        print(f"working {i}", flush=True)
    time.sleep(60)
"""


def test_job_whose_supervisor_was_killed_while_the_app_was_down_is_failed_with_its_log_tail(
        tmp_path: Path, script, jobtools) -> None:
    jobs_dir = tmp_path / "jobs"
    first_app = JobManager(jobs_dir)
    job = first_app.submit(script("sleeper", SLEEPER), kind="test", title="sleeper")
    jobtools.wait_until(lambda: "working 3" in first_app.read_log(job.id)[0], what="the job's output")
    command_pid = first_app.get(job.id).pid
    supervisor_pid = json.loads((job.dir / "supervisor.json").read_text())["pid"]
    first_app = None  # the app is down ...
    os.kill(supervisor_pid, signal.SIGKILL)  # ... and the supervisor dies without recording anything
    jobtools.wait_until(lambda: jobtools.process_gone(supervisor_pid), what="the supervisor to die")
    assert json.loads((job.dir / "job.json").read_text())["status"] == "running"

    restarted = JobManager(jobs_dir)
    job = restarted.get(job.id)
    assert job.status == "failed" and job.ended is not None
    assert "supervisor process ended without recording a result" in job.error
    assert "working 3" in job.error.splitlines()[-2]  # the log tail ends with the job's last output
    assert json.loads((job.dir / "job.json").read_text())["status"] == "failed"
    # the command it left behind cannot be stopped from the app any more, so it is not left running
    jobtools.wait_until(lambda: jobtools.process_gone(command_pid), timeout_s=5, what="the orphaned command to die")
    assert f"pid {command_pid}" in job.error
