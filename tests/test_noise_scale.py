"""The gradient noise scale B_simple = tr(Σ)/|G|² (posttrain/moe/noise_scale.py), checked against what
it should recover rather than against its own formula:

- per-example gradients drawn from a distribution with a known mean G and covariance Σ: the
  two-batch-size estimator recovers |G|², tr(Σ) and their ratio;
- a linear least-squares model whose per-example gradients (w·x − y)·x are written out by hand: the
  measurement through autograd (small-batch backwards, the big batch's mean gradient) recovers the
  noise scale of that finite data set, computed from the hand-made gradients;
- a training run: the measured B_noise sets the experts' LR (and the card's recipe), is logged, and
  leaves no trace in the training itself (the same run with that B_noise given ends bit for bit alike).
"""
from __future__ import annotations

import math

import pytest
import torch

from posttrain.hunyuan.expert_lr import expert_lr_ratio
from posttrain.moe.noise_scale import NoiseScale, measure_noise_scale, noise_scale_from_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_estimator_recovers_a_known_gradient_and_covariance():
    generator = torch.Generator().manual_seed(0)
    dim, small, group, big_batches = 40, 4, 4, 3000
    mean = torch.randn(dim, generator=generator, dtype=torch.float64)
    mean *= 0.5 / mean.norm()  # |G|² = 0.25
    scales = torch.linspace(0.05, 0.5, dim, dtype=torch.float64)  # Σ = A Aᵀ with A = diag(scales) + a low-rank part
    low_rank = 0.1 * torch.randn(dim, 3, generator=generator, dtype=torch.float64)
    cov = torch.diag(scales ** 2) + low_rank @ low_rank.T
    factor = torch.linalg.cholesky(cov)
    true_trace, true_signal = cov.trace().item(), mean.square().sum().item()

    small_sq, big_sq = [], []
    for _ in range(big_batches):
        examples = mean + torch.randn(group * small, dim, generator=generator, dtype=torch.float64) @ factor.T
        smalls = examples.view(group, small, dim).mean(dim=1)  # each small batch's gradient
        small_sq += smalls.square().sum(dim=1).tolist()
        big_sq.append(smalls.mean(dim=0).square().sum().item())
    estimate = noise_scale_from_batches(small_sq, big_sq, small, group)

    assert (estimate.small_batch, estimate.big_batch, estimate.big_batches) == (4, 16, big_batches)
    assert estimate.gradient_sq == pytest.approx(true_signal, rel=0.05)
    assert estimate.trace_sigma == pytest.approx(true_trace, rel=0.03)
    assert estimate.b_simple == pytest.approx(true_trace / true_signal, rel=0.07)  # ~8.5 examples


def test_a_signal_below_the_noise_gives_an_infinite_noise_scale_and_the_square_root_rule():
    noisy = NoiseScale(small_batch=2, big_batch=8, small_sq=1.0, big_sq=0.2)  # |G|² estimate < 0
    assert noisy.gradient_sq < 0 and math.isinf(noisy.b_simple)
    assert expert_lr_ratio(16, 1, 64, noisy.b_simple) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="B_small < B_big"):
        NoiseScale(small_batch=4, big_batch=4, small_sq=1.0, big_sq=1.0)


class LeastSquares(torch.nn.Module):
    """loss = mean over rows of ½ (w·x − y)²; an unused parameter never gets a gradient."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))

    def forward(self, x, y):
        return 0.5 * ((x @ self.w - y) ** 2).mean()


def test_the_measurement_on_a_model_recovers_the_noise_scale_of_hand_computed_gradients():
    generator = torch.Generator().manual_seed(1)
    rows, dim, small, group = 256, 6, 2, 4
    x = torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    y = x @ torch.linspace(-1, 1, dim, dtype=torch.float64) + 0.7 * torch.randn(rows, generator=generator,
                                                                                 dtype=torch.float64)
    model = LeastSquares(dim)
    with torch.no_grad():
        model.w.copy_(torch.full((dim,), 0.3, dtype=torch.float64))
    # by hand: the gradient of row i is (w·x_i − y_i) x_i; G is their mean, Σ their (population) covariance
    per_row = (x @ model.w.detach() - y)[:, None] * x
    true_mean = per_row.mean(dim=0)
    true_trace = (per_row - true_mean).square().sum(dim=1).mean().item()
    true_noise = true_trace / true_mean.square().sum().item()

    picks = torch.randint(rows, (3000 * group, small), generator=generator)  # iid rows, with replacement
    batches = [(x[idx], y[idx]) for idx in picks]
    measured = measure_noise_scale(model, batches, lambda net, batch: net(*batch), small, group)

    assert measured.big_batches == 3000 and measured.big_batch == small * group
    assert measured.trace_sigma == pytest.approx(true_trace, rel=0.05)
    assert measured.gradient_sq == pytest.approx(true_mean.square().sum().item(), rel=0.1)
    assert measured.b_simple == pytest.approx(true_noise, rel=0.1)
    assert all(p.grad is None for p in model.parameters())  # left zeroed


TWO_RANKS = """
import json, os, sys
from pathlib import Path
import torch, torch.distributed as dist
sys.path.insert(0, os.path.dirname(__file__))
from noise_toy import toy_measurement
dist.init_process_group("gloo")
measured = toy_measurement()
Path(__file__).with_name(f"rank-{dist.get_rank()}.json").write_text(json.dumps(
    [measured.small_sq, measured.big_sq, measured.big_batches, measured.b_simple]))
dist.barrier()
dist.destroy_process_group()
"""

TOY = """
import torch
from posttrain.moe.noise_scale import measure_noise_scale


def toy_measurement(process_group=True):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(64, 5, generator=generator, dtype=torch.float64)
    y = x.sum(dim=1) + torch.randn(64, generator=generator, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    model = torch.nn.ParameterList([w])
    picks = torch.randint(64, (24, 2), generator=generator)
    batches = [(x[i], y[i]) for i in picks]
    loss = lambda net, batch: 0.5 * ((batch[0] @ net[0] - batch[1]) ** 2).mean()
    return measure_noise_scale(model, batches, loss, 2, group=4, process_group=process_group)
"""


def test_ranks_split_the_big_batches_and_agree_with_one_process(tmp_path):
    """2 ranks over gloo (torchrun, as configs/accelerate/ddp_cpu.yaml starts them): each measures half of
    the 6 big batches, and the all-reduced estimate is the one process's over all 6, on every rank."""
    import json
    import sys

    from test_multiprocess_training import launch, with_config

    (tmp_path / "noise_toy.py").write_text(TOY)
    (tmp_path / "two_ranks.py").write_text(TWO_RANKS)
    run = launch(with_config("ddp_cpu.yaml"), str(tmp_path / "two_ranks.py"), [])
    assert run.returncode == 0, run.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        from noise_toy import toy_measurement

        alone = toy_measurement(process_group=False)
    finally:
        sys.path.remove(str(tmp_path))
    assert alone.big_batches == 6
    for rank in (0, 1):
        small_sq, big_sq, big_batches, b_simple = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert big_batches == 6
        assert (small_sq, big_sq, b_simple) == pytest.approx((alone.small_sq, alone.big_sq, alone.b_simple), rel=1e-12)


def test_a_run_measures_its_noise_scale_derives_the_expert_lr_and_is_otherwise_unchanged(tmp_path, tokenizer):
    from posttrain.moe.recipe import MoEConfig
    from posttrain.trainers.sft_trainer import train
    from test_hunyuan_training import native_policy, save_chats, sft_config

    chats = save_chats(tmp_path / "chats", n=48)

    def run(name, **moe):
        (tmp_path / name).mkdir()
        cfg = sft_config(tmp_path / name, dataset=chats, moe=MoEConfig(router_aux_loss_coef=0.01, attention_dropout=0.1,
                                                                      hidden_dropout=0.2, **moe))
        trainer, _ = train(cfg, model=native_policy(tokenizer), tokenizer=tokenizer)
        return cfg, trainer

    cfg, trainer = run("measured", noise_scale_batches=8)
    measured = trainer.noise_scale
    assert measured is not None and measured.big_batches == 2 and measured.small_batch == 1  # per-row gradients
    rows = 2  # per_device_train_batch_size 2 x 1 accumulation x 1 process
    expected = expert_lr_ratio(4, 1, rows, measured.b_simple)  # top-1 of 4 routed experts
    assert cfg.moe.expert_lr_ratio == pytest.approx(expected)
    first = next(h for h in trainer.state.log_history if "loss" in h)
    assert first["noise_scale/b_simple_rows"] == pytest.approx(measured.b_simple)
    assert first["noise_scale/expert_lr_ratio"] == pytest.approx(expected)
    assert first["lr/experts"] == pytest.approx(expected * first["lr/shared_expert"])
    assert cfg.moe.gradient_noise_scale_tokens > 0
    assert cfg.moe.gradient_noise_scale_tokens == pytest.approx(first["noise_scale/b_simple_tokens"])

    given, again = run("given", gradient_noise_scale_tokens=cfg.moe.gradient_noise_scale_tokens)
    assert again.noise_scale is None and given.moe.expert_lr_ratio == pytest.approx(expected)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses == [h["loss"] for h in again.state.log_history if "loss" in h]
    for (name, p), q in zip(trainer.model.named_parameters(), again.model.parameters()):
        assert torch.equal(p, q), name


def test_without_a_noise_scale_the_derived_ratio_is_refused_not_guessed(tokenizer):
    from datagen.config_loader import ConfigError
    from posttrain.moe.recipe import MoEConfig, derive_expert_lr_ratio
    from test_hunyuan_training import native_policy

    with pytest.raises(ConfigError, match="gradient noise scale is unknown"):
        derive_expert_lr_ratio(MoEConfig(noise_scale_batches=0), native_policy(tokenizer), batch_tokens=4096)


def test_a_resumed_run_takes_the_ratio_back_from_its_checkpoint_instead_of_measuring(tmp_path, tokenizer):
    from posttrain.moe.recipe import MoEConfig
    from posttrain.trainers.sft_trainer import train
    from test_hunyuan_training import native_policy, save_chats, sft_config

    chats = save_chats(tmp_path / "chats", n=48)

    def run(max_steps):
        cfg = sft_config(tmp_path, dataset=chats, max_steps=max_steps, save_steps=2,
                         moe=MoEConfig(router_aux_loss_coef=0.01))
        return cfg, train(cfg, model=native_policy(tokenizer), tokenizer=tokenizer)[0]

    first_cfg, first = run(max_steps=2)  # measures, saves checkpoint-2
    assert first.noise_scale is not None
    resumed_cfg, resumed = run(max_steps=3)  # resumes from checkpoint-2
    assert resumed.noise_scale is None  # not measured again (the weights are no longer the start's)
    assert resumed_cfg.moe.expert_lr_ratio == pytest.approx(first_cfg.moe.expert_lr_ratio)
    last = [h for h in resumed.state.log_history if "loss" in h][-1]
    assert last["lr/experts"] == pytest.approx(first_cfg.moe.expert_lr_ratio * last["lr/shared_expert"])


def test_the_measurement_depends_on_the_model_and_data_not_on_the_per_device_batch(tmp_path, tokenizer):
    """Per-row gradients of the same first rows: a launch with 4 rows per device measures what one with 2
    does (and so does each rank of a process group, test above); only B, the rows per step, differs."""
    from posttrain.moe.recipe import MoEConfig
    from posttrain.trainers.sft_trainer import build_trainer
    from test_hunyuan_training import native_policy, save_chats, sft_config

    chats = save_chats(tmp_path / "chats", n=48)
    measured = {}
    for per_device in (2, 4):
        cfg = sft_config(tmp_path / str(per_device), dataset=chats, per_device_train_batch_size=per_device,
                         moe=MoEConfig(router_aux_loss_coef=0.01))
        trainer, _ = build_trainer(cfg, model=native_policy(tokenizer), tokenizer=tokenizer)
        trainer.create_optimizer()
        measured[per_device] = (trainer.noise_scale, cfg.moe.expert_lr_ratio)
    (two, ratio_two), (four, ratio_four) = measured[2], measured[4]
    assert two.b_simple == pytest.approx(four.b_simple, rel=1e-9)
    assert ratio_two == pytest.approx(expert_lr_ratio(4, 1, 2, two.b_simple))
    assert ratio_four == pytest.approx(expert_lr_ratio(4, 1, 4, two.b_simple))
