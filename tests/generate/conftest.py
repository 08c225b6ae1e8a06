"""Fixtures for tests/generate: one demo workspace per session, LoRA files on its tiny models, a CLI runner."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from backend.adapters.formats import save_lora
from backend.adapters.metadata import build_metadata
from backend.models.names import BLOCK_LINEARS, lora_key_prefix

SIZE, FRAMES, STEPS = 32, 5, 2


@pytest.fixture(scope="session")
def demo_ws(tmp_path_factory):
    from backend.models.demo import build_demo_workspace

    return build_demo_workspace(tmp_path_factory.mktemp("generate_ws") / "ws", seed=0)


@pytest.fixture(scope="session")
def demo_shapes(demo_ws) -> dict[str, tuple[int, int]]:
    """Wan module name -> (out, in) of every block Linear of demo-t2v (the demo-a14b experts share the shape)."""
    from backend.models.demo import TRANSFORMER_FILE
    from backend.models.loading import load_transformer
    from backend.models.names import wan_to_diffusers

    model = load_transformer(demo_ws.demo_t2v / TRANSFORMER_FILE)
    return {f"blocks.{b}.{linear}": tuple(model.get_submodule(wan_to_diffusers(f"blocks.{b}.{linear}")).weight.shape)
            for b in range(model.config.num_layers) for linear in BLOCK_LINEARS}


def lora_tensors(shapes: dict[str, tuple[int, int]], blocks, rank: int = 4, alpha: float = 2.0,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """musubi-layout LoRA tensors (all 10 linears of each block, alphas) big enough to change the output visibly."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (fan_out, fan_in) in shapes.items():
        if int(name.split(".")[1]) not in blocks:
            continue
        prefix = lora_key_prefix(name)
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.5
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.5
        tensors[f"{prefix}.alpha"] = torch.tensor(float(alpha))
    return tensors


@pytest.fixture(scope="session")
def lora_files(demo_ws, demo_shapes):
    """A full-coverage LoRA, and LORAID 1 (blocks 0-1), LORAID 2 (blocks 2-3) and LORAID 3 (explicit blocks 1-2,
    overlapping both) registered in the workspace."""
    from backend.loraid.allocation import allocate, allocate_explicit
    from backend.loraid.registry import LoraidRegistry

    full = save_lora(demo_ws.root / "full.safetensors", lora_tensors(demo_shapes, range(8), seed=1),
                     build_metadata("lora", 4, 2.0, [], {}, "demo-t2v"), "fp32")
    allocations = {1: allocate(1, 8, 2, model="demo-t2v"), 2: allocate(2, 8, 2, model="demo-t2v"),
                   3: allocate_explicit([1, 2], 8, loraid=3, model="demo-t2v")}
    by_id = {}
    for loraid, allocation in allocations.items():
        metadata = build_metadata("lora", 4, 2.0, [], {}, "demo-t2v", loraid=loraid,
                                  allocation=allocation.to_metadata())
        by_id[loraid] = save_lora(demo_ws.loras / f"loraid{loraid}.safetensors",
                                  lora_tensors(demo_shapes, allocation.blocks, seed=10 + loraid), metadata, "fp32")
    LoraidRegistry.for_workspace(demo_ws).scan(demo_ws.loras)
    return SimpleNamespace(full=Path(full), by_id={k: Path(v) for k, v in by_id.items()})


@pytest.fixture(scope="session")
def tiny():
    from backend.generate.settings import GenerateSettings

    def settings(**changes) -> GenerateSettings:
        values = dict(prompt="loraidA, a red ball bouncing", negative_prompt="blurry", seed=3, steps=STEPS,
                      guidance_scale=1.0, width=SIZE, height=SIZE, frames=FRAMES)
        values.update(changes)
        return GenerateSettings(**values)

    return settings


@pytest.fixture
def cli(capsys):
    """Run `python -m backend generate ...` in-process: (exit code, stdout, stderr)."""
    from backend.__main__ import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["generate", *map(str, argv)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def tiny_args(ws) -> list[str]:
    return ["--workspace", ws.root, "--width", SIZE, "--height", SIZE, "--frames", FRAMES, "--steps", STEPS,
            "--guidance_scale", 1.0]


@pytest.fixture(scope="session")
def base_args():
    return tiny_args


def read_json(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
