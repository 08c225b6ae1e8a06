"""What every adapter module shares: its target layer, multiplier, on/off switch, dropouts and the layer's own op.

An adapter never replaces the layer it adapts. `hooks.py` calls `adapter(x, base_out)` after the layer ran and adds
the returned output delta, so the model's module tree and state-dict keys stay untouched and several adapters on one
layer add up. Dropouts act only when both the adapter and the adapted layer are in training mode (`model.train()`
and `network.train()`); in eval mode the output is deterministic.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from backend.adapters.deltas import column_norm, convert_dora_scale, dora_delta, is_input_axis_scale, row_norm
from backend.errors import UserError
from backend.models.fp8_scaled import effective_weight, row_scale

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_OPS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def check_adaptable(name: str, target: nn.Module) -> None:
    """Adapters wrap nn.Linear and plain (groups=1, zero-padded) Conv1d/2d/3d layers."""
    if isinstance(target, nn.Linear):
        return
    if isinstance(target, CONV_TYPES):
        if target.groups != 1 or target.padding_mode != "zeros":
            raise UserError(f"The convolution `{name}` uses groups={target.groups} / padding_mode="
                            f"'{target.padding_mode}', which adapters do not support; exclude it with exclude_patterns.")
        return
    raise UserError(f"`{name}` is a {type(target).__name__}, not a Linear or Conv layer; adapters cannot target it.")


class AdapterModule(nn.Module):
    """Base of LoRA/LoCon/DoRA, LoHa and LoKr modules. Subclasses implement the math."""

    algo: str = ""
    up_side_names: tuple[str, ...] = ()  # parameters that get lr × loraplus_lr_ratio (LoRA+ "B" side)

    def __init__(self, wan_name: str, target: nn.Module, *, multiplier: float = 1.0, dropout: float = 0.0,
                 rank_dropout: float = 0.0, module_dropout: float = 0.0) -> None:
        super().__init__()
        check_adaptable(wan_name, target)
        self.wan_name = wan_name
        self._target = (target,)  # a tuple, so the layer is not registered as our submodule
        self.multiplier = float(multiplier)
        self.enabled = True
        self.merged = False
        self.dropout = float(dropout or 0.0)
        self.rank_dropout = float(rank_dropout or 0.0)
        self.module_dropout = float(module_dropout or 0.0)
        self.use_dora = False
        self.dora_convention = "merged_norm"  # how `magnitude` is read (deltas.DORA_CONVENTIONS); training: merged

    # --- the adapted layer -------------------------------------------------------------------------------------
    @property
    def target(self) -> nn.Module:
        return self._target[0]

    @property
    def is_conv(self) -> bool:
        return isinstance(self.target, CONV_TYPES)

    @property
    def weight_shape(self) -> torch.Size:
        return self.target.weight.shape

    def base_weight(self) -> torch.Tensor:
        """The layer's current weight in the adapter's compute dtype (float32 unless the network was cast);
        dequantised when the layer stores scaled fp8."""
        return effective_weight(self.target).detach().to(self.compute_dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def layer_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's own op (stride, padding, ... included) with another weight and no bias."""
        if not self.is_conv:
            return F.linear(x, weight)
        conv = self.target
        return _CONV_OPS[weight.dim() - 2](x, weight, None, conv.stride, conv.padding, conv.dilation, 1)

    # --- switches ----------------------------------------------------------------------------------------------
    def is_active(self) -> bool:
        """Contributes to the forward pass: enabled, not merged into the weights, multiplier not 0."""
        return self.enabled and not self.merged and self.multiplier != 0.0

    def training_dropouts(self) -> bool:
        return self.training and self.target.training

    def neuron_dropout(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout and self.training_dropouts():
            return F.dropout(x, p=self.dropout, training=True)
        return x

    def forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor | None:
        """multiplier · (adapted output − base output), or None when module dropout skips this adapter."""
        if self.module_dropout and self.training_dropouts() and torch.rand(()) < self.module_dropout:
            return None
        return self.output_delta(self.compute_input(x), base_out)

    def compute_input(self, x: torch.Tensor) -> torch.Tensor:
        """Under autocast the input keeps its dtype: autocast runs the adapter's matmuls in its own dtype from the
        fp32 master weights, so an fp32 copy of every activation would only cost memory and bandwidth. Without
        autocast the input is cast to the weights' dtype (float32 unless the network was cast)."""
        if torch.is_autocast_enabled(x.device.type):
            return x
        return x.to(self.compute_dtype)

    def weight_row_norm_sq(self) -> torch.Tensor:
        """||W||²_row as float32 [out], cached while the frozen weight stays the same tensor (same storage,
        version, dtype and device); recomputed after a merge, an fp8 / device move or a load."""
        weight = self.target.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        cached = self.__dict__.get("_weight_norm_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                square = row_chunks(weight, lambda rows: rows.float().pow(2).flatten(1).sum(1))
                scale = row_scale(self.target)
                if scale is not None:  # scaled fp8: ||scale·q||² = scale²·||q||²
                    square = square * scale.reshape(-1).pow(2)
            cached = (key, square)
            self.__dict__["_weight_norm_cache"] = cached
        return cached[1]

    # --- subclass API ------------------------------------------------------------------------------------------
    def output_delta(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def raw_delta(self) -> torch.Tensor:
        """scale · the algorithm's ΔW, before DoRA; base weight's shape."""
        raise NotImplementedError

    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        """suffix -> tensor in the canonical file layout (`lora_down.weight`, `alpha`, ...)."""
        raise NotImplementedError

    def load_canonical(self, parts: dict[str, torch.Tensor], *, use_dora: bool) -> None:
        raise NotImplementedError

    # --- weights -----------------------------------------------------------------------------------------------
    def delta_weight(self, base_weight: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW at multiplier 1 in the base weight's shape (DoRA included: m·(W+ΔW)/||W+ΔW|| − W), compute dtype.

        `base_weight` defaults to the layer's current weight; a merged DoRA adapter needs it passed explicitly.
        """
        delta = self.raw_delta()
        if not self.use_dora:
            return delta
        if base_weight is None:
            if self.merged:
                raise RuntimeError(f"{self.wan_name}: DoRA ΔW of a merged adapter needs the pre-merge base weight.")
            base_weight = self.base_weight()
        return dora_delta(base_weight.to(delta.dtype), delta, self.magnitude, self.dora_convention)

    # --- DoRA conventions --------------------------------------------------------------------------------------
    def prepare_dora_scale(self, scale: torch.Tensor) -> None:
        """Shape `magnitude` for a file's `dora_scale`: an input-axis scale [1, in] (LyCORIS' default) switches this
        adapter to the input_axis convention; an output-axis one keeps [out, 1]."""
        if not self.use_dora or not is_input_axis_scale(scale):
            return
        weight = self.target.weight
        if scale.numel() != weight.shape[1]:
            raise UserError(f"The input-axis DoRA scale of `{self.wan_name}` has {scale.numel()} values for "
                            f"{weight.shape[1]} input features; the file is for another model.")
        self.dora_convention = "input_axis"
        self.magnitude = nn.Parameter(column_norm(effective_weight(self.target).detach().float())
                                      .to(self.magnitude.device))

    @torch.no_grad()
    def adopt_dora_convention(self, file_convention: str, keep: bool) -> None:
        """After loading a file's scale: `keep` reads it in the file's convention from now on (inference applies a
        ComfyUI-convention file exactly as ComfyUI does, on whatever base); otherwise it is turned into this
        adapter's convention on the current base weight (resuming training, which learns m over ||W + ΔW||)."""
        if not self.use_dora or self.dora_convention == "input_axis" or file_convention == self.dora_convention:
            return
        if keep:
            self.dora_convention = file_convention
            return
        converted = convert_dora_scale(self.base_weight(), self.raw_delta(), self.magnitude.detach(),
                                       file_convention, self.dora_convention)
        self.magnitude.copy_(converted.reshape(self.magnitude.shape))

    @torch.no_grad()
    def dora_scale_as(self, convention: str) -> torch.Tensor:
        """This adapter's `dora_scale` in an output-axis `convention`, on the weight it adapts (the base it was
        trained on); an input-axis scale is returned as it is (ComfyUI and LyCORIS read those alike)."""
        if self.dora_convention == "input_axis":
            return self.magnitude.detach().clone()
        if self.merged:
            raise RuntimeError(f"{self.wan_name}: unmerge before saving, the DoRA scale needs the base weight.")
        return convert_dora_scale(self.base_weight(), self.raw_delta().detach(), self.magnitude.detach(),
                                  self.dora_convention, convention)

    @torch.no_grad()
    def merged_weight(self, multiplier: float | None = None, base_weight: torch.Tensor | None = None) -> torch.Tensor:
        """W + multiplier·ΔW in the base weight's dtype; multiplier 0 returns W itself, bit for bit."""
        multiplier = self.multiplier if multiplier is None else float(multiplier)
        if base_weight is None and row_scale(self.target) is not None:
            raise UserError(f"`{self.wan_name}` stores its weight in scaled fp8, which a LoRA cannot be merged into; "
                            f"merge before storing the model in fp8_scaled, or apply the LoRA hooked.")
        base = self.target.weight.detach() if base_weight is None else base_weight
        if multiplier == 0.0:
            return base.clone()
        delta = self.delta_weight(base)
        return (base.to(delta.dtype) + multiplier * delta).to(base.dtype)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def row_chunks(weight: torch.Tensor, function, rows: int = 1024) -> torch.Tensor:
    """`function` applied to blocks of output rows and concatenated: an fp32 view of a large weight never exists
    at full size at once."""
    return torch.cat([function(weight[start:start + rows]) for start in range(0, weight.shape[0], rows)])


def dora_ratio(magnitude: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """m / ||W + ΔW||_row as [out] (the norm is detached by the caller, as in the DoRA paper)."""
    return magnitude.reshape(-1) / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def dora_output(ratio: torch.Tensor, base_out: torch.Tensor, bias: torch.Tensor | None,
                adapter_out: torch.Tensor) -> torch.Tensor:
    """(ratio − 1) ∘ W x + ratio ∘ ΔW x in the activations' dtype (bf16 under autocast: no fp32 copy of any
    [tokens, out] tensor). W x is the base output without its bias (PEFT's convention: the bias is not rescaled);
    ratio − 1 is formed in float32 before the cast, so a ratio near 1 loses nothing to rounding."""
    dtype = adapter_out.dtype
    base_without_bias = base_out.to(dtype)
    if bias is not None:
        base_without_bias = base_without_bias - bias.detach().to(dtype)
    return (ratio - 1.0).to(dtype) * base_without_bias + ratio.to(dtype) * adapter_out


def row_dropout_mask(rows: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """Keep each output row of ΔW with probability 1−p, kept rows rescaled by 1/(1−p) (unbiased in expectation)."""
    keep = (torch.rand(rows, device=like.device) >= p).to(like.dtype) / (1.0 - p)
    return keep.reshape(rows, *([1] * (like.dim() - 1)))


def require_part(parts: dict[str, torch.Tensor], suffix: str, wan_name: str) -> torch.Tensor:
    if suffix not in parts:
        raise UserError(f"The weights lack `{suffix}` for `{wan_name}`; the file is incomplete or of another algorithm.")
    return parts[suffix]


def canonical_scale(parts: dict[str, torch.Tensor], rank: int | None) -> float:
    """Canonical files store alpha so that alpha / r is the scale (rsLoRA included); no alpha, alpha 0 or no rank
    (a LoKr with both Kronecker halves full) means scale 1."""
    if "alpha" not in parts or rank is None:
        return 1.0
    alpha = float(parts["alpha"].float().item())
    return 1.0 if alpha == 0.0 else alpha / rank


class WeightDeltaAdapter(AdapterModule):
    """Adapters defined by a ΔW built from factors (LoHa, LoKr).

    On a Linear, when the algorithm has a factored product cheaper than a second full [tokens, out, in] product
    (`factored_cost` below `in·out`), the forward runs through the factors (`factored_forward`) and ΔW is never
    built for the forward; otherwise (convolutions, shapes where it does not pay) ΔW is built and the layer's op
    runs with it. rank_dropout drops whole output rows of ΔW, kept rows rescaled by 1/(1−p) (LyCORIS' convention;
    these algorithms have no single rank axis to drop). DoRA, when on, normalises W + ΔW like `deltas.dora_delta`
    (the norm, detached, from ΔW built without gradient: an [out, in] sum, not a product with the tokens).
    """

    def init_magnitude(self, use_dora: bool) -> None:
        self.use_dora = bool(use_dora)
        if self.use_dora:
            weight = effective_weight(self.target).detach().float()
            self.magnitude = nn.Parameter(row_norm(weight).reshape(weight.shape[0], 1))

    # --- the factored fast path (subclasses that have one override both) ----------------------------------------
    def factored_cost(self) -> int | None:
        """Multiply-adds per token of `factored_forward`, or None when there is no factored form."""
        return None

    def factored_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ ΔWᵀ (scale included, before dropout / DoRA / multiplier) without building ΔW."""
        raise NotImplementedError

    def uses_factored_forward(self) -> bool:
        if self.is_conv or (self.use_dora and self.dora_convention != "merged_norm"):
            return False  # a loaded file's other DoRA conventions take the ΔW path
        cost = self.factored_cost()
        out_features, in_features = self.weight_shape
        return cost is not None and cost < out_features * in_features

    def output_delta(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        mask = None  # [out], float32
        if self.rank_dropout and self.training_dropouts():
            mask = row_dropout_mask(self.weight_shape[0], self.rank_dropout, self.magnitude_like()).reshape(-1)
        if self.uses_factored_forward():
            out = self.factored_forward(self.neuron_dropout(x))
            if mask is not None:
                out = out * mask.to(out.dtype)
            if self.use_dora:
                ratio = dora_ratio(self.magnitude, self.factored_dora_norm(mask))
                out = dora_output(ratio, base_out, self.target.bias, out)
            return self.multiplier * out
        delta = self.raw_delta()
        if mask is not None:
            delta = delta * mask.to(delta.dtype).reshape(-1, *([1] * (delta.dim() - 1)))
        if self.use_dora:
            delta = dora_delta(self.base_weight(), delta, self.magnitude, self.dora_convention)
        return self.layer_op(self.neuron_dropout(x), self.multiplier * delta)

    def magnitude_like(self) -> torch.Tensor:
        return next(self.parameters())

    @torch.no_grad()
    def factored_dora_norm(self, mask: torch.Tensor | None) -> torch.Tensor:
        """||W + ΔW||_row (ΔW masked like the forward) in float32, row block by row block."""
        delta = self.raw_delta().detach().float().flatten(1)
        if mask is not None:
            delta = delta * mask.float().reshape(-1, 1)
        weight = effective_weight(self.target).detach().flatten(1)
        rows = torch.arange(weight.shape[0], device=weight.device)
        return row_chunks(rows, lambda block: (weight[block].float() + delta[block]).norm(dim=1))

    def magnitude_tensors(self) -> dict[str, torch.Tensor]:
        if not self.use_dora:
            return {}
        magnitude = self.magnitude.detach()
        return {"dora_scale": magnitude if self.dora_convention == "input_axis" else magnitude.reshape(-1, 1)}

    @torch.no_grad()
    def load_magnitude(self, parts: dict[str, torch.Tensor], use_dora: bool) -> None:
        if self.use_dora and use_dora:
            scale = require_part(parts, "dora_scale", self.wan_name)
            self.prepare_dora_scale(scale)
            self.magnitude.copy_(scale.reshape(self.magnitude.shape))


def copy_part(param: torch.Tensor, parts: dict[str, torch.Tensor], suffix: str, wan_name: str) -> None:
    """Copy a file tensor into a parameter of the same number of elements (a conv factor may be stored flat)."""
    tensor = require_part(parts, suffix, wan_name)
    if tensor.numel() != param.numel() or tensor.shape[0] != param.shape[0]:
        raise UserError(f"`{wan_name}.{suffix}` has shape {tuple(tensor.shape)} but this network expects "
                        f"{tuple(param.shape)}; build the network with the file's rank, factor and layers.")
    with torch.no_grad():
        param.copy_(tensor.reshape(param.shape))
