"""Text heuristics that several datagen stages share, so that no stage imports another.

- Chinese text: `is_mostly_cjk` (more than half of the letters are CJK ideographs) picks Chinese
  prompts in generate, evolve and respond; `HAN_CHAR` and `words` (NFKC, case-folded, each Han
  character a word of its own) are the word splitting of rules, dedup and decontam.
- Instruction shape (generate and evolve): `looks_like_instruction` (a "?", an imperative or
  question word first, or a request verb), `looks_like_answer` (opens like a solution, or has a
  `\\boxed`), `long_enough` (10 characters, 4 in Chinese).
- `repeated_ngram_ratio` (rules' repetition check, and evolve's on its rewrites).
- What small models wrap around a list of instructions: `MARKER` (list markers "1.", "1)", "1、",
  "-", "**1.**", "Question 2:"), `CHATTER` ("Sure! Here are 3 questions:"), `ANSWER` (the opening of
  an answer); `unmark` strips markers and `clean_instruction` labels, quotes and bold.
"""
from __future__ import annotations

import re
import unicodedata

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
HAN_CHAR = re.compile(f"[{_HAN}]")
_WORD = re.compile(rf"[{_HAN}]|(?:(?![{_HAN}])[^\W_])+")

MARKER = re.compile(r"^\s*(?:#{1,6}\s*)?(?:\*\*)?(?:\d{1,3}\s*(?:[.):](?=\s|$|\*)|[、．：）])|[（(]\d{1,3}[)）]"
                    r"|[一二三四五六七八九十]{1,3}\s*[、.．]|[-*•·](?=\s)"
                    r"|(?:instruction|question|task|problem|prompt|q)\s*\d{0,3}\s*[:.：])\s*(?:\*\*)?\s*", re.I)
_LABEL = re.compile(r"^(?:(?:new|rewritten|harder|clearer|evolved)\s+)?(?:instruction|question|task|problem|"
                    r"prompt)\s*\d{0,3}\s*[:：]\s*", re.I)
# Lines that are talk about the output, not part of it ("Sure! Here are 3 questions:").
CHATTER = re.compile(r"^\s*(?:sure\b|certainly|of course|okay[,!.]|ok[,!.]|great[,!.]|here(?:'s| is| are)\b|"
                     r"i hope|i(?:'ve| have) (?:created|written|generated|come up)|let me know|feel free|"
                     r"note[:：]|these (?:are|questions|tasks|problems|instructions)\b|good luck|enjoy[!.]|"
                     r"(?:in )?this (?:version|rewrite|new|harder|clearer|task|instruction)\b|好的|以下是)", re.I)
# Openings of an answer rather than a question or request.
ANSWER = re.compile(r"^\s*(?:\**(?:the )?(?:final )?answer\b|\**solution\s*[:：]|explanation\s*[:：]|step 1\b|"
                    r"to solve (?:this|the)\b|let(?:'s| us) (?:solve|start|break|think|calculate|find)\b|"
                    r"therefore\b|so the (?:answer|result)\b|答案|解答|解[:：])", re.I)
_START = set("write explain describe calculate compute find determine prove show list compare discuss implement "
             "create give summarize summarise analyze analyse solve evaluate identify design suggest translate "
             "rewrite define estimate outline convert count reverse sort build make plan draft compose name state "
             "derive simplify classify predict imagine tell argue propose recommend modify fix debug optimize "
             "generate check verify given suppose assume how what why which who when where can could "
             "would should please consider use develop choose".split())
_REQUEST = re.compile(r"\b(?:please|write|explain|describe|calculate|compute|find|determine|implement|solve|"
                      r"prove|compare|discuss|summari[sz]e|estimate|evaluate|design|create|list)\b", re.I)
_ZH_REQUEST = re.compile(r"[？吗请]|什么|如何|为什么|怎么|哪|多少|计算|求解|编写|解释|描述|分析|比较|证明|设计")


def is_mostly_cjk(text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha()]
    return bool(letters) and sum(bool(_CJK.match(ch)) for ch in letters) / len(letters) > 0.5


def words(text: str) -> list[str]:
    """Normalized words: NFKC, case-folded; each Han character is a word of its own."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def looks_like_instruction(text: str) -> bool:
    """A question or a request: '?', an imperative/question word first, or a request verb."""
    first = re.findall(r"[a-z']+", text.lower()[:40])
    return ("?" in text or "？" in text or (bool(first) and first[0] in _START)
            or bool(_REQUEST.search(text)) or bool(_ZH_REQUEST.search(text)))


def looks_like_answer(text: str) -> bool:
    return bool(ANSWER.match(text)) or "\\boxed" in text


def long_enough(text: str) -> bool:
    """Long enough to be an instruction: 10 characters, or 4 in Chinese."""
    return len(text) >= (4 if is_mostly_cjk(text) else 10)


def unmark(line: str) -> str:
    return MARKER.sub("", MARKER.sub("", line, count=1), count=1)  # "* 1. text" nests two markers


def clean_instruction(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip().strip("*").strip()
    text = _LABEL.sub("", text).strip()
    if len(text) >= 2 and text[0] in "\"'“「" and text[-1] in "\"'”」":
        text = text[1:-1].strip()
    return text[:-1].rstrip() + "." if text.endswith(":") else text


def repeated_ngram_ratio(text: str, n: int) -> float:
    """Share of word n-grams that repeat an earlier one (0 for texts under 2n words)."""
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if len(tokens) < 2 * n:
        return 0.0
    return 1 - len(set(grams)) / len(grams)
