"""Generation with block swap: the same latents as without it, with merged or hooked LoRAs and on both A14B experts,
and the swapped blocks really were copied in for every forward."""
from __future__ import annotations

import pytest
import torch

from backend.errors import UserError
from backend.generate.engine import GenerateSession, LoraRequest
from backend.generate.memory import MemoryOptions
from backend.generate.pipeline import ModelChoice
from backend.generate.request import GenerateRequest
from backend.models.block_swap import block_swap_of


def session(ws, model="demo-t2v", blocks_to_swap=0, **lora):
    return GenerateSession(ModelChoice(workspace=ws.root, model=model), LoraRequest(**lora),
                           MemoryOptions(blocks_to_swap=blocks_to_swap))


@pytest.mark.parametrize("hooked", [False, True])
def test_swapped_generation_gives_the_same_latents(demo_ws, lora_files, tiny, hooked):
    lora = {"files": [str(lora_files.full)], "multipliers": [0.8], "hooked": hooked}
    settings = tiny(guidance_scale=2.0)
    reference = session(demo_ws, **lora).denoise(settings)
    for blocks_to_swap in (3, 8):
        swapped = session(demo_ws, blocks_to_swap=blocks_to_swap, **lora)
        assert torch.equal(swapped.denoise(settings), reference)
        swap = block_swap_of(swapped.model.transformers["main"])
        # two steps, each with a conditional and an unconditional forward, each loading every swapped block once
        assert swap.loads == 2 * 2 * blocks_to_swap and not swap.loaded


def test_both_experts_swap_their_blocks(demo_ws, tiny):
    reference = session(demo_ws, model="demo-a14b").denoise(tiny())
    swapped = session(demo_ws, model="demo-a14b", blocks_to_swap=4)
    assert torch.equal(swapped.denoise(tiny()), reference)
    assert all(block_swap_of(t).loads > 0 for t in swapped.model.transformers.values())


def test_blocks_to_swap_travels_with_the_request_and_is_checked(demo_ws):
    request = GenerateRequest.from_record({"settings": {"prompt": "a ball"}, "model": {"model": "demo-t2v"},
                                           "memory": {"blocks_to_swap": 5, "fp8": True}})
    assert request.memory == MemoryOptions(fp8=True, blocks_to_swap=5)
    assert "--blocks_to_swap=5" in request.arguments(demo_ws.root)
    with pytest.raises(UserError, match="blocks_to_swap=9 does not fit the .*8 blocks; use a number from 0 to 8"):
        session(demo_ws, blocks_to_swap=9)
