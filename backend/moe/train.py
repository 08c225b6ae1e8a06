"""Stage 2: train the experts, routers and timestep gates on the (stage-1-merged) transformers.

`python -m backend moe train --config FILE [--workspace W] [--name value ...]` runs this as a job. It reuses the
trainer's pieces (settings paths, expert plan, cached dataset, timestep samplers, optimizer and schedule, progress
events) with its own loop, one process (the frozen base is shared by every expert, so there is no per-expert copy).
Events: `start`, `step` (total loss), `moe_losses` (each term, the hint weight, the router's label agreement),
`checkpoint`, `router_eval` (held-out agreement), `end`.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from backend.data.cached_dataset import CachedDataset
from backend.errors import UserError
from backend.jobs.protocol import JobContext
from backend.models.loading import load_transformer
from backend.models.registry import get_model_kind
from backend.moe.files import save_moe, stage1_fingerprint
from backend.moe.labels import Labeller, held_out, load_mask
from backend.moe.losses import scheduled_weight
from backend.moe.network import MoeNetwork
from backend.moe.objective import MoeDenoiser, Weights, moe_losses
from backend.train.loop import DTYPES, timestep_sampler
from backend.train.memory import (apply_memory_settings, check_memory_settings, check_offload_settings,
                                  plan_memory)
from backend.train.networks import ExpertPlan
from backend.train.optim import build_optimizer, build_scheduler
from backend.train.paths import dit_path, output_folder, resolve_settings
from backend.train.progress import Progress
from backend.workspace import Workspace

# Trainer settings stage 2 does not apply yet: the values it accepts (the first one is what to set). Stage 2 runs
# one process, its blocks without torch.compile. memory="auto" plans as for ordinary training, counting every
# expert's adapters, and the memory savers are those of ordinary training (apply_memory_settings): the frozen base
# stored in fp8 (fp8_scaled: block Linears in fp8 + a per-row scale, set while loading, DoRA experts read the
# dequantised weight; fp8_base: diffusers' layerwise casting, not with DoRA), block swap, activation offload and
# uncheckpointed_blocks.
NOT_FOR_MOE = {"resume": ("",), "save_state": (False,), "network_weights": ("",), "sample_prompts": ("",),
               "compile": ("off", "auto"), "num_machines": (1,)}


def _refuse(s) -> None:
    for name, accepted in NOT_FOR_MOE.items():
        if name in type(s).model_fields and getattr(s, name) not in accepted:
            raise UserError(f"{name}={getattr(s, name)!r} is not available for LoRA-MoE stage 2 yet; "
                            f"set it to {accepted[0]!r}.")
    if not s.dataset_config:
        raise UserError(f"No {type(s).named('dataset_config')} is given; give a cached dataset TOML.")
    check_memory_settings(s, s.spec().use_dora)


def build(s, workspace: Workspace | None, device=None, log=lambda *_: None):
    """(kind, plan, models, networks, stage-1 fingerprints) for the settings: experts fresh and injected, then the
    memory settings applied and each model moved to `device` (default: where it was loaded), swapped blocks
    excepted."""
    kind = get_model_kind(s.model_kind)
    check_offload_settings(s, kind.num_blocks, kind.label)
    plan = ExpertPlan.from_settings(s, kind)
    spec = s.spec()
    eager = s.with_overrides({"compile": "off"})
    models, networks, stage1 = {}, {}, {}
    for label, expert in zip(plan.labels, plan.experts):
        path = dit_path(s, kind, expert, workspace)
        model = load_transformer(path, kind.name, dtype=DTYPES[s.mixed_precision], expert=expert,
                                 storage="fp8_scaled" if s.fp8_scaled else None,
                                 work_device="cuda" if torch.cuda.is_available() else None)
        model.requires_grad_(False)
        if s.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        models[label] = model
        networks[label] = MoeNetwork.create(model, spec, name=label).inject()
        # after the experts took what they need from the full-precision weights (fp8_base, DoRA magnitudes)
        apply_memory_settings(model, eager, device, log if label == plan.labels[0] else (lambda *_: None))
        stage1[label] = stage1_fingerprint(path)
    return kind, plan, models, networks, stage1


def _batches(dataset: CachedDataset, keep):
    epoch = 0
    while True:
        batches = [[item for item in batch if keep(item)] for batch in dataset.epoch_batches(epoch)]
        for batch in batches:
            if batch:
                yield epoch, batch
        epoch += 1


def _masks(items, batch, datasets) -> torch.Tensor | None:
    directories = {d.index: d.mask_directory for d in datasets}
    masks = [load_mask(directories.get(item.dataset_index), item.key, tuple(batch["latents"].shape[2:]))
             for item in items]
    if all(mask is None for mask in masks):
        return None
    shape = (1, *batch["latents"].shape[2:])
    return torch.stack([mask if mask is not None else torch.zeros(shape) for mask in masks])


def train_moe(settings, workspace: Workspace | None = None, ctx: JobContext | None = None, log=print) -> str:
    ctx = ctx or JobContext.from_env()
    s = resolve_settings(settings, workspace)
    _refuse(s)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = CachedDataset.from_file(s.dataset_config, seed=s.seed)
    for warning in dataset.warnings:
        ctx.emit("warning", message=warning)
        log(f"warning: {warning}")
    labeller = Labeller(s.expert_names, s.tags, dataset.datasets)
    labels = {id(item): labeller.label(item) for item in dataset.items}
    holdout = [item for item in dataset.items if labels[id(item)] is not None and held_out(item.key, s.router_holdout)]
    held = {id(item) for item in holdout}
    training_items = [item for item in dataset.items if id(item) not in held]
    if not training_items:
        raise UserError("router_holdout keeps every item out of training; lower it.")
    if s.routing_mode != "learned" and not any(labels[id(item)] is not None for item in training_items):
        raise UserError(f"routing_mode {s.routing_mode} needs labels, and no caption holds a tag of "
                        f"{', '.join(s.tags)} and no dataset has an expert_label; set hint_tags or expert_label.")

    kind = get_model_kind(s.model_kind)
    s = plan_memory(s, kind, len(ExpertPlan.from_settings(s, kind).experts), dataset, device, log,
                    adapters_per_module=len(s.expert_names))
    torch.manual_seed(s.seed)
    kind, plan, models, networks, stage1 = build(s, workspace, device, log)
    for network in networks.values():
        network.to(device)
    denoiser = MoeDenoiser(models, networks, plan.boundary)
    router_lr = s.router_lr or 10 * s.learning_rate
    gate_lr = s.gate_lr or 10 * s.learning_rate
    groups = [g for n in networks.values() for g in n.param_groups(s.learning_rate, router_lr, gate_lr)]
    optimizer = build_optimizer(s.optimizer_type, groups, s.learning_rate, s.weight_decay)
    per_epoch = max(1, math.ceil(len(training_items) / max(d.batch_size for d in dataset.datasets)))
    total_steps = s.max_train_epochs * per_epoch if s.max_train_epochs else s.max_train_steps
    scheduler = build_scheduler(s.lr_scheduler, optimizer, total_steps, s.lr_warmup_steps,
                                s.lr_scheduler_num_cycles, s.lr_scheduler_power)
    samplers = [timestep_sampler(s, plan, expert) for expert in plan.experts]
    generator = torch.Generator().manual_seed(s.seed)
    folder = output_folder(s, workspace)
    trainable = [p for g in groups for p in g["params"]]
    log(f"LoRA-MoE stage 2 on {kind.label} ({', '.join(plan.labels)}): {len(s.expert_names)} experts "
        f"({', '.join(s.expert_names)}), {sum(len(n.adapters) for n in networks.values())} modules, "
        f"{sum(p.numel() for p in trainable):,} parameters, routing {s.routing_mode}; {len(training_items)} training "
        f"items, {len(holdout)} held out; {total_steps} steps on {device}")
    ctx.emit("start", total=total_steps, step=0, model_kind=s.model_kind, experts=plan.labels, mode="lora-moe",
             expert_names=list(s.expert_names), output_dir=str(folder), output_name=s.output_name)

    def save(stem: str, step: int, final: bool = False) -> Path:
        path = save_moe(folder / f"{stem}.safetensors", networks, model_kind=s.model_kind, step=step, stage1=stage1,
                        router_ema=s.router_ema, extra={"settings": s.changed_fields()})
        ctx.emit("checkpoint", path=str(path), step=step, final=final)
        log(f"saved {path}")
        return path

    weights = Weights(s.load_balance_weight, s.z_loss_weight, s.entropy_weight, 0.0, s.roi_weight)
    progress = Progress(ctx, total_steps, 0, log, s.logging_dir)
    keep = lambda item: id(item) not in held  # noqa: E731
    batches = _batches(dataset, keep)
    denoiser.train()
    status, step, epoch, pending = "succeeded", 0, 0, []
    while step < total_steps:
        if ctx.stop_requested():
            status = "stopped"
            break
        sampler = samplers[step % len(samplers)]
        weights.hint = (scheduled_weight(s.hint_weight_start, s.hint_weight_end, step, total_steps)
                        if s.routing_mode == "learned+hint" else 0.0)
        parts = []
        for _ in range(s.gradient_accumulation_steps):
            batch_epoch, items = next(batches)
            if batch_epoch > epoch:
                epoch = batch_epoch
                ctx.emit("epoch", epoch=epoch, step=step)
            batch = dataset.load_batch(items)
            x0 = batch["latents"]
            noise = torch.randn(x0.shape, generator=generator)
            t = sampler.sample(x0.shape[0], generator)
            loss, values = moe_losses(denoiser, batch, t, noise, labeller.one_hot(items),
                                      _masks(items, batch, dataset.datasets), weights, s, device)
            (loss / s.gradient_accumulation_steps).backward()
            parts.append((float(loss.detach()), values))
        if s.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, s.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        pending.append(sum(p[0] for p in parts) / len(parts))
        if step % s.log_every_n_steps == 0 or step == total_steps:
            progress.report(step, pending, scheduler.get_last_lr()[0], epoch)
            pending = []
            ctx.emit("moe_losses", step=step, hint_weight=weights.hint, **_mean_terms([p[1] for p in parts]))
        if s.save_every_n_steps and step % s.save_every_n_steps == 0 and step < total_steps:
            save(f"{s.output_name}-step{step:06d}", step)
    progress.close()
    save(s.output_name if status == "succeeded" else f"{s.output_name}-step{step:06d}", step,
         final=status == "succeeded")
    if holdout:
        agreement = router_agreement(denoiser, dataset, holdout, labeller, plan, s.seed, device)
        ctx.emit("router_eval", items=len(holdout), agreement=agreement)
        log(f"router agreement with the labels on {len(holdout)} held-out items: {agreement:.1%}")
    ctx.emit("end", status=status, step=step, epoch=epoch, total=total_steps)
    ctx.close()
    return status


def _mean_terms(values: list[dict]) -> dict:
    out = {}
    for key in values[0]:
        numbers = [v[key] for v in values if v[key] is not None]
        out[key] = sum(numbers) / len(numbers) if numbers else None
    return out


@torch.no_grad()
def router_agreement(denoiser: MoeDenoiser, dataset: CachedDataset, items, labeller: Labeller, plan: ExpertPlan,
                     seed: int, device, timesteps=(0.2, 0.5, 0.8)) -> float:
    """Fraction of (item, t) pairs whose most probable expert (router of the transformer owning t) is the label."""
    generator = torch.Generator().manual_seed(seed + 1)
    agree = total = 0
    for item in items:
        batch = dataset.load_batch([item])
        label = labeller.label(item)
        x0 = batch["latents"].to(device, torch.float32)
        text = batch["text_embeds"].to(device, torch.float32)
        for value in timesteps:
            t = torch.tensor([value], device=device)
            owner = plan.labels[0] if len(plan.labels) == 1 else ("high" if value >= plan.boundary else "low")
            if owner not in denoiser.networks:
                continue
            noise = torch.randn(x0.shape, generator=generator).to(device)
            x_t = (1 - t) * x0 + t * noise
            logits = denoiser.networks[owner].router(x_t, t, text)
            agree += int(int(logits.argmax(-1)) == label)
            total += 1
    return agree / total if total else 0.0
