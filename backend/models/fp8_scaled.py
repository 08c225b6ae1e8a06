"""Scaled fp8 storage of the frozen base Linear weights of the transformer blocks.

Each Linear inside `blocks.N.` keeps its weight as float8_e4m3fn values q plus one float32 scale per output row
(`scale_weight`, shape [out, 1]), so W ≈ q · scale with every row using the whole fp8 range (max |q| = 448). Its
forward dequantises the weight to the compute dtype (the autocast dtype, else the input's dtype) and runs the
plain Linear; the layer object, its name and its forward hooks (our adapters) stay the same. Half the bytes of
bf16; a plain fp8 cast (`fp8_base`) loses the small rows to underflow, a per-row scale does not.

The state dict of a converted layer is ComfyUI's "scaled fp8" layout (`weight` fp8 + `scale_weight`), and
`load_scaled_fp8_transformer` fills this storage straight from such a file, without a bf16 copy of the model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448: the largest e4m3fn value, what each row's largest |w| maps to
SCALE_NAME = "scale_weight"  # ComfyUI's name of the dequantisation scale beside `weight`
_TINY = torch.finfo(torch.float32).tiny  # the scale of an all-zero row (any positive value keeps q = 0)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q in float8_e4m3fn, scale [out, 1] float32) with weight ≈ q · scale, one scale per output row."""
    w = weight.detach().to(torch.float32)
    scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=_TINY)
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q · scale computed in float32 (a per-tensor or per-row scale), returned in `dtype`."""
    scale = scale.to(torch.float32)
    if scale.numel() == 1:
        scale = scale.reshape(())
    return q.to(torch.float32).mul_(scale).to(dtype)


def compute_dtype_for(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _ScaledLinear(torch.autograd.Function):
    """y = x Wᵀ + b with W dequantised from (q, scale) in forward and again in backward: autograd keeps the fp8
    weight, never a full-precision copy of it (which would undo the saving for every layer awaiting backward)."""

    @staticmethod
    def forward(ctx, x, q, scale, bias, dtype):
        ctx.save_for_backward(q, scale)
        ctx.dtype, ctx.bias_grad = dtype, bias is not None and bias.requires_grad
        return F.linear(x, dequantize_weight(q, scale, dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        q, scale = ctx.saved_tensors
        grad_x = grad.to(ctx.dtype) @ dequantize_weight(q, scale, ctx.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = grad.flatten(0, -2).sum(0) if ctx.bias_grad else None
        return grad_x, None, None, grad_bias, None


class ScaledFp8Linear(nn.Linear):
    """A Linear whose weight is fp8 + a per-row float32 scale (made by `convert_linear`, never constructed)."""

    scale_weight: torch.Tensor

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_weight(self.weight, self.scale_weight, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype_for(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return _ScaledLinear.apply(x.to(dtype), self.weight, self.scale_weight, bias, dtype)


def convert_linear(layer: nn.Linear, q: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> nn.Linear:
    """Turn `layer` into a ScaledFp8Linear in place (quantising its weight unless q and scale [out, 1] are given,
    on the device where they should live)."""
    if isinstance(layer, ScaledFp8Linear):
        return layer
    if q is None:
        q, scale = quantize_weight(layer.weight)
    layer.weight = nn.Parameter(q, requires_grad=False)
    layer.register_buffer(SCALE_NAME, scale.to(torch.float32))
    layer.__class__ = ScaledFp8Linear
    return layer


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Name -> every Linear inside the transformer blocks (the weights scaled fp8 stores)."""
    return {name: module for name, module in model.named_modules()
            if name.startswith("blocks.") and isinstance(module, nn.Linear)}


def store_scaled_fp8(model: nn.Module, work_device: torch.device | str | None = None) -> int:
    """Convert every block Linear of `model` to scaled fp8 in place; returns the number of bytes saved.

    `work_device` (e.g. "cuda") quantises each layer there and puts the result back where the layer was, which is
    much faster than on the CPU for a 14B model; the model is never whole on that device.
    """
    saved = 0
    for layer in block_linears(model).values():
        if isinstance(layer, ScaledFp8Linear):
            continue
        home = layer.weight.device
        weight = layer.weight.detach() if work_device is None else layer.weight.detach().to(work_device)
        q, scale = quantize_weight(weight)
        saved += layer.weight.numel() * layer.weight.element_size() - q.numel() - scale.numel() * 4
        convert_linear(layer, q.to(home), scale.to(home))
    return saved


def is_scaled_fp8_layer(layer: nn.Module) -> bool:
    return isinstance(layer, ScaledFp8Linear)


def row_scale(layer: nn.Module) -> torch.Tensor | None:
    """The per-row float32 scale [out, 1] of a scaled fp8 layer, None for any other layer."""
    return layer.scale_weight if isinstance(layer, ScaledFp8Linear) else None


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight the layer computes with: dequantised (float32) for scaled fp8, else the weight itself."""
    if isinstance(layer, ScaledFp8Linear):
        return layer.dequantized_weight(torch.float32)
    return layer.weight
