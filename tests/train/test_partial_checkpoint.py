"""uncheckpointed_blocks: the last blocks skip recomputation, and the run trains the same adapter as with every block
checkpointed (and as without checkpointing); the plain forward really ran for exactly those blocks."""
from __future__ import annotations

import json

import pytest
import torch

from backend.adapters.formats import load_lora
from backend.errors import UserError
from backend.jobs.protocol import JobContext
from backend.train.loop import train

STEPS = 3


def run(settings, workspace, folder, **overrides):
    events = folder / "events.jsonl"
    values = {"output_dir": str(folder), "max_train_steps": STEPS, "log_every_n_steps": 1, **overrides}
    assert train(settings.with_overrides(values), workspace, JobContext(events_path=events),
                 log=lambda *_: None) == "succeeded"
    losses = [json.loads(line)["loss"] for line in events.read_text().splitlines()
              if json.loads(line)["event"] == "step"]
    return losses, load_lora(folder / f"{settings.output_name}.safetensors").tensors


@pytest.fixture
def checkpointed_calls(monkeypatch):
    """How many times torch's checkpoint ran a block, over the whole run."""
    import torch.utils.checkpoint as checkpoint_module

    calls = []
    original = checkpoint_module.checkpoint

    def counting(function, *args, **kwargs):
        calls.append(function)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "checkpoint", counting)
    return calls


def test_kept_blocks_train_the_same_adapter(demo_workspace, demo_settings, tmp_path, checkpointed_calls):
    full_losses, full = run(demo_settings, demo_workspace, tmp_path / "full", gradient_checkpointing=True)
    full_calls = len(checkpointed_calls)
    checkpointed_calls.clear()
    part_losses, part = run(demo_settings, demo_workspace, tmp_path / "part", gradient_checkpointing=True,
                            uncheckpointed_blocks=3)
    blocks = 8  # the demo transformer's
    assert full_calls == STEPS * blocks
    assert len(checkpointed_calls) == STEPS * (blocks - 3)
    plain_losses, plain = run(demo_settings, demo_workspace, tmp_path / "plain", gradient_checkpointing=False)
    assert part_losses == full_losses == plain_losses
    for key in full:
        assert torch.equal(part[key], full[key]), key
        assert torch.equal(plain[key], full[key]), key


@pytest.mark.parametrize("overrides, words", [
    ({"uncheckpointed_blocks": 9}, "does not fit"),
    ({"uncheckpointed_blocks": 4, "blocks_to_swap": 5}, "overlap"),
    ({"uncheckpointed_blocks": 2, "offload_activations": True}, "turn one of them off"),
])
def test_conflicting_settings_get_one_sentence(demo_workspace, demo_settings, tmp_path, overrides, words):
    settings = demo_settings.with_overrides({"output_dir": str(tmp_path), "max_train_steps": 1,
                                             "gradient_checkpointing": True, **overrides})
    with pytest.raises(UserError, match=words):
        train(settings, demo_workspace, JobContext(events_path=tmp_path / "events.jsonl"), log=lambda *_: None)
