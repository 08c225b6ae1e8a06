"""LoRA-MoE stage 2 with the memory savers of ordinary training (block swap, activation offload, blocks kept
without checkpointing) on both demo A14B experts: every step's loss and the saved experts, router and gates are bit
for bit those of the run without them, and the savers really moved tensors; a clash between them is one sentence."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from backend.errors import UserError
from backend.jobs.protocol import JobContext
from backend.models.activation_offload import ActivationOffload
from backend.models.block_swap import BlockSwap
from backend.moe.settings import MoeTrainSettings
from backend.moe.train import train_moe

STEPS = 2
BLOCKS = 8  # each demo transformer's
ARGS = ["exclude_patterns=['.*']", r"include_patterns=['blocks\.(1|6)\..*']"]


def settings(folder, **changes) -> MoeTrainSettings:
    values = dict(model_kind="demo-a14b", expert="both", dataset_config="datasets/demo/dataset.toml", network_dim=2,
                  network_alpha=2.0, learning_rate=5e-3, max_train_steps=STEPS, log_every_n_steps=1,
                  timestep_sampling="uniform", expert_names=["red", "blue"], hint_tags=["loraidA", "loraidB"],
                  routing_mode="learned+hint", network_args=ARGS, gradient_checkpointing=True, output_dir=str(folder),
                  output_name="moe")
    return MoeTrainSettings(**{**values, **changes})


def run(workspace, folder, **changes) -> tuple[list[float], dict[str, torch.Tensor]]:
    events = folder / "events.jsonl"
    assert train_moe(settings(folder, **changes), workspace, JobContext(events_path=events),
                     log=lambda *_: None) == "succeeded"
    losses = [json.loads(line)["loss"] for line in events.read_text().splitlines() if '"event": "step"' in line]
    assert len(losses) == STEPS
    return losses, load_file(folder / "moe.safetensors")


def test_swap_offload_and_kept_blocks_train_the_same_experts(moe_workspace, tmp_path, savers):
    reference_losses, reference = run(moe_workspace, tmp_path / "plain")
    variants = {"swap-5-offload": {"blocks_to_swap": 5, "offload_activations": True},
                "swap-3-keep-4": {"blocks_to_swap": 3, "uncheckpointed_blocks": 4}}
    for name, variant in variants.items():
        savers.clear()
        losses, tensors = run(moe_workspace, tmp_path / name, **variant)
        swaps = [made for made in savers if isinstance(made, BlockSwap)]
        assert len(swaps) == 2  # one per noise expert; each loaded its swapped blocks in every step it ran
        assert sum(swap.loads for swap in swaps) >= STEPS * variant["blocks_to_swap"]
        assert not any(swap.loaded for swap in swaps)
        offloads = [made for made in savers if isinstance(made, ActivationOffload)]
        if variant.get("offload_activations"):
            assert len(offloads) == 2 and sum(offload.copies_to_host for offload in offloads) == STEPS * BLOCKS
        assert losses == reference_losses, name
        assert tensors.keys() == reference.keys()
        assert all(torch.equal(tensors[key], reference[key]) for key in reference), name


def test_savers_that_clash_are_one_sentence(moe_workspace, tmp_path):
    with pytest.raises(UserError, match="blocks_to_swap=6 and uncheckpointed_blocks=3 overlap"):
        train_moe(settings(tmp_path, blocks_to_swap=6, uncheckpointed_blocks=3), moe_workspace, JobContext(),
                  log=lambda *_: None)
    with pytest.raises(UserError, match="blocks_to_swap=2 needs gradient_checkpointing"):
        train_moe(settings(tmp_path, blocks_to_swap=2, gradient_checkpointing=False), moe_workspace, JobContext(),
                  log=lambda *_: None)
    assert not (tmp_path / "moe.safetensors").exists()


def test_memory_auto_is_planned_with_one_adapter_per_expert(moe_workspace, tmp_path, monkeypatch):
    from backend.moe import train as stage2

    asked = []

    def plan(settings, kind, experts, dataset, device, log, adapters_per_module=1):
        asked.append((kind.name, experts, adapters_per_module, settings.memory))
        return settings

    monkeypatch.setattr(stage2, "plan_memory", plan)
    run(moe_workspace, tmp_path, expert_names=["red", "blue", "green"], hint_tags=["loraidA", "loraidB", "green"])
    assert asked == [("demo-a14b", 2, 3, "auto")]  # both noise experts, three adapters on each module
