"""Sampling N answers per prompt from the current policy: in-process transformers, or an LLM backend
(a vLLM server on the policy's weights)."""
from __future__ import annotations

from typing import Sequence

from posttrain.online.online_config import OnlineConfig

Messages = list[dict[str, str]]


def sample_with_transformers(model, tokenizer, prompts: Sequence[Messages], cfg: OnlineConfig,
                             seed: int) -> list[list[str]]:
    """N answers per prompt from the in-process policy (eval mode, no grad).

    Router logits are switched off: no aux loss is needed here, and posttrain/moe/recipe.py's aux-loss
    hook cannot pair cached-decoding router logits with the full attention mask."""
    import torch

    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    torch.manual_seed(seed)
    answers: list[list[str]] = []
    try:
        for start in range(0, len(prompts), cfg.generation_batch_size):
            batch = prompts[start:start + cfg.generation_batch_size]
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            sampling = cfg.temperature > 0
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, do_sample=sampling,
                                     temperature=cfg.temperature if sampling else None,
                                     top_p=cfg.top_p if sampling else None, num_return_sequences=cfg.num_samples,
                                     pad_token_id=tokenizer.pad_token_id, output_router_logits=False)
            decoded = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            answers += [decoded[i * cfg.num_samples:(i + 1) * cfg.num_samples] for i in range(len(batch))]
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    return answers


def sample_with_llm(llm, prompts: Sequence[Messages], cfg: OnlineConfig, seed: int) -> list[list[str]]:
    """N answers per prompt from anything with `generate(requests)` (the run's live vLLM engine).

    A failed request gives no answers for its prompt (counted later as `too_few_scored`)."""
    from datagen.inference.base import Request, SamplingParams

    params = SamplingParams(n=cfg.num_samples, max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=seed)
    requests = [Request(messages=tuple((m["role"], m["content"]) for m in p), params=params) for p in prompts]
    return [list(c.texts) if c.ok else [] for c in llm.generate(requests)]
