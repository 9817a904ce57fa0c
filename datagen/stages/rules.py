"""Rule filters after respond: truncation, repetition, garbled text, format errors, length, language.

The report's SFT quality control (Hunyuan-Large §3.1.2) as cheap, model-free checks. Each check
is a small named function returning a Finding(reason, detail) or None; reasons are stable
snake_case strings and details say what was measured.

- Instruction checks (empty_instruction, instruction_too_short/_long, garbled, repetition,
  wrong_language) reject the record.
- Response checks (truncated, empty_response, response_too_short/_long, garbled, repetition,
  unbalanced_code_fence, invalid_json, language_mismatch) drop that response. The record is
  rejected only when none remains — with the most common reason among its responses (ties: the
  order above) and a detail listing each response's finding; a record with no responses at all
  is rejected as no_responses. Kept records get a `rules` lineage step naming dropped responses.

Language is detected at script level only, with no extra dependency: letters outside code are
counted as Han (→ "zh"), Latin (→ "en") or other (→ "other"); so French passes as "en" and
Japanese counts as "other". Text with no letters (e.g. "2+2=4") has no language and passes.
The response must be in the instruction's script unless the instruction asks for a translation
or names a language.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import re
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam

from datagen.config_loader import option
from datagen.record import Record, Response
from datagen.stage import RecordFn, StageResult, run_stage
from datagen.filters.text import HAN_CHAR, repeated_ngram_ratio

STAGE = "rules"


@dataclass
class RulesConfig:
    min_instruction_chars: int = option(12, "shorter instructions are rejected (instruction_too_short)")
    max_instruction_chars: int = option(4000, "longer instructions are rejected (instruction_too_long)")
    min_response_chars: int = option(2, "shorter responses are dropped (response_too_short)")
    max_response_chars: int = option(12000, "longer responses are dropped (response_too_long)")
    max_repeated_ngram_ratio: float = option(0.3, "share of word n-grams that may repeat an earlier one")
    repetition_ngram: int = option(4, "n of those n-grams (words; CJK characters count as words)")
    max_garbled_ratio: float = option(0.2, "suspicious chars / chars outside printable ASCII")
    reject_truncated: bool = option(True, "drop responses that hit max_tokens (finish_reason \"length\")")
    languages: list[str] = option(["en", "zh"], "allowed instruction scripts (en, zh, other); empty list: any")


class Finding(NamedTuple):
    reason: str
    detail: str


RESPONSE_REASONS = ("truncated", "empty_response", "response_too_short", "response_too_long", "garbled",
                    "repetition", "unbalanced_code_fence", "invalid_json", "language_mismatch")


# -- text measures ----------------------------------------------------------------------------
def _cp1252_chars(lo: int, hi: int) -> str:
    raw = bytes(range(lo, hi + 1))
    return "".join(sorted(set(raw.decode("cp1252", "ignore") + raw.decode("latin-1"))))


_CONT = re.escape(_cp1252_chars(0x80, 0xBF))  # UTF-8 continuation bytes misread as cp1252/latin-1
_MOJIBAKE = re.compile(f"[{re.escape(_cp1252_chars(0xC2, 0xDF))}][{_CONT}]"
                       f"|[{re.escape(_cp1252_chars(0xE0, 0xEF))}][{_CONT}]{{2}}"
                       f"|[{re.escape(_cp1252_chars(0xF0, 0xF4))}][{_CONT}]{{3}}"
                       "|[\u0120\u010a]")  # Ġ Ċ: byte-level BPE markers leaking into text
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def garbled_counts(text: str) -> tuple[int, int, int]:
    """(U+FFFD count, control chars, chars inside mojibake sequences)."""
    mojibake = sum(len(m) for m in _MOJIBAKE.findall(text))
    rest = _MOJIBAKE.sub("", text)  # count each char once: C1 controls are also mojibake bytes
    return rest.count("\ufffd"), len(_CONTROL.findall(rest)), mojibake


_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.S)


def script_shares(text: str) -> dict[str, float]:
    """Shares of Han, Latin and other letters outside code; empty when there are no letters."""
    counts = collections.Counter()
    for char in _CODE.sub(" ", text):
        if HAN_CHAR.match(char):
            counts["han"] += 1
        elif char.isalpha():
            counts["latin" if ord(char) < 0x250 else "other"] += 1
    total = sum(counts.values())
    return {k: counts[k] / total for k in ("han", "latin", "other")} if total else {}


def script_language(text: str) -> str:
    """"zh", "en", "other", or "" (no letters). Han counts from 15%: one character is a word."""
    shares = script_shares(text)
    if not shares:
        return ""
    if shares["other"] > max(shares["han"], shares["latin"]):
        return "other"
    return "zh" if shares["han"] >= 0.15 else "en"


# -- checks -----------------------------------------------------------------------------------
def check_length(text: str, lo: int, hi: int, what: str) -> Finding | None:
    size = len(text.strip())
    if size == 0:
        return Finding(f"empty_{what}", f"{what} is blank")
    if size < lo:
        return Finding(f"{what}_too_short", f"{size} chars < {lo}")
    if size > hi:
        return Finding(f"{what}_too_long", f"{size:,} chars > {hi:,}")
    return None


def check_truncated(response: Response) -> Finding | None:
    if response.finish_reason == "length":
        return Finding("truncated", "finish_reason=length: hit max_tokens")
    return None


def check_repetition(text: str, n: int, max_ratio: float) -> Finding | None:
    ratio = repeated_ngram_ratio(text, n)
    if ratio > max_ratio:
        return Finding("repetition", f"repeated {n}-gram ratio {ratio:.2f} > {max_ratio:.2f}")
    return None


def check_garbled(text: str, max_ratio: float) -> Finding | None:
    replacement, control, mojibake = garbled_counts(text)
    suspicious = replacement + control + mojibake
    base = sum(1 for c in text if ord(c) > 0x7E or (c < " " and c not in "\t\n\r"))
    ratio = suspicious / base if base else 0.0
    if ratio > max_ratio:
        return Finding("garbled", f"garbled ratio {ratio:.2f} > {max_ratio:.2f} ({replacement} U+FFFD, "
                                  f"{control} control, {mojibake} mojibake chars)")
    return None


_FENCE = re.compile(r"^ {0,3}```", re.M)


def check_code_fences(text: str) -> Finding | None:
    fences = len(_FENCE.findall(text))
    if fences % 2:
        return Finding("unbalanced_code_fence", f"{fences} ``` fence lines: a code block is not closed")
    return None


_ASKS_JSON = re.compile(r"\b(?:in|as|into|return|output|produce|respond with|reply with|valid)\s+"
                        r"(?:an?\s+|the\s+|valid\s+)*json\b|\bjson[\s-]*(?:format|object|array|output)"
                        r"|json\s*格式|以\s*json", re.I)
_JSON_BLOCK = re.compile(r"```(?:json)?\s*\n(.*?)```", re.S | re.I)


def asks_for_json(instruction: str) -> bool:
    return bool(_ASKS_JSON.search(instruction))


def check_json(text: str, instruction: str) -> Finding | None:
    """When the instruction asks for JSON, a fenced block, the whole text, or the value that
    starts at the first { or [ must parse."""
    if not asks_for_json(instruction):
        return None
    error = "no JSON value found"
    for candidate in [*_JSON_BLOCK.findall(text), text.strip()]:
        try:
            json.loads(candidate)
            return None
        except (ValueError, RecursionError) as err:
            error = f"{type(err).__name__}: {err}"[:160]
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start >= 0:
        try:
            json.JSONDecoder().raw_decode(text, start)
            return None
        except (ValueError, RecursionError) as err:
            error = f"{type(err).__name__}: {err}"[:160]
    return Finding("invalid_json", f"the instruction asks for JSON; none parses ({error})")


def check_language_allowed(instruction: str, allowed: list[str]) -> Finding | None:
    language = script_language(instruction)
    if allowed and language and language not in allowed:
        return Finding("wrong_language",
                       f"script {language} {_shares(instruction)}; allowed: {', '.join(allowed)}")
    return None


_LANGUAGE_SWITCH = re.compile(r"translat|\b(?:in|into|to) (?:chinese|english|mandarin)\b"
                              r"|中文|英文|英语|翻译|译成", re.I)


def check_language_match(text: str, instruction: str) -> Finding | None:
    asked, answered = script_language(instruction), script_language(text)
    if asked and answered and asked != answered and not _LANGUAGE_SWITCH.search(instruction):
        return Finding("language_mismatch", f"instruction is {asked}, response is {answered} {_shares(text)}")
    return None


def _shares(text: str) -> str:
    return "(" + ", ".join(f"{k} {v:.2f}" for k, v in script_shares(text).items()) + ")"


def instruction_finding(instruction: str, cfg: RulesConfig) -> Finding | None:
    return (check_length(instruction, cfg.min_instruction_chars, cfg.max_instruction_chars, "instruction")
            or check_garbled(instruction, cfg.max_garbled_ratio)
            or check_repetition(instruction, cfg.repetition_ngram, cfg.max_repeated_ngram_ratio)
            or check_language_allowed(instruction, cfg.languages))


def response_finding(response: Response, instruction: str, cfg: RulesConfig) -> Finding | None:
    text = response.text
    return ((check_truncated(response) if cfg.reject_truncated else None)
            or check_length(text, cfg.min_response_chars, cfg.max_response_chars, "response")
            or check_garbled(text, cfg.max_garbled_ratio)
            or check_repetition(text, cfg.repetition_ngram, cfg.max_repeated_ngram_ratio)
            or check_code_fences(text)
            or check_json(text, instruction)
            or check_language_match(text, instruction))


def dominant_reason(findings: list[Finding]) -> str:
    """The most common reason; ties go to the earlier check."""
    counts = collections.Counter(f.reason for f in findings)
    return max(counts, key=lambda r: (counts[r], -RESPONSE_REASONS.index(r)))


def apply_rules(record: Record, cfg: RulesConfig) -> Record:
    found = instruction_finding(record.instruction, cfg)
    if found:
        return record.rejected(STAGE, found.reason, f"instruction: {found.detail}")
    if not record.responses:
        return record.rejected(STAGE, "no_responses", "the record has no responses")
    findings = [(i, response_finding(r, record.instruction, cfg)) for i, r in enumerate(record.responses)]
    dropped = [(i, f) for i, f in findings if f]
    if len(dropped) == len(record.responses):
        detail = "; ".join(f"response {i}: {f.reason} ({f.detail})" for i, f in dropped)
        return record.rejected(STAGE, dominant_reason([f for _, f in dropped]), detail)
    kept = [r for (i, f), r in zip(findings, record.responses) if not f]
    checked = dataclasses.replace(record, responses=kept,
                                  language=record.language or script_language(record.instruction))
    return checked.with_lineage(STAGE, params={"dropped": {str(i): f.reason for i, f in dropped}})


class RulesFn(RecordFn):
    stage = STAGE

    def __init__(self, cfg: RulesConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def transform(self, record: Record) -> Record:
        return apply_rules(record, self.cfg)


class RulesStage(beam.PTransform):
    """Records with responses → StageResult(kept, rejected)."""

    def __init__(self, cfg: RulesConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll) -> StageResult:
        return run_stage(pcoll, "Rules", RulesFn(self.cfg))
