"""Reordering the queue: moved jobs start in the chosen order, also for a manager that starts fresh on the folder."""
from __future__ import annotations

import pytest

from backend.errors import UserError
from backend.jobs import JobManager

HONOURS_STOP = """
    import time
    from backend.jobs.protocol import JobContext
    ctx = JobContext.from_env()
    while not ctx.stop_requested():
        time.sleep(0.02)
"""
SHORT = "print('done', flush=True)\n"


def test_moved_jobs_start_in_the_chosen_order(manager: JobManager, script, jobtools) -> None:
    blocker = manager.submit(script("honours", HONOURS_STOP), kind="test", title="blocker",
                             env={"PYTHONPATH": str(jobtools.project_root)})
    a, b, c = (manager.submit(script(name, SHORT), kind="test", title=name) for name in "abc")
    assert [job.id for job in manager.queued()] == [a.id, b.id, c.id]

    assert [job.id for job in manager.move(c.id, -2)] == [c.id, a.id, b.id]
    assert [job.id for job in manager.move(a.id, +5)] == [c.id, b.id, a.id]  # clamped to the end
    assert [job.id for job in JobManager(manager.jobs_dir).queued()] == [c.id, b.id, a.id]  # on disk

    with pytest.raises(UserError, match="only queued jobs can be moved"):
        manager.move(blocker.id, -1)
    manager.cancel(b.id)
    assert [job.id for job in manager.queued()] == [c.id, a.id]

    manager.stop(blocker.id)
    jobtools.wait_finished(manager, blocker.id)
    for job in (c, a):
        jobtools.wait_finished(manager, job.id)
    c_done, a_done = manager.get(c.id), manager.get(a.id)
    assert c_done.status == a_done.status == "succeeded"
    assert a_done.started >= c_done.ended  # c was moved ahead of a: a started only after c ended
    assert manager.get(b.id).started is None


def test_a_new_job_queues_after_the_ordered_ones(manager: JobManager, script, jobtools) -> None:
    blocker = manager.submit(script("honours", HONOURS_STOP), kind="test", title="blocker",
                             env={"PYTHONPATH": str(jobtools.project_root)})
    a, b = (manager.submit(script(name, SHORT), kind="test", title=name) for name in "ab")
    manager.move(b.id, -1)
    late = manager.submit(script("late", SHORT), kind="test", title="late")
    assert [job.id for job in manager.queued()] == [b.id, a.id, late.id]
    for job in (b, a, late):
        manager.cancel(job.id)
    manager.stop(blocker.id)
    jobtools.wait_finished(manager, blocker.id)
