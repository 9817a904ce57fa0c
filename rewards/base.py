"""What every scorer shares: the protocol and the prompt helpers."""
from __future__ import annotations

from typing import Protocol, Sequence

Messages = list[dict[str, str]]


class RewardScorer(Protocol):
    """`score` returns one float per (prompt, response); NaN = could not score."""

    name: str

    def score(self, prompts: Sequence[Messages | str], responses: Sequence[str],
              references: Sequence[str] | None = None) -> list[float]: ...


def as_prompt_messages(prompt: Messages | str) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def last_user_turn(prompt: Messages | str) -> str:
    messages = as_prompt_messages(prompt)
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def check_lengths(prompts, responses, references) -> None:
    if len(prompts) != len(responses) or (references is not None and len(references) != len(prompts)):
        raise ValueError(f"score() needs one response (and reference) per prompt: got {len(prompts)} prompts, "
                         f"{len(responses)} responses, {'no' if references is None else len(references)} references")
