"""Prompts for online sampling: a dataset's `prompt` or `messages` column, or the offline pairs'
prompts (distinct, first occurrence wins). Unusable rows are counted by reason."""
from __future__ import annotations

from posttrain.data import DataError, DataReport, load_view
from posttrain.online.online_config import OnlineConfig
from posttrain.pairs import as_messages, prompt_length, reference_of


def load_online_prompts(cfg: OnlineConfig, split: str, max_prompt_length: int, tokenizer,
                        offline_pairs: list[dict]) -> tuple[list[dict], DataReport | None]:
    """Prompt items (`{"prompt": messages, "reference": str}`) and the report of the prompt dataset."""
    if not cfg.prompts:
        return prompt_items_from_pairs(offline_pairs), None
    ds = load_view(cfg.prompts, cfg.prompts_view, split)
    report = DataReport(source=cfg.prompts, view=cfg.prompts_view, rows_read=len(ds), max_length=max_prompt_length)
    items = []
    for row in ds:
        prompt = as_messages(row.get("prompt"), "user") if row.get("prompt") is not None else None
        if prompt is None and isinstance(row.get("messages"), list):
            prompt = as_messages(row["messages"], "user")
            while prompt and prompt[-1]["role"] == "assistant":
                prompt = prompt[:-1]
        if not prompt or prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
            report.skip("no_prompt")
        elif prompt_length(tokenizer, prompt) > max_prompt_length:
            report.skip("prompt_too_long")
        else:
            items.append({"prompt": prompt, "reference": reference_of(row)})
    report.train_rows = len(items)
    if not items:
        raise DataError(f"no usable prompts in {cfg.prompts}: {report.summary()}")
    return items, report


def prompt_items_from_pairs(pairs: list[dict]) -> list[dict]:
    """Distinct prompts of the offline pairs (first occurrence wins), with their references."""
    seen, items = set(), []
    for pair in pairs:
        key = tuple((m["role"], m["content"]) for m in pair["prompt"])
        if key not in seen:
            seen.add(key)
            items.append({"prompt": pair["prompt"], "reference": pair.get("reference", "")})
    return items
