"""Block swap: run a Wan transformer whose blocks do not all fit on the GPU.

    swap = enable_block_swap(model, blocks_to_swap=30, device=torch.device("cuda"))
    model.to("cuda")                     # moves everything but the swapped blocks
    ...                                  # forward / backward / generation as usual
    disable_block_swap(model)            # the swapped blocks' tensors back in the modules, still in CPU memory

The first N blocks of `model.blocks` keep every parameter and buffer they hold (whatever its dtype: bf16, the fp8
storage of layerwise casting, scaled-fp8 weights and their scales) in CPU memory, pinned when CUDA exists. Just
before a swapped block runs its tensors are copied to `device`; the copy of the next block starts while the
current one computes (on a side CUDA stream), in forward order during the forward pass and in reverse order during
backward, where gradient checkpointing runs each block's forward again. After use the device copies are dropped, so
at most two swapped blocks sit on the device at a time (plus what autograd still holds for the block whose backward
is running). The first N blocks are the swapped ones because backward visits them last: the resident blocks give
the first backward steps time to bring the swapped ones back.

Between uses a swapped block's modules hold the CPU tensors themselves, so a merge, a state_dict() or a dtype
change made between forwards acts on the real weights, and every load copies what the module holds at that moment.
`model.to(device)` leaves the swapped blocks in CPU memory (their dtype still follows a `.to(dtype)`), so a caller,
diffusers' pipeline `.to()` or model CPU offload can move the model as before. The device copies are new tensors
each time (a parameter object autograd saved is never changed under it), and adapters, being forward hooks on the
block's layers (backend/adapters/hooks.py), see the loaded weights when they run (DoRA reads the base weight then).

On a machine without CUDA the same code runs with `device` = cpu: each load is a plain copy into new tensors, no
streams, which is what the tests exercise. Training needs gradient checkpointing with block swap: without it
autograd keeps every swapped block's weights on the device until backward (correct, but nothing is saved).

`impl="diffusers"` uses diffusers' group offloading instead (`enable_group_offload`, block level, one block per
group, with a CUDA stream when there is one); it offloads every block and the model's other layers, so it is only
accepted with blocks_to_swap equal to the block count. `bench/bench_block_swap.py` times both.
"""
from __future__ import annotations

import types

import torch
import torch.nn as nn

from backend.errors import UserError

_ATTRIBUTE = "_block_swap"  # where the model keeps its BlockSwap (a plain attribute, as adapters' hooks do)
IMPLEMENTATIONS = ("ours", "diffusers")


def check_blocks_to_swap(blocks_to_swap: int, num_blocks: int, label: str) -> None:
    """One sentence when the number of blocks to swap does not fit the model."""
    if blocks_to_swap < 0 or blocks_to_swap > num_blocks:
        raise UserError(f"blocks_to_swap={blocks_to_swap} does not fit the {label}, which has {num_blocks} blocks; "
                        f"use a number from 0 to {num_blocks}.")


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


class _Loaded:
    """One swapped block's device copies, and the event that says the copy is done (CUDA)."""

    def __init__(self, tensors: dict, hosts: dict, event) -> None:
        self.tensors = tensors  # (module, name, is_buffer) -> device tensor
        self.hosts = hosts      # (module, name, is_buffer) -> the CPU tensor the module held
        self.event = event
        self.waited = event is None
        self.installed = False


class BlockSwap:
    """The bookkeeping of one model's swapped blocks (see the module docstring). `loads` / `evictions` count copies."""

    def __init__(self, model: nn.Module, blocks_to_swap: int, device: torch.device | str) -> None:
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(f"{type(model).__name__} has no `blocks` ModuleList to swap")
        check_blocks_to_swap(blocks_to_swap, len(blocks), f"{type(model).__name__}")
        self.model = model
        self.blocks = list(blocks)
        self.swapped = set(range(blocks_to_swap))
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.pin = torch.cuda.is_available()
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.loaded: dict[int, _Loaded] = {}
        self.loads = self.evictions = 0
        self._callback_queued = False
        self._handles = []
        for index in sorted(self.swapped):
            self._offload_block(index)
            self._guard_moves(self.blocks[index])
        for index, block in enumerate(self.blocks[:blocks_to_swap + 1]):  # the swapped ones and the one after them
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(index)))
            if index in self.swapped:
                self._handles.append(block.register_forward_hook(self._post_hook(index), always_call=True))
        self._handles.append(model.register_forward_pre_hook(self._model_pre_hook))

    # --- CPU side ----------------------------------------------------------------------------------------------
    def _host(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor in CPU memory (pinned when CUDA exists); itself when it already is."""
        if tensor.device.type == "cpu" and (tensor.is_pinned() or not self.pin):
            return tensor
        host = tensor.detach().to("cpu")
        return host.pin_memory() if self.pin else host

    @staticmethod
    def _slots(block: nn.Module):
        """(module, name, is_buffer, tensor) of every parameter and buffer the block holds."""
        for module in block.modules():
            for name, param in module._parameters.items():
                if param is not None:
                    yield module, name, False, param
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    yield module, name, True, buffer

    @staticmethod
    def _set(module: nn.Module, name: str, is_buffer: bool, tensor: torch.Tensor) -> None:
        if is_buffer:
            module._buffers[name] = tensor
        else:
            module._parameters[name] = tensor

    def _offload_block(self, index: int) -> None:
        for module, name, is_buffer, tensor in list(self._slots(self.blocks[index])):
            if not is_buffer and tensor.requires_grad:
                raise UserError(f"block {index} has a trainable parameter `{name}`; block swap moves frozen base "
                                f"weights only, so lower blocks_to_swap below the first trained block or set it to 0.")
            host = self._host(tensor)
            if host is not tensor:
                self._set(module, name, is_buffer, host if is_buffer else nn.Parameter(host, requires_grad=False))

    def _guard_moves(self, block: nn.Module) -> None:
        """`.to()` / `.cuda()` on the model keep this block's tensors in CPU memory (a dtype change still applies)."""
        swap = self

        def _apply(module, fn, recurse=True):
            def new_dtype(tensor):  # what the move does to a dtype, seen on an empty tensor (no copy)
                return fn(torch.empty(0, dtype=tensor.dtype)).dtype

            if all(new_dtype(tensor) == tensor.dtype for *_, tensor in swap._slots(module)):
                return module  # a device move (e.g. model CPU offload at every forward): nothing to do
            swap._evict(swap.blocks.index(module))
            return nn.Module._apply(module, lambda tensor: swap._host(tensor.to(new_dtype(tensor))), recurse)

        block._apply = types.MethodType(_apply, block)

    # --- device side -------------------------------------------------------------------------------------------
    def _prefetch(self, index: int) -> None:
        """Start copying block `index` to the device (on the side stream with CUDA); no-op when it is there."""
        if index in self.loaded:
            return
        hosts, tensors = {}, {}
        compute = torch.cuda.current_stream(self.device) if self.cuda else None
        for module, name, is_buffer, host in list(self._slots(self.blocks[index])):
            if self.cuda and host.device.type == "cpu" and not host.is_pinned():
                host = self._host(host)  # changed in the module since the last load (e.g. a cast): pin it again
                self._set(module, name, is_buffer, host if is_buffer else nn.Parameter(host, requires_grad=False))
            key = (module, name, is_buffer)
            hosts[key] = host
            tensors[key] = torch.empty_like(host, device=self.device)  # allocated for the compute stream
        event = None
        if self.cuda:
            self.stream.wait_stream(compute)  # the memory may have been freed by work still queued there
            with torch.cuda.stream(self.stream):
                for key, tensor in tensors.items():
                    tensor.copy_(hosts[key], non_blocking=True)
                event = self.stream.record_event()
        else:
            for key, tensor in tensors.items():
                tensor.copy_(hosts[key])
        self.loaded[index] = _Loaded(tensors, hosts, event)
        self.loads += 1

    def _wait(self, loaded: _Loaded) -> None:
        if not loaded.waited:
            torch.cuda.current_stream(self.device).wait_event(loaded.event)
            loaded.waited = True

    def _install(self, index: int) -> None:
        self._prefetch(index)
        loaded = self.loaded[index]
        self._wait(loaded)
        if loaded.installed:
            return
        for (module, name, is_buffer), tensor in loaded.tensors.items():
            self._set(module, name, is_buffer, tensor if is_buffer else nn.Parameter(tensor, requires_grad=False))
        loaded.installed = True

    def _evict(self, index: int) -> None:
        loaded = self.loaded.pop(index, None)
        if loaded is None:
            return
        self._wait(loaded)  # a prefetched copy never used: its memory goes back to the compute stream after it
        if loaded.installed:
            for (module, name, is_buffer), host in loaded.hosts.items():
                self._set(module, name, is_buffer, host)
        self.evictions += 1

    def evict_all(self) -> None:
        for index in list(self.loaded):
            self._evict(index)

    def on_device(self, index: int) -> bool:
        """Whether block `index`'s modules hold device copies right now (never between uses of a swapped block)."""
        return index in self.loaded and self.loaded[index].installed

    # --- hooks -------------------------------------------------------------------------------------------------
    def _pre_hook(self, index: int):
        @torch.compiler.disable
        def hook(module, args):
            backward = _in_backward()
            following = index - 1 if backward else index + 1
            for other in list(self.loaded):
                if other not in (index, following):
                    self._evict(other)
            if index in self.swapped:
                self._install(index)
            # backward goes below this block only when its input needs a gradient (a LORAID slice may start higher)
            needed = not backward or (bool(args) and isinstance(args[0], torch.Tensor) and args[0].requires_grad)
            if following in self.swapped and needed:
                self._prefetch(following)
            if backward and not self._callback_queued:
                self._callback_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)
        return hook

    def _post_hook(self, index: int):
        @torch.compiler.disable
        def hook(module, args, output):
            self._evict(index)
        return hook

    @torch.compiler.disable
    def _model_pre_hook(self, module, args):
        if not _in_backward() and 0 in self.swapped:
            self._prefetch(0)

    def _after_backward(self) -> None:
        self._callback_queued = False
        self.evict_all()

    def remove(self) -> None:
        """Drop the hooks and device copies; the swapped blocks keep their tensors in CPU memory."""
        self.evict_all()
        for handle in self._handles:
            handle.remove()
        for index in self.swapped:
            self.blocks[index].__dict__.pop("_apply", None)


def block_swap_of(model: nn.Module) -> BlockSwap | None:
    return model.__dict__.get(_ATTRIBUTE)


def enable_block_swap(model: nn.Module, blocks_to_swap: int, device: torch.device | str,
                      impl: str = "ours") -> BlockSwap | None:
    """Keep the first `blocks_to_swap` blocks of `model.blocks` in CPU memory and bring each to `device` for its
    forward (see the module docstring). Call it after fp8 / layerwise casting and after adapters are injected, and
    before moving the model to the device. Returns the BlockSwap (None for 0 blocks, or impl="diffusers")."""
    if impl not in IMPLEMENTATIONS:
        raise UserError(f"Unknown block swap implementation `{impl}`; choose one of: {', '.join(IMPLEMENTATIONS)}.")
    disable_block_swap(model)
    if blocks_to_swap == 0:
        return None
    if impl == "diffusers":
        return _enable_group_offload(model, blocks_to_swap, torch.device(device))
    swap = BlockSwap(model, blocks_to_swap, device)
    model.__dict__[_ATTRIBUTE] = swap
    return swap


def disable_block_swap(model: nn.Module) -> None:
    swap = model.__dict__.pop(_ATTRIBUTE, None)
    if swap is not None:
        swap.remove()


def _enable_group_offload(model: nn.Module, blocks_to_swap: int, device: torch.device) -> None:
    num_blocks = len(model.blocks)
    if blocks_to_swap != num_blocks:
        raise UserError(f"diffusers' group offloading swaps every block, so it needs blocks_to_swap={num_blocks} "
                        f"(got {blocks_to_swap}); use impl=ours for part of the blocks.")
    cuda = device.type == "cuda" and torch.cuda.is_available()
    model.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                               num_blocks_per_group=1, use_stream=cuda)
    return None
