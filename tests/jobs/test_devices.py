"""Device slots and dependencies in the job runner: jobs pinned to different slots run side by side whatever the
concurrency limit, a second job on a busy slot waits for it, and a job waiting for others starts only after they
succeeded (and is cancelled, with the reason, when one did not)."""
from __future__ import annotations

from pathlib import Path

from backend.jobs import JobManager



def _meet(script, tmp_path: Path, mine: str, other: str):
    """A job that writes its marker, then waits for the other's: it can only end if both run at the same time."""
    return script(f"meet_{mine}", f"""
        import pathlib, time
        folder = pathlib.Path({str(tmp_path)!r})
        (folder / {mine!r}).write_text("here")
        while not (folder / {other!r}).exists():
            time.sleep(0.02)
    """)


def test_pinned_jobs_on_two_slots_run_at_once_and_a_busy_slot_queues(tmp_path: Path, script, jobtools) -> None:
    wait_finished = jobtools.wait_finished
    manager = JobManager(tmp_path / "jobs", max_concurrent=1)
    a = manager.submit(_meet(script, tmp_path, "a", "b"), kind="test", title="a", device="cpu0")
    b = manager.submit(_meet(script, tmp_path, "b", "a"), kind="test", title="b", device="cpu1")
    c = manager.submit(script("c", "print('c ran')"), kind="test", title="c", device="cpu0")
    assert manager.get(c.id).status == "queued"  # cpu0 is held by a
    assert wait_finished(manager, a.id, 60).status == "succeeded"
    assert wait_finished(manager, b.id, 60).status == "succeeded"
    done = wait_finished(manager, c.id, 60)
    assert done.status == "succeeded" and done.started >= manager.get(a.id).ended


def test_a_job_after_others_waits_for_their_success(tmp_path: Path, script, jobtools) -> None:
    wait_finished, wait_until = jobtools.wait_finished, jobtools.wait_until
    manager = JobManager(tmp_path / "jobs", max_concurrent=2)
    gate = tmp_path / "gate"
    first = manager.submit(script("first", f"""
        import pathlib, time
        while not pathlib.Path({str(gate)!r}).exists():
            time.sleep(0.02)
    """), kind="test", title="first")
    then = manager.submit(script("then", "print('then ran')"), kind="test", title="then", after=[first.id])
    wait_until(lambda: manager.get(first.id).status == "running", 30, "the first job to start")
    assert manager.get(then.id).status == "queued"  # a free slot, but its dependency has not finished
    gate.write_text("go")
    assert wait_finished(manager, first.id, 60).status == "succeeded"
    assert wait_finished(manager, then.id, 60).status == "succeeded"

    failing = manager.submit(script("failing", "raise SystemExit(3)"), kind="test", title="failing")
    never = manager.submit(script("never", "print('never')"), kind="test", title="never", after=[failing.id])
    assert wait_finished(manager, failing.id, 60).status == "failed"
    cancelled = wait_finished(manager, never.id, 60)
    assert cancelled.status == "cancelled" and cancelled.started is None
    assert "failing" in cancelled.error and "failed" in cancelled.error
