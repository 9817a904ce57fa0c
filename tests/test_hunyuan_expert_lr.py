"""Expert-specific learning rate from the tokens each expert sees and the gradient noise scale
(posttrain/hunyuan/expert_lr.py). The formula's limits are checked here; where B_noise comes from (the
run's own measurement) in tests/test_noise_scale.py. The report's 0.31 is Hunyuan-Large's own figure,
kept with its source and fixed in its recipe — no default is back-solved from it."""
from __future__ import annotations

import math

import pytest

from datagen.config_loader import load_config
from posttrain.hunyuan.configuration import HunYuanConfig, HunyuanError
from posttrain.hunyuan import expert_lr
from posttrain.hunyuan.expert_lr import (REPORT_EXPERT_LR_RATIO, REPORT_EXPERT_LR_SOURCE, expert_lr_ratio,
                                         expert_lr_ratio_for, optimal_adam_lr)


def test_the_reports_figure_is_hunyuan_larges_own_with_its_source():
    from posttrain.trainers.sft_config import SFTRunConfig

    assert REPORT_EXPERT_LR_RATIO == 0.31 and "2411.02265" in REPORT_EXPERT_LR_SOURCE
    assert not hasattr(expert_lr, "REPORT_BATCH_OVER_NOISE")  # no operating point back-solved from it
    recipe = load_config(SFTRunConfig, "configs/posttrain/sft_hunyuan_large.yaml", [])
    assert recipe.moe.expert_lr_ratio == REPORT_EXPERT_LR_RATIO


def test_the_ratio_needs_the_batch_and_the_noise_scale():
    with pytest.raises(TypeError):
        expert_lr_ratio(16, 1)  # no default operating point
    large = HunYuanConfig(num_experts=16, moe_topk=1, use_mixed_mlp_moe=True, num_shared_expert=1)
    a13b = HunYuanConfig(num_hidden_layers=2, num_experts=64, moe_topk=[8, 8])
    # the same B / B_noise: fewer tokens per expert (1/16 vs 1/8) -> a smaller ratio
    assert expert_lr_ratio_for(large, 1e3, 4e3) < expert_lr_ratio_for(a13b, 1e3, 4e3) < 1.0


def test_formula_limits():
    assert optimal_adam_lr(7.0, 7.0, peak_lr=3e-4) == pytest.approx(3e-4)  # the peak is at B = B_noise
    assert optimal_adam_lr(7.0, 7.0) > max(optimal_adam_lr(6.0, 7.0), optimal_adam_lr(8.0, 7.0))
    assert expert_lr_ratio(8, 8, 1e3, 1e3) == 1.0  # every expert sees every token
    assert expert_lr_ratio(16, 1, 1e3, 1e9) == pytest.approx(math.sqrt(1 / 16), rel=1e-4)  # square-root rule
    assert expert_lr_ratio(16, 1, 64, math.inf) == pytest.approx(0.25)  # noise beyond measurement: the same limit
    assert expert_lr_ratio(16, 1, 1e9, 1e3) == pytest.approx(4.0, rel=1e-4)  # far past the noise scale
    assert expert_lr_ratio(16, 1, 4e3, 1e3) == pytest.approx(1.0)  # B * sqrt(k/n) == B_noise
    # only B / B_noise matters: tokens or rows, as long as both are in the same unit
    assert expert_lr_ratio(4, 1, 2, 3) == pytest.approx(expert_lr_ratio(4, 1, 2 * 512, 3 * 512))


def test_bad_routing_names_the_key():
    with pytest.raises(HunyuanError, match="moe_topk=5"):
        expert_lr_ratio(4, 5, 1.0, 1.0)
    with pytest.raises(HunyuanError, match="differs between layers"):
        expert_lr_ratio_for(HunYuanConfig(num_hidden_layers=2, num_experts=8, moe_topk=[1, 2]), 1.0, 1.0)
    with pytest.raises(HunyuanError, match="must be > 0"):
        expert_lr_ratio(16, 1, 0.0, 1e6)
