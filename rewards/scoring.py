"""Reward scoring: one interface for a reward model, an LLM judge and a math verifier.

A scorer maps a batch of (prompt, response) — plus, for verifiers, a gold reference — to one
float per item: `scorer.score(prompts, responses, references) -> list[float]`. NaN means "could
not score" (an unreadable judge reply, no gold answer, a non-finite reward-model output);
callers count NaN items and never train on them.

- `ClassifierScorer`: a sequence-classification reward model (e.g. `rewards.train_rm`'s output).
  It reads the conversation exactly as TRL's RewardTrainer tokenized it in training (chat
  template over prompt + answer); inputs longer than `max_length` keep their end, where the
  answer is. A causal-LM checkpoint gets a fresh, seeded random head: a stand-in RM for demos.
- `CritiqueJudgeScorer`: the datagen critique judge (any `datagen.inference` backend) asked
  for 1–4 scores on five aspects; the reward is their mean (NaN when unreadable). Prompt,
  sampling and parser are `datagen.critique`'s, so the data filter and the reward judge alike.
- `MathAnswerScorer`: 1.0 when math-verify finds the response's final answer equal to the
  reference, 0.0 when not, NaN without a usable reference.

`build_scorer(RewardConfig)` picks one from config.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

from datagen.inference.registry import ModelConfig
from rewards.refresh import RefreshConfig

Messages = list[dict[str, str]]


class RewardScorer(Protocol):
    name: str

    def score(self, prompts: Sequence[Messages | str], responses: Sequence[str],
              references: Sequence[str] | None = None) -> list[float]: ...


@dataclass
class JudgeConfig:
    """The critique judge used as a reward (kind: critique). The fields mirror datagen's
    CritiqueConfig (kept here so DPO runs need not import the Beam stage module)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # any datagen.inference backend
    style: Literal["fewshot", "chat"] = "fewshot"  # fewshot: graded examples (small judges); chat: instructions
    min_aspects: int = 3  # a reply scoring fewer aspects is unparsed (NaN reward)
    max_answer_chars: int = 4000  # longer answers are cut in the judge prompt
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int = 4567

    def critique_config(self):
        from datagen.critique import CritiqueConfig

        return CritiqueConfig(style=self.style, min_aspects=self.min_aspects, max_answer_chars=self.max_answer_chars,
                              max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)


@dataclass
class RewardConfig:
    """Which reward scores the policy's samples in online rounds."""

    kind: Literal["classifier", "critique", "math"] = "classifier"
    model: str = "tiny-hunyuan-moe"  # classifier: RM directory (rewards.train_rm output), alias or hub id
    head_seed: int = 0  # classifier from a causal-LM checkpoint: seed of its random head (demo stand-in)
    batch_size: int = 8  # classifier: sequences per forward pass
    max_length: int = 1024  # classifier: tokens per (prompt, answer); longer inputs keep their end
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)  # classifier only: retrain between rounds


def as_prompt_messages(prompt: Messages | str) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def last_user_turn(prompt: Messages | str) -> str:
    messages = as_prompt_messages(prompt)
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _check_lengths(prompts, responses, references) -> None:
    if len(prompts) != len(responses) or (references is not None and len(references) != len(prompts)):
        raise ValueError(f"score() needs one response (and reference) per prompt: got {len(prompts)} prompts, "
                         f"{len(responses)} responses, {'no' if references is None else len(references)} references")


# --------------------------------------------------------------------------- reward model


class ClassifierScorer:
    """A sequence-classification reward model with one output (num_labels=1)."""

    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int = 1024, name: str = "") -> None:
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"a reward model needs num_labels=1, got {model.config.num_labels}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name or f"classifier:{getattr(model.config, 'name_or_path', '') or type(model).__name__}"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # the model finds each sequence's last real token through the pad id
        model.config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def from_pretrained(cls, name: str, batch_size: int = 8, max_length: int = 1024, head_seed: int = 0,
                        dtype: str = "float32") -> "ClassifierScorer":
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from posttrain.moe import ModelLoadError, resolve_name

        path = resolve_name(name)
        torch.manual_seed(head_seed)  # a checkpoint without a score head gets a random one: make it reproducible
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1,
                                                                       dtype=getattr(torch, dtype))
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load reward model {name!r} from {path}: {str(err).strip().splitlines()[0]}") from None
        return cls(model, tokenizer, batch_size=batch_size, max_length=max_length, name=f"classifier:{name}")

    def encode(self, prompts: Sequence[Messages | str], responses: Sequence[str]):
        """Right-padded (input_ids, attention_mask) of prompt + answer, rendered by the chat template."""
        import torch

        rows = []
        for prompt, response in zip(prompts, responses):
            messages = as_prompt_messages(prompt) + [{"role": "assistant", "content": response}]
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
            rows.append(ids[-self.max_length:])
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return input_ids, mask

    def rewards(self, model, prompts: Sequence[Messages | str], responses: Sequence[str]):
        """Reward tensor (with grad when `model` trains), for refreshing the RM as well as scoring."""
        input_ids, mask = self.encode(prompts, responses)
        device = next(model.parameters()).device
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        return logits[:, 0].float()

    def score(self, prompts, responses, references=None) -> list[float]:
        import torch

        _check_lengths(prompts, responses, references)
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                end = start + self.batch_size
                values = self.rewards(self.model, prompts[start:end], responses[start:end]).tolist()
                scores.extend(v if math.isfinite(v) else math.nan for v in values)
        return scores


# --------------------------------------------------------------------------- LLM judge


class CritiqueJudgeScorer:
    """The datagen critique judge as a reward: the mean of its 1–4 aspect scores.

    Requests, sampling and parsing are the critique stage's own (datagen/critique.py), so the
    data filter and the DPO reward judge alike. The prompt's last user turn is the question."""

    def __init__(self, llm, cfg: JudgeConfig | None = None) -> None:
        self.llm = llm
        self.cfg = cfg or JudgeConfig()
        self.name = f"critique:{llm.identity}"

    def score(self, prompts, responses, references=None) -> list[float]:
        from datagen.critique import CritiqueFn, critique_request, critique_text, mean_score, parse_critique

        _check_lengths(prompts, responses, references)
        critique = self.cfg.critique_config()
        params = CritiqueFn(critique, self.cfg.model).params()  # the stage's sampling (stop strings included)
        requests = [critique_request(last_user_turn(p), r, critique, params) for p, r in zip(prompts, responses)]
        scores = []
        for completion in self.llm.generate(requests):
            if not completion.ok:
                scores.append(math.nan)
                continue
            parsed = parse_critique(critique_text(completion.text, critique.style), critique.min_aspects)
            scores.append(math.nan if parsed.problem else mean_score(parsed.scores))
        return scores


# --------------------------------------------------------------------------- rule-based verifier


class MathAnswerScorer:
    """1.0 if the response's answer equals the reference (math-verify), 0.0 if not, NaN if no reference."""

    name = "math-verify"

    def score(self, prompts, responses, references=None) -> list[float]:
        _check_lengths(prompts, responses, references)
        if references is None:
            return [math.nan] * len(responses)
        return [self._check(response, reference) for response, reference in zip(responses, references)]

    @staticmethod
    def _check(response: str, reference: str) -> float:
        from math_verify import parse, verify

        if not reference or not reference.strip():
            return math.nan
        # math-verify's timeouts use SIGALRM, which only the main thread may set
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        gold = parse(reference, parsing_timeout=timeout)
        if not gold:
            return math.nan
        predicted = parse(response, parsing_timeout=timeout)
        if not predicted:
            return 0.0
        return 1.0 if verify(gold, predicted, timeout_seconds=timeout) else 0.0


# --------------------------------------------------------------------------- from config


def build_scorer(cfg: RewardConfig) -> RewardScorer:
    if cfg.kind == "classifier":
        return ClassifierScorer.from_pretrained(cfg.model, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                                head_seed=cfg.head_seed, dtype=cfg.dtype)
    if cfg.kind == "critique":
        from datagen.inference.registry import get_llm

        return CritiqueJudgeScorer(get_llm(cfg.judge.model), cfg.judge)
    if cfg.kind == "math":
        return MathAnswerScorer()
    raise ValueError(f"unknown reward kind {cfg.kind!r} (classifier, critique, math)")
