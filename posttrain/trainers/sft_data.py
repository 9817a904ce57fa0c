"""SFT rows: the `messages` view as TRL prompt/completion rows (loss on the last assistant turn).

`load_sft_splits` validates every conversation, drops those longer than `max_length` tokens, and
holds out an eval split; every dropped row is counted by reason in the `DataReport`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from datagen.config_loader import option
from posttrain.data import DataError, DataReport, hold_out, load_view, require_columns

ROLES = ("system", "user", "assistant")


@dataclass
class DataConfig:
    """How to read the training dataset (the source itself is the trainer's `dataset` key)."""

    view: str = option(
        "sft", "config of a datagen output / hub dataset (sft, dpo); datasets without configs ignore it")
    split: str = option("train", "split to train on")
    eval_split: str = option("", "existing split to evaluate on; \"\" = hold out eval_fraction of `split`")
    eval_fraction: float = option(
        0.05, "share of `split` held out for eval loss when eval_split is \"\"; 0 = no eval")
    messages_column: str = option("messages", "column holding the chat (list of {role, content})")
    max_samples: int = option(0, "use only the first N rows (quick runs); 0 = all")
    seed: int = option(0, "seed of the held-out split")

    def __post_init__(self):
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_samples < 0:
            raise ValueError(f"max_samples must be >= 0, got {self.max_samples}")


def conversation_problem(messages) -> str:
    """"" for a usable conversation, else the reason it cannot be trained on."""
    if not isinstance(messages, list):
        return "messages_not_a_list"
    if not messages:
        return "empty_messages"
    for turn in messages:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            return "malformed_turn"
        if turn["role"] not in ROLES:
            return "unknown_role"
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            return "empty_content"
    if messages[-1]["role"] != "assistant":
        return "last_turn_not_assistant"
    if not any(t["role"] == "user" for t in messages[:-1]):
        return "no_user_turn"
    return ""


def to_prompt_completion(messages: list[dict]) -> dict:
    """TRL's conversational prompt/completion row: the loss falls on the final assistant turn."""
    clean = [{"role": t["role"], "content": t["content"]} for t in messages]
    return {"prompt": clean[:-1], "completion": clean[-1:]}


def load_sft_splits(source: str, cfg: DataConfig, tokenizer, max_length: int):
    """(train, eval | None, DataReport) as TRL prompt/completion datasets."""
    report = DataReport(source=source, view=cfg.view, max_length=max_length)
    train = _read_chat(source, cfg, cfg.split)
    report.rows_read = len(train)
    train = _usable_conversations(train, cfg, tokenizer, max_length, report)
    if cfg.eval_split:
        evaluation = _read_chat(source, cfg, cfg.eval_split)
        report.rows_read += len(evaluation)
        evaluation = _usable_conversations(evaluation, cfg, tokenizer, max_length, report)
    else:
        train, evaluation = hold_out(train, cfg.eval_fraction, cfg.seed)
    report.train_rows = len(train)
    report.eval_rows = len(evaluation) if evaluation is not None else 0
    if report.train_rows == 0:
        raise DataError(f"no usable training rows in {source}: {report.summary()}")
    return train, evaluation, report


def _read_chat(source: str, cfg: DataConfig, split: str):
    ds = load_view(source, cfg.view, split)
    require_columns(ds, [cfg.messages_column], source)
    if len(ds) == 0:
        raise DataError(f"dataset {source} [{cfg.view}/{split}] is empty")
    if cfg.max_samples:
        ds = ds.select(range(min(cfg.max_samples, len(ds))))
    return ds


def _usable_conversations(ds, cfg: DataConfig, tokenizer, max_length: int, report: DataReport):
    """Drop malformed and over-long conversations (counted in `report`); return prompt/completion rows."""
    column = cfg.messages_column
    checked = ds.map(lambda batch: {"_problem": [conversation_problem(m) for m in batch[column]]},
                     batched=True, keep_in_memory=True, desc="checking conversations")
    for reason, count in Counter(checked["_problem"]).items():
        if reason:
            report.skip(reason, count)
    valid = checked.filter(lambda batch: [p == "" for p in batch["_problem"]], batched=True, keep_in_memory=True)
    rows = valid.map(lambda batch: _prompt_completion_batch(batch[column], tokenizer), batched=True,
                     remove_columns=valid.column_names, keep_in_memory=True, desc="tokenizing to count")
    too_long = sum(1 for n in rows["num_tokens"] if n > max_length)
    report.skip("longer_than_max_length", too_long)
    fitting = rows.filter(lambda batch: [n <= max_length for n in batch["num_tokens"]], batched=True,
                          keep_in_memory=True)
    return fitting.remove_columns("num_tokens")


def _prompt_completion_batch(conversations: list[list[dict]], tokenizer) -> dict:
    rows = [to_prompt_completion(m) for m in conversations]
    # the full conversation is what TRL tokenizes (prompt + completion), so count that
    lengths = [len(ids) for ids in tokenizer.apply_chat_template(
        [r["prompt"] + r["completion"] for r in rows], tokenize=True, return_dict=False)]
    return {"prompt": [r["prompt"] for r in rows], "completion": [r["completion"] for r in rows],
            "num_tokens": lengths}
