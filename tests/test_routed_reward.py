"""The routed reward: math-verify where an item has a gold answer, the reward model elsewhere, in order."""
from __future__ import annotations

from rewards.math_verifier import MathVerifier
from rewards.routed import VerifiedOrModelScorer


class LengthModel:
    """A stand-in reward model: the answer's length (records what it was asked)."""

    name = "length"
    model = "the classifier"
    tokenizer = "its tokenizer"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def score(self, prompts, responses, references=None):
        assert references is None
        self.asked += list(responses)
        return [float(len(r)) for r in responses]

    def rewards(self, model, prompts, responses):
        return [model, len(responses)]


def test_each_item_goes_to_its_scorer_and_results_keep_the_order():
    rm = LengthModel()
    scorer = VerifiedOrModelScorer(MathVerifier(), rm)
    prompts = ["What is 3 + 4?", "Write a haiku.", "What is 3 + 4?", "Say hi."]
    answers = ["The answer is 7.", "Leaves fall", "It is 8.", "hi"]
    assert scorer.score(prompts, answers, ["7", "", "7", ""]) == [1.0, 11.0, 0.0, 2.0]
    assert rm.asked == ["Leaves fall", "hi"]  # the reward model never sees a verifiable item
    assert scorer.score(prompts[:2], answers[:2]) == [16.0, 11.0]  # no references at all: all to the model
    assert scorer.name == "math-verify|length"


def test_it_exposes_the_reward_model_for_refreshing():
    rm = LengthModel()
    scorer = VerifiedOrModelScorer(MathVerifier(), rm)
    assert scorer.model == "the classifier" and scorer.tokenizer == "its tokenizer"
    assert scorer.rewards("live copy", ["p"], ["a", "b"]) == ["live copy", 2]
