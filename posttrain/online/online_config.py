"""Settings of the online rounds (best/worst-of-N pairs sampled from the policy between DPO steps).

A key must change something: one that names what the engine cannot honour is an error (`EngineConfig`),
one that the chosen settings leave unused is a warning (`unused_keys`, logged by the DPO config)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from datagen.config_loader import option
from datagen.inference.registry import ModelConfig


@dataclass
class EngineConfig(ModelConfig):
    """The online vLLM engine's knobs. The engine is a managed vLLM server on the policy: it serves the
    checkpoint the run starts from (`model.name`, or the resumed checkpoint) and then every weight sync,
    under the name `policy`, and is restarted once from the last checkpoint if it fails. So the keys
    that pick a model, an endpoint, a cache or a restart budget have no meaning here and are refused."""

    backend: str = option("vllm", "always vllm (online.backend chooses between this engine and in-process "
                                  "transformers)")
    model: str = option("", "not used: the engine serves the policy (model.name) and the weights synced into "
                            "it; an error if set")
    max_restarts: int = option(1, "fixed: a failed engine is restarted once from the last checkpoint, then the "
                                  "run stops (EngineError)")

    REFUSED = {  # key -> why it cannot be honoured
        "model": "the engine serves the policy (model.name) and the weights synced into it each round, never "
                 "another model",
        "served_name": "the engine's name is fixed (`policy`)",
        "base_url": "the engine is a server this run starts itself (online.backend picks it), not an endpoint",
        "api_key_env": "the engine is a server this run starts itself, on 127.0.0.1, without a key",
        "cache_dir": "online samples must come from the current weights, never from a cache",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend != "vllm":
            raise ValueError(f"backend: {self.backend!r}: the online engine is a managed vLLM server; for "
                             "in-process sampling set online.backend: transformers")
        for key, why in self.REFUSED.items():
            if getattr(self, key):
                raise ValueError(f"{key}: {getattr(self, key)!r} changes nothing: {why}; remove the key")
        if self.max_restarts != 1:
            raise ValueError(f"max_restarts: {self.max_restarts} changes nothing: the engine is restarted once "
                             "from the last checkpoint, then the run stops")

    @classmethod
    def of(cls, cfg: ModelConfig) -> "EngineConfig":
        """The EngineConfig of a ModelConfig built in code: keys left at ModelConfig's defaults are not
        taken for set (its default `model` included); any other refused key is the same error."""
        if isinstance(cfg, cls):
            return cfg
        values = {}
        for f in dataclasses.fields(ModelConfig):
            value = getattr(cfg, f.name)
            if (f.name in cls.REFUSED or f.name == "max_restarts") and value == f.default:
                continue
            values[f.name] = value
        return cls(**values)


def change_nothing(keys: list[str]) -> str:
    return ", ".join(keys) + (" changes" if len(keys) == 1 else " change") + " nothing"


def changed_keys(section: Any, names: list[str] | None = None) -> list[str]:
    """The fields of a config dataclass (all, or `names`) whose value differs from their default."""
    found = []
    for f in dataclasses.fields(section):
        if names is not None and f.name not in names:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        if getattr(section, f.name) != default:
            found.append(f.name)
    return found


@dataclass
class OnlineConfig:
    """Online best/worst-of-N pairs, sampled between DPO training phases."""

    enabled: bool = option(True, "false: offline pairs only (ratio is ignored)")
    ratio: float = option(0.5, "share of each round's training pairs that come from online sampling")
    steps_per_round: int = option(2, "optimizer steps trained on one round's pairs before sampling again")
    num_samples: int = option(4, "N answers sampled per prompt (best and worst become a pair)")
    prompts_per_round: int = option(0, "prompts sampled per round; 0 = as many as online pairs the round needs")
    max_new_tokens: int = option(64, "per sampled answer")
    temperature: float = option(1.0, "sampling temperature (diversity among the N answers)")
    top_p: float = option(1.0, "nucleus sampling")
    margin: float = option(0.5, "skip a prompt when (best − worst) / running reward std is below this")
    normalizer_momentum: float = option(0.9, "β of the EMA moments behind the running reward mean/std")
    prompts: str = option("", "prompt dataset (`prompt` or `messages` column); \"\" = the offline pairs' prompts")
    prompts_view: str = option("dpo", "config of the prompt dataset")
    backend: Literal["transformers", "vllm"] = option(
        "transformers", "vllm: one live vLLM engine per run, the policy's weights synced in every round")
    vllm: EngineConfig = option(factory=EngineConfig, help="engine knobs (it serves the policy: no `model` here); "
                                "on GPUs give it its own devices via server_env CUDA_VISIBLE_DEVICES")
    weight_sync: Literal["auto", "shm", "nccl"] = option(
        "auto", "how new weights reach the vllm engine: shm (/dev/shm files, CPU), nccl (broadcast, GPUs; its "
                "code is tested over gloo on CPU, the NCCL wire only on GPUs), auto = nccl when CUDA is there")
    generation_batch_size: int = option(8, "prompts per generate() call (transformers backend)")
    kl_samples: int = option(8, "sampled answers used to estimate KL(policy ‖ reference) per round; 0 = off")
    gold: bool = option(False, "also score every sample with math-verify against its prompt's reference, logged "
                               "only (gold/accuracy per round), never trained on: with a reward model as the "
                               "reward, the gap between the two shows the proxy being over-optimised")

    def __post_init__(self) -> None:
        self.vllm = EngineConfig.of(self.vllm)  # a ModelConfig given in code is checked as the YAML's would be
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 (best and worst of N), got {self.num_samples}")
        if self.steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {self.steps_per_round}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    def unused_keys(self) -> list[str]:
        """One sentence per group of keys set away from their default that the other settings leave
        unused (logged as warnings by the DPO config; only the keys that change nothing)."""
        notes = []
        if not (self.enabled and self.ratio > 0):
            unused = changed_keys(self, [f.name for f in dataclasses.fields(self)
                                         if f.name not in ("enabled", "ratio")])
            if unused:
                notes.append(f"online rounds are off (online.enabled: {str(self.enabled).lower()}, online.ratio: "
                             f"{self.ratio:g}): " + change_nothing([f"online.{k}" for k in unused]))
            return notes
        if self.backend == "transformers":
            unused = changed_keys(self, ["vllm", "weight_sync"])
            if unused:
                notes.append("online.backend is transformers (in-process sampling): "
                             + change_nothing([f"online.{k}" for k in unused]))
        else:
            unused = changed_keys(self, ["generation_batch_size"])
            if unused:
                notes.append("online.generation_batch_size changes nothing with online.backend vllm (the engine "
                             "batches requests itself)")
        if not self.prompts and "prompts_view" in changed_keys(self, ["prompts_view"]):
            notes.append("online.prompts_view changes nothing while online.prompts is empty (the offline pairs' "
                         "prompts are sampled)")
        return notes
