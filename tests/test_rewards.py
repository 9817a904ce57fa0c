"""rewards/: preference pairs (checks, reasons, demo set), the scoring interface (reward model,
critique judge, math verifier), the reward-model refresh EMA, and `posttrain/rm.py`."""
from __future__ import annotations

import json
import math

import pytest
import torch

from datagen.inference.base import Completion
from fakes import FakeLLM, install_fake
from datagen.inference.registry import ModelConfig
from posttrain.data import DataError, load_view
from rewards.reward_model import RewardModelError
from datagen.stages.critique import CritiqueConfig
from posttrain.pairs import build_seed_preference_set, check_pair, load_preference_pairs
from posttrain.online.rm_refresh import RefreshConfig, RewardRefresher
from rewards.judge import CritiqueJudgeScorer, JudgeConfig
from rewards.reward_model import ClassifierScorer
from rewards.scoring import RewardConfig, build_scorer
from rewards.math_verifier import MathVerifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

USER = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture
def classifier(tokenizer):
    from transformers import AutoModelForSequenceClassification

    from posttrain.moe.tiny_moe import tiny_moe_config

    torch.manual_seed(0)
    config = tiny_moe_config(tokenizer, num_hidden_layers=1)
    config.num_labels = 1
    return ClassifierScorer(AutoModelForSequenceClassification.from_config(config), tokenizer, batch_size=2)


def pair(prompt=USER, chosen="5", rejected="6", **extra):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


# --------------------------------------------------------------------------- pairs


@pytest.mark.parametrize("row, reason", [
    ({"chosen": "5", "rejected": "6"}, "missing_field:prompt"),
    (pair(rejected=None), "missing_field:rejected"),
    (pair(prompt=""), "empty_field:prompt"),
    (pair(prompt=[{"role": "user", "content": "   "}]), "empty_field:prompt"),
    (pair(chosen=""), "empty_field:chosen"),
    (pair(rejected=[{"role": "assistant", "content": " "}]), "empty_field:rejected"),
    (pair(chosen=[{"role": "user", "content": "5"}]), "malformed_field:chosen"),
    (pair(chosen=42), "malformed_field:chosen"),
    (pair(prompt=[{"content": "no role"}]), "malformed_field:prompt"),
    (pair(chosen="same", rejected=" same "), "identical_responses"),
])
def test_bad_pairs_are_rejected_with_their_reason(row, reason):
    assert check_pair(row) == (None, reason)


def test_strings_and_implicit_prompts_become_conversational_pairs():
    clean, reason = check_pair(pair(prompt="What is 2 + 3?", answer=5))
    assert reason == ""
    assert clean == {"prompt": USER, "chosen": [{"role": "assistant", "content": "5"}],
                     "rejected": [{"role": "assistant", "content": "6"}], "reference": "5"}
    implicit = {"chosen": USER + [{"role": "assistant", "content": "5"}],
                "rejected": USER + [{"role": "assistant", "content": "6"}]}
    clean, reason = check_pair(implicit)
    assert reason == "" and clean["prompt"] == USER and clean["rejected"][0]["content"] == "6"


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_loading_counts_every_skipped_row(tmp_path, tokenizer):
    rows = [pair(), pair(chosen=""), pair(chosen="x", rejected="x"),
            pair(prompt="long " * 400), pair(prompt="What is 1 + 1?", chosen="2", rejected="3")]
    pairs, report = load_preference_pairs(write_jsonl(tmp_path / "p.jsonl", rows), tokenizer=tokenizer,
                                          max_prompt_tokens=64)
    assert [p["chosen"][0]["content"] for p in pairs] == ["5", "2"]
    assert report.rows_read == 5 and report.train_rows == 2
    assert report.skipped == {"empty_field:chosen": 1, "identical_responses": 1, "prompt_too_long": 1}


def test_a_dataset_without_usable_pairs_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [pair(chosen=""), pair(rejected="")])
    with pytest.raises(DataError, match=r"no usable preference pairs.*empty_field:chosen=1, empty_field:rejected=1"):
        load_preference_pairs(path)


def test_seed_preference_set_reads_like_the_datagen_dpo_view(tmp_path):
    ds = load_view(str(build_seed_preference_set(tmp_path / "seeds")), "dpo", "train")
    assert len(ds) == 30
    assert set(ds.column_names) == {"prompt", "chosen", "rejected"}
    assert all(check_pair(row)[1] == "" for row in ds)


# --------------------------------------------------------------------------- scorers


def test_classifier_scores_do_not_depend_on_batching_or_padding(classifier):
    prompts = [USER, [{"role": "user", "content": "Name a prime number larger than ten, please."}], USER]
    answers = ["5", "Eleven is a prime number, and so is thirteen.", "six"]
    batched = classifier.score(prompts, answers)
    alone = [classifier.score([p], [a])[0] for p, a in zip(prompts, answers)]
    assert all(math.isfinite(s) for s in batched)
    assert batched == pytest.approx(alone, abs=1e-5)
    ids = classifier.tokenizer.apply_chat_template(prompts[1] + [{"role": "assistant", "content": answers[1]}],
                                                   tokenize=True, return_dict=False)
    with torch.no_grad():
        direct = classifier.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert batched[1] == pytest.approx(direct, abs=1e-5)


def test_a_reward_model_returning_nan_gives_nan_scores(classifier):
    with torch.no_grad():
        classifier.model.score.weight.fill_(math.nan)
    assert all(math.isnan(s) for s in classifier.score([USER, USER], ["5", "6"]))


def test_unknown_reward_model_is_a_clear_error():
    with pytest.raises(RewardModelError, match="unknown model"):
        build_scorer(RewardConfig(kind="classifier", model="no-such-model"))


GOOD = "Accuracy: 4\nRelevance: 4\nCompleteness: 3\nUsefulness: 3\nClarity: 4\nRationale: fine"


def test_critique_judge_reward_is_the_mean_of_its_aspect_scores():
    def reply(request):
        grading = request.messages[-1][1]
        if "five" in grading:
            return GOOD
        if "six" in grading:
            return "I cannot grade this."
        return Completion(error="HTTP 500")

    judge = FakeLLM(reply)
    scorer = CritiqueJudgeScorer(judge, JudgeConfig(critique=CritiqueConfig(style="chat", max_tokens=99, seed=7)))
    scores = scorer.score([USER] * 3, ["five", "six", "seven"])
    assert scores[0] == pytest.approx(3.6)
    assert math.isnan(scores[1]) and math.isnan(scores[2])
    request = judge.calls[0]
    assert request.messages[0][0] == "system"
    assert "What is 2 + 3?" in request.messages[-1][1] and "five" in request.messages[-1][1]
    assert (request.params.max_tokens, request.params.seed) == (99, 7)


def test_critique_judge_from_config_uses_the_inference_registry_and_the_fewshot_style():
    continuation = GOOD.removeprefix("Accuracy:")  # a few-shot judge continues after the prefilled "Accuracy:"
    scorer = build_scorer(RewardConfig(kind="critique", judge=JudgeConfig(
        model=install_fake(FakeLLM([continuation]), model="judge"))))
    assert scorer.score([USER], ["five"]) == [pytest.approx(3.6)]
    request = scorer.llm.calls[0]
    assert request.prompt is not None and "What is 2 + 3?" in request.prompt


def test_math_verifier_checks_final_answers_against_the_reference():
    scorer = build_scorer(RewardConfig(kind="math"))
    assert isinstance(scorer, MathVerifier)
    scores = scorer.score([USER] * 4, ["So the answer is \\boxed{5}.", "x = 7", "It is 1/2", "5"],
                          ["5", "5", "0.5", ""])
    assert scores[:3] == [1.0, 0.0, 1.0]
    assert math.isnan(scores[3])  # no reference: cannot verify
    assert all(math.isnan(s) for s in scorer.score([USER], ["5"]))


def test_mismatched_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="one response"):
        MathVerifier().score([USER, USER], ["5"], ["5", "5"])


# --------------------------------------------------------------------------- refresh


def test_refreshed_reward_model_scores_with_the_ema_of_its_weights(classifier):
    pairs = [check_pair(pair())[0], check_pair(pair(prompt="Say hi", chosen="Hi!", rejected="No."))[0]]
    refresher = RewardRefresher(classifier, pairs, RefreshConfig(enabled=True, steps_per_round=1, batch_size=2,
                                                                 learning_rate=1e-2, ema_decay=0.6))
    history = [{n: p.detach().clone() for n, p in refresher.live.named_parameters()}]
    for _ in range(3):
        stats = refresher.refresh()
        history.append({n: p.detach().clone() for n, p in refresher.live.named_parameters()})
    assert stats["rm_refresh/ema_updates"] == 3.0
    head = "score.weight"
    assert not torch.equal(history[3][head], history[0][head])  # the live RM trained
    expected = 0.6 ** 3 * history[0][head] + sum(0.4 * 0.6 ** (3 - i) * history[i][head] for i in (1, 2, 3))
    torch.testing.assert_close(classifier.model.score.weight.detach(), expected)


# --------------------------------------------------------------------------- train_rm


def test_train_rm_exports_the_ema_reward_model(tmp_path):
    from posttrain import rm

    rows = [pair(prompt=f"What is {i} + {i}?", chosen=str(2 * i), rejected="I don't know.") for i in range(6)]
    rows.append(pair(chosen=""))  # skipped and counted
    out = tmp_path / "rm"
    code = rm.main(["--config", "configs/posttrain/rm_tiny.yaml", "--output_dir", str(out),
                          "--dataset", write_jsonl(tmp_path / "pairs.jsonl", rows), "--max_steps", "2",
                          "--eval_fraction", "0", "--save_steps", "2", "--report_to", "none",
                          "--ema.decay", "0.5"])
    assert code == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["skipped"] == {"empty_field:chosen": 1} and report["train_rows"] == 6
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train_loss"])
    from safetensors.torch import load_file

    exported = load_file(out / "model.safetensors")["score.weight"]
    last = load_file(out / "checkpoint-2" / "model.safetensors")["score.weight"]
    assert not torch.equal(exported, last)  # the EMA, not the last weights
    scorer = ClassifierScorer.from_pretrained(str(out))
    assert all(math.isfinite(s) for s in scorer.score([USER], ["5"]))


def test_train_rm_bad_config_key_is_reported(capsys):
    from posttrain import rm

    assert rm.main(["--config", "configs/posttrain/rm_tiny.yaml", "--no_such_key", "1"]) == 2
    assert "unknown key no_such_key" in capsys.readouterr().err


@pytest.mark.parametrize("path", ["configs/posttrain/rm_tiny.yaml", "configs/posttrain/rm_hunyuan.yaml"])
def test_shipped_reward_recipes_parse(path):
    from datagen.config_loader import load_config
    from posttrain.trainers.rm_config import RMRunConfig

    cfg = load_config(RMRunConfig, path, ["--max_steps", "3"])
    assert cfg.max_steps == 3 and cfg.ema.export
