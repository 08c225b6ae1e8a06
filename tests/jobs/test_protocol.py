"""The job-side protocol: events written by JobContext come back through the manager; the stop flag."""
from __future__ import annotations

import math
import time
from pathlib import Path

from backend.jobs import JobContext, JobManager
from backend.jobs.logtext import read_jsonl
from backend.jobs.protocol import write_stop_request

EMITTER = """
    import time
    from backend.jobs.protocol import JobContext
    ctx = JobContext.from_env()
    assert ctx.in_job
    ctx.emit("start", total=3, name="émetteur")
    for step in range(1, 4):
        ctx.emit("step", step=step, loss=1.0 / step, lr=1e-4)
        time.sleep(0.1)
    ctx.emit("checkpoint", path="ckpt/step3.safetensors", step=3)
    ctx.emit("end", status="succeeded")
"""


def test_events_round_trip_incrementally(manager: JobManager, script, jobtools) -> None:
    job = manager.submit(script("emitter", EMITTER), kind="test", title="events",
                         env={"PYTHONPATH": str(jobtools.project_root)})
    events, offset, batches = [], 0, 0
    while not manager.get(job.id).is_finished:
        new, offset = manager.read_events(job.id, offset)
        events += new
        batches += bool(new)
        time.sleep(0.05)
    new, offset = manager.read_events(job.id, offset)
    events += new
    assert batches >= 2  # read while the job was writing, not all at the end
    assert manager.get(job.id).status == "succeeded", manager.get(job.id).error
    assert offset == job.events_path.stat().st_size
    assert manager.read_events(job.id, offset) == ([], offset)
    assert [e["event"] for e in events] == ["start", "step", "step", "step", "checkpoint", "end"]
    assert events[0]["total"] == 3 and events[0]["name"] == "émetteur"
    assert [e["loss"] for e in events[1:4]] == [1.0, 0.5, 1.0 / 3]
    assert events[4] == {"t": events[4]["t"], "event": "checkpoint", "path": "ckpt/step3.safetensors", "step": 3}
    assert all(isinstance(e["t"], float) for e in events)
    assert sorted(e["t"] for e in events) == [e["t"] for e in events]


def test_context_outside_a_job_writes_to_a_given_file_or_nowhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LORAID_JOB_DIR", raising=False)
    silent = JobContext.from_env()
    assert not silent.in_job and not silent.stop_requested()
    silent.emit("progress", step=1, total=2)  # goes nowhere, does not fail

    events_path, stop_path = tmp_path / "events.jsonl", tmp_path / "stop"
    with JobContext.from_env(events_path=events_path, stop_path=stop_path) as ctx:
        ctx.emit("step", step=1, loss=float("nan"), path=tmp_path / "x.png")
        assert not ctx.stop_requested()
        stop_path.touch()
        assert ctx.stop_requested()
    [event], _ = read_jsonl(events_path)
    assert event["event"] == "step" and event["path"] == str(tmp_path / "x.png")
    assert math.isnan(float(event["loss"]))


def test_context_in_a_job_folder_sees_the_stop_flag(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAID_JOB_DIR", str(tmp_path))
    ctx = JobContext.from_env()
    assert ctx.in_job and ctx.events_path == tmp_path / "events.jsonl" and not ctx.stop_requested()
    write_stop_request(tmp_path, grace_s=5)
    assert ctx.stop_requested()
    ctx.close()
