"""The reward-model refresh between online rounds (posttrain/online/rm_refresh.py): each round re-fits a
live copy of the RM on fresh preference pairs, and the RM that scores the round moves toward the
re-fit one by one EMA update — each of its weights between the RM that scored the last round and the
re-fit one."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from posttrain.online.rm_refresh import RefreshConfig, RewardRefresher
from posttrain.pairs import check_pair
from rewards.reward_model import ClassifierScorer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def scorer(tokenizer):
    from transformers import AutoModelForSequenceClassification

    from posttrain.moe.tiny_moe import tiny_moe_config

    torch.manual_seed(0)
    config = tiny_moe_config(tokenizer, num_hidden_layers=1)
    config.num_labels = 1
    return ClassifierScorer(AutoModelForSequenceClassification.from_config(config), tokenizer, batch_size=4)


def pair(question: str, right: str, wrong: str) -> dict:
    return check_pair({"prompt": [{"role": "user", "content": question}], "chosen": right, "rejected": wrong})[0]


# two rounds' worth of pairs: round 1 trains on the first two, round 2 on the two it has not seen
PAIRS = [pair("What is 2 + 3?", "2 + 3 = 5.", "It is 7, I think."),
         pair("Name a primary colour.", "Red.", "Purple is primary."),
         pair("What is 10 / 2?", "10 / 2 = 5.", "Twenty."),
         pair("Spell 'cat' backwards.", "tac", "cta")]


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def margin(scorer, model, pairs) -> float:
    """Mean r(chosen) − r(rejected) of `model` on `pairs`."""
    prompts = [p["prompt"] for p in pairs] * 2
    answers = [p["chosen"][0]["content"] for p in pairs] + [p["rejected"][0]["content"] for p in pairs]
    with torch.no_grad():
        chosen, rejected = scorer.rewards(model, prompts, answers).chunk(2)
    return (chosen - rejected).mean().item()


def test_refresh_on_fresh_pairs_changes_the_rm_and_its_ema_lies_between_old_and_refit(scorer):
    decay = 0.6
    cfg = RefreshConfig(enabled=True, steps_per_round=2, batch_size=1, learning_rate=3e-3, ema_decay=decay)
    refresher = RewardRefresher(scorer, PAIRS, cfg)
    seen: list[str] = []
    rewards = scorer.rewards

    def recording(model, prompts, answers):
        if model is refresher.live:
            seen.extend(p[0]["content"] for p in prompts)
        return rewards(model, prompts, answers)

    scorer.rewards = recording
    for index, fresh in enumerate((PAIRS[:2], PAIRS[2:])):
        old = weights(scorer.model)  # the RM that scored the previous round
        old_margin = margin(scorer, scorer.model, fresh)
        seen.clear()
        refresher.refresh()
        assert set(seen) == {p["prompt"][0]["content"] for p in fresh}  # trained on this round's fresh pairs
        refit, smoothed = weights(refresher.live), weights(scorer.model)
        # the re-fit RM learned the fresh pairs, and the scoring RM moved with it
        assert margin(scorer, refresher.live, fresh) > old_margin + 0.05, index
        assert margin(scorer, scorer.model, fresh) > old_margin, index
        moved = [n for n in old if not torch.equal(refit[n], old[n])]
        assert len(moved) >= len(old) // 2, index
        for name in old:
            low, high = torch.minimum(old[name], refit[name]), torch.maximum(old[name], refit[name])
            slack = 1e-6 * (1 + high.abs())
            outside = ((smoothed[name] < low - slack) | (smoothed[name] > high + slack)).sum().item()
            assert outside == 0, f"round {index}: {outside} weights of {name} outside [old, re-fit]"
            torch.testing.assert_close(smoothed[name], decay * old[name] + (1 - decay) * refit[name])
            if name in moved:
                assert not torch.equal(smoothed[name], old[name]) and not torch.equal(smoothed[name], refit[name])
    assert refresher.ema.num_updates == 2  # one per round


def test_a_non_finite_refresh_loss_names_a_key_that_exists(scorer):
    from posttrain.trainers.dpo_config import DPORunConfig

    refresher = RewardRefresher(scorer, PAIRS, RefreshConfig(enabled=True, steps_per_round=1, batch_size=2))
    scorer.rewards = lambda model, prompts, answers: torch.full((len(prompts),), float("nan"), requires_grad=True)
    with pytest.raises(FloatingPointError) as raised:
        refresher.refresh()
    named = [word.rstrip(".,:") for word in str(raised.value).split() if "learning_rate" in word]
    assert named == ["rm_refresh.learning_rate"], str(raised.value)
    section, key = named[0].split(".")
    assert key in {f.name for f in dataclasses.fields(type(getattr(DPORunConfig(), section)))}
