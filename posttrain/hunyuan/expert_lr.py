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

The report gives ~0.31 for Hunyuan-Large (n = 16 routed experts, top-1, 1 shared expert) but not
B / B_noise. Solving the formula for 0.31 at k/n = 1/16 gives x = 0.96 / 3.69 = 0.260: the
shared expert's batch was about a quarter of the noise scale, close to the sqrt(k/n) = 0.25
limit. `REPORT_BATCH_OVER_NOISE` holds that value and is the default when the caller does not
know B_noise. With it, Hunyuan-A13B routing (64 routed experts, top-8, k/n = 1/8) gets 0.43.
Smollm2-moe's routing (top-1 of 4) gets 0.59.

In the trainers (posttrain/moe/recipe.py, posttrain/moe/param_groups.py): `moe.expert_lr_ratio: null`, the
default, uses `expert_lr_ratio_for(model.config, B, B_noise)` with B = the tokens per optimizer
step read from the trainer's arguments (per-device batch x accumulation x world size x tokens per
sequence) and B_noise = `moe.gradient_noise_scale_tokens`; when B_noise is not given the ratio
falls back to the report's operating point above, where B drops out. A number in
`moe.expert_lr_ratio` (the report's 0.31) is a fixed override. The trainer logs the value used.
"""
from __future__ import annotations

import math

from .configuration import HunyuanError

REPORT_EXPERT_LR_RATIO = 0.31  # the report's figure for Hunyuan-Large
REPORT_BATCH_OVER_NOISE = 0.96 / 3.69  # B / B_noise at which the formula gives 0.31 for top-1 of 16


def optimal_adam_lr(batch: float, noise_scale: float, peak_lr: float = 1.0) -> float:
    """Li et al.'s optimal Adam learning rate at batch size `batch` (same unit as `noise_scale`)."""
    if batch <= 0 or noise_scale <= 0:
        raise HunyuanError(f"batch ({batch}) and noise scale ({noise_scale}) must be > 0")
    return 2 * peak_lr / (math.sqrt(noise_scale / batch) + math.sqrt(batch / noise_scale))


def expert_lr_ratio(num_experts: int, top_k: int, batch_tokens: float | None = None,
                    noise_scale_tokens: float | None = None) -> float:
    """Routed experts' LR / shared expert's LR for top-`top_k` routing over `num_experts`.

    `batch_tokens` is the tokens per optimizer step (all devices, after accumulation) and
    `noise_scale_tokens` the gradient noise scale B_noise in tokens. Without both, B / B_noise is
    taken as `REPORT_BATCH_OVER_NOISE` (the value that reproduces the report's 0.31).
    """
    if num_experts < 1 or not 1 <= top_k <= num_experts:
        raise HunyuanError(f"moe_topk={top_k} must be between 1 and num_experts={num_experts}")
    if (batch_tokens is None) != (noise_scale_tokens is None):
        raise HunyuanError("give both batch_tokens and noise_scale_tokens, or neither")
    if batch_tokens is None:
        batch_tokens, noise_scale_tokens = REPORT_BATCH_OVER_NOISE, 1.0
    share = top_k / num_experts
    return (optimal_adam_lr(batch_tokens * share, noise_scale_tokens)
            / optimal_adam_lr(batch_tokens, noise_scale_tokens))


def expert_lr_ratio_for(config, batch_tokens: float | None = None, noise_scale_tokens: float | None = None) -> float:
    """`expert_lr_ratio` for a model config with `num_experts` and `moe_topk` (or the
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
    return expert_lr_ratio(int(num_experts), int(top_k), batch_tokens, noise_scale_tokens)
