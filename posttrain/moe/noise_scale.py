"""The gradient noise scale of a run, measured on the run itself (McCandlish et al. 2018, "An Empirical
Model of Large-Batch Training", arXiv 1812.06162).

With G the true gradient and Σ the covariance of one example's gradient, the gradient g_B of a batch of
B examples has E|g_B|² = |G|² + tr(Σ)/B, and the "simple" noise scale is

    B_simple = tr(Σ) / |G|²,

the batch size at which the gradient's noise equals its signal (the paper's B_noise, up to the
curvature terms it drops). Its two-batch-size estimator (Appendix A.1): from the squared norms of
gradients of small batches (B_small examples) and of big ones (B_big),

    |G|²  ≈ (B_big·|g_big|² − B_small·|g_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|g_small|² − |g_big|²) / (1/B_small − 1/B_big)

both unbiased. Each estimate from one pair is noisy (the |G|² estimate can even come out negative),
so — as the paper does — the squared norms are averaged over several big batches first and the ratio
is taken last (`NoiseScale`).

`measure_noise_scale` runs it on a model: the gradient of each small batch (one backward), the big
batch's gradient as the mean of `group` small ones (an accumulated float32 copy of the gradients),
groups spread over the ranks of a process group (each rank its own groups; three sums all-reduced at
the end). Examples count as equal: the loss of a small batch must be its mean over examples (or over
tokens of rows of about equal length, as packed SFT rows are).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class NoiseScale:
    """Averaged squared gradient norms at two batch sizes, and what they estimate."""

    small_batch: float  # B_small, examples (rows) per small batch
    big_batch: float  # B_big
    small_sq: float  # mean |g_small|² over the small batches
    big_sq: float  # mean |g_big|² over the big batches
    big_batches: int = 1  # how many big batches the means cover

    def __post_init__(self) -> None:
        if not 0 < self.small_batch < self.big_batch:
            raise ValueError(f"need 0 < B_small < B_big, got {self.small_batch} and {self.big_batch}")

    @property
    def gradient_sq(self) -> float:
        """Unbiased estimate of |G|²."""
        return (self.big_batch * self.big_sq - self.small_batch * self.small_sq) / (self.big_batch - self.small_batch)

    @property
    def trace_sigma(self) -> float:
        """Unbiased estimate of tr(Σ), the per-example gradient variance summed over parameters."""
        return (self.small_sq - self.big_sq) / (1.0 / self.small_batch - 1.0 / self.big_batch)

    @property
    def b_simple(self) -> float:
        """tr(Σ)/|G|² in examples; inf when the |G|² estimate is not positive (the signal is below what
        this many batches can resolve: the noise scale is beyond the measurement)."""
        signal = self.gradient_sq
        return self.trace_sigma / signal if signal > 0 else math.inf

    def describe(self) -> str:
        return (f"|G|² = {self.gradient_sq:.4g}, tr(Σ) = {self.trace_sigma:.4g} from {self.big_batches} big batches "
                f"of {self.big_batch:g} rows and their small batches of {self.small_batch:g}")


def noise_scale_from_batches(small_sq: Sequence[float], big_sq: Sequence[float], small_batch: float,
                             group: int) -> NoiseScale:
    """The estimate from the squared norms of small-batch gradients and of the big batches they form
    (`group` small batches each)."""
    if not small_sq or not big_sq:
        raise ValueError("no gradients measured")
    return NoiseScale(small_batch, small_batch * group, sum(small_sq) / len(small_sq), sum(big_sq) / len(big_sq),
                      len(big_sq))


def measure_noise_scale(model, small_batches: Sequence, loss_of: Callable, rows_per_batch: int, group: int = 4,
                        process_group: bool = True) -> NoiseScale:
    """Measure B_simple on `model` at its current weights.

    `small_batches` are the inputs of small batches of `rows_per_batch` rows each (consecutive runs of
    `group` of them form a big batch; an incomplete last group is left out), `loss_of(model, batch)`
    returns a batch's mean loss. With a process group (`process_group` and torch.distributed
    initialised), rank r measures big batches r, r + world, ...: give every rank the same list, with a
    multiple of world size groups so every rank runs as many backward passes (losses that
    communicate, e.g. to gather metrics, stay in step). The gradients are left zeroed (None)."""
    import torch
    import torch.distributed as dist

    if group < 2:
        raise ValueError(f"a big batch needs at least 2 small ones, got group={group}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    distributed = process_group and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    groups = len(small_batches) // group
    mine = range(rank, groups, world)
    small_sq, big_sq = [], []
    for index in mine:
        total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        for batch in small_batches[index * group:(index + 1) * group]:
            model.zero_grad(set_to_none=True)
            loss_of(model, batch).backward()
            norm = 0.0
            for acc, p in zip(total, params):
                if p.grad is not None:  # an expert no token of this batch reached has no gradient: zero
                    grad = p.grad.detach().float()
                    norm += grad.square().sum().item()
                    acc.add_(grad)
            small_sq.append(norm)
        big_sq.append(sum((acc / group).square().sum().item() for acc in total))
        del total
    model.zero_grad(set_to_none=True)
    if distributed:
        device = params[0].device if params[0].device.type != "meta" else torch.device("cpu")
        sums = torch.tensor([sum(small_sq), float(len(small_sq)), sum(big_sq), float(len(big_sq))],
                            dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        small_total, small_count, big_total, big_count = sums.tolist()
        if not big_count:
            raise ValueError("no gradients measured")
        return NoiseScale(rows_per_batch, rows_per_batch * group, small_total / small_count, big_total / big_count,
                          int(big_count))
    return noise_scale_from_batches(small_sq, big_sq, rows_per_batch, group)
