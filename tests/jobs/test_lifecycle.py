"""Real child processes through the job runner: progress output, cooperative stop, killing a stubborn tree."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from backend.errors import UserError
from backend.jobs import JobManager, render_log

PROGRESS_PRINTER = """
    import sys, time
    print("starting", flush=True)
    for i in range(1, 6):
        sys.stdout.write(f"\\rprogress {i}/5")
        sys.stdout.flush()
        time.sleep(0.02)
    sys.stdout.write("\\ndone\\n")
"""


def test_progress_printer_log_renders_collapsed(manager: JobManager, script, jobtools) -> None:
    job = manager.submit(script("progress", PROGRESS_PRINTER), kind="test", title="progress")
    job = jobtools.wait_finished(manager, job.id)
    assert job.status == "succeeded" and job.returncode == 0 and job.error is None
    raw, offset = manager.read_log(job.id)
    assert offset == job.log_path.stat().st_size
    assert "\rprogress 1/5\rprogress 2/5" in raw
    output = [line for line in render_log(raw).split("\n") if not line.startswith("[job]")]
    assert output == ["starting", "progress 5/5", "done", ""]


def test_cooperative_stop_reads_stopped_and_the_job_said_so(manager: JobManager, jobtools) -> None:
    argv = [sys.executable, "-m", "backend", "selfcheck", "--steps", "1000", "--interval", "0.02"]
    job = manager.submit(argv, kind="selfcheck", title="Self-check")
    jobtools.wait_until(lambda: len(manager.read_events(job.id)[0]) >= 3, what="selfcheck progress events")
    assert manager.stop(job.id, grace_s=20).status == "stopping"
    job = jobtools.wait_finished(manager, job.id, timeout_s=10)  # well inside the grace period: it stopped by itself
    assert job.status == "stopped" and job.returncode == 0
    log = render_log(manager.read_log(job.id)[0])
    assert "selfcheck: stopped at step" in log and "exited cleanly" in log
    events, _ = manager.read_events(job.id)
    assert events[0]["event"] == "start" and events[0]["total"] == 1000
    assert events[-1]["event"] == "end" and events[-1]["status"] == "stopped"
    assert 0 < events[-1]["step"] < 1000


STUBBORN = """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    print(f"grandchild {grandchild.pid}", flush=True)
    while True:
        time.sleep(0.05)  # never looks at the stop flag
"""


def test_stubborn_process_tree_is_killed_after_grace(manager: JobManager, script, jobtools) -> None:
    job = manager.submit(script("stubborn", STUBBORN), kind="test", title="stubborn")
    log = jobtools.wait_until(lambda: "grandchild " in manager.read_log(job.id)[0] and manager.read_log(job.id)[0],
                     what="the grandchild's pid in the log")
    grandchild_pid = int(log.split("grandchild ")[1].split()[0])
    child_pid = manager.get(job.id).pid
    assert not jobtools.process_gone(grandchild_pid) and not jobtools.process_gone(child_pid)
    manager.stop(job.id, grace_s=0.3)
    job = jobtools.wait_finished(manager, job.id, timeout_s=15)
    assert job.status == "stopped"
    assert job.returncode == -9  # SIGTERM was ignored, so SIGKILL ended it
    jobtools.wait_until(lambda: jobtools.process_gone(grandchild_pid) and jobtools.process_gone(child_pid), timeout_s=5,
               what="the grandchild and child to be gone")
    assert "killing its process tree" in manager.read_log(job.id)[0]


def test_failure_records_exit_code_and_log_tail(manager: JobManager, script, jobtools) -> None:
    argv = script("fails", "import sys\nprint('about to fail')\nsys.exit('bad things happened')\n")
    job = jobtools.wait_finished(manager, manager.submit(argv, kind="test", title="fails").id)
    assert job.status == "failed" and job.returncode == 1
    assert "exited with code 1" in job.error and "bad things happened" in job.error


def test_missing_program_fails_with_a_clear_error(manager: JobManager, tmp_path: Path, jobtools) -> None:
    job = manager.submit([str(tmp_path / "no-such-program")], kind="test", title="missing")
    job = jobtools.wait_finished(manager, job.id)
    assert job.status == "failed" and "could not start" in job.error


def test_env_cwd_and_rerun(manager: JobManager, script, tmp_path: Path, jobtools) -> None:
    source = ("import json, os\nprint(json.dumps({'cwd': os.getcwd(), 'job_dir': os.environ['LORAID_JOB_DIR'], "
              "'greeting': os.environ['GREETING'], 'unbuffered': os.environ['PYTHONUNBUFFERED']}))\n")
    work = tmp_path / "work"
    work.mkdir()
    first = manager.submit(script("env", source), kind="test", title="env", settings={"lr": 1e-4},
                           env={"GREETING": "hello"}, cwd=work)
    second = manager.rerun(jobtools.wait_finished(manager, first.id).id)
    second = jobtools.wait_finished(manager, second.id)
    assert second.id != first.id and second.status == "succeeded"
    assert (second.argv, second.settings, second.env) == (first.argv, {"lr": 1e-4}, {"GREETING": "hello"})
    assert second.cwd == first.cwd == str(work.resolve())
    report_line = next(line for line in manager.read_log(second.id)[0].splitlines() if line.startswith("{"))
    report = json.loads(report_line)
    assert report == {"cwd": os.path.realpath(work), "job_dir": str(second.dir), "greeting": "hello", "unbuffered": "1"}
    stored = json.loads((second.dir / "job.json").read_text())
    assert stored["argv"] == second.argv and stored["env"] == {"GREETING": "hello"} and stored["status"] == "succeeded"


def test_bad_submissions_are_refused_with_one_sentence(manager: JobManager, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="working folder"):
        manager.submit([sys.executable, "-V"], kind="test", title="x", cwd=tmp_path / "absent")
    with pytest.raises(UserError, match="list of arguments"):
        manager.submit("python -V", kind="test", title="x")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="no job"):
        manager.get("../../etc")
    assert manager.list() == []
