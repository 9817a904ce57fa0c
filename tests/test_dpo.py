"""posttrain/online/ and posttrain/dpo*.py: best/worst-of-N selection, skips, offline/online mixing,
the router aux loss in the DPO loss, and real tiny-MoE runs (parameters change, policy EMA and
TR-DPO reference follow their formulas, the EMA is exported, a killed run resumes)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import TrainerCallback

from datagen.inference.base import Completion
from fakes import FakeLLM
from datagen.config_loader import ConfigError
from posttrain.online import round_state
from posttrain.trainers import dpo_trainer
from posttrain.trainers.dpo_config import DPORunConfig
from posttrain.ema import EMAConfig
from posttrain.moe.recipe import MoEConfig, prepare_moe_model
from posttrain.online.online_config import OnlineConfig
from posttrain.online.mixing import Cursor, mix_pairs
from posttrain.online.rounds import OnlineRounds
from posttrain.online.sampling import sample_with_llm
from posttrain.online.selection import select_pairs
from rewards.normalize import RewardNormalizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Q = [{"role": "user", "content": "What is 2 + 3?"}]


def tiny_policy(tokenizer, coef=0.01):
    from posttrain.moe.tiny_moe import build_tiny_moe_model

    model = build_tiny_moe_model(tokenizer, seed=0, num_hidden_layers=1)
    prepare_moe_model(model, MoEConfig(router_aux_loss_coef=coef))
    return model


class LengthScorer:
    """Reward = answer length; NaN for answers containing 'nan'."""

    name = "length"

    def score(self, prompts, responses, references=None):
        return [math.nan if "nan" in r else float(len(r)) for r in responses]


def offline_pairs(n=6):
    return [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "chosen": [{"role": "assistant", "content": str(2 * i)}],
             "rejected": [{"role": "assistant", "content": "No idea."}], "reference": str(2 * i)} for i in range(n)]


# --------------------------------------------------------------------------- selection


def select(answers, raw, margin=0.0):
    normalizer = RewardNormalizer()
    normalizer.update(s for group in raw for s in group)
    normalized = [normalizer.normalize(group) for group in raw]
    return select_pairs([Q] * len(answers), [""] * len(answers), answers, raw, normalized, margin)


def test_pairs_are_the_argmax_and_argmin_of_the_reward():
    result = select([["b", "a", "c", "d"], ["x", "y", "z"]], [[2.0, 9.0, -1.0, 3.0], [0.5, 0.1, 0.7]])
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in result.pairs] == [("a", "c"),
                                                                                                 ("z", "y")]
    assert (result.pairs[0]["score_chosen"], result.pairs[0]["score_rejected"]) == (9.0, -1.0)
    assert not result.skipped


def test_skipped_prompts_are_counted_by_reason():
    answers = [["a", "b", "c"], ["a", "b"], ["same", "same"], ["", "x", "y"], ["p", "q"], ["u", "v"]]
    raw = [[1.0, 1.0, 1.0], [math.nan, 2.0], [1.0, 2.0], [5.0, math.nan, 1.0], [1.0, 1.1], [0.0, 9.0]]
    result = select(answers, raw, margin=0.5)
    assert dict(result.skipped) == {"all_tied": 1, "too_few_scored": 2, "identical_responses": 1,
                                    "below_margin": 1}
    assert [p["chosen"][0]["content"] for p in result.pairs] == ["v"]
    assert result.answers == {"total": 14, "empty": 1, "nan_reward": 2}
    assert [r["outcome"] for r in result.records] == ["all_tied", "too_few_scored", "identical_responses",
                                                      "too_few_scored", "below_margin", "paired"]


# --------------------------------------------------------------------------- mixing


def test_offline_online_ratio_is_honoured():
    online = [{**p, "chosen": [{"role": "assistant", "content": "on"}]} for p in offline_pairs(10)]
    rows, stats = mix_pairs(online, Cursor(offline_pairs(6), seed=1), total=10, ratio=0.3, seed=0)
    assert len(rows) == 10
    assert sum(r["source"] == "online" for r in rows) == 3
    assert sum(r["source"] == "offline" for r in rows) == 7
    assert stats["mix/online_ratio"] == 0.3 and stats["mix/online_shortfall"] == 0
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "source"}


def test_online_shortfall_is_filled_with_offline_pairs_and_reported():
    rows, stats = mix_pairs(offline_pairs(1), Cursor(offline_pairs(6), seed=1), total=8, ratio=0.5, seed=0)
    assert sum(r["source"] == "online" for r in rows) == 1
    assert (len(rows), stats["mix/online_shortfall"], stats["mix/offline_pairs"]) == (8, 3.0, 7.0)


def test_without_offline_pairs_online_pairs_repeat_and_nothing_at_all_is_an_error():
    rows, _ = mix_pairs(offline_pairs(2), Cursor([], seed=1), total=5, ratio=0.5, seed=0)
    assert len(rows) == 5 and all(r["source"] == "online" for r in rows)
    with pytest.raises(ValueError, match="no training pairs"):
        mix_pairs([], Cursor([], seed=1), total=4, ratio=0.5, seed=0)


def test_cursor_order_survives_a_resume():
    items = list(range(5))
    whole = Cursor(items, seed=3).take(12)
    first = Cursor(items, seed=3)
    head = first.take(7)
    resumed = Cursor(items, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert head + resumed.take(5) == whole
    assert sorted(whole[:5]) == items  # each pass is a permutation


# --------------------------------------------------------------------------- one online round


def test_round_builds_pairs_from_the_best_and_worst_answers(tokenizer, monkeypatch):
    cfg = OnlineConfig(ratio=0.5, num_samples=3, prompts_per_round=3, margin=0.0, kl_samples=0)
    prompts = [{"prompt": p["prompt"], "reference": ""} for p in offline_pairs(3)]
    rounds = OnlineRounds(cfg, None, None, tokenizer, LengthScorer(), offline_pairs(6), prompts, seed=0)
    canned = [["ab", "abcd", "a"], ["nan", "nan", "xyz"], ["same", "four", "five"]]
    monkeypatch.setattr(rounds, "sample", lambda prompts, seed: canned[:len(prompts)])
    data = rounds.build(round_index=0, total=4)
    online = [r for r in data.rows if r["source"] == "online"]
    assert sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in online) == [("abcd", "a")]
    assert len(data.rows) == 4 and data.stats["mix/online_pairs"] == 1 and data.stats["mix/offline_pairs"] == 3
    assert data.stats["online/skipped_too_few_scored"] == 1  # two NaN rewards leave one scored answer
    assert data.stats["online/skipped_all_tied"] == 1  # "same", "four", "five" all have length 4
    assert data.stats["online/answers_nan_reward"] == 2
    assert data.stats["reward/chosen_mean"] == 4.0 and data.stats["reward/rejected_mean"] == 1.0
    assert rounds.normalizer.count == 7


def test_gold_is_logged_beside_a_proxy_and_never_picks_a_pair(tokenizer, monkeypatch):
    """A proxy that prefers the longer answer, math-verify as the gold: the pairs are the proxy's, and
    the log shows the gold of the samples, of the chosen and of the rejected."""
    from rewards.math_verifier import MathVerifier

    cfg = OnlineConfig(ratio=1.0, num_samples=3, prompts_per_round=2, margin=0.0, kl_samples=0, gold=True)
    prompts = [{"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "reference": "5"},
               {"prompt": [{"role": "user", "content": "What is 4 + 4?"}], "reference": "8"}]
    canned = [["5", "I think the answer is 7.", "It is \\boxed{5}"],  # longest wrong, shortest right
              ["8", "The sum is 8, since 4 + 4 = 8.", ""]]  # longest right; one empty answer (no gold)
    runs = {}
    for gold in (None, MathVerifier()):
        rounds = OnlineRounds(cfg, None, None, tokenizer, LengthScorer(), [], prompts, seed=0, gold=gold)
        monkeypatch.setattr(rounds, "sample", lambda prompts, seed: canned[:len(prompts)])
        runs[gold is not None] = rounds.build(round_index=0, total=2)
    without, data = runs[False], runs[True]
    pair = lambda r: (r["chosen"][0]["content"], r["rejected"][0]["content"])  # noqa: E731
    assert [pair(r) for r in data.rows] == [pair(r) for r in without.rows] == [
        ("I think the answer is 7.", "5"), ("The sum is 8, since 4 + 4 = 8.", "8")]
    assert not any(k.startswith("gold/") for k in without.stats)
    stats = data.stats
    assert stats["gold/scored"] == 5 and stats["gold/accuracy"] == pytest.approx(4 / 5)
    assert stats["gold/chosen_accuracy"] == 0.5 and stats["gold/rejected_accuracy"] == 1.0
    assert [r["gold"] for r in data.records][0] == [1.0, 0.0, 1.0]
    assert data.records[0]["picked"] == [1, 0]
    lengths = [len(a) for group in canned for a in group if a]
    assert stats["online/answer_chars_mean"] == pytest.approx(sum(lengths) / len(lengths))
    assert stats["online/skipped_share"] == 0.0


def test_gold_beside_a_math_reward_is_a_warning():
    from rewards.scoring import RewardConfig

    cfg = DPORunConfig(reward=RewardConfig(kind="math"), online=OnlineConfig(gold=True))
    assert any("online.gold changes nothing" in note for note in cfg.unused_keys())
    proxy = DPORunConfig(reward=RewardConfig(kind="classifier", model="x"), online=OnlineConfig(gold=True))
    assert not any("gold" in note for note in proxy.unused_keys())


def test_llm_sampling_sends_n_and_seed_and_survives_failures():
    llm = FakeLLM(lambda req: ["a", "b", "c"] if "2" in req.messages[-1][1] else Completion(error="boom"))
    cfg = OnlineConfig(num_samples=3, max_new_tokens=7, temperature=0.9)
    answers = sample_with_llm(llm, [Q, [{"role": "user", "content": "Hi"}]], cfg, seed=11)
    assert answers == [["a", "b", "c"], []]
    params = llm.calls[0].params
    assert (params.n, params.max_tokens, params.temperature, params.seed) == (3, 7, 0.9, 11)


def test_vllm_backend_samples_from_the_run_engine(tokenizer):
    cfg = OnlineConfig(backend="vllm", ratio=1.0, num_samples=2, prompts_per_round=1, kl_samples=0)
    engine = FakeLLM(lambda request: ["short", "a much longer answer"])  # stands in for PolicyEngine.generate
    prompts = [{"prompt": Q, "reference": ""}]
    rounds = OnlineRounds(cfg, None, None, tokenizer, LengthScorer(), [], prompts, seed=5)
    rounds.engine = engine
    data = rounds.build(round_index=2, total=1)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in data.rows] == \
        [("a much longer answer", "short")]
    assert (engine.calls[0].params.n, engine.calls[0].params.seed) == (2, 7)  # seed + round index


# --------------------------------------------------------------------------- the DPO loss


def test_router_aux_loss_is_in_the_dpo_loss(tokenizer, tmp_path):
    from datasets import Dataset

    policy = tiny_policy(tokenizer, coef=0.5)
    cfg = run_config(tmp_path, moe=MoEConfig(router_aux_loss_coef=0.5))
    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in offline_pairs(2)]
    trainer = dpo_trainer.MoEDPOTrainer(model=policy, ref_model=round_state.make_reference(policy),
                                       args=dpo_trainer.build_dpo_args(cfg, moe_model=True),
                                       train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                       moe_config=cfg.moe)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    policy.train()
    with_aux = trainer.compute_loss(policy, batch)
    aux = trainer._metrics["train"]["aux_loss"][-1]
    trainer.router_aux_loss_coef = 0.0
    trainer.aux_loss_enabled = False
    without = trainer.compute_loss(policy, batch)
    assert aux > 0
    assert (with_aux - without).item() == pytest.approx(0.5 * aux, rel=1e-4)


# --------------------------------------------------------------------------- real runs


class Recorder(TrainerCallback):
    """Policy weights at the start of each phase and after every optimizer step; every log line."""

    def __init__(self):
        self.begin, self.after_step, self.logs = [], [], []

    @staticmethod
    def weights(model):
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin.append(self.weights(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step.append(self.weights(model))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def run_config(tmp_path, **overrides):
    path = tmp_path / "pairs.jsonl"
    if not path.exists():
        path.write_text("\n".join(json.dumps(p) for p in offline_pairs()) + "\n")
    values = dict(output_dir=str(tmp_path / "out"), dataset=str(path), max_steps=2, learning_rate=1e-3,
                  per_device_train_batch_size=2, max_length=80, max_prompt_length=64, report_to="none",
                  loss_weights=[1.0, 1.0], moe=MoEConfig(router_aux_loss_coef=0.01),
                  online=OnlineConfig(steps_per_round=1, num_samples=3, prompts_per_round=2, max_new_tokens=6,
                                      margin=0.0, kl_samples=2),
                  ema=EMAConfig(decay=0.5))
    values.update(overrides)
    return DPORunConfig(**values)


class KilledRun:
    """One tiny DPO run (2 rounds of 1 step, TR-DPO reference, policy EMA) killed while building
    round 1, then resumed by running the same config again."""

    def __init__(self, tokenizer, tmp_path):
        self.cfg = run_config(tmp_path, sync_ref_model=True, ref_model_mixup_alpha=0.5, ref_model_sync_steps=1)
        self.out = tmp_path / "out"
        self.built: list[int] = []
        killed_policy = tiny_policy(tokenizer)
        self.initial = Recorder.weights(killed_policy)
        self.first, self.second = Recorder(), Recorder()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(OnlineRounds, "build", self.build_then_die(OnlineRounds.build))
            with pytest.raises(KeyboardInterrupt):
                dpo_trainer.train(self.cfg, policy=killed_policy, tokenizer=tokenizer, scorer=LengthScorer(),
                          callbacks=[self.first])
            self.at_kill = Recorder.weights(killed_policy)
            self.summary = dpo_trainer.train(self.cfg, policy=tiny_policy(tokenizer), tokenizer=tokenizer,
                                     scorer=LengthScorer(), callbacks=[self.second])
        self.theta1, self.theta2 = self.first.after_step[0], self.second.after_step[0]

    def build_then_die(self, build):
        def wrapper(rounds, round_index, total):
            self.built.append(round_index)
            if self.built == [0, 1]:
                raise KeyboardInterrupt("killed while sampling round 1")
            return build(rounds, round_index, total)
        return wrapper


@pytest.fixture(scope="module")
def killed_run(tokenizer, tmp_path_factory):
    return KilledRun(tokenizer, tmp_path_factory.mktemp("dpo"))


def test_policy_parameters_change_and_the_losses_are_finite(killed_run):
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.mlp.shared_mlp.up_proj.weight", "model.layers.0.mlp.gate.wg.weight"):
        assert not torch.equal(killed_run.theta1[name], killed_run.initial[name]), f"{name} did not change"
        assert not torch.equal(killed_run.theta2[name], killed_run.theta1[name]), f"{name} did not change"
    # the router changing at all proves the aux loss trains it: a top-1 router gets no gradient
    # from the DPO/SFT loss (its single routing weight is renormalised to 1)
    train_logs = [log for log in killed_run.first.logs + killed_run.second.logs if "loss" in log]
    assert len(train_logs) == 2
    assert all(math.isfinite(log["loss"]) and log["aux_loss"] > 0 for log in train_logs)
    assert [log["mix/online_pairs"] for log in train_logs] == [1.0, 1.0]
    assert [log["mix/offline_pairs"] for log in train_logs] == [1.0, 1.0]


def test_exported_model_is_the_policy_ema(killed_run):
    from transformers import AutoModelForCausalLM

    assert killed_run.summary["weights"] == "policy EMA" and killed_run.summary["ema_updates"] == 2
    exported = AutoModelForCausalLM.from_pretrained(killed_run.out).state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.experts.gate_up_proj"):
        # decay 0.5 over θ0 → θ1 → θ2, across the kill and the resume
        expected = 0.25 * killed_run.initial[name] + 0.25 * killed_run.theta1[name] + 0.5 * killed_run.theta2[name]
        torch.testing.assert_close(exported[name], expected)


def test_reference_model_follows_tr_dpo_sync(killed_run):
    state = torch.load(killed_run.out / "checkpoint-2" / round_state.ROUND_STATE_FILE, weights_only=True)
    name = "model.layers.0.self_attn.q_proj.weight"
    # ref ← α·policy + (1 − α)·ref after every step, α = 0.5, ref₀ = θ0
    expected = 0.5 * killed_run.theta2[name] + 0.25 * killed_run.theta1[name] + 0.25 * killed_run.initial[name]
    torch.testing.assert_close(state["reference"][name], expected)
    stats = json.loads((killed_run.out / "rounds" / "round-001.jsonl").read_text().splitlines()[0])
    assert stats["kind"] == "stats" and stats["online/kl_to_reference"] != 0.0


def test_a_killed_run_resumes_from_its_last_round(killed_run, tokenizer):
    assert killed_run.built == [0, 1, 1]  # round 0 was not redone
    assert killed_run.summary["global_step"] == 2
    for name, tensor in killed_run.second.begin[0].items():  # every weight, experts included, came back
        torch.testing.assert_close(tensor, killed_run.at_kill[name], msg=name)
    optimizer = torch.load(killed_run.out / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in optimizer["state"].values()} == {2}  # Adam state carried over
    state = torch.load(killed_run.out / "checkpoint-2" / round_state.ROUND_STATE_FILE, weights_only=True)
    assert state["online"]["normalizer"]["steps"] == 2  # reward statistics carried over
    changed = DPORunConfig(**{**killed_run.cfg.__dict__, "max_steps": 3,
                                  "online": OnlineConfig(steps_per_round=2)})
    with pytest.raises(ConfigError, match="do not reproduce"):
        dpo_trainer.train(changed, policy=tiny_policy(tokenizer), tokenizer=tokenizer, scorer=LengthScorer())


class KillAt(TrainerCallback):
    """Kills the run (KeyboardInterrupt) when step `step` is about to begin."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed before step {self.step}")


def test_a_run_killed_mid_round_resumes_with_that_rounds_pairs_and_ends_like_an_uninterrupted_one(
        tokenizer, tmp_path):
    """2 rounds of 2 steps, a checkpoint every step: killed after step 3 (the middle of round 1), the
    resumed run trains step 4 on round 1's rows from the checkpoint, without sampling again."""
    def run(out, callbacks=()):
        cfg = run_config(tmp_path, output_dir=str(out), max_steps=4, save_steps=1, keep_checkpoints=1,
                         online=OnlineConfig(steps_per_round=2, num_samples=3, prompts_per_round=2,
                                             max_new_tokens=6, margin=0.0, kl_samples=0))
        return dpo_trainer.train(cfg, policy=tiny_policy(tokenizer), tokenizer=tokenizer, scorer=LengthScorer(),
                                 callbacks=list(callbacks))

    built = []
    with pytest.MonkeyPatch.context() as patch:
        build = OnlineRounds.build
        patch.setattr(OnlineRounds, "build", lambda rounds, index, total: built.append(index) or
                      build(rounds, index, total))
        whole = run(tmp_path / "whole")
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "killed", [KillAt(3)])
        resumed = run(tmp_path / "killed")
    assert built == [0, 1, 0, 1]  # the resumed run sampled nothing: round 1's rows came from checkpoint-3
    assert resumed["global_step"] == whole["global_step"] == 4
    assert resumed["last_log"]["loss"] == pytest.approx(whole["last_log"]["loss"], rel=1e-5)
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    for name, tensor in AutoModelForCausalLM.from_pretrained(tmp_path / "killed").state_dict().items():
        torch.testing.assert_close(tensor, final[name], msg=name)


def test_a_batch_from_a_round_that_was_not_built_is_an_error():
    from posttrain.online.feed import RoundFeed

    feed = RoundFeed(rows_per_step=2)
    feed.install(1, 2, 4, raw_rows=[{}] * 4, tokenized=[{"i": i} for i in range(4)])
    assert feed.rows_for([4, 7]) == [{"i": 0}, {"i": 3}]
    with pytest.raises(RuntimeError, match="not in round 1"):
        feed.rows_for([8])  # step 4 belongs to round 2


@pytest.mark.parametrize("overrides, message", [
    ({"max_prompt_length": 80}, "must be < max_length"),
    ({"loss_weights": [1.0]}, "one weight per loss_type"),
    ({"max_steps": 0}, "max_steps must be >= 1"),
])
def test_inconsistent_configs_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_config(tmp_path, **overrides)


@pytest.mark.parametrize("path", ["configs/posttrain/dpo_tiny.yaml", "configs/posttrain/dpo_hunyuan.yaml"])
def test_shipped_recipes_parse(path):
    from datagen.config_loader import load_config

    cfg = load_config(DPORunConfig, path, ["--max_steps", "3", "--output_dir", "/tmp/x"])
    assert (cfg.max_steps, cfg.output_dir, cfg.loss_type) == (3, "/tmp/x", ["sigmoid", "sft"])
