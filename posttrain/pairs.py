"""Preference pairs: read, check, and (for demos) build them from the shipped seeds.

A pair is TRL's conversational preference row: `prompt` (messages up to the last user turn),
`chosen` and `rejected` (one assistant message each). Sources are whatever
`posttrain.data.load_view` reads — the datagen output's `dpo` view, a `save_to_disk`
directory, Parquet/JSONL files, a hub id — or the word `seeds`, which builds a small demo set
from `datagen/data/seeds.jsonl` (see `build_seed_preference_set`).

Plain strings are accepted too (`prompt` becomes a user turn, `chosen`/`rejected` assistant
turns), and so are implicit-prompt rows (full conversations in `chosen`/`rejected`, no
`prompt`). Every row that cannot be trained on is counted by reason in a `DataReport`:
`missing_field:<f>`, `empty_field:<f>`, `malformed_field:<f>`, `identical_responses`,
`prompt_too_long` — never dropped silently.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from datagen import SHIPPED_SEEDS
from posttrain.data import DataError, DataReport, load_view

Messages = list[dict[str, str]]
PAIR_FIELDS = ("prompt", "chosen", "rejected")
REFERENCE_FIELDS = ("reference", "answer", "gold")  # optional gold answer, for rule-based rewards
SEEDS_SOURCE = "seeds"
SEEDS_FILE = SHIPPED_SEEDS


# --------------------------------------------------------------------------- one row


def as_messages(value: Any, role: str) -> Messages | None:
    """A string becomes one `role` turn; a message list is checked and cleaned; else None."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        return None
    cleaned = []
    for turn in value:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) \
                or not isinstance(turn.get("content"), str):
            return None
        cleaned.append({"role": turn["role"], "content": turn["content"]})
    return cleaned


def split_implicit_prompt(row: dict) -> dict:
    """Rows without `prompt`: the shared leading turns of chosen and rejected are the prompt."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return row
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return {**row, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def check_pair(row: dict) -> tuple[dict | None, str]:
    """(clean pair, "") or (None, reason)."""
    if "prompt" not in row or row.get("prompt") is None:
        row = split_implicit_prompt(row)
    for name in PAIR_FIELDS:
        if row.get(name) is None:
            return None, f"missing_field:{name}"
    prompt = as_messages(row["prompt"], "user")
    if prompt is None:
        return None, ("empty_field:prompt" if row["prompt"] in ("", []) else "malformed_field:prompt")
    if prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        return None, "empty_field:prompt" if prompt[-1]["role"] == "user" else "malformed_field:prompt"
    pair: dict[str, Any] = {"prompt": prompt}
    for name in ("chosen", "rejected"):
        answer = as_messages(row[name], "assistant")
        if answer is None:
            return None, (f"empty_field:{name}" if row[name] in ("", []) else f"malformed_field:{name}")
        if len(answer) != 1 or answer[0]["role"] != "assistant":
            return None, f"malformed_field:{name}"
        if not answer[0]["content"].strip():
            return None, f"empty_field:{name}"
        pair[name] = answer
    if pair["chosen"][0]["content"].strip() == pair["rejected"][0]["content"].strip():
        return None, "identical_responses"
    pair["reference"] = reference_of(row)
    return pair, ""


def reference_of(row: dict) -> str:
    for name in REFERENCE_FIELDS:
        value = row.get(name)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            return str(value)
    return ""


def prompt_length(tokenizer, prompt: Messages) -> int:
    """Tokens of the prompt as the trainer renders it (chat template + generation prompt)."""
    return len(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                             return_dict=False))


# --------------------------------------------------------------------------- a dataset


def load_preference_pairs(source: str, view: str = "dpo", split: str = "train", tokenizer=None,
                          max_prompt_tokens: int = 0, max_pairs: int = 0,
                          seeds_dir: str | Path | None = None) -> tuple[list[dict], DataReport]:
    """Usable pairs (prompt/chosen/rejected/reference) and the report of what was skipped."""
    if source == SEEDS_SOURCE:
        if seeds_dir is None:
            raise DataError("the 'seeds' preference set needs a directory to be built in")
        source = str(build_seed_preference_set(seeds_dir))
    ds = load_view(source, view, split)
    report = DataReport(source=source, view=view, rows_read=len(ds), max_length=max_prompt_tokens)
    if len(ds) == 0:
        raise DataError(f"preference dataset {source} [{view}/{split}] is empty")
    pairs = []
    for row in ds:
        pair, reason = check_pair(row)
        if pair is not None and max_prompt_tokens and tokenizer is not None \
                and prompt_length(tokenizer, pair["prompt"]) > max_prompt_tokens:
            pair, reason = None, "prompt_too_long"
        if pair is None:
            report.skip(reason)
            continue
        pairs.append(pair)
        if max_pairs and len(pairs) >= max_pairs:
            break
    report.train_rows = len(pairs)
    if not pairs:
        raise DataError(f"no usable preference pairs in {source}: {report.summary()}")
    return pairs, report


# --------------------------------------------------------------------------- demo set from seeds


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*")  # "1102.50" is not a sentence end
_PROMPTS = (
    "Explain the main idea of this passage in one or two sentences:\n\n{text}",
    "What is the key fact stated here?\n\n{text}",
    "Summarize briefly:\n\n{text}",
)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _degraded_answer(i: int, text: str, other: str) -> str:
    """A worse answer, of a different kind per row: off-topic, truncated, repetitive, evasive."""
    kind = i % 4
    if kind == 0:
        return _sentences(other)[0]
    if kind == 1:
        return text[: max(8, len(text) // 4)].rstrip()
    if kind == 2:
        words = text.split()[:4] or [text[:8]]
        return " ".join(words * 4)
    return "I am not sure. You could look it up somewhere."


def seed_preference_rows(seeds_file: str | Path = SEEDS_FILE) -> list[dict]:
    """One pair per seed: the faithful opening of the passage beats a degraded answer."""
    texts = [json.loads(line)["text"] for line in Path(seeds_file).read_text(encoding="utf-8").splitlines()
             if line.strip()]
    rows = []
    for i, text in enumerate(texts):
        chosen = " ".join(_sentences(text)[:2]) or text
        rejected = _degraded_answer(i, text, texts[(i + 7) % len(texts)])
        rows.append({
            "prompt": [{"role": "user", "content": _PROMPTS[i % len(_PROMPTS)].format(text=text)}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        })
    return rows


_CARD = """---
configs:
- config_name: dpo
  data_files:
  - split: train
    path: dpo/train.jsonl
---
# Demo preference pairs built from synthpost's seed passages

Rule-made, for CPU demos and tests: the chosen answer restates the passage's opening, the
rejected one is off-topic, truncated, repetitive or evasive. Not for real training.
"""


def build_seed_preference_set(dest: str | Path, seeds_file: str | Path = SEEDS_FILE) -> Path:
    """Write the demo pairs as a dataset with a `dpo` config (like the datagen output)."""
    dest = Path(dest)
    (dest / "dpo").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in seed_preference_rows(seeds_file)]
    (dest / "dpo" / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dest / "README.md").write_text(_CARD, encoding="utf-8")
    return dest
