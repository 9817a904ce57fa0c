"""The eval command's config: which models play which role, which tasks, how answers are sampled.

Maps 1:1 to a YAML file (`--config FILE`); every key can be overridden on the command line
(`--math.max_tokens 256`, `--models.policy.backend transformers`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datagen.config_loader import ConfigError, option
from datagen.inference.registry import ModelConfig
from rewards.pairwise import PairwiseConfig

TASKS = ("math", "code", "judge", "reward")


@dataclass
class AnswerConfig:
    """How the evaluated models answer (greedy by default: pass@1 is the greedy answer)."""

    temperature: float = option(0.0, "sampling temperature of the evaluated models' answers")
    top_p: float = option(1.0, "nucleus sampling of the answers (with temperature > 0)")
    seed: int = option(0, "answer sampling seed (with temperature > 0)")
    math_max_tokens: int = option(384, "answer length limit for math problems")
    code_max_tokens: int = option(512, "answer length limit for code problems")
    open_max_tokens: int = option(512, "answer length limit for the open instructions (judge, reward)")


@dataclass
class CodeConfig:
    timeout: float = option(10.0, "seconds a HumanEval test run may take in the sandbox")
    workers: int = option(2, "sandboxes run at once")


@dataclass
class StatsConfig:
    confidence: float = option(0.95, "level of every interval")
    bootstrap_samples: int = option(2000, "bootstrap draws for intervals (length-controlled: half)")
    seed: int = option(0, "bootstrap seed (the figures are reproducible)")
    power: float = option(0.8, "power of the minimum detectable difference of paired accuracies (with a "
                               "two-sided test at level 1 - confidence)")
    expected_gain: float = option(0.05, "the accuracy gain (a share) the run hopes to see: the report says "
                                        "how many items it needs at the observed discordance; 0: not asked")
    min_order_consistency: float = option(0.6, "judge task: below this order consistency the win rate is "
                                               "reported as no signal")
    max_position_bias: float = option(0.3, "judge task: beyond this position bias (either way) the win rate "
                                           "is reported as no signal")


@dataclass
class CacheSection:
    enabled: bool = option(True, "reuse finished model calls across runs (content-addressed)")
    dir: str = option("", "call cache directory; empty: ~/.cache/synthpost/calls")


@dataclass
class EvalConfig:
    """Everything `python -m pipelines.eval` needs. Roles name a `models:` key, an embedded alias
    (smollm2-135m, ...), a local model directory or a hub id."""

    model: str = option("", "the model to evaluate")
    baseline: str = option("", "the model to compare against (judge, reward, paired differences)")
    judge: str = option("", "the model that judges pairs in the judge task (any model can judge)")
    reward: str = option("", "reward model for the reward task: a sequence-classification model "
                             "directory, alias or hub id")
    tasks: list[str] = option([], "tasks to run, from math, code, judge, reward; empty: math and code, "
                                  "plus judge and reward when their models are given")
    limit: int | None = option(None, "use only the first N items of each eval set (they cover every level)")
    output: str = option("eval_output", "directory for results.json, items.jsonl and report.html")
    backend: Literal["vllm", "transformers", "openai"] = option(
        "vllm", "backend for role names that are not `models:` keys")
    models: dict[str, ModelConfig] = option({}, "named model configs the roles may refer to")
    answers: AnswerConfig = option(factory=AnswerConfig, help="sampling of the evaluated models' answers")
    code: CodeConfig = option(factory=CodeConfig, help="the code task's sandbox")
    pairwise: PairwiseConfig = option(factory=PairwiseConfig, help="how the judge model is asked")
    stats: StatsConfig = option(factory=StatsConfig, help="intervals")
    cache: CacheSection = option(factory=CacheSection, help="the model-call cache")

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"tasks: unknown task {unknown[0]!r} (known: {', '.join(TASKS)})")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: the eval sets would be empty (limit {self.limit}); use at least 1")
        if not 0 < self.stats.confidence < 1:
            raise ConfigError(f"stats.confidence: expected a number between 0 and 1, got {self.stats.confidence}")
        if not 0 < self.stats.power < 1:
            raise ConfigError(f"stats.power: expected a number between 0 and 1, got {self.stats.power}")
        if not 0 <= self.stats.expected_gain < 1:
            raise ConfigError(f"stats.expected_gain: expected a share in [0, 1), got {self.stats.expected_gain}")

    def chosen_tasks(self) -> list[str]:
        """The tasks to run, checked against the roles they need; ConfigError naming what is missing."""
        if not self.model:
            raise ConfigError("model: which model to evaluate? (--model NAME)")
        tasks = list(dict.fromkeys(self.tasks)) or (
            ["math", "code"] + (["judge"] if self.judge and self.baseline else [])
            + (["reward"] if self.reward else []))
        if "judge" in tasks and not (self.judge and self.baseline):
            raise ConfigError("task judge needs a judge and a baseline (--judge NAME --baseline NAME)")
        if "reward" in tasks and not self.reward:
            raise ConfigError("task reward needs a reward model (--reward NAME)")
        return tasks
