"""Reward models: one loader, and the scorer that runs them.

`load_reward_model(name)` is the only place a sequence-classification reward model is loaded —
for scoring here, and for training in posttrain/trainers/rm_trainer.py. A causal-LM checkpoint gets a
fresh one-output score head, seeded so that runs repeat.

`ClassifierScorer` reads the conversation exactly as TRL's RewardTrainer tokenized it in training
(chat template over prompt + answer); inputs longer than `max_length` keep their end, where the
answer is.
"""
from __future__ import annotations

import math
from typing import Sequence

from rewards.base import Messages, as_prompt_messages, check_lengths


class RewardModelError(ValueError):
    """A reward model cannot be loaded; the message says which and why."""


def load_reward_model(name: str, dtype: str = "float32", head_seed: int = 0):
    """(model with one output, tokenizer with a pad token) for an alias, directory or hub id."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from datagen.inference.base import InferenceError
    from datagen.inference.model_names import resolve_model, setup_model_types

    if not name:
        raise RewardModelError("no reward model given (reward.model / model)")
    try:
        path = resolve_model(name)
    except InferenceError as err:
        raise RewardModelError(str(err)) from None
    torch.manual_seed(head_seed)  # a checkpoint without a score head gets a random one: make it reproducible
    setup_model_types()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise RewardModelError(f"cannot load reward model {name!r} from {path}: "
                               f"{str(err).strip().splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id  # the model finds each row's last real token by it
    return model, tokenizer


class ClassifierScorer:
    """A sequence-classification reward model with one output (num_labels=1)."""

    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int = 1024, name: str = "") -> None:
        if getattr(model.config, "num_labels", 1) != 1:
            raise RewardModelError(f"a reward model needs num_labels=1, got {model.config.num_labels}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name or f"classifier:{getattr(model.config, 'name_or_path', '') or type(model).__name__}"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def from_pretrained(cls, name: str, batch_size: int = 8, max_length: int = 1024, head_seed: int = 0,
                        dtype: str = "float32") -> "ClassifierScorer":
        model, tokenizer = load_reward_model(name, dtype, head_seed)
        return cls(model, tokenizer, batch_size=batch_size, max_length=max_length, name=f"classifier:{name}")

    def to(self, device) -> "ClassifierScorer":
        """Move the model (e.g. next to the policy); returns self."""
        self.model.to(device)
        return self

    def encode(self, prompts: Sequence[Messages | str], responses: Sequence[str]):
        """Right-padded (input_ids, attention_mask) of prompt + answer, rendered by the chat template."""
        import torch

        rows = []
        for prompt, response in zip(prompts, responses):
            messages = as_prompt_messages(prompt) + [{"role": "assistant", "content": response}]
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
            rows.append(ids[-self.max_length:])
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return input_ids, mask

    def rewards(self, model, prompts: Sequence[Messages | str], responses: Sequence[str]):
        """Reward tensor (with grad when `model` trains), for refreshing the RM as well as scoring."""
        input_ids, mask = self.encode(prompts, responses)
        device = next(model.parameters()).device
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        return logits[:, 0].float()

    def score(self, prompts, responses, references=None) -> list[float]:
        import torch

        check_lengths(prompts, responses, references)
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                end = start + self.batch_size
                values = self.rewards(self.model, prompts[start:end], responses[start:end]).tolist()
                scores.extend(v if math.isfinite(v) else math.nan for v in values)
        return scores
