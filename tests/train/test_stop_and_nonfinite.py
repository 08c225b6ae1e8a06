"""The stop flag inside a step and the non-finite loss guard, against the demo workspace, in-process."""
from __future__ import annotations

import json
import math
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
