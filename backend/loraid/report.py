"""The interference report over LoRA files: weight space always, function space when a model checkpoint is given.

Files are compared only when they apply to the same transformer (same expert, or an expert unknown). Function space
loads the checkpoint, applies LoRAs through the adapter engine (`backend.adapters.network.AdapterNetwork`) on fixed
seeded probe inputs, and measures cross-talk both ways for every pair.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from backend.errors import UserError
from backend.loraid.allocation import compact_ranges
from backend.loraid.interference import (CROSS_TALK_SCALE, STATEMENT, ModelFn, cross_talk, cross_talk_level,
                                         cross_talk_verdict, weight_space_pair, weight_verdict)
from backend.loraid.model_facts import ModelFacts, facts_for
from backend.loraid.module_names import blocks_of
from backend.loraid.overlap import find_overlaps

PROBE_TIMESTEPS = (250.0, 500.0, 750.0, 900.0)
StepHook = Callable[[int, int, str], None]


def _load(paths: Sequence[str | Path]) -> list[tuple[str, Any, str | None]]:
    """(label, LoraFile, expert) per file; the label is the file name (the full path where names repeat)."""
    from backend.adapters.formats import load_lora

    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise UserError("The interference report compares LoRAs: pass at least two files after --report.")
    names = [p.name for p in paths]
    loaded = []
    for path in paths:
        lora_file = load_lora(path, allow_nonfinite=True)
        allocation = lora_file.info["allocation"] or {}
        label = path.name if names.count(path.name) == 1 else str(path)
        loaded.append((label, lora_file, allocation.get("expert")))
    return loaded


def _same_transformer(expert_a: str | None, expert_b: str | None) -> bool:
    if expert_a in (None, "both") or expert_b in (None, "both"):
        return True
    return expert_a == expert_b


def _module_parts(lora_file) -> dict[str, dict[str, torch.Tensor]]:
    return {name: lora_file.parts(name) for name in lora_file.modules}


# --- function space glue -------------------------------------------------------------------------------------------
def engine_model_fn(model: torch.nn.Module) -> ModelFn:
    """model_fn(loras_with_multipliers, inputs) for a diffusers Wan transformer: inject each LoRA with the adapter
    engine, run one forward pass, remove them again (the model is left exactly as it was)."""
    from backend.adapters.network import AdapterNetwork

    def run(loras: Sequence[tuple[Any, float]], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        networks = []
        try:
            for index, (lora_file, multiplier) in enumerate(loras):
                network = AdapterNetwork.from_weights(model, lora_file.tensors, lora_file.flags,
                                                      multiplier=multiplier, name=f"lora{index}")
                networks.append(network.to(next(model.parameters()).device).inject())
            with torch.no_grad():
                return model(**inputs, return_dict=False)[0].detach().float().cpu()
        finally:
            for network in networks:
                network.remove()

    return run


def wan_probes(model: torch.nn.Module, count: int = 3, seed: int = 0, latent_size: int = 8,
               text_tokens: int = 8) -> list[dict[str, torch.Tensor]]:
    """Fixed, seeded probe inputs for a Wan transformer: one latent frame of latent_size², a random text context."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    parameter = next(model.parameters())
    probes = []
    for index in range(count):
        latents = torch.randn(1, config.in_channels, 1, latent_size, latent_size, generator=generator)
        context = torch.randn(1, text_tokens, config.text_dim, generator=generator)
        timestep = torch.tensor([PROBE_TIMESTEPS[index % len(PROBE_TIMESTEPS)]])
        probes.append({"hidden_states": latents.to(parameter.device, parameter.dtype),
                       "timestep": timestep.to(parameter.device),
                       "encoder_hidden_states": context.to(parameter.device, parameter.dtype)})
    return probes


def _memoized(model_fn: ModelFn) -> ModelFn:
    cache: dict[tuple, torch.Tensor] = {}

    def run(loras, inputs):
        key = (tuple((id(lora), float(m)) for lora, m in loras), id(inputs))
        if key not in cache:
            cache[key] = model_fn(loras, inputs)
        return cache[key]

    return run


def _checkpoint_for(facts: ModelFacts, expert: str | None) -> Path | None:
    if not facts.checkpoints:
        return None
    if facts.experts:
        return facts.checkpoints.get(expert) if expert in facts.experts else None
    return facts.checkpoints.get(None)


# --- the report ----------------------------------------------------------------------------------------------------
class Steps:
    """The report's count of done measurements: one per pair in weight space, two per pair (both ways) in function
    space; `on_step(done, total, what)` hears each."""

    def __init__(self, total: int, on_step: StepHook | None) -> None:
        self.done, self.total, self.on_step = 0, total, on_step

    def advance(self, what: str, count: int = 1) -> None:
        self.done += count
        if self.on_step is not None:
            self.on_step(self.done, self.total, what)


def _measures_function_space(model: str | Path | None) -> bool:
    return model is not None and bool(facts_for(model).checkpoints)


def interference_report(paths: Sequence[str | Path], model: str | Path | None = None,
                        multipliers: Sequence[float] | None = None, probes: int = 3,
                        dtype: torch.dtype = torch.float32, device: str = "cpu",
                        on_step: StepHook | None = None) -> dict[str, Any]:
    """JSON-ready report: files, overlaps, weight space per pair, function space per pair (or why not).
    `on_step(done, total, what)` is called after each measurement (a job's progress)."""
    loaded = _load(paths)
    multipliers = list(multipliers) if multipliers else [1.0] * len(loaded)
    files = [{"file": label, "loraid": f.info["loraid"], "expert": expert, "modules": len(f.modules),
              "blocks": compact_ranges(f.blocks), "nonfinite_tensors": list(f.nonfinite)} for label, f, expert in loaded]
    pairs = [(i, j) for i, j in combinations(range(len(loaded)), 2)
             if _same_transformer(loaded[i][2], loaded[j][2])]
    steps = Steps(len(pairs) * (3 if _measures_function_space(model) else 1), on_step)
    steps.advance("files read", 0)
    coverages = {label: set(f.modules) for label, f, _ in loaded}
    weight_pairs = []
    for i, j in pairs:
        (label_a, file_a, _), (label_b, file_b, _) = loaded[i], loaded[j]
        pair = weight_space_pair(label_a, label_b, _module_parts(file_a), _module_parts(file_b))
        steps.advance(f"weight space {label_a} / {label_b}")
        shared_blocks = sorted(blocks_of(coverages[label_a]) & blocks_of(coverages[label_b]))
        weight_pairs.append({"a": label_a, "b": label_b, "shared_modules": len(pair.modules),
                             "shared_blocks": shared_blocks, "total_cosine": pair.total_cosine,
                             "modules": [asdict(m) for m in pair.modules]})
    report = {
        "statement": STATEMENT,
        "files": files,
        "overlaps": {"module": [asdict(c) for c in find_overlaps(coverages, "module")],
                     "block": [asdict(c) for c in find_overlaps(coverages, "block")]},
        "weight_space": weight_pairs,
        "function_space": _function_space(loaded, pairs, model, multipliers, probes, dtype, device, steps),
    }
    return report


def _function_space(loaded, pairs, model, multipliers, probes, dtype, device, steps: Steps) -> dict[str, Any]:
    if model is None:
        return {"available": False, "reason": "no model given, so only weight space was measured", "pairs": []}
    if not Path(__file__).resolve().parents[1].joinpath("adapters", "network.py").is_file():
        return {"available": False, "reason": "the adapter engine is not installed; weight space only", "pairs": []}
    facts = facts_for(model)
    if not facts.checkpoints:
        return {"available": False, "pairs": [],
                "reason": f"`{model}` is a model type without weights; choose a checkpoint as the model to "
                          f"measure cross-talk on it"}
    from backend.models.loading import load_transformer

    results, skipped, loaded_models = [], [], {}
    for i, j in pairs:
        expert = loaded[i][2] if loaded[i][2] not in (None, "both") else loaded[j][2]
        expert = None if expert == "both" else expert
        checkpoint = _checkpoint_for(facts, expert)
        if checkpoint is None:
            skipped.append(f"{loaded[i][0]} / {loaded[j][0]}: no expert recorded for an expert-pair model")
            steps.advance(f"cross-talk {loaded[i][0]} / {loaded[j][0]} skipped", 2)
            continue
        if checkpoint not in loaded_models:
            transformer = load_transformer(checkpoint, dtype=dtype).to(device)
            loaded_models[checkpoint] = (_memoized(engine_model_fn(transformer)), wan_probes(transformer, probes))
        model_fn, probe_inputs = loaded_models[checkpoint]
        (label_a, file_a, _), (label_b, file_b, _) = loaded[i], loaded[j]
        for (on, f_on, m_on), (by, f_by, m_by) in (((label_a, file_a, multipliers[i]), (label_b, file_b, multipliers[j])),
                                                    ((label_b, file_b, multipliers[j]), (label_a, file_a, multipliers[i]))):
            results.append(asdict(cross_talk(model_fn, f_on, f_by, probe_inputs, m_on, m_by, (on, by))))
            steps.advance(f"cross-talk of {by} on {on}")
    return {"available": True, "model": facts.label, "probes": probes, "pairs": results, "skipped": skipped}


# --- text ----------------------------------------------------------------------------------------------------------
def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """The report's answer in a few lines: do the LoRAs share weights, and how much does one move another's output."""
    sharing = [f"{p['a']} / {p['b']}" for p in report["weight_space"] if p["shared_modules"]]
    lines = [f"{len(sharing)} pair(s) change the same weights ({', '.join(sharing)}): merging or loading one changes "
             "what the other trained; train them on different LORAIDs to keep them apart." if sharing else
             "No two of them change the same weights: merging or loading one never changes another's tensors."]
    function = report["function_space"]
    judged = [item for item in function.get("pairs", []) if item["ratio"] is not None]
    if not function["available"]:
        lines.append("Cross-talk was not measured (see Function space below).")
    elif judged:
        worst = max(judged, key=lambda item: item["ratio"])
        lines.append(f"Largest cross-talk: {worst['by']} on {worst['on']}, {_number(worst['ratio'])} "
                     f"({CROSS_TALK_SCALE}): {cross_talk_verdict(worst['ratio'], worst['on'], worst['by'])}.")
    return lines


def format_report(report: dict[str, Any]) -> str:
    lines = ["LoRA files"]
    for f in report["files"]:
        loraid = f["loraid"] if f["loraid"] is not None else "-"
        expert = f" expert {f['expert']}" if f["expert"] else ""
        lines.append(f"  {f['file']}: LORAID {loraid}{expert}, {f['modules']} modules in blocks {f['blocks'] or '-'}")
        if f.get("nonfinite_tensors"):
            lines.append(f"    warning: {len(f['nonfinite_tensors'])} tensors hold NaN or infinite values (first: "
                         f"{f['nonfinite_tensors'][0]}); its numbers below are not meaningful")
    lines += ["", "Verdict", *[f"  {line}" for line in verdict_lines(report)], "", "Weight space"]
    for pair in report["weight_space"]:
        if not pair["shared_modules"]:
            blocks = (f" (they share blocks {compact_ranges(pair['shared_blocks'])} through different modules)"
                      if pair["shared_blocks"] else "")
            lines.append(f"  {pair['a']} / {pair['b']}: no shared modules{blocks}: merging one never changes "
                         f"the other's weights")
            continue
        where = f"block{'s' if len(pair['shared_blocks']) > 1 else ''} {compact_ranges(pair['shared_blocks'])}"
        lines.append(f"  {pair['a']} / {pair['b']}: {pair['shared_modules']} shared modules in {where}, "
                     f"cosine of ΔW over them {_number(pair['total_cosine'])}: {weight_verdict(pair['total_cosine'])}")
        for module in pair["modules"][:8]:
            out = module["output_overlap"] or {}
            inp = module["input_overlap"] or {}
            lines.append(f"    {module['module']:<28} cos {_number(module['cosine']):>8}  "
                         f"out-space cos² {_number(out.get('mean_cos2')):>6}  in-space cos² "
                         f"{_number(inp.get('mean_cos2')):>6}  ({module['method']})")
        if len(pair["modules"]) > 8:
            lines.append(f"    ... {len(pair['modules']) - 8} more (use --json for all)")
    function = report["function_space"]
    lines += ["", "Function space"]
    if not function["available"]:
        lines.append(f"  not measured: {function['reason']}")
    else:
        lines.append(f"  cross-talk on {function['model']} over {function['probes']} probe inputs "
                     f"(‖f_AB − f_A‖ / ‖f_A − f_0‖; {CROSS_TALK_SCALE}):")
        for item in function["pairs"]:
            lines.append(f"    {item['by']} on {item['on']}: {_number(item['ratio'])}  "
                         f"(added {_number(item['added_change'])}, own {_number(item['own_change'])}): "
                         f"{cross_talk_level(item['ratio']) or 'not judged'}")
        lines += [f"  skipped {note}" for note in function.get("skipped", [])]
    lines += ["", report["statement"]]
    return "\n".join(lines)
