"""Fast training paths against the plain one: torch.compile gives the same updates."""

import shutil

import pytest
import torch

from nlora.adapters import LoraBank
from nlora.batching import encode
from nlora.config import LoraSettings, TaskSettings
from nlora.data import load_tasks
from nlora.methods import make_method
from nlora.models import default_target_modules, load_model
from nlora.prompts import load_instructions
from nlora.runtime import Runtime
from nlora.train import TrainLoop, train_task


def trained_adapter(model_dirs, data_dir, compile_model):
    loaded = load_model(str(model_dirs["llama"]))
    lora = LoraBank(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    method = make_method("n-lora", {"lambda": 0.01})
    tasks = load_tasks(data_dir, ["topic"], load_instructions(), max_train=12, max_test=4)
    data = encode(loaded.tokenizer, tasks["topic"].splits["train"], False, 256, 8)
    settings = TaskSettings(
        name="topic", lr=1e-2, epochs=1, batch_size=4, grad_accum=1, method_options={"lambda": 0.01}
    )
    torch.manual_seed(0)
    method.begin_task(lora, 0, settings)
    rt = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu"))
    stats = train_task(rt, lora, method, data, settings, TrainLoop(seed=0, compile_model=compile_model))
    return {n: p.detach().clone() for n, p in lora.model.named_parameters() if "lora_" in n}, stats


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on CPU needs a C compiler")
def test_compiled_training_matches_eager(model_dirs, data_dir):
    eager, s1 = trained_adapter(model_dirs, data_dir, False)
    compiled, s2 = trained_adapter(model_dirs, data_dir, True)
    assert s1.steps == s2.steps == 3
    assert s2.mean_loss == pytest.approx(s1.mean_loss, rel=1e-4)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5)


def test_adamw_is_fused_for_plain_cpu_parameters_and_torch_default_otherwise():
    from nlora.train import FUSED_ADAMW_ON_CPU, adamw

    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    built = adamw(params, 1e-3)
    group = built.param_groups[0]
    assert group["lr"] == 1e-3 and group["weight_decay"] == 0.0
    assert group["fused"] is (True if FUSED_ADAMW_ON_CPU else None)
    assert adamw(params, 1e-3, sharded=True).param_groups[0]["fused"] is None  # sharded: torch's default
    # the same update rule as torch's default AdamW (no weight decay), other rounding only
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    default = torch.optim.AdamW(reference, lr=1e-3, weight_decay=0.0)
    for step in range(3):
        for p, q in zip(params, reference):
            p.grad = torch.full_like(p, 0.1 * (step + 1))
            q.grad = p.grad.clone()
        built.step()
        default.step()
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_resumed_training_keeps_this_process_optimizer_kernel(model_dirs, data_dir, tmp_path, monkeypatch):
    """A checkpoint written by an optimizer on torch's default kernel (older nlora) resumes on the kernel this
    process picks: load_state_dict would otherwise bring back the saved param_groups' flags."""
    import nlora.train as train_module

    loaded = load_model(str(model_dirs["llama"]))
    lora = LoraBank(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    method = make_method("seq-lora")
    tasks = load_tasks(data_dir, ["topic"], load_instructions(), max_train=8, max_test=4)
    data = encode(loaded.tokenizer, tasks["topic"].splits["train"], False, 256, 8)
    settings = TaskSettings(name="topic", lr=1e-2, epochs=1, batch_size=4, grad_accum=1)
    method.begin_task(lora, 0, settings)
    rt = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu"))
    checkpoint = tmp_path / "step.pt"
    train_task(rt, lora, method, data, settings, TrainLoop(seed=0, checkpoint=checkpoint, save_every=1))
    blob = torch.load(checkpoint, weights_only=True)
    for group in blob["optimizer"]["param_groups"]:
        group.update(fused=None, foreach=None)
    torch.save(blob, checkpoint)
    built, original = [], train_module.adamw

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(train_module, "adamw", spy)
    train_task(rt, lora, method, data, settings, TrainLoop(seed=0, checkpoint=checkpoint, save_every=1))
    assert built and built[0].param_groups[0]["fused"] is (True if train_module.FUSED_ADAMW_ON_CPU else None)
