"""Label scoring from one prompt pass equals the per-candidate likelihood of prompt + label, on the plain
model and through PEFT LoRA, for T5 and GQA LLaMA."""

import pytest
import torch

from nlora.adapters import LoraBank
from nlora.banks import PromptBank
from nlora.batching import collate_train, encode
from nlora.config import LoraSettings
from nlora.data import Example
from nlora.evaluate import sequence_logprobs
from nlora.models import default_target_modules, load_model
from nlora.scoring import cached_scoring_applies, candidate_logprobs

PROMPTS = [f"Task:TC\nDataset:topic\nsentence {i} {'word ' * (3 * i)}\nAnswer:" for i in range(6)]
LABELS = ["World", "Sports", "Science and technology"]  # different lengths: 1 to many tokens after the first


def brute_force(model, tok, seq2seq):
    pairs = encode(tok, [Example(p, lab) for p in PROMPTS for lab in LABELS], seq2seq, 512, 50)
    with torch.no_grad():
        scores = sequence_logprobs(model, collate_train(pairs, tok.pad_token_id, seq2seq), seq2seq)
    return scores.view(len(PROMPTS), len(LABELS)), pairs


@pytest.mark.parametrize("with_lora", [False, True])
def test_one_prompt_pass_equals_per_candidate_likelihood(model_dirs, model_kind, with_lora):
    loaded = load_model(str(model_dirs[model_kind]))
    model = loaded.model
    if with_lora:  # a trained-looking adapter: B non-zero, so the LoRA branch changes the scores
        lora = LoraBank(model, LoraSettings(dropout=0.0), default_target_modules(model), loaded.family)
        lora.start("task0")
        torch.manual_seed(1)
        for f in lora.factors("task0"):
            torch.nn.init.normal_(f.B, std=0.5)
        model = lora.model
    model.eval()
    expected, pairs = brute_force(model, loaded.tokenizer, loaded.seq2seq)
    candidates = [pairs[j].target for j in range(len(LABELS))]
    assert len({len(c) for c in candidates}) > 1
    got = candidate_logprobs(
        model,
        [pairs[i * len(LABELS)] for i in range(len(PROMPTS))],
        candidates,
        family=loaded.family,
        pad_id=loaded.tokenizer.pad_token_id,
        device=torch.device("cpu"),
    )
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5), (got - expected).abs().max()
    assert got.argmax(-1).tolist() == expected.argmax(-1).tolist()
    # deterministic: a second call (a fresh cache) gives the same numbers bit for bit
    again = candidate_logprobs(
        model,
        [pairs[i * len(LABELS)] for i in range(len(PROMPTS))],
        candidates,
        family=loaded.family,
        pad_id=loaded.tokenizer.pad_token_id,
        device=torch.device("cpu"),
    )
    assert torch.equal(got, again)


def test_soft_prompts_use_the_per_candidate_path(model_dirs):
    loaded = load_model(str(model_dirs["llama"]))
    lora = PromptBank(loaded.model, loaded.family)
    assert cached_scoring_applies(loaded.model)
    lora.start("p0", 4)
    assert not cached_scoring_applies(lora.model)


def test_last_logits_index_equals_the_int_slice(model_dirs):
    """logits_to_keep as end-relative indices (a contiguous LM-head input) gives the int's logits; a model whose
    forward takes only an int gets the int."""
    from nlora.logits import last_logits

    loaded = load_model(str(model_dirs["llama"]))
    model = loaded.model.eval()
    ids = torch.randint(3, 300, (4, 17))
    keep = last_logits(model, 3, torch.device("cpu"))
    assert torch.is_tensor(keep) and keep.tolist() == [-3, -2, -1]
    with torch.no_grad():
        by_index = model(input_ids=ids, logits_to_keep=keep).logits
        by_int = model(input_ids=ids, logits_to_keep=3).logits
        full = model(input_ids=ids).logits[:, -3:]
    assert by_index.shape == by_int.shape == (4, 3, loaded.model.config.vocab_size)
    assert torch.allclose(by_index, by_int, atol=1e-5) and torch.allclose(by_index, full, atol=1e-5)

    class IntOnly(torch.nn.Module):
        def forward(self, input_ids=None, logits_to_keep: int = 0):
            return input_ids

    assert last_logits(IntOnly(), 3, torch.device("cpu")) == 3
