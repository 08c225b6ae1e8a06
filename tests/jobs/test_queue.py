"""The queue: concurrency limit, order, cancel, delete, and two managers refreshing the same folder at once."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from backend.errors import UserError
from backend.jobs import JobManager

SHORT = "import time\nprint('begin', flush=True)\ntime.sleep(0.3)\nprint('end', flush=True)\n"
HONOURS_STOP = """
    import time
    from backend.jobs.protocol import JobContext
    ctx = JobContext.from_env()
    while not ctx.stop_requested():
        time.sleep(0.02)
    print("stopping as asked", flush=True)
"""


def test_max_concurrent_one_runs_two_jobs_in_order(manager: JobManager, script, jobtools) -> None:
    argv = script("short", SHORT)
    first = manager.submit(argv, kind="test", title="first")
    second = manager.submit(argv, kind="test", title="second")
    assert (first.status, second.status) == ("running", "queued")
    assert [job.id for job in manager.list()] == [second.id, first.id]  # newest first
    second = jobtools.wait_finished(manager, second.id)
    first = manager.get(first.id)
    assert first.status == second.status == "succeeded"
    assert second.started >= first.ended


def test_cancel_queued_job_never_starts(manager: JobManager, script, jobtools) -> None:
    running = manager.submit(script("honours", HONOURS_STOP), kind="test", title="running",
                             env={"PYTHONPATH": str(jobtools.project_root)})
    queued = manager.submit(script("short", SHORT), kind="test", title="queued")
    assert manager.cancel(queued.id).status == "cancelled"
    with pytest.raises(UserError, match="use Stop"):
        manager.cancel(running.id)
    manager.stop(running.id)
    assert jobtools.wait_finished(manager, running.id).status == "stopped"
    manager.refresh()
    queued = manager.get(queued.id)
    assert queued.status == "cancelled" and queued.started is None and not queued.log_path.exists()


def test_stop_on_a_queued_job_cancels_it(manager: JobManager, script, jobtools) -> None:
    running = manager.submit(script("honours", HONOURS_STOP), kind="test", title="running",
                             env={"PYTHONPATH": str(jobtools.project_root)})
    queued = manager.submit(script("short", SHORT), kind="test", title="queued")
    assert manager.stop(queued.id).status == "cancelled"
    manager.stop(running.id)
    jobtools.wait_finished(manager, running.id)


def test_delete_refuses_unfinished_jobs_and_removes_finished_ones(manager: JobManager, script, jobtools) -> None:
    job = manager.submit(script("honours", HONOURS_STOP), kind="test", title="running",
                             env={"PYTHONPATH": str(jobtools.project_root)})
    with pytest.raises(UserError, match="running; stop it"):
        manager.delete(job.id)
    assert job.dir.is_dir()
    manager.stop(job.id)
    jobtools.wait_finished(manager, job.id)
    manager.delete(job.id)
    assert not job.dir.exists() and manager.list() == []
    with pytest.raises(UserError, match="no job"):
        manager.get(job.id)


def test_two_managers_refreshing_together_never_exceed_the_limit(tmp_path: Path, script, jobtools) -> None:
    jobs_dir = tmp_path / "jobs"
    app_a, app_b = JobManager(jobs_dir), JobManager(jobs_dir)
    argv = script("quick", "import time\ntime.sleep(0.15)\n")
    ids = [app_a.submit(argv, kind="test", title=f"job {i}").id for i in range(4)]
    done = threading.Event()

    def keep_refreshing(manager: JobManager) -> None:
        while not done.is_set():
            manager.refresh()

    threads = [threading.Thread(target=keep_refreshing, args=(m,)) for m in (app_a, app_b)]
    for thread in threads:
        thread.start()
    try:
        jobtools.wait_until(lambda: all(app_b.get(i).is_finished for i in ids), timeout_s=20, what="all jobs")
    finally:
        done.set()
        for thread in threads:
            thread.join()
    jobs = sorted((app_a.get(i) for i in ids), key=lambda job: job.started)
    assert [job.status for job in jobs] == ["succeeded"] * 4
    assert [job.id for job in jobs] == ids  # started in submission order
    for earlier, later in zip(jobs, jobs[1:]):
        assert later.started >= earlier.ended  # one at a time
    launches = sum(job.log_path.read_text().count("[job] $ ") for job in jobs)
    assert launches == 4  # no job was started twice
