"""Each regulariser against a brute-force computation on small matrices, and its gradient."""

import pytest
import torch

from nlora.adapters import LayerFactors
from nlora.config import TaskSettings
from nlora.errors import NloraError
from nlora.methods import REGISTRY, get_method
from nlora.methods.nlora import check_reference_form, l1_of_factor_product, l1_of_updates
from nlora.methods.olora import l2_penalty, orthogonality_penalty

SHAPES = [(6, 5), (6, 5), (4, 5), (5, 5)]  # (out, in): two layers share a shape, one GQA-like, one square


def make_factors(seed, shapes=SHAPES, r=3, scalings=(2.0, 2.0, 2.0, 0.5)):
    g = torch.Generator().manual_seed(seed)
    return [
        LayerFactors(
            f"l{i}",
            torch.randn(r, i_, generator=g, dtype=torch.float64).requires_grad_(),
            torch.randn(o, r, generator=g, dtype=torch.float64).requires_grad_(),
            s,
        )
        for i, ((o, i_), s) in enumerate(zip(shapes, scalings))
    ]


def grads(factors, value):
    value.backward()
    zero = lambda g, t: torch.zeros_like(t) if g is None else g.clone()  # noqa: E731
    out = [(zero(f.A.grad, f.A), zero(f.B.grad, f.B)) for f in factors]
    for f in factors:
        f.A.grad = f.B.grad = None
    return out


def brute_l1_updates(factors):
    total = 0
    for f in factors:
        out_f, r = f.B.shape
        in_f = f.A.shape[1]
        for i in range(out_f):
            for j in range(in_f):
                total = total + abs(f.scaling * sum(f.B[i, k] * f.A[k, j] for k in range(r)))
    return total


def test_nlora_paper_form_matches_brute_force_and_gradient():
    fs = make_factors(0)
    fast = l1_of_updates(fs)
    slow = brute_l1_updates(fs)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-12)
    g_fast, g_slow = grads(fs, fast), grads(fs, slow)
    for (a1, b1), (a2, b2) in zip(g_fast, g_slow):
        torch.testing.assert_close(a1, a2)
        torch.testing.assert_close(b1, b2)
    # analytic subgradient: d/dB = s * sign(BA) A^T
    for f, (_, gb) in zip(fs, g_fast):
        with torch.no_grad():
            torch.testing.assert_close(gb, f.scaling * torch.sign(f.B @ f.A) @ f.A.T)


def test_nlora_penalty_is_zero_at_init():
    fs = make_factors(1)
    for f in fs:
        f.B.data.zero_()
    assert l1_of_updates(fs).item() == 0.0


def test_nlora_reference_form_matches_brute_force_and_gradient():
    fs = make_factors(2, shapes=[(5, 5), (5, 5)], scalings=(2.0, 3.0))
    fast = l1_of_factor_product(fs)
    slow = 0
    for f in fs:
        r, n = f.A.shape
        for i in range(r):
            for j in range(r):
                slow = slow + abs(sum(f.A[i, k] * f.B[k, j] for k in range(n)))
    assert fast.item() == pytest.approx(slow.item(), rel=1e-12)
    for (a1, b1), (a2, b2) in zip(grads(fs, fast), grads(fs, slow)):
        torch.testing.assert_close(a1, a2)
        torch.testing.assert_close(b1, b2)


def test_nlora_reference_form_refuses_non_square():
    with pytest.raises(NloraError, match=r"l0 is 6 x 5 .*--nlora-form paper"):
        check_reference_form(make_factors(3))


def test_olora_penalties_match_brute_force_and_gradient():
    cur = make_factors(4)
    old = [
        [LayerFactors(f.module, f.A.detach() + 0.1 * k, f.B.detach(), f.scaling) for f in make_factors(10 + k)]
        for k in range(2)
    ]
    fast = orthogonality_penalty(cur, old)
    slow = 0
    for li, c in enumerate(cur):
        for adapter in old:
            a_old = adapter[li].A
            for i in range(a_old.shape[0]):
                for j in range(c.A.shape[0]):
                    slow = slow + abs(sum(a_old[i, k] * c.A[j, k] for k in range(c.A.shape[1])))
    assert fast.item() == pytest.approx(slow.item(), rel=1e-12)
    for (a1, _), (a2, _) in zip(grads(cur, fast), grads(cur, slow)):
        torch.testing.assert_close(a1, a2)
    assert orthogonality_penalty(cur, []).item() == 0.0

    l2 = l2_penalty(cur)
    brute = sum(sum(x**2 for x in f.A.flatten()) ** 0.5 + sum(x**2 for x in f.B.flatten()) ** 0.5 for f in cur)
    assert l2.item() == pytest.approx(brute.item(), rel=1e-12)
    for (a1, b1), (a2, b2) in zip(grads(cur, l2), grads(cur, brute)):
        torch.testing.assert_close(a1, a2)
        torch.testing.assert_close(b1, b2)


def test_registry():
    assert {"n-lora", "o-lora", "seq-lora"} <= set(REGISTRY)
    assert all(cls.summary for cls in REGISTRY.values())
    with pytest.raises(NloraError, match="unknown method 'ewc-x'"):
        get_method("ewc-x")


def test_method_defaults():
    task = TaskSettings(name="a")
    n = get_method("n-lora")()
    assert n.lam(task) == 0.4
    o = get_method("o-lora")()
    assert (o.lam(task), o.lam2(task)) == (0.5, 0.0)
    assert get_method("seq-lora")().adapter_name(3) == get_method("seq-lora")().adapter_name(0)
    assert n.adapter_name(0) != n.adapter_name(1)
