"""Stage 2 on a frozen base stored in fp8: scaled fp8 (LoRA and DoRA experts) and fp8_base (LoRA experts) train on
the demo A14B low-noise expert; fp8_base with DoRA experts is refused with one sentence."""
from __future__ import annotations

import json

import pytest
import torch

from backend.errors import UserError
from backend.jobs.protocol import JobContext
from backend.models.fp8_scaled import FP8, effective_weight
from backend.moe.files import load_moe
from backend.moe.settings import MoeTrainSettings
from backend.moe.train import build, train_moe

ARGS = ["exclude_patterns=['.*']", r"include_patterns=['blocks\.7\..*']"]


def _settings(tmp_path, **changes):
    return MoeTrainSettings(model_kind="demo-a14b", expert="low", dataset_config="datasets/demo/dataset.toml",
                            network_dim=2, network_alpha=2.0, learning_rate=5e-3, max_train_steps=3,
                            timestep_sampling="uniform", expert_names=["red", "blue"], hint_tags=["loraidA", "loraidB"],
                            routing_mode="learned+hint", output_dir=str(tmp_path), output_name="fp8",
                            **{"network_args": ARGS, **changes})


@pytest.mark.parametrize("storage, dora", [("fp8_scaled", False), ("fp8_scaled", True), ("fp8_base", False)])
def test_stage2_trains_on_an_fp8_base(moe_workspace, tmp_path, storage, dora):
    args = ARGS + (["use_dora=True"] if dora else [])
    settings = _settings(tmp_path, network_args=args, **{storage: True})
    _, _, _, networks, _ = build(settings, moe_workspace)
    network = networks["low"]
    layer = network.adapters["lora_unet_blocks_7_ffn_0"].target
    assert layer.weight.dtype == FP8  # the frozen base is stored in fp8
    if dora:  # DoRA magnitudes start at the row norms of the dequantised weight
        torch.testing.assert_close(network.adapters["lora_unet_blocks_7_ffn_0"].magnitude[0],
                                   effective_weight(layer).float().norm(dim=1))
    network.remove()

    events = tmp_path / "events.jsonl"
    assert train_moe(settings, moe_workspace, JobContext(events_path=events), log=lambda *_: None) == "succeeded"
    losses = [json.loads(line)["loss"] for line in events.read_text().splitlines() if '"event": "step"' in line]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    moe = load_moe(tmp_path / "fp8.safetensors")
    assert moe.spec.use_dora == dora
    ups = [v for k, v in moe.part("low").items() if k.endswith("lora_up.weight")]
    assert ups and all(float(u.abs().sum()) > 0 for u in ups)  # the experts learned on the fp8 base


def test_fp8_base_with_dora_experts_is_refused(moe_workspace, tmp_path):
    settings = _settings(tmp_path, network_args=ARGS + ["use_dora=True"], fp8_base=True)
    with pytest.raises(UserError, match="fp8_base cannot be combined with DoRA"):
        train_moe(settings, moe_workspace, JobContext(), log=lambda *_: None)
