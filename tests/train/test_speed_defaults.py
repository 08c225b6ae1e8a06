"""The `auto` speed defaults: compile on CUDA with triton, the attention backend rule, and the old checkbox values."""
from __future__ import annotations

import pytest

from backend.train import memory
from backend.train.settings import TrainSettings


def _settings(**values) -> TrainSettings:
    return TrainSettings(**values)


@pytest.mark.parametrize("cuda, triton, expected", [(True, True, True), (True, False, False), (False, True, False)])
def test_compile_auto_is_on_only_with_cuda_and_triton(monkeypatch, cuda, triton, expected):
    monkeypatch.setattr(memory.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(memory, "installed", lambda module: triton if module == "triton" else True)
    chosen, why = memory.resolve_compile(_settings())
    assert chosen is expected and why.startswith("auto")
    assert memory.resolve_compile(_settings(compile="off"))[0] is False  # the one switch
    assert memory.resolve_compile(_settings(compile="on"))[0] is True


def test_checkbox_values_of_older_presets_and_cli_still_load():
    assert _settings(compile=True).compile == "on" and _settings(compile=False).compile == "off"
    overrides = TrainSettings.parse_cli_overrides(["--compile", "false"])
    assert _settings().with_overrides(overrides).compile == "off"
    assert _settings().compile == "auto" and _settings().attn_mode == "auto"


@pytest.mark.parametrize("capability, packages, expected", [
    ((9, 0), {"flash_attn_interface", "flash_attn"}, "_flash_3"),
    ((9, 0), {"flash_attn"}, "flash"),
    ((9, 0), set(), "_native_cudnn"),
    ((8, 9), {"flash_attn_interface"}, None),  # FlashAttention 3 needs Hopper; SDPA dispatches itself
    ((8, 0), {"flash_attn", "sageattention"}, "flash"),  # sage has no backward: never chosen for training
])
def test_attention_auto_rule(monkeypatch, capability, packages, expected):
    monkeypatch.setattr(memory.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(memory.torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(memory, "installed", lambda module: module is None or module in packages)
    assert memory.resolve_attention(_settings())[0] == expected
    assert memory.resolve_attention(_settings(attn_mode="sdpa"))[0] is None


def test_attention_auto_off_cuda_is_sdpa(monkeypatch):
    monkeypatch.setattr(memory.torch.cuda, "is_available", lambda: False)
    assert memory.resolve_attention(_settings()) == (None, "auto: SDPA (no CUDA device)")


def test_fsdp_refusals_are_one_sentence(monkeypatch, demo_workspace, demo_settings):
    from backend.errors import UserError
    from backend.train.loop import _check_fsdp, train

    with pytest.raises(UserError, match="does not support training state"):
        _check_fsdp(_settings(save_state=True))
    with pytest.raises(UserError, match="does not support samples during training"):
        _check_fsdp(_settings(sample_prompts="prompts.txt"))
    _check_fsdp(_settings())  # a plain run passes
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    monkeypatch.setattr(memory.torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="needs GPUs"):
        train(demo_settings, demo_workspace, log=lambda *_: None)
