"""A verifier where there is a gold answer, a reward model everywhere else.

Online DPO prompts are mixed: objective ones carry an exact reference (math problems) and can be
checked; open instructions cannot. `VerifiedOrModelScorer` sends each item with a reference to
the verifier (math-verify: 1.0 right, 0.0 wrong) and the rest to the reward model, in one call,
results in the caller's order. Best and worst are picked per prompt, and all answers to one
prompt share its reference, so each pair is ranked by one scorer; only the running normaliser
(rewards/normalize.py) pools both scales.

It exposes the reward model's `model`, `tokenizer` and `rewards()` so that refreshing the reward
model between rounds (posttrain/online/rm_refresh.py) trains the classifier part.
"""
from __future__ import annotations

from typing import Sequence

from rewards.base import Messages, check_lengths


class VerifiedOrModelScorer:
    def __init__(self, verifier, reward_model) -> None:
        self.verifier = verifier
        self.reward_model = reward_model
        self.name = f"{verifier.name}|{reward_model.name}"

    @property
    def model(self):
        return self.reward_model.model

    @property
    def tokenizer(self):
        return self.reward_model.tokenizer

    def rewards(self, model, prompts: Sequence[Messages | str], responses: Sequence[str]):
        return self.reward_model.rewards(model, prompts, responses)

    def score(self, prompts, responses, references=None) -> list[float]:
        check_lengths(prompts, responses, references)
        refs = list(references) if references is not None else [""] * len(prompts)
        checked = [i for i, ref in enumerate(refs) if ref and str(ref).strip()]
        judged = [i for i, ref in enumerate(refs) if not (ref and str(ref).strip())]
        scores = [0.0] * len(prompts)
        for indices, scorer, with_refs in ((checked, self.verifier, True), (judged, self.reward_model, False)):
            if not indices:
                continue
            values = scorer.score([prompts[i] for i in indices], [responses[i] for i in indices],
                                  [refs[i] for i in indices] if with_refs else None)
            for i, value in zip(indices, values):
                scores[i] = value
        return scores
