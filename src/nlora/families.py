"""Model families: what differs between an encoder-decoder model (T5, BART...) and a decoder-only one (LLaMA,
Qwen, GPT-2...), chosen once when the model loads (``family_of``, from ``config.is_encoder_decoder``).

Every operation that used to branch on a ``seq2seq`` flag is a method of the family: encoding training pairs and
prompts, padding them (encoder-decoder right, decoder-only left, so answers end every row), the logits that
predict answer tokens, label scoring over a cached prompt pass, reading answers back from generated tokens,
and the stack that reads the prompt (for methods that pool or gate on it). A model from the hub is one of the
two, so a new architecture needs no code here; only its LoRA targets may need naming (``models``).

Release compatibility (``compat="reference"``) stays where it was: the ``batching.release_*`` functions, which
the families call for that mode.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .batching import (
    Encoded,
    collate_release_causal,
    encode_release_causal,
    fit_length,
    pad_rows,
    positions,
    release_causal_prompt,
    release_denominator,
    release_seq2seq_source,
    with_target,
)
from .data import Example
from .logits import accepts_logits_to_keep, last_logits
from .prompts import ANSWER_MARKER, answer_from_generation


class ModelFamily:
    """The operations a model family defines; one shared instance per family (``ENCODER_DECODER``,
    ``DECODER_ONLY``), compared by identity."""

    name: ClassVar[str]
    encoder_decoder: ClassVar[bool]
    peft_task_type: ClassVar[str]  # PEFT's TaskType value for a LoRA on this family
    prompt_special_tokens: ClassVar[bool]  # the tokenizer's own special tokens around a prompt (T5's EOS)
    pad_left: ClassVar[bool]  # prompts padded on the left, so every row's next token comes right after it

    def __repr__(self) -> str:
        return f"<model family {self.name}>"

    def model_class(self):
        """The transformers auto class that loads a model of this family."""
        raise NotImplementedError

    # -- encoding and padding --------------------------------------------------------------------------------

    def encode(
        self, tokenizer, examples: list[Example], max_source: int, max_target: int, compat: str = "clean"
    ) -> list[Encoded]:
        """Training (and label-scoring) pairs."""
        if not examples:
            return []
        if compat == "reference":
            return self._encode_release(tokenizer, examples, max_source, max_target)
        prompts = tokenizer([e.prompt for e in examples], add_special_tokens=self.prompt_special_tokens)["input_ids"]
        labels = tokenizer([e.label for e in examples], add_special_tokens=False)["input_ids"]
        return [
            self._pair(p, label_ids[: max_target - 1] + [tokenizer.eos_token_id], tokenizer, max_source)
            for p, label_ids in zip(prompts, labels)
        ]

    def encode_prompts(self, tokenizer, prompts: list[str], max_source: int, compat: str = "clean") -> list[Encoded]:
        """Generation inputs (``source`` only)."""
        if compat != "reference":
            return self.encode(tokenizer, [Example(p, "") for p in prompts], max_source, 2)
        return [self._release_prompt(tokenizer, p, max_source) for p in prompts]

    def _pair(self, prompt_ids: list[int], target: list[int], tokenizer, max_source: int) -> Encoded:
        raise NotImplementedError

    def _encode_release(self, tokenizer, examples, max_source, max_target) -> list[Encoded]:
        raise NotImplementedError

    def _release_prompt(self, tokenizer, prompt: str, max_source: int) -> Encoded:
        raise NotImplementedError

    def collate_train(self, batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def collate_prompts(self, batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        rows = [b.source for b in batch]
        return {
            "input_ids": pad_rows(rows, pad_id, left=self.pad_left),
            "attention_mask": pad_rows([[1] * len(r) for r in rows], 0, left=self.pad_left),
        }

    # -- logits and losses ----------------------------------------------------------------------------------

    def keeps_logits(self, model) -> bool:
        """Whether the forward is asked for the answer positions' logits only (``logits_to_keep``)."""
        return False

    def answer_logits(
        self, model, batch: dict[str, torch.Tensor], keep_logits: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at the positions that predict answer tokens, and those tokens (-100 elsewhere), aligned."""
        raise NotImplementedError

    def loss_count(self, examples: list[Encoded], count: int, compat: str) -> int:
        """The count a micro-batch's summed loss is divided by (the answer tokens, unless ``compat`` says)."""
        return count

    def candidate_logprobs(
        self, model, prompts: list[Encoded], candidates: list[list[int]], pad_id: int, device, share_prefix=True
    ):
        """[prompts, candidates]: summed log-probability of each candidate after each prompt (``scoring``)."""
        raise NotImplementedError

    def generation_inputs(self, model, prompts: list[Encoded], pad_id: int, device, share_prefix: bool = True) -> dict:
        """``generate``'s inputs for a batch of prompts (decoder-only: their shared prefix already cached)."""
        return {k: v.to(device) for k, v in self.collate_prompts(prompts, pad_id).items()}

    # -- generation ------------------------------------------------------------------------------------------

    def decode_answers(
        self, tokenizer, generated: torch.Tensor, prompt_width: int, prompts: list[str], compat: str
    ) -> list[str]:
        """The answers in ``generate``'s output (``prompt_width``: the padded prompt's length)."""
        raise NotImplementedError

    # -- the stack that reads the prompt ---------------------------------------------------------------------

    def prompt_reader(self, base_model) -> torch.nn.Module:
        """The module whose last hidden states represent the prompt (pooled by route, gated on by gainlora)."""
        raise NotImplementedError

    def later_generation_step(self, forward_kwargs: dict) -> bool:
        """Whether a call of ``prompt_reader`` is a generation step after the prompt's (a filled cache)."""
        return False

    def probe_inputs(self, batch: dict[str, torch.Tensor]):
        """A training batch as a forward-only probe: (model inputs, prompt-side mask, decoder mask or None)."""
        raise NotImplementedError


class EncoderDecoder(ModelFamily):
    name = "encoder-decoder"
    encoder_decoder = True
    peft_task_type = "SEQ_2_SEQ_LM"
    prompt_special_tokens = True
    pad_left = False

    def model_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def _pair(self, prompt_ids, target, tokenizer, max_source):
        return Encoded(fit_length(prompt_ids, max_source), target, len(prompt_ids) > max_source)

    def _encode_release(self, tokenizer, examples, max_source, max_target):
        labels = tokenizer([e.label for e in examples], add_special_tokens=False)["input_ids"]
        return [
            with_target(
                release_seq2seq_source(tokenizer, e.prompt, max_source),
                lab[: max_target - 1] + [tokenizer.eos_token_id],
            )
            for e, lab in zip(examples, labels)
        ]

    def _release_prompt(self, tokenizer, prompt, max_source):
        return release_seq2seq_source(tokenizer, prompt, max_source)

    def collate_train(self, batch, pad_id):
        return {
            "input_ids": pad_rows([b.source for b in batch], pad_id, left=False),
            "attention_mask": pad_rows([[1] * len(b.source) for b in batch], 0, False),
            "labels": pad_rows([b.target for b in batch], -100, left=False),
        }

    def answer_logits(self, model, batch, keep_logits):
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs, labels=labels).logits, labels

    def candidate_logprobs(self, model, prompts, candidates, pad_id, device, share_prefix=True):
        from .scoring import encoder_decoder_logprobs

        return encoder_decoder_logprobs(model, prompts, candidates, pad_id, device)

    def decode_answers(self, tokenizer, generated, prompt_width, prompts, compat):
        return [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def prompt_reader(self, base_model):
        return base_model.get_encoder()

    def probe_inputs(self, batch):
        # labels drive the decoder; its real positions are those with a label
        return batch, batch["attention_mask"], batch["labels"] != -100


class DecoderOnly(ModelFamily):
    name = "decoder-only"
    encoder_decoder = False
    peft_task_type = "CAUSAL_LM"
    prompt_special_tokens = False  # BOS is put in front by the encoding itself
    pad_left = True

    def model_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def _pair(self, prompt_ids, target, tokenizer, max_source):
        bos = tokenizer.bos_token_id
        room = max_source - (bos is not None)
        source = ([bos] if bos is not None else []) + fit_length(prompt_ids, room)
        return Encoded(source, target, len(prompt_ids) > room)

    def _encode_release(self, tokenizer, examples, max_source, max_target):
        return [encode_release_causal(tokenizer, e.prompt, e.label, max_source, max_target) for e in examples]

    def _release_prompt(self, tokenizer, prompt, max_source):
        return release_causal_prompt(tokenizer, prompt, max_source)

    def collate_train(self, batch, pad_id):
        if batch[0].release is not None:
            return collate_release_causal(batch, pad_id)
        # Left padding puts every answer at the end, so logits are only needed for the last positions.
        full = [b.source + b.target for b in batch]
        ids = pad_rows(full, pad_id, left=True)
        mask = pad_rows([[1] * len(f) for f in full], 0, left=True)
        labels = pad_rows([[-100] * len(b.source) + b.target for b in batch], -100, left=True)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions(mask)}

    def keeps_logits(self, model) -> bool:
        return accepts_logits_to_keep(model)

    def answer_logits(self, model, batch, keep_logits):
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        # Answers sit at the end (left padding): keep only the logits that predict them.
        answer_span = int((labels != -100).sum(-1).max()) + 1
        if keep_logits:
            logits = model(**inputs, logits_to_keep=last_logits(model, answer_span, labels.device)).logits
        else:
            logits = model(**inputs).logits[:, -answer_span:]
        # (from the width, not -answer_span + 1: a batch with no answer token left, as --compat reference's cut
        # inputs give, has answer_span 1, and labels[:, 0:] would be every column)
        return logits[:, :-1], labels[:, labels.shape[1] - answer_span + 1 :]

    def loss_count(self, examples, count, compat):
        # the release's decoder loss divides by the sum of its whole loss mask
        return release_denominator(examples) if compat == "reference" else count

    def candidate_logprobs(self, model, prompts, candidates, pad_id, device, share_prefix=True):
        from .scoring import decoder_only_logprobs

        return decoder_only_logprobs(model, prompts, candidates, pad_id, device, share_prefix)

    def generation_inputs(self, model, prompts, pad_id, device, share_prefix=True):
        from .scoring import shared_prompt_inputs

        return shared_prompt_inputs(model, [p.source for p in prompts], pad_id, device, share_prefix)

    def decode_answers(self, tokenizer, generated, prompt_width, prompts, compat):
        if compat == "reference":
            # the release decodes prompt and continuation together; no "Answer:" left in them (a prompt cut
            # before it, and none generated) gives an empty prediction
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            return [t.split(ANSWER_MARKER)[-1].strip() if ANSWER_MARKER in t else "" for t in texts]
        # keep prompt + continuation: the answer is what follows the last "Answer:"
        texts = tokenizer.batch_decode(generated[:, prompt_width:], skip_special_tokens=True)
        return [answer_from_generation(p + t).strip() for p, t in zip(prompts, texts)]

    def prompt_reader(self, base_model):
        return base_model.base_model

    def later_generation_step(self, forward_kwargs):
        kw = forward_kwargs
        past = next((kw[k] for k in ("cache", "past_key_values") if kw.get(k) is not None), None)
        return past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0

    def probe_inputs(self, batch):
        return {k: v for k, v in batch.items() if k != "labels"}, batch["attention_mask"], None


ENCODER_DECODER = EncoderDecoder()
DECODER_ONLY = DecoderOnly()


def family_of(model_or_config) -> ModelFamily:
    """The family of a model (a PEFT model, a transformers model) or of its config."""
    if hasattr(model_or_config, "get_base_model"):
        model_or_config = model_or_config.get_base_model()
    config = getattr(model_or_config, "config", model_or_config)
    return ENCODER_DECODER if getattr(config, "is_encoder_decoder", False) else DECODER_ONLY


def as_family(family: ModelFamily | bool) -> ModelFamily:
    """A family object; True / False (the former ``seq2seq`` flag of older callers) name encoder-decoder /
    decoder-only."""
    if isinstance(family, ModelFamily):
        return family
    return ENCODER_DECODER if family else DECODER_ONLY
