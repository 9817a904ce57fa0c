"""Monte-Carlo KL(policy ‖ reference) on the round's sampled answers (a drift gauge for the log)."""
from __future__ import annotations

from typing import Sequence

Messages = list[dict[str, str]]


def completion_logprobs(model, tokenizer, prompts: Sequence[Messages], answers: Sequence[str]):
    """Sum of the answer tokens' log-probabilities under `model`, one value per (prompt, answer)."""
    import torch

    rows, starts = [], []
    for prompt, answer in zip(prompts, answers):
        prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                   return_dict=False)
        full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=True,
                                             return_dict=False)
        rows.append(full)
        starts.append(len(prompt_ids))
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=model.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False,
                       output_router_logits=False).logits[:, :-1].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    positions = torch.arange(1, width, device=model.device)[None, :]
    in_answer = (positions >= torch.tensor(starts, device=model.device)[:, None]) & mask[:, 1:].bool()
    return (token_logps * in_answer).sum(dim=1)


def estimate_kl(policy, reference, tokenizer, prompts: Sequence[Messages], answers: Sequence[str]) -> float:
    """Monte-Carlo KL(policy ‖ reference) ≈ mean of log π(y|x) − log π_ref(y|x) over sampled y.

    Exact in expectation for y ~ π at temperature 1; with other sampling settings it is an estimate."""
    was_training = policy.training
    policy.eval()
    try:
        diff = completion_logprobs(policy, tokenizer, prompts, answers) - \
            completion_logprobs(reference, tokenizer, prompts, answers)
    finally:
        policy.train(was_training)
    return float(diff.mean())
