"""The LoRA-MoE panel turns its fields into the settings of each stage (what the jobs then run)."""
from __future__ import annotations

import pytest

from backend.errors import UserError
from backend.moe.settings import MoeTrainSettings
from ui.moe_panel import STAGE2_FIELDS, MoePanel

STAGE1 = {"s1:model_kind": "demo-a14b", "s1:expert": "low", "s1:dit": "", "s1:dit_high_noise": "",
          "s1:dataset": "datasets/demo/dataset.toml", "s1:blocks": "last 4", "s1:ffn_blocks": "6-7", "s1:rank_q": 8,
          "s1:rank_kvo": 4, "s1:rank_ffn": 4, "s1:steps": 10, "s1:lr": 1e-3, "s1:name": "s1"}


def _stage2(merged: str) -> dict:
    defaults = MoeTrainSettings(expert_names=["red", "blue"], hint_tags=["loraidA", "loraidB"])
    values = {"s2:model_kind": "demo-a14b", "s2:expert": "both", "s2:merged": merged,
              "s2:dataset": "datasets/demo/dataset.toml", "s2:rank": 4, "s2:alpha": 4.0, "s2:network_args": "rank_q=8",
              "s2:steps": 30, "s2:lr": 1e-3, "s2:name": "moe"}
    for name in STAGE2_FIELDS:
        value = getattr(defaults, name)
        values[f"s2:{name}"] = ", ".join(value) if isinstance(value, list) else value
    values["s2:router_lr"] = 0  # an emptied number box sends 0: the setting's default (None) applies
    values["s2:gate_lr"] = None  # or nothing
    return values


def test_stage1_fields_become_per_projection_ranks_on_the_chosen_blocks():
    settings = MoePanel(None).stage1_settings(STAGE1)
    assert settings.model_kind == "demo-a14b" and settings.max_train_steps == 10
    assert settings.network_args == ["exclude_patterns=['.*']",
                                     "include_patterns=['blocks\\\\.(4|5|6|7)\\\\.(self_attn|cross_attn)\\\\.(q|k|v|o)', "
                                     "'blocks\\\\.(6|7)\\\\.ffn\\\\.0']", "rank_q=8", "rank_kvo=4", "rank_ffn=4"]
    with pytest.raises(UserError, match="blocks go from 0 to 7"):
        MoePanel(None).stage1_settings({**STAGE1, "s1:blocks": "6-9"})


def test_stage2_fields_take_the_merged_pair_high_then_low(tmp_path):
    high, low = tmp_path / "m-high_noise.safetensors", tmp_path / "m-low_noise.safetensors"
    high.write_bytes(b"x")
    low.write_bytes(b"x")
    settings = MoePanel(None).stage2_settings(_stage2(f"{high} | {low}"))
    assert settings.dit_high_noise == str(high) and settings.dit == str(low)
    assert settings.expert_names == ["red", "blue"] and settings.hint_tags == ["loraidA", "loraidB"]
    assert settings.routing_mode == "learned+hint" and settings.network_args == ["rank_q=8"]
    assert settings.router_lr is None and not settings.spec().use_dora
    dora = MoePanel(None).stage2_settings({**_stage2(f"{high} | {low}"), "s2:dora": True})
    assert dora.network_args == ["rank_q=8", "use_dora=True"] and dora.spec().use_dora
    with pytest.raises(UserError, match="does not exist; run the merge step"):
        MoePanel(None).stage2_settings(_stage2(str(tmp_path / "missing.safetensors")))


def test_stage2_settings_are_the_models_fields_and_a_wrong_one_is_said_beside_it():
    import gradio as gr

    from ui.moe_panel import STAGE2_START, stage2_form

    with gr.Blocks():
        form = stage2_form()
        form.build()
    for name in STAGE2_FIELDS:  # each widget from its field: label, hint, starting value, a slot under it
        info = MoeTrainSettings.field_info()[name]
        widget = form.widgets[name]
        assert (widget.label, widget.info) == (info["label"], info["help"]), name
        start = STAGE2_START.get(name, info["default"])
        assert widget.value == (", ".join(start) if isinstance(start, list) else start), name
        assert form.slots[name].elem_id == f"moe-s2-{name.replace('_', '-')}-error"
    problems = MoePanel(None).stage2_problems({**_stage2(""), "s2:router_lr": -1.0, "s2:top_k": 2.5})
    assert problems == {"top_k": "Top-k is 2.5, not a whole number; enter a whole number such as 2.",
                        "router_lr": "Router learning rate is -1.0; it must be above 0."}  # not rounded to 2
    assert MoePanel(None).stage2_problems(_stage2("")) == {}  # fixed: every slot clears
