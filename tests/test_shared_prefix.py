"""A batch's shared prompt prefix run once (scoring.shared_prompt_inputs) changes no score beyond float
rounding and no generated answer, on tiny GQA LLaMA, plain and through live LoRA; hooks switch it off."""

import pytest
import torch

from nlora.banks import LoraBank
from nlora.batching import encode
from nlora.config import LoraSettings
from nlora.data import Example
from nlora.families import DECODER_ONLY
from nlora.models import default_target_modules, load_model
from nlora.scoring import (
    MIN_SHARED_PREFIX,
    candidate_logprobs,
    prefix_sharing_applies,
    prompt_rows,
    shared_prefix_length,
    shared_prompt_inputs,
)

HEAD = "Task:TC\nDataset:topic\nWhat is the topic of the following paragraph? Option: World, Sports \n"
PROMPTS = [f"{HEAD}sentence {i} {'word ' * (3 * i)}\nAnswer:" for i in range(7)]
LABELS = ["World", "Sports", "Science and technology"]


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], minimum=1) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]], minimum=1) == 2  # every row keeps a token of its own
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]], minimum=1) == 2
    assert shared_prefix_length([[1, 2, 3, 4]], minimum=1) == 0  # one row: nothing to share
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], minimum=4) == 0  # too short to pay off
    assert shared_prefix_length([[9, 2], [1, 2]], minimum=0) == 0


def test_prompt_rows_put_pads_between_prefix_and_rest():
    ids, mask = prompt_rows([[1, 2, 3, 4, 5], [1, 2, 7]], pad_id=0, prefix=2, device="cpu")
    assert ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 0, 0, 7]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 1]]
    ids, mask = prompt_rows([[1, 2, 3], [4]], pad_id=0, prefix=0, device="cpu")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def _model(model_dirs, with_lora: bool):
    loaded = load_model(str(model_dirs["llama"]))
    model = loaded.model
    if with_lora:  # a trained-looking live adapter: B non-zero
        bank = LoraBank(model, LoraSettings(dropout=0.0), default_target_modules(model), DECODER_ONLY)
        bank.start("task0")
        torch.manual_seed(1)
        for f in bank.factors("task0"):
            torch.nn.init.normal_(f.B, std=0.5)
        model = bank.model
    model.eval()
    return loaded, model


def _sources(loaded):
    pairs = encode(loaded.tokenizer, [Example(p, lab) for p in PROMPTS for lab in LABELS], False, 512, 50)
    prompts = [pairs[i * len(LABELS)] for i in range(len(PROMPTS))]
    assert shared_prefix_length([p.source for p in prompts]) >= MIN_SHARED_PREFIX  # the shared path is taken
    return pairs, prompts


@pytest.mark.parametrize("with_lora", [False, True])
def test_scores_with_shared_prefix_equal_the_plain_pass(model_dirs, with_lora):
    loaded, model = _model(model_dirs, with_lora)
    assert prefix_sharing_applies(model)
    pairs, prompts = _sources(loaded)
    candidates = [pairs[j].target for j in range(len(LABELS))]
    kw = dict(family=loaded.family, pad_id=loaded.tokenizer.pad_token_id, device=torch.device("cpu"))
    shared = candidate_logprobs(model, prompts, candidates, share_prefix=True, **kw)
    plain = candidate_logprobs(model, prompts, candidates, share_prefix=False, **kw)
    assert torch.allclose(shared, plain, atol=1e-4, rtol=1e-5), (shared - plain).abs().max()
    assert shared.argmax(-1).tolist() == plain.argmax(-1).tolist()


@pytest.mark.parametrize("with_lora", [False, True])
def test_generation_with_shared_prefix_equals_the_plain_pass(model_dirs, with_lora):
    loaded, model = _model(model_dirs, with_lora)
    tok = loaded.tokenizer
    _, prompts = _sources(loaded)
    rows = [p.source for p in prompts]
    outputs = {}
    for share in (True, False):
        inputs = shared_prompt_inputs(model, rows, tok.pad_token_id, "cpu", share_prefix=share)
        assert (len(inputs) == 3) == share  # ids, mask and, when shared, the prefix's cache
        with torch.no_grad():
            gen = model.generate(
                **inputs, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None
            )
        width = inputs["input_ids"].shape[1]
        outputs[share] = (gen[:, width:].tolist(), (gen != tok.pad_token_id).sum(-1).tolist())
    assert outputs[True] == outputs[False]  # the same tokens, and the same gen_len (pads are not counted)


def test_forward_hooks_switch_prefix_sharing_off(model_dirs):
    loaded, model = _model(model_dirs, with_lora=False)
    seen = []
    handle = model.model.register_forward_pre_hook(lambda module, args: seen.append(1))
    assert not prefix_sharing_applies(model)
    _, prompts = _sources(loaded)
    inputs = shared_prompt_inputs(model, [p.source for p in prompts], loaded.tokenizer.pad_token_id, "cpu")
    assert set(inputs) == {"input_ids", "attention_mask"} and not seen  # no prefix pass was made
    handle.remove()
    assert prefix_sharing_applies(model)


def test_runtime_shares_the_prefix_only_where_every_pass_may_differ(model_dirs):
    from nlora.dist import Dist
    from nlora.runtime import Runtime

    loaded = load_model(str(model_dirs["llama"]))
    rt = Runtime(tokenizer=loaded.tokenizer, family=loaded.family, device=torch.device("cpu"))
    assert rt.shares_prefix()
    assert not Runtime(**{**rt.__dict__, "share_prefix": False}).shares_prefix()
    assert not Runtime(**{**rt.__dict__, "compat": "reference"}).shares_prefix()  # the release's batches
    assert not Runtime(**{**rt.__dict__, "dist": Dist(world=2, sharder="FSDP")}).shares_prefix()  # same passes
