"""Resume that really resumes, and a stop that saves: against the demo workspace, in-process."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from backend.adapters.formats import load_lora
from backend.jobs.protocol import EVENTS_FILE, JobContext, write_stop_request
from backend.train.loop import train

SHORT = {"max_train_steps": 6, "lr_scheduler": "cosine", "lr_warmup_steps": 2, "log_every_n_steps": 1,
         "timestep_sampling": "shift", "network_args": ["dropout=0.1"]}


def stop_at(job_dir: Path, step: int):
    """A log function that asks the job to stop (the job runner's flag file) once `step` is logged."""
    def log(line: str) -> None:
        if f" step {step}/" in line:
            write_stop_request(job_dir, grace_s=10)
    return log


def events(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / EVENTS_FILE).read_text().splitlines()]


def test_stop_saves_a_checkpoint_and_resume_matches_a_straight_run(demo_workspace, demo_settings, tmp_path):
    straight = demo_settings.with_overrides({**SHORT, "output_dir": str(tmp_path / "a"), "output_name": "straight"})
    assert train(straight, demo_workspace, JobContext(tmp_path / "job_a"), log=lambda *_: None) == "succeeded"

    job = tmp_path / "job_b"
    first = demo_settings.with_overrides({**SHORT, "output_dir": str(tmp_path / "b"), "output_name": "split",
                                          "save_state": True})
    assert train(first, demo_workspace, JobContext(job), log=stop_at(job, 3)) == "stopped"
    end = events(job)[-1]
    assert end["event"] == "end" and end["status"] == "stopped" and end["step"] == 3
    checkpoint = tmp_path / "b" / "split-step000003.safetensors"
    assert load_lora(checkpoint).metadata["ss_steps"] == "3"
    assert not (tmp_path / "b" / "split.safetensors").exists()

    state = tmp_path / "b" / "split-step000003-state"
    resumed = first.with_overrides({"resume": str(state)})
    assert train(resumed, demo_workspace, JobContext(tmp_path / "job_c"), log=lambda *_: None) == "succeeded"
    assert events(tmp_path / "job_c")[-1]["step"] == 6

    a = load_file(tmp_path / "a" / "straight.safetensors")
    b = load_file(tmp_path / "b" / "split.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key
    assert load_lora(tmp_path / "b" / "split.safetensors").metadata["ss_steps"] == "6"
    steps = [e for e in events(tmp_path / "job_c") if e["event"] == "step"]
    assert [e["step"] for e in steps] == [4, 5, 6]


def test_keep_last_n_and_resume_refuses_a_state_of_other_settings(demo_workspace, demo_settings, tmp_path):
    import pytest

    from backend.errors import UserError

    settings = demo_settings.with_overrides({"output_dir": str(tmp_path), "save_state": True, "save_every_n_steps": 1,
                                             "save_last_n_steps": 1, "max_train_steps": 3})
    train(settings, demo_workspace, JobContext(), log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # the final file has its state too
        "demo-concept-a-state", "demo-concept-a-step000002-state", "demo-concept-a-step000002.safetensors", "demo-concept-a.safetensors"]
    with pytest.raises(UserError, match="network_dim"):
        train(settings.with_overrides({"resume": str(tmp_path / "demo-concept-a-step000002-state"), "network_dim": 4,
                                     "overwrite_output": True}),
              demo_workspace, JobContext(), log=lambda *_: None)
