"""Optimizer and learning-rate schedule from the training settings. Optional optimizers say what to install."""
from __future__ import annotations

import importlib

import torch

from backend.errors import UserError


def _optional(module: str, package: str, optimizer: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"optimizer_type={optimizer} needs the `{package}` package; install it with "
                        f"`pip install {package}` or choose adamw.") from None


def build_optimizer(optimizer_type: str, param_groups: list[dict], learning_rate: float, weight_decay: float):
    if optimizer_type == "adamw":
        return torch.optim.AdamW(param_groups, lr=learning_rate, weight_decay=weight_decay)
    if optimizer_type == "adamw8bit":
        bnb = _optional("bitsandbytes", "bitsandbytes", optimizer_type)
        return bnb.optim.AdamW8bit(param_groups, lr=learning_rate, weight_decay=weight_decay)
    if optimizer_type == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(param_groups, lr=learning_rate, weight_decay=weight_decay,
                         scale_parameter=False, relative_step=False, warmup_init=False)
    if optimizer_type == "prodigy":
        prodigyopt = _optional("prodigyopt", "prodigyopt", optimizer_type)
        return prodigyopt.Prodigy(param_groups, lr=learning_rate, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer_type {optimizer_type!r}; choose adamw, adamw8bit, adafactor or prodigy.")


def warmup_steps(lr_warmup_steps: float, total_steps: int) -> int:
    """A value below 1 is a fraction of the total steps; otherwise a step count."""
    if 0 < lr_warmup_steps < 1:
        return int(round(lr_warmup_steps * total_steps))
    return int(lr_warmup_steps)


def build_scheduler(name: str, optimizer, total_steps: int, lr_warmup_steps: float, num_cycles: int = 1,
                    power: float = 1.0):
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps(lr_warmup_steps, total_steps),
                         num_training_steps=total_steps, num_cycles=num_cycles, power=power)
