"""One message per problem: a refused action says its sentence once, in its message box, with no toast repeating it;
a bad model in the LORAID tab is said once, beside it, by the three handlers that follow a model change."""
from __future__ import annotations

import gradio as gr
import pytest

from backend.jobs import JobManager
from backend.workspace import Workspace
from ui.context import AppContext
from ui.generate_form import GenerateForm
from ui.generate_panel import FollowedGeneration, GeneratePanel
from ui.tabs.loraid import LoraidPanel


@pytest.fixture
def toasts(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(gr, "Warning", lambda message, *args, **kwargs: shown.append(message))
    return shown


@pytest.fixture
def ctx(tmp_path) -> AppContext:
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    return AppContext(ws, JobManager(ws.jobs))


def test_a_refused_generate_run_says_why_once_beside_the_model(ctx, toasts):
    panel = GeneratePanel(ctx)
    shown = panel.run(FollowedGeneration(), *GenerateForm(prompt="a ball", model="gone.safetensors").values())
    missing = (ctx.workspace.root / "gone.safetensors").resolve()
    assert shown[4] == f"⚠ The model file {missing} does not exist; pick a model from the list or check the path."
    assert shown[1] == "⚠ Not started: 1 setting needs attention; each says why beside it."  # not the sentence again
    assert shown[2] == ""  # no stale progress bar beside the error
    assert toasts == []
    assert ctx.jobs.list() == []


def test_a_bad_model_in_the_loraid_tab_is_said_once(ctx, toasts, tmp_path):
    panel = LoraidPanel(ctx)
    missing = str(tmp_path / "no-such-model.safetensors")
    assert panel.on_model(missing) == (gr.skip(), gr.skip())
    _, rows, message, _, network_args, cli, model_slot, *other_slots = panel.allocation(missing, 5, None, False, 4,
                                                                                       None)
    assert "no-such-model.safetensors" in model_slot["value"] and model_slot["visible"]  # beside the model
    assert message == "" and rows == [] and network_args == cli == ""
    assert not any(slot["visible"] for slot in other_slots)
    assert panel.files(missing, [], "") == ("", "")  # the model's slot above says it
    assert toasts == []
