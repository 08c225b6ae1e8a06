"""Block swap and activation offload on the demo transformer: the same numbers as without them, and the swapped
blocks' weights really leave their modules between uses (on a CPU machine the "device" copies are new tensors)."""
from __future__ import annotations

import pytest
import torch

from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.errors import UserError
from backend.loraid.allocation import allocate
from backend.loraid.patterns import network_args_entries
from backend.models import demo_parts
from backend.models.activation_offload import activation_offload_of, offload_activations
from backend.models.names import block_index
from backend.models.block_swap import block_swap_of, disable_block_swap, enable_block_swap

BLOCKS = 8  # demo-t2v


def demo_model(args: list[str], checkpointing: bool = True):
    model = demo_parts.build_transformer("demo-t2v", 0, part=10)
    model.requires_grad_(False)
    if checkpointing:
        model.enable_gradient_checkpointing()
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(4, 4.0, args)).inject()
    torch.manual_seed(0)
    with torch.no_grad():
        for param in network.parameters():
            param.normal_(0.0, 0.1)  # a non-zero ΔW everywhere, so every factor gets a gradient
    return model.train(), network


def inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 2, 8, 8, generator=generator)
    text = torch.randn(1, 8, demo_parts.demo_text_dim(), generator=generator)
    return x, text


def loss_and_grads(model, network) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x, text = inputs()
    out = model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)[0]
    loss = (out.float() ** 2).mean()
    loss.backward()
    return loss.detach(), [param.grad.clone() for param in network.parameters()]


def first_adapted_block(network) -> int:
    """The lowest block whose input needs a gradient (an adapted patch embedding, LoCon's, counts as before block 0)."""
    indices = [block_index(name) for name in network.modules_by_name()]
    return min(0 if index is None else index for index in indices)


ADAPTERS = {"lora": [], "dora": ["use_dora=True"], "locon": ["algo=locon", "conv_dim=4", "conv_alpha=4.0"], "loha": ["algo=loha"], "lokr": ["algo=lokr", "factor=4"],
            "loraid-slice": network_args_entries(allocate(2, BLOCKS, 2, model="demo-t2v"))}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_swap_and_offload_give_the_same_loss_and_gradients(adapter):
    reference = loss_and_grads(*demo_model(ADAPTERS[adapter]))
    for blocks_to_swap, offload in ((1, False), (3, False), (BLOCKS, False), (0, True), (5, True)):
        model, network = demo_model(ADAPTERS[adapter])
        swap = enable_block_swap(model, blocks_to_swap, "cpu")
        if offload:
            offload_activations(model, "cpu")
        model.to("cpu")
        loss, grads = loss_and_grads(model, network)
        assert torch.equal(loss, reference[0]), (adapter, blocks_to_swap, offload)
        assert all(torch.equal(a, b) for a, b in zip(grads, reference[1])), (adapter, blocks_to_swap, offload)
        if blocks_to_swap:  # each swapped block loaded for its forward, and again for its recomputation in backward
            # when backward reaches it (not below the first adapted block: nothing there needs a gradient)
            recomputed = [index for index in range(blocks_to_swap) if index >= first_adapted_block(network)]
            assert swap.loads == blocks_to_swap + len(recomputed)
            assert swap.evictions == swap.loads and not swap.loaded
        if offload:  # one block input to CPU memory per block, one back per recomputation
            assert activation_offload_of(model).copies_to_host == BLOCKS
            assert activation_offload_of(model).copies_to_device == BLOCKS - first_adapted_block(network)


def test_swapped_blocks_hold_their_cpu_tensors_except_while_they_run():
    model, network = demo_model([])
    swap = enable_block_swap(model, 3, "cpu")
    held = {index: {name: tensor for name, tensor in model.blocks[index].state_dict(keep_vars=True).items()}
            for index in range(BLOCKS)}
    seen = []

    def watch(index):
        def hook(module, args):
            weight = module.to_q.weight
            at_rest = held[index]["attn1.to_q.weight"]
            seen.append((index, weight is at_rest, weight.data_ptr() == at_rest.data_ptr(),
                         torch.equal(weight, at_rest), sorted(swap.loaded)))
        return hook

    for index in range(BLOCKS):
        model.blocks[index].attn1.register_forward_pre_hook(watch(index))
    with torch.no_grad():
        x, text = inputs()
        model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)

    for index, same_object, same_storage, same_values, loaded in seen:
        if index < 3:  # a swapped block runs on a copy in new storage, with at most the next block also loaded
            assert not same_object and not same_storage and same_values
            assert index in loaded and set(loaded) <= {index, index + 1}
        else:
            assert same_object and same_storage
    for index in range(BLOCKS):  # between uses every module holds exactly the tensors it held before
        now = model.blocks[index].state_dict(keep_vars=True)
        assert all(now[name] is tensor for name, tensor in held[index].items())
        assert not swap.on_device(index)
    assert swap.loads == 3 and not swap.loaded


def test_moving_the_model_leaves_swapped_blocks_in_cpu_memory():
    model, _ = demo_model([])
    enable_block_swap(model, 2, "cpu")
    model.to("meta")  # stands in for a GPU: everything else moves, the swapped blocks stay where they are
    assert all(t.device.type == "cpu" for block in model.blocks[:2] for t in block.state_dict().values())
    assert all(t.is_meta for block in model.blocks[2:] for t in block.state_dict().values())
    assert model.patch_embedding.weight.is_meta


def test_a_dtype_change_still_reaches_swapped_blocks():
    model, _ = demo_model([])
    enable_block_swap(model, 2, "cpu")
    model.to(torch.float64)
    assert all(t.dtype == torch.float64 and t.device.type == "cpu"
               for t in model.blocks[0].state_dict().values() if t.is_floating_point())


def test_fp8_storage_is_swapped_as_stored():
    """Layerwise casting keeps fp8 weights; the swap copies them as they are and the result is unchanged."""
    def run(blocks_to_swap):
        model, network = demo_model([])
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        swap = enable_block_swap(model, blocks_to_swap, "cpu")
        return loss_and_grads(model, network), swap, model

    (loss, grads), _, _ = run(0)
    (swapped_loss, swapped_grads), swap, model = run(4)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(loss, swapped_loss) and all(torch.equal(a, b) for a, b in zip(grads, swapped_grads))
    assert swap.loads == 8


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_scaled_fp8_layers_are_swapped_with_their_scales(adapter):
    """Scaled fp8 Linears hold an fp8 weight and an fp32 `scale_weight` buffer: both travel, the result is unchanged."""
    from backend.models.fp8_scaled import SCALE_NAME, store_scaled_fp8

    def run(blocks_to_swap):
        model, network = demo_model(ADAPTERS[adapter])
        store_scaled_fp8(model)
        swap = enable_block_swap(model, blocks_to_swap, "cpu")
        seen = []
        layer = model.blocks[0].attn1.to_q
        layer.register_forward_pre_hook(lambda module, args: seen.append(
            (module.weight.dtype, getattr(module, SCALE_NAME).data_ptr())))
        return loss_and_grads(model, network), swap, seen, getattr(layer, SCALE_NAME)

    (loss, grads), _, _, _ = run(0)
    (swapped_loss, swapped_grads), swap, seen, scale_at_rest = run(BLOCKS)
    assert torch.equal(loss, swapped_loss) and all(torch.equal(a, b) for a, b in zip(grads, swapped_grads))
    assert seen and all(dtype == torch.float8_e4m3fn and ptr != scale_at_rest.data_ptr() for dtype, ptr in seen)
    assert swap.loads == 2 * BLOCKS


def test_generation_forward_is_unchanged_and_disable_restores_plain_modules():
    model, _ = demo_model(["use_dora=True"])
    model.eval()
    x, text = inputs()
    with torch.no_grad():
        plain = model(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=text, return_dict=False)[0]
        enable_block_swap(model, BLOCKS, "cpu")
        swapped = model(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=text,
                        return_dict=False)[0]
        disable_block_swap(model)
        after = model(hidden_states=x, timestep=torch.tensor([300.0]), encoder_hidden_states=text,
                      return_dict=False)[0]
    assert torch.equal(plain, swapped) and torch.equal(plain, after) and block_swap_of(model) is None


def test_wrong_settings_are_one_sentence():
    model, _ = demo_model([], checkpointing=False)
    with pytest.raises(UserError, match="has 8 blocks; use a number from 0 to 8"):
        enable_block_swap(model, 9, "cpu")
    with pytest.raises(UserError, match="turn gradient_checkpointing on"):
        offload_activations(model, "cpu")
    with pytest.raises(UserError, match="impl=ours"):
        enable_block_swap(model, 3, "cpu", impl="diffusers")
    model.blocks[1].ffn.net[2].weight.requires_grad_(True)
    with pytest.raises(UserError, match="frozen base weights only"):
        enable_block_swap(model, 3, "cpu")
