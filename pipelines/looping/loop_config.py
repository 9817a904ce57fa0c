"""The loop's config: one section per step, each naming the config file of the command it runs plus
the keys the loop changes (`set:`, dotted keys as on that command's line).

The loop itself fills in what ties the steps together — output directories, the policy each step
starts from, the datasets each step reads, the eval sets as synth's decontamination benchmarks — so
a step's `set:` only carries the recipe (steps, learning rate, sizes). `extends:` reads a base loop
config first (a variant file holds only what it changes).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datagen.config_loader import ConfigError, from_dict, option, parse_overrides, read_yaml, set_dotted

import yaml


@dataclass
class SynthSection:
    """The datagen pipeline (`python -m pipelines.synth`)."""

    config: str = option("configs/synth/default.yaml", "synth config file")
    set: dict[str, Any] = option({}, "dotted keys to change in it, e.g. {seeds.max_seeds: 10}")
    decontaminate: bool = option(True, "add the eval sets (math, judge, HumanEval) to decontam.benchmarks")


@dataclass
class PromptsSection:
    """Verifiable prompts for the online DPO rounds (pipelines/looping/math_train.py)."""

    count: int = option(1200, "math problems generated (levels 1-4 interleaved), before the eval-overlap check")
    seed: int = option(1, "generator seed (the eval set was written with another)")
    referenced: int = option(300, "the first N problems also go through the synth step as referenced seeds: "
                                  "their right answers (math-verify against the exact answer) become SFT rows, "
                                  "right vs wrong DPO pairs; 0: the synth step reads its own seeds only")


@dataclass
class TrainSection:
    """A training command (posttrain/sft.py or posttrain/dpo.py)."""

    config: str = option("", "the trainer's config file")
    set: dict[str, Any] = option({}, "dotted keys to change in it, e.g. {max_steps: 40, online.ratio: 0.75}")
    launcher: list[str] = option([], "command before the script, e.g. [accelerate, launch]; empty = this python")
    raw_checkpoint: bool = option(False, "dpo: also evaluate the last raw checkpoint (the weights before the "
                                         "EMA export), as the `-raw` policy")


@dataclass
class EvalSection:
    """`python -m pipelines.eval` of each trained policy against the start."""

    config: str = option("configs/eval/cpu.yaml", "eval config file (its models: map gives backends)")
    tasks: list[str] = option(["math", "judge"], "math, code, judge, reward")
    judge: str = option("smollm2-135m", "the judge model (alias, directory or hub id)")
    limit: int | None = option(None, "first N items of each eval set; null = all")
    set: dict[str, Any] = option({}, "dotted keys to change in the eval config")


RAW_KEY = "raw_checkpoint"  # in a variant: a loop key, not a DPO key


@dataclass
class LoopConfig:
    """`python -m pipelines.loop`: synth → prompts → SFT → DPO (+ variants) → eval → table."""

    extends: str = option("", "a base loop config read first; this file's keys override it")
    output: str = option("runs/loop", "one directory per step, results.md, results.json and charts/")
    model: str = option("smollm2-moe", "the start policy (alias, directory or hub id)")
    fallback_model: str = option("smollm2-135m", "used when `model` is an alias that does not exist here")
    synth: SynthSection = option(factory=SynthSection, help="the datagen step")
    prompts: PromptsSection = option(factory=PromptsSection, help="verifiable prompts for the online rounds")
    sft: TrainSection = option(TrainSection(config="configs/posttrain/sft_tiny.yaml"), "the SFT step")
    dpo: TrainSection = option(TrainSection(config="configs/posttrain/dpo_tiny.yaml"), "the DPO step")
    rm: TrainSection = option(TrainSection(), "a reward model (posttrain/rm.py) trained on the synth step's pairs; "
                                              "when its config is set, every DPO step with reward.kind classifier "
                                              "and no reward.model scores its online samples with it")
    variants: dict[str, dict[str, Any]] = option({}, "name → DPO keys to change; each variant trains its own "
                                                     "DPO from the same SFT model and is evaluated beside it "
                                                     f"(`{RAW_KEY}: true` in a variant also evaluates its last raw "
                                                     "weights, as `dpo-NAME-raw`)")
    eval: EvalSection = option(factory=EvalSection, help="evaluation of start, SFT and DPO policies")

    def __post_init__(self) -> None:
        for name in self.variants:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ConfigError(f"variants: name {name!r} must be letters, digits, - or _ (it names a directory)")
            if not isinstance(self.variants[name].get(RAW_KEY, False), bool):
                raise ConfigError(f"variants.{name}.{RAW_KEY}: expected true or false")
        if self.prompts.count < 1:
            raise ConfigError(f"prompts.count: expected at least 1, got {self.prompts.count}")
        if self.prompts.referenced < 0:
            raise ConfigError(f"prompts.referenced: expected 0 or more, got {self.prompts.referenced}")


def read_loop_yaml(path: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A loop config file as a dict, with its `extends:` chain merged under it (nearest file wins)."""
    path = Path(path)
    if str(path.resolve()) in seen:
        raise ConfigError(f"{path}: extends itself (through {' → '.join(seen)})")
    data = read_yaml(path)
    base = data.pop("extends", "")
    if not base:
        return data
    base_path = (path.parent / base) if not Path(base).is_absolute() and not Path(base).is_file() else Path(base)
    return deep_merge(read_loop_yaml(base_path, seen + (str(path.resolve()),)), data)


def deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "set":
            merged[key] = deep_merge(merged[key], value)
        elif isinstance(value, dict) and key == "set" and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}  # dotted keys: later files change single keys
        else:
            merged[key] = value
    return merged


def load_loop_config(path: str | None, overrides: list[str]) -> LoopConfig:
    data = read_loop_yaml(path) if path else {}
    for key, raw in parse_overrides(overrides):
        set_dotted(data, key, yaml.safe_load(raw) if raw != "" else "")
    return from_dict(LoopConfig, data)


def step_config(base_file: str, changes: dict[str, Any]) -> dict[str, Any]:
    """A command's config file with changes applied (what the step writes and runs). Keys are dotted
    paths; a mapping value changes the keys it names and keeps the section's others
    (`reward: {kind: math}` sets reward.kind only)."""
    data = read_yaml(base_file)
    for key, value in flatten(changes).items():
        set_dotted(data, key, value)
    return data


def flatten(changes: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
