"""The LoRA-MoE layer, router, gate and losses against independent computations; gradients reach router and gate."""
from __future__ import annotations

import pytest
import torch

from backend.models import demo_parts
from backend.moe.gate import TimestepGate
from backend.moe.losses import hint_kl, load_balancing_loss, router_z_loss
from backend.moe.network import MoeNetwork, MoeSpec
from backend.moe.router import top_k_gates
from backend.train.timesteps import add_noise, flow_target


@pytest.fixture(scope="module")
def tiny_model():
    model = demo_parts.build_transformer("demo-t2v", 0, part=10)
    return model.requires_grad_(False).eval()


def _inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, model.config.in_channels, 1, 4, 4, generator=g)
    text = torch.randn(batch, 6, model.config.text_dim, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0.3, 0.7][:batch])
    return x0, text, noise, t


def _flow_loss(model, x0, text, noise, t):
    v = model(hidden_states=add_noise(x0, noise, t), timestep=t * 1000, encoder_hidden_states=text,
              return_dict=False)[0]
    return ((v - flow_target(x0, noise)) ** 2).mean()


def _network(model, **spec):
    torch.manual_seed(0)
    spec = MoeSpec(expert_names=("a", "b", "c"), rank=2, alpha=2.0, top_k=2, **spec)
    return MoeNetwork.create(model, spec).inject()


def test_diffusion_loss_alone_gives_router_and_gate_gradients(tiny_model):
    network = _network(tiny_model, routing_mode="learned")
    try:
        with torch.no_grad():  # experts as after some training (fresh B = 0 makes every expert output 0)
            for adapter in network.adapters.values():
                adapter.lora_up.normal_(0.0, 0.05)
        network.train()
        _flow_loss(tiny_model, *_inputs(tiny_model)).backward()
        for name, param in list(network.router.named_parameters()) + list(network.gate.named_parameters()):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    finally:
        network.remove()


def test_router_gets_gradients_after_the_first_step_from_a_fresh_start(tiny_model):
    network = _network(tiny_model, routing_mode="learned")
    try:
        network.train()
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        inputs = _inputs(tiny_model)
        _flow_loss(tiny_model, *inputs).backward()
        assert network.router.net[2].weight.grad.abs().sum() == 0  # B = 0: the mixture is 0 whatever the gates
        optimizer.step()
        optimizer.zero_grad()
        _flow_loss(tiny_model, *inputs).backward()
        assert network.router.net[2].weight.grad.abs().sum() > 0
        assert network.gate.knots.grad.abs().sum() > 0
    finally:
        network.remove()


def test_layer_output_is_the_documented_mixture(tiny_model):
    network = _network(tiny_model, routing_mode="learned")
    try:
        with torch.no_grad():
            for adapter in network.adapters.values():
                adapter.lora_up.normal_(0.0, 0.05)
            network.gate.knots.normal_(0.0, 0.5)
        x0, text, noise, t = _inputs(tiny_model)
        gates = network.route(x0, t, text)
        tau = network.gate(t)
        adapter = network.modules_by_name()["blocks.1.self_attn.q"]
        layer = adapter.target
        x = torch.randn(2, 5, layer.in_features)
        expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
        for b in range(2):
            for e in range(3):
                delta = adapter.scale * adapter.lora_up[e] @ adapter.lora_down[e]
                expected[b] += tau[b] * gates[b, e] * x[b] @ delta.T
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
        assert torch.allclose(gates.sum(-1), torch.ones(2)) and int((gates > 0).sum(-1).max()) == 2  # top-2
    finally:
        network.remove()


def test_top_k_keeps_the_largest_and_renormalises():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    gates = top_k_gates(probs, 2)
    torch.testing.assert_close(gates, torch.tensor([[0.625, 0.375, 0.0], [0.0, 2 / 9, 7 / 9]]))


def test_load_balancing_is_alpha_for_uniform_routing():
    for experts in (2, 3, 8):
        probs = torch.full((5, experts), 1.0 / experts)
        assert float(load_balancing_loss(probs, alpha=0.37)) == pytest.approx(0.37)


def test_load_balancing_gradient_moves_an_imbalanced_router_toward_balance():
    torch.manual_seed(0)
    router = torch.nn.Linear(4, 2)
    with torch.no_grad():
        router.bias.copy_(torch.tensor([2.0, -2.0]))  # nearly every sample goes to expert 0
    inputs = torch.randn(64, 4)
    optimizer = torch.optim.SGD(router.parameters(), lr=0.5)

    def fractions():
        with torch.no_grad():
            chosen = torch.softmax(router(inputs), -1).argmax(-1)
        return torch.bincount(chosen, minlength=2).float() / len(inputs)

    start = fractions()
    first_p0 = float(torch.softmax(router(inputs), -1)[:, 0].mean().detach())
    for _ in range(200):
        optimizer.zero_grad()
        load_balancing_loss(torch.softmax(router(inputs), -1), alpha=1.0).backward()
        optimizer.step()
    end = fractions()
    assert start[0] > 0.9
    assert float(torch.softmax(router(inputs), -1)[:, 0].mean().detach()) < first_p0
    assert abs(float(end[0]) - 0.5) < abs(float(start[0]) - 0.5) and 0.2 < float(end[0]) < 0.8


def test_z_loss_and_hint_kl_match_their_formulas():
    logits = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    expected = ((torch.log(torch.exp(logits).sum(-1))) ** 2).mean()
    torch.testing.assert_close(router_z_loss(logits), expected)
    probs = torch.softmax(logits, -1)
    hint = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # the second sample has no label
    torch.testing.assert_close(hint_kl(probs, hint), -torch.log(probs[0, 1]))


def test_timestep_gate_starts_at_one_and_interpolates():
    gate = TimestepGate(3)
    torch.testing.assert_close(gate(torch.tensor([0.0, 0.4, 1.0])), torch.ones(3))
    with torch.no_grad():
        gate.knots.copy_(torch.tensor([0.0, 2.0, -2.0]))
    value = gate(torch.tensor([0.25, 0.75]))  # halfway between knots: logits 1.0 and 0.0
    torch.testing.assert_close(value, 2 * torch.sigmoid(torch.tensor([1.0, 0.0])))
