"""Code answers verified by running tests in the project's sandbox (HumanEval-style, pass@1).

A problem is a function signature with its docstring (`prompt`), a test program defining
`check(candidate)` (`test`) and the function's name (`entry_point`), as in OpenAI's HumanEval.
An instruct model usually answers with a whole function in a fenced block; a completion model
continues the body. Both are handled: the program is the problem's prompt (its imports and helper
functions) followed by the model's function when it defines the entry point, else by the raw
continuation. The tests then call `check(entry_point)`; the answer passes when they exit cleanly
within the time limit. Runs go through `datagen.filters.sandbox.run_sandboxed` (own process, rlimits,
no network, audit hook), a few at a time.

`HumanEvalScorer` is the reward-scorer form (`score(prompts, responses, references)`, where each
reference is the problem as JSON): 1.0 pass, 0.0 fail, NaN when the reference is unusable.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import math
import re
from dataclasses import dataclass
from typing import Sequence

from datagen.filters.sandbox import run_sandboxed

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


@dataclass(frozen=True)
class CodeCheck:
    passed: bool
    error: str  # "" when passed; else the sandbox's reason (an assertion, a timeout, ...)
    program: str  # what ran before the tests, kept for the per-item file


def extract_code(response: str, entry_point: str = "") -> str:
    """The fenced block that defines `entry_point` (else the first fenced block, else the text)."""
    blocks = [b for b in _FENCE.findall(response) if b.strip()]
    defining = [b for b in blocks if entry_point and re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
    if defining:
        return defining[0]
    return blocks[0] if blocks else response


def build_program(prompt: str, response: str, entry_point: str) -> str:
    """The problem's prompt followed by the model's function (or by its body continuation)."""
    code = extract_code(response, entry_point)
    if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", code):
        # the prompt's signature + docstring is a valid function; the model's definition replaces it,
        # while the prompt's imports and helper functions stay available
        return f"{prompt}\n    pass\n\n\n{code}\n"
    return prompt + code + "\n"


def check_problem(problem: dict, response: str, timeout: float = 10.0, memory_mb: int = 512) -> CodeCheck:
    program = build_program(problem["prompt"], response, problem["entry_point"])
    tests = f"{problem['test']}\n\ncheck({problem['entry_point']})\n"
    result = run_sandboxed(program, tests, timeout=timeout, memory_mb=memory_mb)
    return CodeCheck(result.ok, "" if result.ok else result.error or "tests failed", program)


def check_problems(problems: Sequence[dict], responses: Sequence[str], timeout: float = 10.0,
                   workers: int = 2) -> list[CodeCheck]:
    """`check_problem` for each pair, `workers` sandboxes at a time, results in input order."""
    if len(problems) != len(responses):
        raise ValueError(f"one response per problem: {len(problems)} problems, {len(responses)} responses")
    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda pr: check_problem(pr[0], pr[1], timeout), zip(problems, responses)))


def problem_reference(problem: dict) -> str:
    """A problem as the reference string `HumanEvalScorer` reads."""
    return json.dumps({k: problem[k] for k in ("prompt", "test", "entry_point")}, ensure_ascii=False)


def _read_reference(reference: str) -> dict | None:
    """The problem in a reference string, or None when it is not a usable problem."""
    try:
        problem = json.loads(reference)
    except (TypeError, ValueError):
        return None
    fields = ("prompt", "test", "entry_point")
    ok = isinstance(problem, dict) and all(isinstance(problem.get(k), str) and problem[k] for k in fields)
    return problem if ok else None


class HumanEvalScorer:
    """Reward-scorer form of the test runner: 1.0 when the tests pass, 0.0 when not."""

    name = "code-tests"

    def __init__(self, timeout: float = 10.0, workers: int = 2) -> None:
        self.timeout, self.workers = timeout, workers

    def score(self, prompts, responses, references=None) -> list[float]:
        if references is None or len(references) != len(responses) or len(prompts) != len(responses):
            raise ValueError("code scoring needs one response and one reference (problem JSON) per prompt")
        problems = [_read_reference(reference) for reference in references]
        usable = [problem is not None for problem in problems]
        todo = [i for i, ok in enumerate(usable) if ok]
        checks = check_problems([problems[i] for i in todo], [responses[i] for i in todo],
                                self.timeout, self.workers)
        scores = [math.nan] * len(responses)
        for i, check in zip(todo, checks):
            scores[i] = 1.0 if check.passed else 0.0
        return scores
