"""The stop flag inside a step and the non-finite loss guard, against the demo workspace, in-process."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import backend.train.loop as loop
from backend.errors import UserError
from backend.jobs.protocol import EVENTS_FILE, NEEDS_FILE, JobContext, stop_outcome, write_stop_request
from backend.train.loop import train

QUIET = {"log_every_n_steps": 1, "max_train_steps": 4}


def events(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / EVENTS_FILE).read_text().splitlines()]


def losses_that(monkeypatch, on_call):
    """Wrap the loss: on_call(n, loss) runs for the n-th micro-batch (1-based) and returns the loss to use."""
    real, calls = loop.flow_matching_loss, []

    def wrapped(*args, **kwargs):
        calls.append(1)
        return on_call(len(calls), real(*args, **kwargs))

    monkeypatch.setattr(loop, "flow_matching_loss", wrapped)
    return calls


def test_stop_between_micro_batches_saves_the_last_finished_step(demo_workspace, demo_settings, tmp_path,
                                                                   monkeypatch):
    job = tmp_path / "job"
    settings = demo_settings.with_overrides({**QUIET, "gradient_accumulation_steps": 3, "output_dir": str(tmp_path / "o")})

    def stop_in_step_two(n, loss):
        if n == 5:  # step 2, second micro-batch
            write_stop_request(job, grace_s=10)
        return loss

    calls = losses_that(monkeypatch, stop_in_step_two)
    assert train(settings, demo_workspace, JobContext(job), log=lambda *_: None) == "stopped"
    assert len(calls) == 5  # the third micro-batch of step 2 never ran
    end = events(job)[-1]
    assert end["status"] == "stopped" and end["step"] == 1 and end["saved_step"] == 1
    assert stop_outcome(job / EVENTS_FILE) == "stopped, saved at step 1"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["demo-concept-a-step000001.safetensors"]
    needs = json.loads((job / NEEDS_FILE).read_text())
    assert needs["step_s"] > 0 and needs["save_s"] > 0  # the runner knows how long a step and a save take


def test_stop_before_the_first_step_ends_saves_nothing_and_says_so(demo_workspace, demo_settings, tmp_path,
                                                                    monkeypatch):
    job = tmp_path / "job"
    settings = demo_settings.with_overrides({**QUIET, "gradient_accumulation_steps": 2, "output_dir": str(tmp_path / "o")})

    def stop_at_once(n, loss):
        write_stop_request(job, grace_s=10)
        return loss

    losses_that(monkeypatch, stop_at_once)
    assert train(settings, demo_workspace, JobContext(job), log=lambda *_: None) == "stopped"
    assert events(job)[-1]["saved_step"] is None
    assert stop_outcome(job / EVENTS_FILE) == "stopped, nothing saved"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def nan_at(call: int):
    def make(n, loss):
        return loss * float("nan") if n == call else loss
    return make


def test_a_nan_loss_stops_the_run_before_anything_non_finite_is_saved(demo_workspace, demo_settings, tmp_path,
                                                                       monkeypatch):
    folder = tmp_path / "o"
    settings = demo_settings.with_overrides({**QUIET, "save_every_n_steps": 1, "output_dir": str(folder)})
    losses_that(monkeypatch, nan_at(3))
    with pytest.raises(UserError, match=r"loss became NaN or infinite between step 2 and step 3.*set Non-finite loss"):
        train(settings, demo_workspace, JobContext(tmp_path / "job"), log=lambda *_: None)
    saved = sorted(p.name for p in folder.iterdir())
    assert saved == ["demo-concept-a-step000001.safetensors", "demo-concept-a-step000002.safetensors"]
    for name in saved:
        assert all(torch.isfinite(t).all() for t in load_file(folder / name).values())
    assert not list(folder.glob(".*.running.json"))  # the output name is free again


def test_skip_mode_skips_and_counts_the_bad_step(demo_workspace, demo_settings, tmp_path, monkeypatch):
    job, folder = tmp_path / "job", tmp_path / "o"
    settings = demo_settings.with_overrides({**QUIET, "nonfinite_loss": "skip", "output_dir": str(folder)})
    losses_that(monkeypatch, nan_at(2))
    assert train(settings, demo_workspace, JobContext(job), log=lambda *_: None) == "succeeded"
    end = events(job)[-1]
    assert end["skipped_steps"] == 1 and end["saved_step"] == 4
    assert any(e["event"] == "warning" and "step 2 skipped" in e["message"] for e in events(job))
    steps = [e for e in events(job) if e["event"] == "step"]
    assert [math.isfinite(float(e["loss"])) for e in steps] == [True, False, True, True]
    assert all(torch.isfinite(t).all() for t in load_file(folder / "demo-concept-a.safetensors").values())


SLOW_STEP = """
import json, os, sys, time
from pathlib import Path
import backend.train.loop as loop
real, job = loop.flow_matching_loss, Path(os.environ["LORAID_JOB_DIR"])
def slow(*args, **kwargs):
    if (job / "needs.json").exists() and not (job / "blocked").exists():
        # a step is under way (the run has reported its step time) when Stop comes; it lasts three grace periods
        (job / "blocked").write_text("")
        flag = job / "stop_requested"
        print("step " + "under way", flush=True)  # (the command line in the log holds the source, not this)
        while not flag.exists():
            time.sleep(0.01)
        asked = json.loads(flag.read_text())
        while time.time() - asked["requested_at"] < 3 * asked["grace_s"]:
            time.sleep(0.01)
    return real(*args, **kwargs)
loop.flow_matching_loss = slow
from backend.train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_training_step_longer_than_the_grace_period_is_finished_and_saved(demo_workspace, tmp_path):
    import sys as _sys

    from backend.jobs import JobManager
    from tests.train.conftest import DEMO_PRESET, REPO

    manager = JobManager(tmp_path / "jobs")
    out = tmp_path / "o"
    job = manager.submit([_sys.executable, "-c", SLOW_STEP, "--config", str(DEMO_PRESET), "--workspace",
                          str(demo_workspace.root), "--max_train_steps", "10", "--output_dir", str(out)],
                         kind="train", title="slow step", env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    while "step under way" not in manager.read_log(job.id)[0]:  # waits on the job's own word
        assert not manager.get(job.id).is_finished, manager.read_log(job.id)[0][-2000:]
        time.sleep(0.05)
    manager.stop(job.id, grace_s=0.3)
    while not manager.get(job.id).is_finished:
        time.sleep(0.05)
    job = manager.get(job.id)
    assert job.status == "stopped" and job.returncode == 0, manager.read_log(job.id)[0][-2000:]
    saved = int(job.outcome.removeprefix("stopped, saved at step "))  # the step that was under way
    assert saved >= 2 and [e["step"] for e in manager.read_events(job.id)[0] if e["event"] == "checkpoint"] == [saved]
    assert sorted(p.name for p in out.iterdir()) == [f"demo-concept-a-step{saved:06d}.safetensors"]
