"""Settings of the online rounds (best/worst-of-N pairs sampled from the policy between DPO steps)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datagen.config_loader import option
from datagen.inference.registry import ModelConfig


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
    vllm: ModelConfig = option(ModelConfig(backend="vllm"), "engine knobs (`model` is the policy); on GPUs give "
                                                             "it its own devices via server_env CUDA_VISIBLE_DEVICES")
    weight_sync: Literal["auto", "shm", "nccl"] = option(
        "auto", "how new weights reach the vllm engine: shm (/dev/shm files, CPU), nccl (broadcast, GPUs; "
                "untested), auto = nccl when CUDA is there")
    generation_batch_size: int = option(8, "prompts per generate() call (transformers backend)")
    kl_samples: int = option(8, "sampled answers used to estimate KL(policy ‖ reference) per round; 0 = off")

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 (best and worst of N), got {self.num_samples}")
        if self.steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {self.steps_per_round}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
