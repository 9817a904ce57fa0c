"""Token-to-expert routing of Hunyuan-Large: top-k gating, expert capacity, recycle routing.

`route` turns router logits into, for every token, `k` expert choices and their combine
weights. The semantics follow Tencent's gating (github Tencent/Tencent-Hunyuan-Large,
`models/modeling_hunyuan.py`) and the report (arXiv 2411.02265, section 2.2):

- probabilities are the softmax of the logits in float32;
- top-1 weighs its expert by the raw probability (so the router learns from the LM loss),
  top-k > 1 divides the k probabilities by their sum;
- with a capacity (training with `moe_drop_tokens`), each expert takes at most `capacity`
  choices; earlier choice ranks win over later ones (every token's first choice before any
  second choice), then earlier tokens. A choice over capacity is dropped (expert index
  `num_experts`, weight 0), or with `recycle` sent to a random expert that still has room
  and weighted by that expert's probability (the report's recycle routing);
- every choice ends up kept, recycled or dropped: `RoutingStats` counts them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class RoutingStats:
    """What one routing call did, for logging the expert load (detached)."""

    load: torch.Tensor  # [num_experts] choices each expert processes
    demand: torch.Tensor  # [num_experts] choices the router made for each expert, before capacity
    kept: int  # choices that went to their first-choice expert
    recycled: int  # choices moved to another expert with room
    dropped: int  # choices no expert processes


@dataclass
class Routing:
    experts: torch.Tensor  # [tokens, k] expert index per choice; num_experts marks a dropped choice
    weights: torch.Tensor  # [tokens, k] float32 combine weights (0 for dropped choices)
    stats: RoutingStats


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """Choices one expert may take: ceil(capacity_factor * tokens * k / experts)."""
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def route(logits: torch.Tensor, top_k: int, capacity: int | None = None, recycle: bool = False) -> Routing:
    """Route `logits` [tokens, experts]; `capacity=None` is dropless (inference)."""
    num_tokens, num_experts = logits.shape
    probs = F.softmax(logits.float(), dim=-1)
    top_probs, experts = probs.topk(top_k, dim=-1)
    norm = top_probs.sum(-1, keepdim=True) if top_k > 1 else torch.ones_like(top_probs[:, :1])
    demand = torch.bincount(experts.reshape(-1), minlength=num_experts).detach()
    if capacity is None:
        return Routing(experts, top_probs / norm, RoutingStats(demand, demand, experts.numel(), 0, 0))

    # rank-major order: all first choices, then all second choices, ...
    flat = experts.t().reshape(-1)
    one_hot = F.one_hot(flat, num_experts)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1  # place in its expert's queue
    keep = position < capacity
    kept = int(keep.sum())
    recycled = 0
    if recycle and kept < flat.numel():
        flat, keep, recycled = _recycle(flat, keep, capacity, num_experts)
    flat = torch.where(keep, flat, torch.full_like(flat, num_experts))
    routed = flat.view(top_k, num_tokens).t()
    weights = probs.gather(-1, routed.clamp(max=num_experts - 1)) / norm
    weights = weights * (routed < num_experts)
    load = torch.bincount(flat, minlength=num_experts + 1)[:num_experts]
    dropped = flat.numel() - kept - recycled
    return Routing(routed, weights, RoutingStats(load.detach(), demand, kept, recycled, dropped))


def _recycle(flat: torch.Tensor, keep: torch.Tensor, capacity: int, num_experts: int):
    """Give dropped choices the free places of experts under capacity, in random order."""
    load = torch.bincount(flat[keep], minlength=num_experts)
    room = (capacity - load).clamp(min=0)
    free = torch.repeat_interleave(torch.arange(num_experts, device=flat.device), room)
    free = free[torch.randperm(free.numel(), device=flat.device)]
    dropped = (~keep).nonzero().squeeze(1)
    n = min(dropped.numel(), free.numel())
    flat = flat.clone()
    keep = keep.clone()
    flat[dropped[:n]] = free[:n]
    keep[dropped[:n]] = True
    return flat, keep, n


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The Switch-Transformer balancing loss over all layers: num_experts * sum_e f_e * P_e.

    f_e: share of (non-padding) tokens routed to expert e (by the first-choice top-k, before
    capacity), P_e: mean router probability of e. Equal to Tencent's `l_aux` for top-1 and the
    same formula TRL and transformers' Mixtral use, so all three agree on its value.
    """
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    return load_balancing_loss_func(tuple(router_logits), num_experts, top_k, attention_mask)
