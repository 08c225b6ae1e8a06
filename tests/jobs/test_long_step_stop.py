"""Stop during a step longer than the grace period: the runner waits as long as the job said a step and a save take,
so the job saves the step it was in; a job that cannot finish is killed and reported as having saved nothing."""
from __future__ import annotations

import json

from backend.jobs import JobManager
from backend.jobs.protocol import NEEDS_FILE, grace_needed

LONG_STEP = """
    import json, os, pathlib, time
    from backend.jobs.protocol import JobContext
    ctx = JobContext.from_env()
    ctx.emit("start", total=100)
    ctx.report_needs(step_s={step_s}, save_s=1.0)
    stop = pathlib.Path(os.environ["LORAID_JOB_DIR"]) / "stop_requested"
    step = 4
    while not stop.exists():  # step 5 is in progress until the stop arrives
        time.sleep(0.01)
    requested = json.loads(stop.read_text())
    while time.time() - requested["requested_at"] < 3 * requested["grace_s"]:  # the step outlasts the grace period
        time.sleep(0.01)
    step = 5
    pathlib.Path(os.environ["LORAID_JOB_DIR"], "saved-step5").write_text("checkpoint")
    ctx.emit("end", status="stopped", step=step, saved_step=step)
"""


def test_a_step_longer_than_the_grace_period_is_finished_and_saved(manager: JobManager, script, jobtools) -> None:
    job = manager.submit(script("long_step", LONG_STEP.format(step_s=30.0)), kind="test", title="long step",
                         env={"PYTHONPATH": str(jobtools.project_root)})
    jobtools.wait_until(lambda: (job.dir / NEEDS_FILE).exists(), what="the job's reported needs")
    manager.stop(job.id, grace_s=0.2)
    job = jobtools.wait_finished(manager, job.id, timeout_s=60)
    assert job.status == "stopped" and job.returncode == 0
    assert job.outcome == "stopped, saved at step 5"
    assert (job.dir / "saved-step5").read_text() == "checkpoint"
    assert "has 56.5 s to exit" in manager.read_log(job.id)[0]  # 1.5 × (30 + 1) + 10


def test_a_job_that_reported_nothing_is_killed_and_said_to_have_saved_nothing(manager: JobManager, script,
                                                                             jobtools) -> None:
    source = LONG_STEP.replace("    ctx.report_needs(step_s={step_s}, save_s=1.0)\n", "")
    job = manager.submit(script("silent", source), kind="test", title="silent", env={"PYTHONPATH": str(jobtools.project_root)})
    jobtools.wait_until(lambda: manager.read_events(job.id)[0], what="the start event")
    manager.stop(job.id, grace_s=0.2)
    job = jobtools.wait_finished(manager, job.id, timeout_s=30)
    assert job.status == "stopped" and job.outcome.startswith("stopped, nothing saved")
    assert not (job.dir / "saved-step5").exists()


def test_grace_follows_the_reported_needs(tmp_path) -> None:
    assert grace_needed(tmp_path, 10.0) == 10.0  # nothing reported
    (tmp_path / NEEDS_FILE).write_text(json.dumps({"step_s": 40.0, "save_s": 20.0}))
    assert grace_needed(tmp_path, 10.0) == 1.5 * 60 + 10
    assert grace_needed(tmp_path, 500.0) == 500.0
    (tmp_path / NEEDS_FILE).write_text("{broken")
    assert grace_needed(tmp_path, 10.0) == 10.0
