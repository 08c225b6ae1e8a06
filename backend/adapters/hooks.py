"""Attaching adapters to a layer: one forward hook per layer that adds the output delta of every attached adapter.

Each adapter sees the layer's own input and its base output (never another adapter's contribution), so adapters of
several networks on one layer add up, in any attach / detach order. The layer object, its parameters and the
model's state-dict keys are never changed; detaching the last adapter removes the hook. When no adapter is active
(all disabled, merged, at multiplier 0, or skipped by module dropout) the hook returns the base output untouched.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from backend.adapters.adapter_base import AdapterModule


class _LayerAdapters:
    def __init__(self, layer: nn.Module) -> None:
        self.adapters: list[AdapterModule] = []
        self.handle = layer.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, layer: nn.Module, args: tuple, kwargs: dict[str, Any], output: torch.Tensor):
        total = None
        x = args[0] if args else kwargs["input"]
        for adapter in self.adapters:
            if not adapter.is_active():
                continue
            delta = adapter(x, output)
            if delta is not None:
                total = delta if total is None else total + delta
        if total is None:
            return None
        return output + total.to(output.dtype)


_ATTRIBUTE = "_adapter_hook"  # where a layer keeps its entry (a plain attribute: the model can still be collected)


def _entry(layer: nn.Module) -> _LayerAdapters | None:
    return layer.__dict__.get(_ATTRIBUTE)


def attach(adapter: AdapterModule) -> None:
    layer = adapter.target
    entry = _entry(layer)
    if entry is None:
        entry = _LayerAdapters(layer)
        layer.__dict__[_ATTRIBUTE] = entry
    if any(existing is adapter for existing in entry.adapters):
        return
    entry.adapters.append(adapter)


def detach(adapter: AdapterModule) -> None:
    layer = adapter.target
    entry = _entry(layer)
    if entry is None:
        return
    entry.adapters = [existing for existing in entry.adapters if existing is not adapter]
    if not entry.adapters:
        entry.handle.remove()
        del layer.__dict__[_ATTRIBUTE]


def attached_adapters(layer: nn.Module) -> list[AdapterModule]:
    entry = _entry(layer)
    return list(entry.adapters) if entry else []


def is_attached(adapter: AdapterModule) -> bool:
    return any(existing is adapter for existing in attached_adapters(adapter.target))
