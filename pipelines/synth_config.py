"""The synth pipeline's config: one dataclass per stage, composed here.

Maps 1:1 to `configs/synth/*.yaml`; every key can be overridden on the command line
(`--generate.k 2`, `--models.default.backend transformers`). Stage sections are defined
in the stage files themselves, next to the code that reads them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from datagen.cache import CacheConfig
from datagen.consistency import ConsistencyConfig
from datagen.critique import CritiqueConfig
from datagen.decontam import DecontamConfig
from datagen.dedup import DedupConfig
from datagen.evolve import EvolveConfig
from datagen.generate import GenerateConfig
from datagen.inference.registry import ModelConfig
from datagen.output import OutputConfig
from datagen.respond import RespondConfig
from datagen.rules import RulesConfig
from datagen.seeds import SeedsConfig
from datagen.config import ConfigError


@dataclass
class SynthConfig:
    """Everything `python -m pipelines.synth` needs; defaults run the embedded model on CPU."""

    models: dict[str, ModelConfig] = field(default_factory=lambda: {"default": ModelConfig()})
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    respond: RespondConfig = field(default_factory=RespondConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    critique: CritiqueConfig = field(default_factory=CritiqueConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

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
