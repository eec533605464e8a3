"""Analysis on hand-made adapters with known answers, and the low-rank formulas against dense ones."""

import json

import pytest
import torch
from safetensors.torch import save_file

from nlora.analysis import Update, analyze_run, analyze_updates, dense_counts, nuclear_norm, task_updates, update_inner
from nlora.errors import NloraError


def upd(U, V):
    U, V = torch.as_tensor(U, dtype=torch.float64), torch.as_tensor(V, dtype=torch.float64)
    return Update(U, V, V)


def dense(u):
    return u.U @ u.V


def test_disjoint_supports_collide_never_and_are_orthogonal():
    # dW1 lives in rows 0-1 x cols 0-2, dW2 in rows 2-3 x cols 3-5: disjoint supports
    u1 = upd(torch.tensor([[1.0], [2.0], [0.0], [0.0]]), torch.tensor([[1.0, -1.0, 3.0, 0.0, 0.0, 0.0]]))
    u2 = upd(torch.tensor([[0.0], [0.0], [1.0], [-1.0]]), torch.tensor([[0.0, 0.0, 0.0, 2.0, 1.0, 1.0]]))
    res = analyze_updates(["l"], [{"l": u1}, {"l": u2}], threshold=1e-3, thresholds=[1e-3])
    assert res["acr"] == 0.0 and res["collision_matrix"][0][1] == 0.0
    assert res["orthogonality_update"]["total"] == pytest.approx(0.0, abs=1e-12)
    assert res["collision_matrix"][0][0] == pytest.approx(6 / 24)  # the diagonal is each update's density


def test_identical_updates_collide_at_their_density():
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(8, 2, generator=g), torch.randn(2, 10, generator=g)
    V[:, :4] = 0  # 40% of columns empty
    u = upd(U, V)
    t = 0.5
    density = float((dense(u).abs() > t).double().mean())
    res = analyze_updates(["l"], [{"l": u}, {"l": u}], threshold=t, thresholds=[t])
    assert 0 < density < 1 and res["acr"] == pytest.approx(density)


def test_low_rank_formulas_equal_dense():
    g = torch.Generator().manual_seed(1)
    ui = upd(torch.randn(12, 3, generator=g), torch.randn(3, 9, generator=g))
    uj = upd(torch.randn(12, 5, generator=g), torch.randn(5, 9, generator=g))
    assert update_inner(ui, uj) == pytest.approx(float(torch.linalg.norm(dense(ui).T @ dense(uj)) ** 2), rel=1e-10)
    for u in (ui, uj):
        assert nuclear_norm(u) == pytest.approx(float(torch.linalg.svdvals(dense(u)).sum()), rel=1e-10)


def test_chunked_counts_equal_one_pass(monkeypatch):
    import nlora.analysis as an

    g = torch.Generator().manual_seed(2)
    us = [upd(torch.randn(33, 2, generator=g), torch.randn(2, 7, generator=g)) for _ in range(3)]
    full = dense_counts(us, [0.5, 1.0])
    monkeypatch.setattr(an, "CHUNK_ELEMENTS", 25)  # forces 1-row chunks
    chunked = dense_counts(us, [0.5, 1.0])
    assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])
    d = torch.stack([dense(u).abs() for u in us])
    torch.testing.assert_close(chunked[3], d.flatten(1).sum(1))
    assert full[1][0, 0, 1] == float(((d[0] > 0.5) & (d[1] > 0.5)).sum())


def write_adapter(path, layers, r=2, alpha=4):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha, "peft_type": "LORA"}))
    tensors = {}
    for name, (A, B) in layers.items():
        tensors[f"{name}.lora_A.weight"] = A.float().contiguous()
        tensors[f"{name}.lora_B.weight"] = B.float().contiguous()
    save_file(tensors, str(path / "adapter_model.safetensors"))


def test_seq_lora_updates_are_per_task_differences(tmp_path):
    g = torch.Generator().manual_seed(3)
    states = [{"m.q": (torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g))} for _ in range(3)]
    dirs = []
    for i, st in enumerate(states):
        write_adapter(tmp_path / f"0{i + 1}-t{i}" / "adapter", st)
        dirs.append(tmp_path / f"0{i + 1}-t{i}" / "adapter")
    _, ups = task_updates(dirs, cumulative=True)
    s = 4 / 2
    full = [s * (B.double() @ A.double()) for A, B in (st["m.q"] for st in states)]
    torch.testing.assert_close(dense(ups[0]["m.q"]), full[0])
    torch.testing.assert_close(dense(ups[2]["m.q"]), full[2] - full[1])


def test_analyze_run_errors(tmp_path):
    with pytest.raises(NloraError, match="run directory not found"):
        analyze_run(tmp_path / "none")
    with pytest.raises(NloraError, match="not a run directory"):
        analyze_run(tmp_path)
