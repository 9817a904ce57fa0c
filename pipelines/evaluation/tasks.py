"""What each task asks a model and how its answers are scored, item by item.

- math: the question as the user turn (no extra instructions: the small models answer better
  without them, measured); scored by math-verify against the exact answer.
- code: HumanEval's signature and docstring, asked for as a whole function in a code block;
  the function runs against HumanEval's tests in the sandbox (pass@1 of the greedy answer).
- open (judge and reward tasks): the held-out instruction as it is.

Scoring returns one row per item for the per-item file; the figures come from `stats`.
"""
from __future__ import annotations

import math
from typing import Sequence

from datagen.inference.base import Completion, Request, SamplingParams
from pipelines.evaluation.eval_config import AnswerConfig, CodeConfig
from rewards.code_verifier import check_problems
from rewards.math_verifier import check_answer

CODE_PROMPT = ("Complete the following Python function. Reply with the complete function, including its "
               "imports, in one ```python code block.\n\n```python\n{prompt}```")


def _params(cfg: AnswerConfig, max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)


def math_requests(items: Sequence[dict], cfg: AnswerConfig) -> list[Request]:
    return [Request.chat(item["question"], params=_params(cfg, cfg.math_max_tokens)) for item in items]


def code_requests(items: Sequence[dict], cfg: AnswerConfig) -> list[Request]:
    return [Request.chat(CODE_PROMPT.format(prompt=item["prompt"]), params=_params(cfg, cfg.code_max_tokens))
            for item in items]


def open_requests(items: Sequence[dict], cfg: AnswerConfig) -> list[Request]:
    return [Request.chat(item["instruction"], params=_params(cfg, cfg.open_max_tokens)) for item in items]


REQUESTS = {"math": math_requests, "code": code_requests, "open": open_requests}


def answer_text(completion: Completion) -> str:
    return completion.text if completion.ok else ""


def score_math(items: Sequence[dict], completions: Sequence[Completion]) -> list[dict]:
    """Per item: the answer, whether it is right (NaN when the call failed) and what was read."""
    rows = []
    for item, completion in zip(items, completions):
        if not completion.ok:
            rows.append({"answer": "", "correct": math.nan, "extracted": "", "error": completion.error})
            continue
        check = check_answer(completion.text, item["answer"])
        rows.append({"answer": completion.text, "correct": check.correct, "extracted": check.extracted,
                     "finish": completion.finish_reasons[0] if completion.finish_reasons else ""})
    return rows


def score_code(items: Sequence[dict], completions: Sequence[Completion], cfg: CodeConfig) -> list[dict]:
    """Per item: the answer, whether HumanEval's tests pass (NaN when the call failed), and why not."""
    answered = [i for i, c in enumerate(completions) if c.ok]
    checks = check_problems([items[i] for i in answered], [completions[i].text for i in answered],
                            timeout=cfg.timeout, workers=cfg.workers)
    rows = [{"answer": "", "passed": math.nan, "error": c.error} for c in completions]
    for i, check in zip(answered, checks):
        rows[i] = {"answer": completions[i].text, "passed": 1.0 if check.passed else 0.0, "error": check.error}
    return rows


def by_level(items: Sequence[dict], outcomes: Sequence[float]) -> dict[int, list[float]]:
    levels: dict[int, list[float]] = {}
    for item, outcome in zip(items, outcomes):
        levels.setdefault(int(item["level"]), []).append(outcome)
    return dict(sorted(levels.items()))
