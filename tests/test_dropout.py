"""The LoRA branches' CPU dropout (``nlora.dropout``): its defining property checked by brute force (each entry
kept independently with probability 1 - p, kept entries scaled by 1 / (1 - p), the same map on the gradient),
seeding, and that the LoRA bank uses it."""

import math

import pytest
import torch

from nlora.banks import LoraBank
from nlora.config import LoraSettings
from nlora.dropout import CpuDropout, keep_mask
from nlora.models import default_target_modules, load_model


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_each_entry_is_kept_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    draws = 4_000_000
    keep = keep_mask((draws // 4, 4), p)
    assert keep.dtype == torch.bool and keep.shape == (draws // 4, 4)
    sd = math.sqrt(p * (1 - p) / draws)
    assert abs(keep.double().mean().item() - (1 - p)) < 5 * sd
    # entries from the low and the high half of each 64-bit draw alike, and every column alike
    lanes = keep.reshape(-1, 2).double().mean(0)
    columns = keep.double().mean(0)
    for share, n in [(lanes, draws / 2), (columns, draws / 4)]:
        assert ((share - (1 - p)).abs() < 5 * math.sqrt(p * (1 - p) / n)).all()
    # independent neighbours: P(both kept) = (1 - p)^2
    both = (keep[:, 0] & keep[:, 1]).double().mean().item()
    q = (1 - p) ** 2
    assert abs(both - q) < 5 * math.sqrt(q * (1 - q) / (draws / 4))


def test_a_rate_next_to_one_keeps_nothing_and_odd_sizes_work():
    assert not keep_mask((5,), 1 - 1e-12).any()
    assert keep_mask((3, 3), 0.0).all()
    assert keep_mask((7,), 0.5).shape == (7,)  # an odd count takes half of a last 64-bit draw


def test_cpu_dropout_scales_what_it_keeps_and_sends_the_gradient_through_the_same_mask():
    x = torch.randn(3, 5, 16, requires_grad=True)
    grad = torch.randn_like(x)
    drop = CpuDropout(0.25)
    torch.manual_seed(7)
    y = drop(x)
    y.backward(grad)
    torch.manual_seed(7)
    keep = keep_mask(x.shape, 0.25)
    assert 0 < keep.sum() < keep.numel()
    torch.testing.assert_close(y, torch.where(keep, x / 0.75, 0.0), rtol=1e-6, atol=0)
    torch.testing.assert_close(x.grad, torch.where(keep, grad / 0.75, 0.0), rtol=1e-6, atol=0)
    assert bool((y[~keep] == 0).all()) and bool((x.grad[~keep] == 0).all())


def test_cpu_dropout_follows_the_seed_and_the_saved_generator_state():
    x = torch.randn(4, 64)
    drop = CpuDropout(0.1)
    torch.manual_seed(3)
    first = drop(x)
    state = torch.get_rng_state()
    second = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), first)
    torch.set_rng_state(state)  # what a step checkpoint restores
    assert torch.equal(drop(x), second) and not torch.equal(first, second)


def test_cpu_dropout_is_the_identity_in_eval_mode_and_at_rate_zero_and_keeps_bf16():
    x = torch.randn(2, 8)
    assert CpuDropout(0.3).eval()(x) is x
    assert CpuDropout(0.0)(x) is x
    assert not CpuDropout(1.0)(x).any()
    xb = torch.randn(2, 8, dtype=torch.bfloat16, requires_grad=True)
    yb = CpuDropout(0.5)(xb)
    yb.sum().backward()
    assert yb.dtype == xb.grad.dtype == torch.bfloat16


def test_under_torch_compile_it_is_torch_dropout(monkeypatch):
    x = torch.randn(6, 10)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.manual_seed(5)
    ours = CpuDropout(0.3)(x)
    torch.manual_seed(5)
    assert torch.equal(ours, torch.nn.functional.dropout(x, 0.3, True))
    monkeypatch.undo()
    torch.manual_seed(5)
    assert not torch.equal(CpuDropout(0.3)(x), ours)  # outside it, the other draw


@pytest.mark.parametrize("rate", [0.1, 0.0])
def test_the_lora_bank_gives_every_adapter_the_cpu_dropout(model_dirs, model_kind, rate):
    loaded = load_model(str(model_dirs[model_kind]))
    bank = LoraBank(loaded.model, LoraSettings(dropout=rate), default_target_modules(loaded.model), loaded.family)
    bank.start("t0")
    bank.start("t1")
    bank.snapshot("t0", "teacher")
    layers = [layer for _, layer in bank._peft_layers()]
    assert layers
    for layer in layers:
        assert sorted(layer.lora_dropout) == ["t0", "t1", "teacher"]
        for module in layer.lora_dropout.values():
            if rate:
                assert type(module) is CpuDropout and module.p == rate
            else:
                assert isinstance(module, torch.nn.Identity)
