"""The training loop, top to bottom: build, loop, log, checkpoint.

One optimizer step = gradient_accumulation_steps micro-batches per process (Wan2.2 A14B `expert=both`: steps
alternate between the high- and low-noise expert, each with t inside its own range). One micro-batch:

    x0 = cached latents, ε ~ N(0, I) (seeded generator), t ~ sampler within the expert's timestep range
    x_t = (1 − t)·x0 + t·ε,   v = model(x_t, t·1000, text),   loss = mean_w ‖v − (ε − x0)‖²

Wan2.2 TI2V-5B with ti2v_mode=i2v: latent frame 0 stays clean (timestep 0 on its tokens) and the loss covers
the noised frames only (backend/train/ti2v.py).

accelerate is a thin wrap: it places the adapters (DDP across processes), scales the loss for accumulation, syncs
gradients and shards the DataLoader (backend/train/data_loading.py): process r of N reads batches r, r+N, ... of
the one batch order, so the effective batch is batch_size × gradient_accumulation_steps × num_processes and the
learning rate is not rescaled (the gradient is the mean over the effective batch). Every micro-batch's random draws
are seeded from its position in that order, so N processes train what one process with N× the accumulation trains.

The host waits for the device only every log_every_n_steps (the losses since the last log are reduced and read
in one go) and at checkpoints / samples. The stop flag is checked at every step boundary and between micro-batches
(one process: a file check, no device sync; several: agreed by one all-reduce at each log interval; a partial step
is dropped): the run then saves a checkpoint of its last finished step (and state), emits end{status: stopped,
saved_step} and returns; the job runner waits as long as the run said a step and a save take
(backend/train/guards.py). Non-finite losses never reach a saved file (FiniteLoss). The first step is timed apart
from the rest (it includes torch.compile's compilation when compile is on).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch

from backend.data.cached_dataset import CachedDataset, DataPosition
from backend.errors import UserError
from backend.jobs.protocol import JobContext
from backend.loraid.registry import LoraidRegistry, collides
from backend.models.registry import get_model_kind
from backend.train.data_loading import advance, seed_micro_batch, training_loader
from backend.train.memory import apply_memory_settings, plan_memory, resolve_compile
from backend.train.profiling import StepProfiler
from backend.train.networks import Denoiser, ExpertPlan, build_networks, loraid_allocation, network_args_for
from backend.train.debris import clean_debris
from backend.train.guards import FiniteLoss, StopTiming
from backend.train.optim import build_optimizer, build_scheduler
from backend.train.paths import dit_path, output_folder, resolve_settings
from backend.train.outputs import Reservation, check_outputs, running_allocations
from backend.train.progress import Progress
from backend.train.sampling import TrainingSamples
from backend.train.saving import Saver, checkpoint_stem, restore
from backend.train.ti2v import check_latents_fit, check_ti2v_mode, first_frame_clean, keep_first_frame
from backend.train.timesteps import TimestepSampler, add_noise, flow_target, loss_weights, timestep_range
from backend.workspace import Workspace

DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def timestep_sampler(s, plan: ExpertPlan, expert: str | None) -> TimestepSampler:
    try:
        lo, hi = timestep_range(s.min_timestep, s.max_timestep, expert, plan.boundary)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return TimestepSampler(s.timestep_sampling, s.discrete_flow_shift, s.sigmoid_scale, s.logit_mean, s.logit_std,
                           lo, hi)


def flow_matching_loss(denoiser, batch: dict, sampler: TimestepSampler, generator: torch.Generator, s,
                       device) -> torch.Tensor:
    x0 = batch["latents"].to(device, torch.float32)
    text = batch["text_embeds"].to(device, torch.float32)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(device)
    t = sampler.sample(x0.shape[0], generator).to(device)
    x_t = add_noise(x0, noise, t)
    timestep, noised = t, slice(None)
    if first_frame_clean(s):  # TI2V-5B image-to-video: latent frame 0 clean at timestep 0, loss on the others
        x_t, timestep = keep_first_frame(x_t, x0, t)
        noised = slice(1, None)
    if "image_latents" in batch:  # I2V conditioning: mask + first-frame latents along the channels
        x_t = torch.cat([x_t, batch["image_latents"].to(device, torch.float32)], dim=1)
    prediction = denoiser(x_t, timestep, text).float()
    per_sample = ((prediction - flow_target(x0, noise))[:, :, noised] ** 2).flatten(1).mean(1)
    weights = loss_weights(t, s.weighting_scheme, s.logit_mean, s.logit_std)
    return (per_sample * weights).mean()


def train(settings, workspace: Workspace | None = None, ctx: JobContext | None = None, log=print) -> str:
    """Run one training job; returns "succeeded" or "stopped". The main process first checks the outputs
    (backend/train/outputs.py), puts right what interrupted saves left, and holds the output name while it runs."""
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(settings, workspace, ctx, log)
    check_outputs(settings, workspace)
    s = resolve_settings(settings, workspace)
    kind = get_model_kind(s.model_kind)
    allocation = loraid_allocation(s, kind, ExpertPlan.from_settings(s, kind))
    folder = output_folder(s, workspace)
    if allocation is not None and not s.resume:
        busy = [name for name, other in running_allocations([folder] + ([workspace.loras] if workspace else []))
                if name != s.output_name and collides(allocation, other)]
        if busy:
            raise UserError(f"LORAID {allocation.loraid} is being trained right now by the run writing {busy[0]}; "
                            "pick a free ID, or wait for that run to end.")
    for line in clean_debris(folder, s.output_name):
        log(f"note: {line}")
    with Reservation(folder, s.output_name, allocation):
        return _train(settings, workspace, ctx, log)


def _train(settings, workspace: Workspace | None = None, ctx: JobContext | None = None, log=print) -> str:
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType

    ctx = ctx or JobContext.from_env()
    s = resolve_settings(settings, workspace)
    if not s.dataset_config:
        raise UserError("no dataset_config given; pass --dataset_config FILE (a cached dataset TOML).")

    # ---- build ------------------------------------------------------------------------------------------------
    kind = get_model_kind(s.model_kind)
    check_ti2v_mode(s, kind)
    plan = ExpertPlan.from_settings(s, kind)
    allocation = loraid_allocation(s, kind, plan)
    network_args = network_args_for(s, allocation)
    registry = LoraidRegistry.for_workspace(workspace) if workspace is not None else None
    ddp = DistributedDataParallelKwargs(find_unused_parameters=len(plan.experts) > 1)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        raise UserError("distributed=fsdp needs GPUs (accelerate's FSDP does not run on the CPU); use "
                        "distributed=ddp here.")
    accelerator = Accelerator(mixed_precision=s.mixed_precision, gradient_accumulation_steps=s.gradient_accumulation_steps,
                              kwargs_handlers=[ddp], cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()))
    main = accelerator.is_main_process
    say = log if main else (lambda *_: None)
    stop_flag = ctx  # every process sees the job's stop flag; events come from the main process only
    if not main:
        ctx = JobContext()
    world, rank = accelerator.num_processes, accelerator.process_index
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp:
        _check_fsdp(s)
        say(f"data parallel: FSDP, the frozen base and the adapters sharded over {world} processes")

    dataset = CachedDataset.from_file(s.dataset_config, seed=s.seed)
    check_latents_fit(dataset, kind, s, f"python -m backend cache latents --dataset_config {s.dataset_config}")
    for note in dataset.notes:
        say(note)
    for warning in dataset.warnings:
        ctx.emit("warning", message=warning)
        say(f"warning: {warning}")
    if allocation is not None:
        if allocation.warning:
            ctx.emit("warning", message=allocation.warning)
            say(f"warning: {allocation.warning}")
        taken = registry.check_before_training(allocation) if registry is not None else None
        if taken and not s.resume:
            ctx.emit("warning", message=taken)
            say(f"warning: {taken}")
    if bool(s.sample_prompts) != bool(s.sample_every_n_steps or s.sample_every_n_epochs):
        raise UserError("samples need both a sample_prompts file and sample_every_n_steps or sample_every_n_epochs; "
                        "set the missing one or clear both.")

    s = plan_memory(s, kind, len(plan.experts), dataset, accelerator.device, say)
    torch.manual_seed(s.seed)  # adapter initialisation
    dits = {label: dit_path(s, kind, expert, workspace) for label, expert in zip(plan.labels, plan.experts)}
    models, networks = build_networks(s, kind, plan, dits, DTYPES[s.mixed_precision], network_args)
    for label, model in models.items():
        apply_memory_settings(model, s, accelerator.device, say if label == plan.labels[0] else (lambda *_: None))
    denoiser = Denoiser(models, networks, plan, own_base=fsdp)
    groups = [group for network in networks.values() for group in network.optimizer_param_groups(s.learning_rate)]
    optimizer = build_optimizer(s.optimizer_type, groups, s.learning_rate, s.weight_decay)
    per_step = s.gradient_accumulation_steps * world
    steps_per_epoch = max(1, math.ceil(len(dataset) / per_step))
    total_steps = s.max_train_epochs * steps_per_epoch if s.max_train_epochs else s.max_train_steps
    scheduler = build_scheduler(s.lr_scheduler, optimizer, total_steps, s.lr_warmup_steps,
                                s.lr_scheduler_num_cycles, s.lr_scheduler_power)
    raw_optimizer = optimizer
    denoiser, optimizer = accelerator.prepare(denoiser, optimizer)
    # Wan2.2 A14B with both experts: steps alternate high / low, each drawing t inside its own expert's range.
    samplers = [timestep_sampler(s, plan, expert) for expert in plan.experts]
    saver = Saver(s, output_folder(s, workspace), networks, network_args, allocation, registry)
    samples = TrainingSamples(s, workspace, models, plan.boundary, saver.folder, ctx.emit, say)

    step, position = 0, DataPosition()
    if s.resume:
        doc = restore(Path(s.resume), s, networks, optimizer=raw_optimizer, scheduler=scheduler, generators={})
        step, position = int(doc["step"]), DataPosition.from_dict(doc["data_position"])
        say(f"resumed from {s.resume} at step {step} (epoch {position.epoch}, batch {position.index})")
    epoch = position.epoch

    batch_size = max(d.batch_size for d in dataset.datasets)
    parameters = sum(p.numel() for n in networks.values() for p in n.trainable_params())
    say(f"training {kind.label} ({', '.join(plan.labels)}): {sum(len(n.adapters) for n in networks.values())} "
        f"adapter modules, {parameters:,} parameters; {len(dataset.items)} cached items, {len(dataset)} batches per "
        f"epoch; effective batch {batch_size} x {s.gradient_accumulation_steps} accumulation x {world} processes = "
        f"{batch_size * s.gradient_accumulation_steps * world}; {total_steps} steps on {accelerator.device} "
        f"(mixed precision: {s.mixed_precision})")
    say(f"learning rate {s.learning_rate:g} as set, not scaled by the process count: each step's gradient is the mean "
        f"over the effective batch of {batch_size * s.gradient_accumulation_steps * world} samples (for the "
        f"per-sample update of one process, scale it yourself, e.g. linearly with the number of processes)")
    ctx.emit("start", total=total_steps, step=step, model_kind=s.model_kind, experts=plan.labels,
             effective_batch=batch_size * s.gradient_accumulation_steps * world, num_processes=world,
             loraid=s.loraid, output_dir=str(saver.folder), output_name=s.output_name)

    def checkpoint(stem: str, final: bool = False) -> None:
        """LoRA file(s) + state, from the main process, with everyone waiting for it (never a non-finite one)."""
        finite.check(step)
        accelerator.wait_for_everyone()
        started = time.perf_counter()
        with _whole_adapters(denoiser, fsdp):  # FSDP: every process gathers the adapters; the main one writes
            if main:
                for path in saver.save_loras(stem, step, epoch):
                    ctx.emit("checkpoint", path=str(path), step=step, epoch=epoch, final=final)
                    say(f"saved {path}")
                if s.save_state:
                    folder = saver.save_state(stem, optimizer=raw_optimizer, scheduler=scheduler, step=step,
                                              epoch=epoch, data_position=position.to_dict(), generators={})
                    ctx.emit("checkpoint", path=str(folder), step=step, kind="state")
        accelerator.wait_for_everyone()
        timing.save_done(time.perf_counter() - started)

    def sample() -> None:
        """The prompts split over the processes (each its share, the main one announces them all)."""
        accelerator.wait_for_everyone()
        written = samples.generate(step, accelerator.autocast, rank, world)
        if world > 1:
            from accelerate.utils import gather_object

            written = gather_object(written)
        if main:
            samples.announce(step, epoch, written)
        accelerator.wait_for_everyone()

    # ---- loop -------------------------------------------------------------------------------------------------
    loader = accelerator.prepare(training_loader(dataset, position, s.max_data_loader_n_workers,
                                                 pin_memory=accelerator.device.type == "cuda"))
    batches = iter(loader)
    timing, finite = StopTiming(ctx, 1 if world == 1 else s.log_every_n_steps), FiniteLoss(s.nonfinite_loss, accelerator, s.learning_rate)
    progress = Progress(ctx, total_steps, step, say, s.logging_dir if main else "")
    denoiser.train()
    status, first_step, skip_step = "succeeded", step, False
    pending: list[torch.Tensor] = []  # each step's mean loss on the device, read at the next log interval
    first_step_started = time.perf_counter()
    profiler = StepProfiler.from_environment(main)
    while step < total_steps:
        at_log = step % s.log_every_n_steps == 0
        if _stop_requested(stop_flag, accelerator, at_log):
            status = "stopped"
            break
        started = time.perf_counter()
        profiler.before_step(step + 1)
        sampler = samplers[step % len(samplers)]
        step_loss, finite_micro, skip_step = None, 0, False
        for micro in range(s.gradient_accumulation_steps):
            if micro and _stop_requested(stop_flag, accelerator, at_log):  # between micro-batches: drop the partial step
                status = "stopped"
                break
            batch = next(batches)
            generator = seed_micro_batch(s.seed, advance(dataset, position, micro * world + rank),
                                         accelerator.device)
            with accelerator.accumulate(denoiser):
                loss = flow_matching_loss(denoiser, batch, sampler, generator, s, accelerator.device)
                skip_step = not finite.observe(loss) or skip_step
                if not skip_step:
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and s.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(denoiser.parameters(), s.max_grad_norm)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not skip_step:
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
                finite_micro += 1
        if status == "stopped":
            optimizer.zero_grad(set_to_none=True)
            break
        if skip_step:
            finite.skipped += 1
            ctx.emit("warning", message=f"step {step + 1} skipped: non-finite loss ({finite.skipped} skipped so far)")
            say(f"warning: step {step + 1} skipped: non-finite loss ({finite.skipped} skipped so far)")
        position = advance(dataset, position, s.gradient_accumulation_steps * world)
        pending.append(step_loss / finite_micro if finite_micro else torch.full((), float("nan"),
                                                                                device=accelerator.device))
        scheduler.step()
        step += 1
        profiler.after_step(step)
        if step == progress.start + 1:
            progress.first_step(_synchronized_seconds(first_step_started, accelerator), resolve_compile(s)[0])
        if step % s.log_every_n_steps == 0 or step == total_steps:
            losses = accelerator.reduce(torch.stack(pending), "mean").tolist()  # the one host sync of the interval
            pending.clear()
            progress.report(step, losses, scheduler.get_last_lr()[0], epoch)
        timing.step_done(time.perf_counter() - started)
        if step % s.log_every_n_steps == 0:
            finite.check(step)
        if position.epoch > epoch:
            epoch = position.epoch
            ctx.emit("epoch", epoch=epoch, step=step)
            say(f"epoch {epoch} done at step {step}")
            if samples.due_at_epoch(epoch):
                sample()
            if s.save_every_n_epochs and epoch % s.save_every_n_epochs == 0 and step < total_steps:
                checkpoint(checkpoint_stem(s.output_name, epoch=epoch))
                if main:
                    saver.prune("epoch")
        if samples.due_at_step(step):
            sample()
        if s.save_every_n_steps and step % s.save_every_n_steps == 0 and step < total_steps:
            checkpoint(checkpoint_stem(s.output_name, step=step))
            if main:
                saver.prune("step")
    del batches, loader  # the loader (and its worker processes) are not needed past the last step

    # ---- final save -------------------------------------------------------------------------------------------
    progress.close()
    saved = step
    if status == "stopped" and step == first_step:
        say("stop requested before a step was finished: nothing new to save")
        saved = None
    elif status == "stopped":
        say(f"stop requested: saving at step {step}")
        checkpoint(checkpoint_stem(s.output_name, step=step))
    else:
        checkpoint(checkpoint_stem(s.output_name), final=True)
    ctx.emit("end", status=status, step=step, epoch=epoch, total=total_steps, saved_step=saved,
             skipped_steps=finite.skipped)
    accelerator.end_training()
    ctx.close()
    return status


def _check_fsdp(s) -> None:
    """What FSDP runs do not offer yet, each refused with one sentence before anything is built."""
    refused = {"save_state": "training state (the optimizer is sharded)", "sample_prompts": "samples during training",
               "blocks_to_swap": "block swap", "offload_activations": "activation offload"}
    for name, what in refused.items():
        if getattr(s, name):
            raise UserError(f"distributed=fsdp does not support {what} yet; clear {name} or use distributed=ddp.")


def _whole_adapters(denoiser, fsdp: bool):
    """Under FSDP the adapters (in the root unit, beside the base's non-block layers) gathered whole on every
    process while the block weights stay sharded; a no-op otherwise."""
    if not fsdp:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(denoiser, recurse=False, writeback=False)


def _stop_requested(stop_flag: JobContext, accelerator, at_log_interval: bool) -> bool:
    """The stop flag, agreed on by all processes (any one seeing it stops them all at the same step). One process
    reads the flag at every step (a file check, no device sync); several agree by an all-reduce at log intervals."""
    seen = stop_flag.stop_requested()
    if accelerator.num_processes == 1:
        return seen
    if not at_log_interval:
        return False
    flag = torch.tensor([1.0 if seen else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def _synchronized_seconds(started: float, accelerator) -> float:
    """Seconds since `started` once the device has finished its queued work."""
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)
    return time.perf_counter() - started
