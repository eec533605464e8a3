"""Continual adapters: old tasks frozen and kept in the forward pass; saved adapters load with PEFT alone."""

import pytest
import torch
from peft import PeftModel

from nlora.adapters import ContinualLoRA
from nlora.batching import collate_train, encode
from nlora.config import LoraSettings, TaskSettings
from nlora.data import load_tasks
from nlora.methods import RunFacts, make_method
from nlora.models import default_target_modules, load_model
from nlora.prompts import load_instructions
from nlora.runtime import Runtime
from nlora.train import TrainLoop, train_task

SEQ2SEQ = {"t5": True, "llama": False}


def setup(model_dirs, kind, data_dir, method="n-lora", fold=False):
    loaded = load_model(str(model_dirs[kind]))
    lora = ContinualLoRA(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    tasks = load_tasks(data_dir, ["topic", "mood"], load_instructions(), max_train=16, max_test=4)
    enc = {n: encode(loaded.tokenizer, t.splits["train"], loaded.seq2seq, 256, 8) for n, t in tasks.items()}
    return loaded, lora, enc, make_method(method, run=RunFacts(n_tasks=2, fold_adapters=fold))


def fit(lora, method, enc, index, name, loaded):
    settings = TaskSettings(name=name, lr=5e-2, epochs=1, batch_size=4, grad_accum=1, method_options={"lambda": 1e-3})
    method.begin_task(lora, index, settings)
    train_task(
        Runtime(loaded.tokenizer, loaded.family, torch.device("cpu")),
        lora,
        method,
        enc,
        settings,
        TrainLoop(seed=index),
    )


@torch.no_grad()
def logits(model, batch):
    model.eval()
    return model(
        **{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}
    ).logits


def test_new_task_leaves_old_function_untouched(model_dirs, model_kind, data_dir, tmp_path):
    loaded, lora, enc, method = setup(model_dirs, model_kind, data_dir)
    fit(lora, method, enc["topic"], 0, "topic", loaded)
    probe = collate_train(enc["topic"][:4], loaded.tokenizer.pad_token_id, loaded.seq2seq)
    before = logits(lora.model, probe)
    old = {n: p.detach().clone() for n, p in lora.model.named_parameters() if ".task0." in n}
    base = {n: p.detach().clone() for n, p in lora.model.named_parameters() if "lora_" not in n}
    lora.save("task0", tmp_path / "task0")

    fit(lora, method, enc["mood"], 1, "mood", loaded)
    assert lora.adapters == ["task0", "task1"]
    after = logits(lora.model, probe)
    assert not torch.allclose(before, after), "the new adapter should change the function"
    for n, p in lora.model.named_parameters():  # frozen parameters are bit-identical
        if n in old:
            assert torch.equal(p, old[n]), n
        if n in base:
            assert torch.equal(p, base[n]), n
    with torch.no_grad():  # zero the new adapter: the function is exactly that before task 2
        for f in lora.factors("task1"):
            f.B.zero_()
    assert torch.equal(logits(lora.model, probe), before)

    # PEFT alone reloads the saved adapter and gives the same function
    fresh = load_model(str(model_dirs[model_kind])).model
    peft_model = PeftModel.from_pretrained(fresh, str(tmp_path / "task0"))
    torch.testing.assert_close(logits(peft_model, probe), before, rtol=1e-5, atol=1e-6)


def test_only_current_adapter_trains(model_dirs, data_dir):
    loaded, lora, enc, method = setup(model_dirs, "llama", data_dir)
    lora.start("task0")
    lora.start("task1")
    names = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert names and all(".task1." in n for n in names)
    assert lora.model.base_model.active_adapters == ["task0", "task1"]


def test_seq_lora_keeps_one_adapter(model_dirs, data_dir):
    loaded, lora, enc, method = setup(model_dirs, "t5", data_dir, method="seq-lora")
    fit(lora, method, enc["topic"], 0, "topic", loaded)
    first = {n: p.detach().clone() for n, p in lora.model.named_parameters() if p.requires_grad}
    fit(lora, method, enc["mood"], 1, "mood", loaded)
    assert lora.adapters == ["seq"]
    assert any(not torch.equal(p, first[n]) for n, p in lora.model.named_parameters() if n in first)


def test_reference_form_refused_for_gqa(model_dirs, data_dir):
    loaded, lora, enc, _ = setup(model_dirs, "llama", data_dir)
    from nlora.errors import NloraError

    with pytest.raises(NloraError, match=r"v_proj is 16 x 32 .*grouped-query"):
        make_method("n-lora", {"form": "reference"}).begin_task(lora, 0, TaskSettings(name="a"))


def _loss_and_grads(lora, batch, seq2seq, amp):
    from nlora.logits import autocast, task_loss

    lora.model.eval()  # dropout off: folding drops the old branches' dropout, the only intended difference
    lora.model.zero_grad(set_to_none=True)
    with autocast(torch.device("cpu"), amp):
        out = task_loss(lora.model, batch, seq2seq, keep_logits=False)
    out.backward()
    return out.detach(), {n: p.grad.clone() for n, p in lora.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("amp,tol,grad_tol", [(None, 1e-5, 1e-5), (torch.bfloat16, 3e-2, 1e-1)])
def test_folding_keeps_the_function(model_dirs, model_kind, data_dir, amp, tol, grad_tol):
    """Earlier adapters folded into fp32 base weights: same outputs and same gradients for the new adapter,
    within 1e-5 in fp32 (float association only); under bf16 autocast the loss within 3e-2 and each gradient
    within 10% relative Frobenius error (bf16 rounds W x and dW x separately in one case, (W + dW) x in the
    other)."""
    loaded, lora, enc, _ = setup(model_dirs, model_kind, data_dir)
    torch.manual_seed(1)
    for i in range(3):
        lora.start(f"task{i}")
        with torch.no_grad():  # trained-looking updates: B is zero at initialisation
            for f in lora.factors(f"task{i}"):
                f.B.normal_(0, 0.05)
    batch = collate_train(enc["topic"][:4], loaded.tokenizer.pad_token_id, loaded.seq2seq)
    loss_before, grads_before = _loss_and_grads(lora, batch, loaded.seq2seq, amp)
    factors_before = [(f.A.detach().clone(), f.B.detach().clone()) for f in lora.factors("task0")]

    lora.fold("task0")
    lora.fold("task1")
    lora.start("task2")
    assert lora.live_adapters() == ["task2"] and lora.adapters == ["task0", "task1", "task2"]
    assert not any(".task0." in n or ".task1." in n for n, _ in lora.model.named_parameters())
    assert all(torch.equal(f.A, a) and torch.equal(f.B, b) for f, (a, b) in zip(lora.factors("task0"), factors_before))
    loss_after, grads_after = _loss_and_grads(lora, batch, loaded.seq2seq, amp)
    torch.testing.assert_close(loss_after, loss_before, rtol=tol, atol=tol)
    assert grads_after.keys() == grads_before.keys() and grads_after
    for n in grads_before:  # relative Frobenius error of each gradient
        err = (grads_after[n] - grads_before[n]).norm() / grads_before[n].norm().clamp_min(1e-12)
        assert err < grad_tol, (n, float(err))


def test_fold_is_default_for_fresh_adapter_methods(model_dirs, data_dir):
    loaded, lora, enc, method = setup(model_dirs, "llama", data_dir, fold=True)
    fit(lora, method, enc["topic"], 0, "topic", loaded)
    fit(lora, method, enc["mood"], 1, "mood", loaded)
    assert lora.live_adapters() == ["task1"] and list(lora.folded) == ["task0"]


def test_merged_evaluation_same_function_and_exact_restore(model_dirs, model_kind, data_dir):
    """Inside ``merged`` the model has no LoRA branches and computes the same logits (within 1e-5, fp32);
    afterwards every parameter is bit-identical to before."""
    loaded, lora, enc, _ = setup(model_dirs, model_kind, data_dir)
    torch.manual_seed(2)
    for i in range(2):
        lora.start(f"task{i}")
        with torch.no_grad():
            for f in lora.factors(f"task{i}"):
                f.B.normal_(0, 0.05)
    probe = collate_train(enc["topic"][:4], loaded.tokenizer.pad_token_id, loaded.seq2seq)
    before = logits(lora.model, probe)
    params = {n: p.detach().clone() for n, p in lora.model.named_parameters()}
    calls = []
    from peft.tuners.lora import Linear

    real = Linear.forward
    with lora.merged(lora.active()):
        Linear.forward = lambda self, x, *a, **k: (calls.append(self.disable_adapters), real(self, x, *a, **k))[1]
        try:
            inside = logits(lora.model, probe)
        finally:
            Linear.forward = real
    assert calls and all(calls)  # every adapted layer ran without its LoRA branch
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(p, params[n]) for n, p in lora.model.named_parameters())
    assert lora.active() == ["task0", "task1"]
