"""Does an instruction carry the context it refers to? Generated from a seed text, small models write
"What is the area of the rectangle?" about a rectangle that exists only in the seed, or "Summarize the
passage above" with no passage. Such an item has no right answer (its samples cannot agree) and
teaches nothing. `missing_context(text)` returns (reason, detail) or None:

- `refers_to_absent_text`: a text, code or earlier item it does not include — "the passage above",
  "according to the text", "this code", "the following" with nothing following, 上文, 文中, 这段代码,
  根据以上材料. A reference counts as present when the instruction holds material for it: a code block
  or inline code for code, a quotation or a colon followed by text for a passage.
- `refers_to_undefined_object`: "the rectangle", "the numbers", "the function", 这个长方形 — a definite
  object never introduced ("a rectangle 6 cm long", "two numbers"), with no specifics right after it
  ("the rectangle with sides 3 and 4", "the list [1, 2]", "the string 'abc'").

Used by generate (nothing) and evolve: the clarify step rewrites such an instruction with its seed
text, and every evolution step rejects an output that lost its context (datagen/stages/evolve.py).
"""
from __future__ import annotations

import re

ABSENT_TEXT = "refers_to_absent_text"
UNDEFINED_OBJECT = "refers_to_undefined_object"

_TEXT_NOUNS = r"text|passage|paragraph|article|excerpt|story|poem|essay|document|speech|letter|dialogue|transcript"
_CODE_NOUNS = r"code|snippet|program|script|function|query"
_OBJECT_NOUNS = (r"rectangle|triangle|square|circle|cube|cylinder|sphere|cone|polygon|trapezoid|parallelogram|"
                 r"prism|diagram|graph|chart|table|figure|equation|numbers|sequence|matrix|dataset|data|"
                 r"experiment|survey|list|array|string|dictionary|image|picture|photo|map|recipe")
_NOUNS = rf"{_OBJECT_NOUNS}|{_CODE_NOUNS}|{_TEXT_NOUNS}"
_ABOVE = re.compile(
    rf"\b(?:(?:mentioned|described|given|shown|stated|listed|provided|discussed|presented|written|quoted)\s+"
    rf"(?:above|below|earlier|previously)|the\s+above\b|above[- ](?:{_NOUNS})\b|(?:{_NOUNS})\s+above\b|"
    rf"aforementioned|(?:in|from|according to|based on|as in)\s+the\s+(?:{_TEXT_NOUNS}|given text|provided text|"
    rf"reading|author)\b|(?:this|the given|the provided|the previous)\s+(?:{_TEXT_NOUNS}|code|snippet|program|"
    rf"script)\b)", re.I)
_FOLLOWING = re.compile(r"\bthe\s+following\b(?:\s+\w+){0,3}\s*[.?!:]?\s*$", re.I)
# "the rectangle", "this list", "the right triangle": up to two lower-case words between (a capitalised one
# makes a name: "the Socratic method"); code and text nouns right after the determiner ("the kidneys function"
# is a verb), where "that" may be one too ("that string", but "that takes a list" is a clause)
_DEFINITE = re.compile(rf"\b(?:(?:the|this|these|those|the given|the provided)\s+((?:[a-z][\w-]*\s+){{0,2}}?)"
                       rf"({_OBJECT_NOUNS})|(?:the|this|these|those|the given|the provided|that)\s+()"
                       rf"({_CODE_NOUNS}|{_TEXT_NOUNS}))\b")
_INTRODUCED = r"\b(?:a|an|one|two|three|four|five|six|some|any|each|every|your|\d+)\s+(?:[\w-]+\s+){{0,4}}?{noun}"
# specifics right after the object, in the same sentence: "the rectangle with sides 3 and 4", "the list [1, 2]"
_SPECIFICS = re.compile(r"^[^\w.?!;]{0,3}(?:[^\s.?!;]+\s+){0,6}?[^\s.?!;]*?(?:\d|=|[\"'`“‘「\[(](?=\w)|"
                        r"\b(?:with|whose|of length|of side|of radius|named|called|of an?|containing|[A-Z]{2,}\b))")
_MAKING = re.compile(r"\b(?:write|create|compose|draft|give|produce|generate|design|implement|define|make|build)\b"
                     r"[^.?!]*$", re.I)
_MATERIAL = re.compile(r"```|`[^`]+`|(?<!\w)[\"“「'][^\"”」']{12,}[\"”」'](?!\w)|[:：]\s*\S.{60,}", re.S)
_ZH_ABSENT = re.compile(r"上文|上述|文中|原文|本文|以上(?:内容|材料|文字|段落|短文|信息|代码)|"
                        r"(?:根据|阅读|参考|结合)(?:这段|这篇|该|以上|上面|下面|下列|所给|给定)?(?:的)?"
                        r"(?:文字|文章|段落|短文|材料|内容|文本|信息|诗歌?)|"
                        r"(?:这段|这篇|该|此|上面的?|下面的?|给定的?)(?:话|文字|文章|段落|短文|代码|程序|函数|诗)")
_ZH_OBJECT = re.compile(r"(?:这个|这|该|此|那个)(?:长方形|矩形|三角形|正方形|圆形?|梯形|平行四边形|方程|"
                        r"算式|数列|列表|数组|表格|图表?|实验|函数|程序|代码)")


def missing_context(text: str) -> tuple[str, str] | None:
    """(reason, detail) when `text` refers to context it does not contain, else None."""
    has_material = bool(_MATERIAL.search(text))
    for pattern in (_ABOVE, _ZH_ABSENT):
        match = pattern.search(text)
        if match and not has_material:
            return ABSENT_TEXT, f"{match.group(0).strip()!r} is not in the instruction"
    following = _FOLLOWING.search(text)
    if following:
        return ABSENT_TEXT, f"{following.group(0).strip()!r} is followed by nothing"
    zh = _ZH_OBJECT.search(text)
    if zh and not re.search(r"\d", text[zh.end():zh.end() + 30]) and not has_material:
        return UNDEFINED_OBJECT, f"{zh.group(0)!r} is never described"
    for match in _DEFINITE.finditer(text):
        noun = match.group(2) or match.group(4)
        if _resolved(text, match, noun, has_material):
            continue
        return UNDEFINED_OBJECT, f"{match.group(0).strip()!r} is never introduced"
    return None


def _resolved(text: str, match: re.Match, noun: str, has_material: bool) -> bool:
    before, after = text[:match.start()], text[match.end():]
    singular = noun[:-1] if noun.lower().endswith("s") and noun.lower() not in ("class",) else noun
    introduced = re.compile(_INTRODUCED.format(noun=rf"(?:{re.escape(singular)}s?|{re.escape(noun)})\b"), re.I)
    if introduced.search(before) or _SPECIFICS.match(after) or _MAKING.search(before):
        return True  # introduced earlier, specified right after, or what the instruction asks to make
    # a code block or a quoted passage supplies code or text, never "the rectangle"
    return has_material and not re.fullmatch(_OBJECT_NOUNS, noun, re.I)
