"""Block swap and activation offload through the real trainer on the demo workspace: every step's loss and the saved
adapter tensors are bit for bit those of the same run without them (the copies move values, never change them)."""
from __future__ import annotations

import json

import pytest
import torch

from backend.adapters.formats import load_lora
from backend.errors import UserError
from backend.jobs.protocol import JobContext
from backend.models.activation_offload import ActivationOffload
from backend.models.block_swap import BlockSwap
from backend.train.loop import train

STEPS = 3


def run(settings, workspace, folder, **overrides) -> tuple[list[float], dict[str, torch.Tensor]]:
    events = folder / "events.jsonl"
    values = {"output_dir": str(folder), "max_train_steps": STEPS, "log_every_n_steps": 1,
              "gradient_checkpointing": True, **overrides}
    assert train(settings.with_overrides(values), workspace, JobContext(events_path=events),
                 log=lambda *_: None) == "succeeded"
    losses = [json.loads(line)["loss"] for line in events.read_text().splitlines()
              if json.loads(line)["event"] == "step"]
    assert len(losses) == STEPS
    return losses, load_lora(folder / f"{settings.output_name}.safetensors").tensors


NETWORKS = {
    "lora": {},
    "dora": {"network_type": "dora"},
    "locon": {"network_type": "locon", "network_args": ["conv_dim=4", "conv_alpha=4.0"]},
    "loha": {"network_type": "loha", "network_dim": 4, "network_alpha": 4.0},
    "lokr": {"network_type": "lokr", "network_args": ["factor=4"]},
    "loraid-slice": {"loraid": 2, "blocks_per_loraid": 2},
}


@pytest.mark.parametrize("network", list(NETWORKS))
def test_swap_and_offload_train_the_same_adapter(demo_workspace, demo_settings, tmp_path, network, savers):
    base = NETWORKS[network]
    reference_losses, reference = run(demo_settings, demo_workspace, tmp_path / "plain", **base)
    variants = {"swap-3": {"blocks_to_swap": 3}, "swap-all": {"blocks_to_swap": 8},
                "offload": {"offload_activations": True},
                "swap-5-offload": {"blocks_to_swap": 5, "offload_activations": True}}
    if network not in ("lora", "dora"):  # the other networks: one combined run keeps the suite short
        variants = {"swap-all-offload": {"blocks_to_swap": 8, "offload_activations": True}}
    for name, variant in variants.items():
        savers.clear()
        losses, tensors = run(demo_settings, demo_workspace, tmp_path / name, **base, **variant)
        swap = next((made for made in savers if isinstance(made, BlockSwap)), None)
        offload = next((made for made in savers if isinstance(made, ActivationOffload)), None)
        if variant.get("blocks_to_swap"):  # every step loaded each swapped block at least for its forward
            assert swap is not None and swap.loads >= STEPS * variant["blocks_to_swap"] and not swap.loaded
        if variant.get("offload_activations"):  # and each step sent every block's input to CPU memory
            assert offload is not None and offload.copies_to_host == STEPS * 8 and offload.copies_to_device > 0
        assert losses == reference_losses, (network, name)
        assert tensors.keys() == reference.keys()
        assert all(torch.equal(tensors[key], reference[key]) for key in reference), (network, name)
    # the adapter really trained (otherwise equal files would prove nothing)
    trained = [key for key in reference if key.endswith(("lora_up.weight", "hada_w2_a", "lokr_w2"))]
    assert trained and any(reference[key].abs().sum() > 0 for key in trained)


def test_blocks_to_swap_outside_the_model_is_one_sentence(demo_workspace, demo_settings, tmp_path):
    with pytest.raises(UserError, match=r"blocks_to_swap=9 does not fit the .*8 blocks; use a number from 0 to 8\."):
        run(demo_settings, demo_workspace, tmp_path, blocks_to_swap=9)
    with pytest.raises(UserError, match="needs gradient_checkpointing"):
        run(demo_settings, demo_workspace, tmp_path, blocks_to_swap=2, gradient_checkpointing=False)
