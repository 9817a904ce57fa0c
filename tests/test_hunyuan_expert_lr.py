"""Expert-specific learning rate derived from the tokens each expert sees (posttrain/hunyuan/expert_lr.py)."""
from __future__ import annotations

import math

import pytest

from posttrain.hunyuan.configuration import HunYuanConfig, HunyuanError
from posttrain.hunyuan.expert_lr import (REPORT_EXPERT_LR_RATIO, expert_lr_ratio, expert_lr_ratio_for,
                                         optimal_adam_lr)


def test_reproduces_the_report_for_hunyuan_large():
    assert expert_lr_ratio(16, 1) == pytest.approx(REPORT_EXPERT_LR_RATIO, abs=5e-4)
    large = HunYuanConfig(num_experts=16, moe_topk=1, use_mixed_mlp_moe=True, num_shared_expert=1)
    assert expert_lr_ratio_for(large) == pytest.approx(0.31, abs=5e-4)


def test_a13b_routing_gets_its_own_ratio():
    a13b = HunYuanConfig(num_hidden_layers=2, num_experts=64, moe_topk=[8, 8])
    assert expert_lr_ratio_for(a13b) == pytest.approx(0.4315, abs=1e-3)


def test_formula_limits():
    assert optimal_adam_lr(7.0, 7.0, peak_lr=3e-4) == pytest.approx(3e-4)  # the peak is at B = B_noise
    assert expert_lr_ratio(8, 8) == 1.0  # every expert sees every token
    assert expert_lr_ratio(16, 1, 1e3, 1e9) == pytest.approx(math.sqrt(1 / 16), rel=1e-4)  # square-root rule
    assert expert_lr_ratio(16, 1, 1e9, 1e3) == pytest.approx(4.0, rel=1e-4)  # far past the noise scale
    assert expert_lr_ratio(16, 1, 4e3, 1e3) == pytest.approx(1.0)  # B * sqrt(k/n) == B_noise


def test_bad_routing_names_the_key():
    with pytest.raises(HunyuanError, match="moe_topk=5"):
        expert_lr_ratio(4, 5)
    with pytest.raises(HunyuanError, match="differs between layers"):
        expert_lr_ratio_for(HunYuanConfig(num_hidden_layers=2, num_experts=8, moe_topk=[1, 2]))
    with pytest.raises(HunyuanError, match="both"):
        expert_lr_ratio(16, 1, batch_tokens=1e6)
