"""Expert-specific learning rate: the routed experts' LR as a fraction of the shared expert's.

Derivation (Hunyuan-Large report, arXiv 2411.02265, "Expert Specific Learning Rate Scaling",
which builds on Li et al. 2024, "Surge Phenomenon in Optimal Learning Rate and Batch Size
Scaling", arXiv 2405.14578):

1. For Adam-style optimizers the optimal learning rate at batch size B is

       eps_opt(B) = 2 * eps_max / (sqrt(B_noise / B) + sqrt(B / B_noise))

   where eps_max is the peak (reached at B = B_noise) and B_noise is the gradient noise scale,
   the balance point between training speed and data efficiency.
2. The shared expert sees every token of a batch of B tokens. With top-k routing over n experts
   balanced by the load-balancing loss, each routed expert sees about B * k / n of them: its
   effective batch is k/n of the shared expert's.
3. So the shared expert trains at eps_opt(B) and each routed expert at eps_opt(B * k / n):

       ratio = eps_opt(B k/n) / eps_opt(B)
             = (sqrt(1/x) + sqrt(x)) / (sqrt(n/(k x)) + sqrt(k x/n)),   x = B / B_noise.

Properties: the ratio is 1 when k = n (every expert sees every token); for x -> 0 (batches far
below the noise scale) it tends to sqrt(k/n), the square-root rule; it is < 1 while
B * sqrt(k/n) < B_noise and exceeds 1 beyond (batches so large that smaller ones are better).

Where B_noise comes from: the run measures it (posttrain/moe/noise_scale.py: McCandlish et al.'s
B_simple = tr(Σ)/|G|² from small- and big-batch gradients of the run's own first batches, at its
starting weights) unless `moe.gradient_noise_scale_tokens` gives it; the trainer logs B_noise and
the ratio it gives (posttrain/moe/param_groups.py). A number in `moe.expert_lr_ratio` is a fixed
override instead.

Hunyuan-Large's own figure: the report states a routed-expert learning rate of about 0.31 of the
shared expert's for its routing (1 shared + 16 routed experts, top-1) and does not publish B or
B_noise. `REPORT_EXPERT_LR_RATIO` holds that figure; Hunyuan-Large's recipe
(configs/posttrain/sft_hunyuan_large.yaml) fixes it. Inverting the formula, 0.31 at k/n = 1/16
means B/B_noise ≈ 0.26 there — an inference about their run, not a default for any other.
"""
from __future__ import annotations

import math

from .configuration import HunyuanError

# Hunyuan-Large report (Sun et al. 2024, arXiv 2411.02265), "Expert Specific Learning Rate Scaling":
# the specialized (routed) experts' learning rate relative to the shared expert's, for top-1 of 16.
REPORT_EXPERT_LR_RATIO = 0.31
REPORT_EXPERT_LR_SOURCE = "Hunyuan-Large report (arXiv 2411.02265), Expert Specific Learning Rate Scaling"


def optimal_adam_lr(batch: float, noise_scale: float, peak_lr: float = 1.0) -> float:
    """Li et al.'s optimal Adam learning rate at batch size `batch` (same unit as `noise_scale`)."""
    if batch <= 0 or noise_scale <= 0:
        raise HunyuanError(f"batch ({batch}) and noise scale ({noise_scale}) must be > 0")
    return 2 * peak_lr / (math.sqrt(noise_scale / batch) + math.sqrt(batch / noise_scale))


def expert_lr_ratio(num_experts: int, top_k: int, batch: float, noise_scale: float) -> float:
    """Routed experts' LR / shared expert's LR for top-`top_k` routing over `num_experts`, at a batch
    of `batch` per optimizer step and gradient noise scale `noise_scale` (the same unit: tokens, or
    rows). An infinite noise scale (too noisy to measure) gives the x -> 0 limit sqrt(k/n)."""
    if num_experts < 1 or not 1 <= top_k <= num_experts:
        raise HunyuanError(f"moe_topk={top_k} must be between 1 and num_experts={num_experts}")
    share = top_k / num_experts
    if math.isinf(noise_scale) and batch > 0:
        return math.sqrt(share)
    return optimal_adam_lr(batch * share, noise_scale) / optimal_adam_lr(batch, noise_scale)


def routing(config) -> tuple[int, int]:
    """(num_experts, top_k) of a model config with `num_experts` and `moe_topk` (or the
    `num_local_experts` / `num_experts_per_tok` spellings); per-layer top-k must be uniform."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    top_k = getattr(config, "moe_topk", None) or getattr(config, "num_experts_per_tok", None)
    if not num_experts or not top_k:
        raise HunyuanError(f"{type(config).__name__} names no num_experts / moe_topk: not a mixture of experts")
    if isinstance(top_k, (list, tuple)):
        if len(set(top_k)) != 1:
            raise HunyuanError(f"moe_topk differs between layers ({sorted(set(top_k))}): one expert LR cannot fit all")
        top_k = top_k[0]
    return int(num_experts), int(top_k)


def expert_lr_ratio_for(config, batch: float, noise_scale: float) -> float:
    """`expert_lr_ratio` for a model config (see `routing`)."""
    num_experts, top_k = routing(config)
    return expert_lr_ratio(num_experts, top_k, batch, noise_scale)
