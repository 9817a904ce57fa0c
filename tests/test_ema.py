"""EMA of weights (WeightEMA, EMACallback) and of reward scores (RewardNormalizer), checked
against their formulas after k updates. The DPO-level EMAs (policy export, TR-DPO reference)
are checked on real training runs in test_dpo.py, the reward-model refresh EMA in test_rewards.py."""
from __future__ import annotations

import math
import types

import pytest
import torch

from posttrain.ema import EMA_STATE_FILE, EMACallback, EMAConfig, WeightEMA
from rewards.normalize import RewardNormalizer


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1, bias=False))


def set_params(net, value: float):
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.fill_(value + i)


def expected_ema(history: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """θ̄_k = d^k θ_0 + Σ_{i=1..k} (1 − d) d^{k−i} θ_i, written out (not the recursion)."""
    k = len(history) - 1
    return {name: decay ** k * history[0][name] + sum((1 - decay) * decay ** (k - i) * history[i][name]
                                                        for i in range(1, k + 1))
            for name in history[0]}


def snapshot(net) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def test_weight_ema_follows_its_formula_after_k_updates():
    net = tiny_net()
    ema = WeightEMA(net, decay=0.75)
    history = [snapshot(net)]
    for step, value in enumerate([1.0, -2.0, 0.5, 3.0], start=1):
        set_params(net, value)
        ema.update(net)
        history.append(snapshot(net))
    assert ema.num_updates == 4
    for name, tensor in expected_ema(history, 0.75).items():
        torch.testing.assert_close(ema.shadow[name], tensor)


def test_copy_to_and_state_round_trip():
    net = tiny_net()
    ema = WeightEMA(net, decay=0.5)
    set_params(net, 4.0)
    ema.update(net)
    other = WeightEMA(tiny_net(), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 1
    target = tiny_net()
    other.copy_to(target)
    for name, param in target.named_parameters():
        torch.testing.assert_close(param.detach(), ema.shadow[name])


def test_load_state_with_missing_parameters_is_a_clear_error():
    ema = WeightEMA(tiny_net(), decay=0.5)
    with pytest.raises(ValueError, match="lacks 1 parameters"):
        ema.load_state_dict({"decay": 0.5, "num_updates": 0,
                             "shadow": {k: v for k, v in list(ema.shadow.items())[1:]}})


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_decay_outside_range_is_rejected(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(tiny_net(), decay)
    with pytest.raises(ValueError, match="decay"):
        EMAConfig(decay=decay)


def test_callback_updates_every_n_steps_and_saves_with_checkpoints(tmp_path):
    net = tiny_net()
    callback = EMACallback(EMAConfig(decay=0.5, update_every=2))
    args = types.SimpleNamespace(output_dir=str(tmp_path))
    state = types.SimpleNamespace(global_step=0, is_world_process_zero=True)
    callback.on_train_begin(args, state, None, model=net)
    history = [snapshot(net)]
    for step in range(1, 5):
        set_params(net, float(step))
        state.global_step = step
        callback.on_step_end(args, state, None, model=net)
        if step % 2 == 0:
            history.append(snapshot(net))
    assert callback.ema.num_updates == 2  # steps 2 and 4 only
    for name, tensor in expected_ema(history, 0.5).items():
        torch.testing.assert_close(callback.ema.shadow[name], tensor)

    (tmp_path / "checkpoint-4").mkdir()
    callback.on_save(args, state, None)
    assert (tmp_path / "checkpoint-4" / EMA_STATE_FILE).is_file()
    resumed = EMACallback(EMAConfig(decay=0.5))
    assert resumed.restore(str(tmp_path / "checkpoint-4"), tiny_net())
    assert resumed.ema.num_updates == 2
    torch.testing.assert_close(resumed.ema.shadow, callback.ema.shadow)
    assert not EMACallback(EMAConfig()).restore(str(tmp_path), tiny_net())  # no state there


# --------------------------------------------------------------------------- reward normaliser


def closed_form_moments(batches: list[list[float]], beta: float) -> tuple[float, float]:
    """Bias-corrected EMAs of batch means of x and x², over batches with a finite score."""
    means, squares = [], []
    for batch in batches:
        finite = [x for x in batch if math.isfinite(x)]
        if finite:
            means.append(sum(finite) / len(finite))
            squares.append(sum(x * x for x in finite) / len(finite))
    k = len(means)
    weights = [(1 - beta) * beta ** (k - 1 - i) for i in range(k)]
    norm = 1 - beta ** k
    mean = sum(w * m for w, m in zip(weights, means)) / norm
    second = sum(w * s for w, s in zip(weights, squares)) / norm
    return mean, second - mean ** 2


def test_normalizer_running_statistics_are_right():
    batches = [[1.0, 3.0], [math.nan, 2.0, 6.0], [], [math.nan], [-1.0, 0.0, 4.0, 5.0]]
    normalizer = RewardNormalizer(momentum=0.8)
    for batch in batches:
        normalizer.update(batch)
    mean, var = closed_form_moments(batches, 0.8)
    assert normalizer.steps == 3  # the empty and all-NaN batches are not counted
    assert normalizer.count == 8
    assert normalizer.mean == pytest.approx(mean)
    assert normalizer.var == pytest.approx(var)
    assert normalizer.std == pytest.approx(math.sqrt(var + normalizer.eps))


def test_first_batch_gives_exactly_its_own_mean_and_variance():
    normalizer = RewardNormalizer(momentum=0.9)
    normalizer.update([2.0, 4.0, 6.0])
    assert normalizer.mean == pytest.approx(4.0)
    assert normalizer.var == pytest.approx(8.0 / 3.0)  # population variance
    z = normalizer.normalize([4.0, 6.0, math.nan])
    assert z[0] == pytest.approx(0.0)
    assert z[1] == pytest.approx(2.0 / math.sqrt(8.0 / 3.0 + 1e-6))
    assert math.isnan(z[2])


def test_all_tied_scores_normalise_to_zero_not_nan():
    normalizer = RewardNormalizer()
    normalizer.update([0.7, 0.7, 0.7])
    assert normalizer.var == pytest.approx(0.0, abs=1e-12)
    assert normalizer.normalize([0.7, 0.7]) == [pytest.approx(0.0, abs=1e-6)] * 2


def test_normalizer_state_round_trip():
    normalizer = RewardNormalizer(momentum=0.5)
    normalizer.update([1.0, 2.0])
    normalizer.update([5.0])
    restored = RewardNormalizer()
    restored.load_state_dict(normalizer.state_dict())
    assert (restored.mean, restored.var, restored.steps, restored.count) == \
        (normalizer.mean, normalizer.var, normalizer.steps, normalizer.count)
