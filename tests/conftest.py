"""Fixtures shared by more than one test folder."""
from __future__ import annotations

import pytest


@pytest.fixture
def savers(monkeypatch) -> list:
    """The BlockSwap / ActivationOffload objects a trainer made (through backend.train.memory), to check that they
    really copied tensors."""
    from backend.train import memory

    made = []

    def spy(original):
        def wrapper(*args, **kwargs):
            made.append(original(*args, **kwargs))
            return made[-1]
        return wrapper

    monkeypatch.setattr(memory, "enable_block_swap", spy(memory.enable_block_swap))
    monkeypatch.setattr(memory, "offload_activations", spy(memory.offload_activations))
    return made
