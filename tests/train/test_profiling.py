"""LORAID_PROFILE_STEPS: the trainer writes a kernel table of the chosen steps, and nothing without it."""
from __future__ import annotations

import pytest

from backend.errors import UserError
from backend.jobs.protocol import JobContext
from backend.train.loop import train
from backend.train.profiling import StepProfiler


def test_profiled_steps_write_an_operator_table(demo_workspace, demo_settings, tmp_path, monkeypatch):
    table = tmp_path / "kernels.txt"
    monkeypatch.setenv("LORAID_PROFILE_STEPS", "2:3")
    monkeypatch.setenv("LORAID_PROFILE_OUT", str(table))
    settings = demo_settings.with_overrides({"output_dir": str(tmp_path / "out"), "max_train_steps": 3})
    assert train(settings, demo_workspace, JobContext(events_path=tmp_path / "events.jsonl"),
                 log=lambda *_: None) == "succeeded"
    text = table.read_text()
    assert text.startswith("steps 2-3")
    assert "aten::mm" in text or "aten::addmm" in text or "aten::linear" in text
    assert "Self CPU" in text


def test_no_table_without_the_setting(demo_workspace, demo_settings, tmp_path, monkeypatch):
    monkeypatch.delenv("LORAID_PROFILE_STEPS", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = demo_settings.with_overrides({"output_dir": str(tmp_path / "out"), "max_train_steps": 1})
    assert train(settings, demo_workspace, JobContext(events_path=tmp_path / "events.jsonl"),
                 log=lambda *_: None) == "succeeded"
    assert not (tmp_path / "kernels.txt").exists()


@pytest.mark.parametrize("steps", ["abc", "4:2", "0", "3:x"])
def test_a_malformed_step_range_gets_one_sentence(steps):
    with pytest.raises(UserError, match="is not a step range; give FIRST:LAST"):
        StepProfiler(steps, None, main_process=True)
