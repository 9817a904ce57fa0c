"""The eval behind `python -m pipelines.eval`: held-out tasks, statistics with intervals, a report.

    from pipelines.evaluation import EvalConfig, evaluate
    results = evaluate(EvalConfig(model="smollm2-135m", baseline="...", judge="...", tasks=["math", "judge"]))

Modules: `config` (EvalConfig), `models` (roles → inference configs, batched generation),
`tasks` (prompts and per-item scoring), `stats` (pure statistics), `runner` (evaluate),
`charts` and `report` (results.json, items.jsonl, report.html, the summary line).
"""
from pipelines.evaluation.eval_config import EvalConfig
from pipelines.evaluation.runner import evaluate

__all__ = ["EvalConfig", "evaluate"]
