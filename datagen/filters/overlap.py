"""How much of a benchmark item a text contains: the four tests of the decontam stage.

Words are `match_words`: datagen.filters.text.words (NFKC, case-folded, punctuation dropped, each Han
character a word) of the text after `fold` — Traditional Chinese folded to Simplified (OpenCC's character
table, datagen/data/ts_characters.txt) and thousands separators dropped ("1,200" = "1200"), the same
on both sides.

- exact (`ExactIndex`): the text shares one `n`-gram with an item (13: the GPT-3 test); items shorter
  than `n` but at least `min_n` words are matched whole.
- short (`ShortIndex`): an item under `n` words (235 of the 600 math items have fewer than 8: no n-gram
  test sees them) equals a sentence of the text, or a run of its sentences, after normalisation
  (`short_key`): numbers and operators as tokens ("plus" = "+", "3 x 4" = "3 × 4", "40 percent" =
  "40%", "3加4" = "3 + 4"), content words stemmed, stopwords and framing words ("what is", "compute",
  "calculate", "find", "请计算", "等于多少") dropped. "Compute 3+4." is "What is 3 + 4?"; "What is
  3 + 5?" is not, nor is "3 + 4 = 7" (a sentence that solves the item does not state it).
- overlap (`OverlapIndex`, Tülu 3): the share of an item's words covered by the `n`-grams (8) it
  shares with the text; at or above `threshold` (0.5) the text contains most of the item, edits and
  all.
- paraphrase (`ParaphraseIndex`): the item's task statement (for code, its docstring up to the
  examples) and the text as content words (stopwords dropped, crude stems: "vowels" = "vowel"); the
  items sharing a rare content bigram with the text (one that at most `rare_items` items contain,
  so "returns the number" alone finds nothing) are compared with difflib, Cosmopedia-style: the text
  is a paraphrase when the matched content words are at least `min_words` and at least `ratio` of the
  shorter side, and every number of the item appears in the text (the same problem with other
  numbers is another instance, not a paraphrase). "Write a function that takes a string and returns
  the number of vowels in that string" is HumanEval/64 in other words; "... the number of words" is not.

Every index maps an item back to its label (benchmark name and item id), which rejection details name.
"""
from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

from datagen.filters.text import HAN_CHAR, words

TS_TABLE = Path(__file__).resolve().parents[1] / "data" / "ts_characters.txt"

_STOPWORDS = set("""a an the of in on at to for from by with and or but not no is are was were be been being am do does
did has have had it its this that these those there here which who whom whose what when where why how
as if then than so such can could would should will shall may might must into onto about over under
each every any some all both either neither one your you i we they he she them his her our their my me
us also very just only please given using use""".split()) | set("的了是在和与及或等把被这那个一之其也都而着")
_DOCSTRING = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
_EXAMPLES = re.compile(r"^\s*(?:>>>|for example|example|examples|e\.g\.|note:)", re.I | re.M)


@functools.cache
def _to_simplified() -> dict[int, str]:
    table = {}
    for line in TS_TABLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            traditional, simplified = line.split("\t")
            table[ord(traditional)] = simplified
    return table


_THOUSANDS = re.compile(r"(?<![\d,.])\d{1,3}(?:,\d{3})+(?![\d]|,\d)")


def fold(text: str) -> str:
    """NFKC, Traditional Chinese as Simplified, numbers without thousands separators ("1,200" → "1200")."""
    text = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text)
    return unicodedata.normalize("NFKC", text).translate(_to_simplified())


def match_words(text: str) -> list[str]:
    """The words every test compares: `words` of the folded text."""
    return words(fold(text))


def content_words(text: str) -> list[str]:
    out = []
    for word in match_words(text):
        if word in _STOPWORDS or (len(word) == 1 and word.isascii() and not word.isdigit()):
            continue
        out.append(_stem(word))
    return out


def _stem(word: str) -> str:
    """Crude English suffixes off, the same on both sides: "vowels" = "vowel", "takes" = "take"."""
    if not word.isascii():
        return word
    if word.endswith("ing") and len(word) >= 7:
        return word[:-3]
    if word.endswith("ed") and len(word) >= 6:
        return word[:-2]
    if word.endswith(("ses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) >= 4:
        return word[:-1]
    return word


def task_statement(text: str) -> str:
    """What a benchmark item asks: a code prompt's docstrings up to the examples, else the text."""
    docs = [a or b for a, b in _DOCSTRING.findall(text)]
    if not docs:
        return text
    statement = max(docs, key=len)
    cut = _EXAMPLES.search(statement)
    return statement[: cut.start()] if cut else statement


class ExactIndex:
    """n-gram → item label, plus the lengths of whole short items."""

    def __init__(self, n: int, min_n: int) -> None:
        self.n, self.min_n = n, min_n
        self.grams: dict[str, str] = {}
        self.lengths: set[int] = set()

    def add(self, text: str, label: str) -> None:
        tokens = match_words(text)
        if len(tokens) < self.min_n:
            return
        size = min(len(tokens), self.n)
        self.lengths.add(size)
        for i in range(len(tokens) - size + 1):
            self.grams.setdefault(" ".join(tokens[i:i + size]), label)

    def find(self, text: str) -> tuple[str, str] | None:
        """(label, n-gram) of the first shared n-gram in `text`, or None."""
        tokens = match_words(text)
        for size in sorted(self.lengths, reverse=True):
            for i in range(len(tokens) - size + 1):
                gram = " ".join(tokens[i:i + size])
                if gram in self.grams:
                    return self.grams[gram], gram
        return None


_HAN = HAN_CHAR.pattern[1:-1]
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORD = re.compile(rf"\b(?:({'|'.join(_TENS)})(?:[- ]({'|'.join(_UNITS[1:10])}))?|({'|'.join(_UNITS)}))\b")
_NUM = r"\d+(?:\.\d+)?"
# Spellings of one operator, and the framing of a question, rewritten before the key is read.
_KEY_REWRITES = [(re.compile(p), r) for p, r in [
    (r"(?<=\d)\s*[x*·]\s*(?=\d)", " × "), (r"\bmultiplied by\b|\btimes\b", " × "),
    (r"\bdivided by\b|/", " ÷ "), (r"\bplus\b", " + "), (r"\bminus\b|[−–—]", " - "),
    (r"\bper ?cent\b", " % "), (r"\bis equal to\b|\bequals?\b", " = "),
    (rf"(?<=\d)\s*(?:加上|加)\s*(?=\d)", " + "), (rf"(?<=\d)\s*(?:减去|减)\s*(?=\d)", " - "),
    (rf"(?<=\d)\s*(?:乘以|乘)\s*(?=\d)", " × "), (rf"(?<=\d)\s*除以\s*(?=\d)", " ÷ "),
    (rf"百分之\s*({_NUM})", r" \1% "), (rf"({_NUM})\s*的\s*({_NUM})\s*%", r" \2% of \1 "),
    (r"(?:等于|是|得)(?:多少|几)|请|计算|求出|求", " "), (r"等于", " = "),
]]
_KEY_TOKEN = re.compile(rf"{_NUM}|[-+×÷%=^<>]|[{_HAN}]|(?:(?![{_HAN}])[^\W\d_])+")
_FRAMING = set("""what compute calculate calculation evaluate find work out value result answer determine tell much
quickly exactly solve""".split())
_SENTENCE = re.compile(r"\.(?=\s|$)|(?<!\d):|:(?!\d)|[?!;。\n]")


def _number(match: re.Match) -> str:
    tens, unit, alone = match.groups()
    if alone:
        return str(_UNITS.index(alone))
    return str(20 + 10 * _TENS.index(tens) + (_UNITS.index(unit) if unit else 0))


def short_key(text: str) -> tuple[str, ...]:
    """What a short item states, in a form its restatements share: numbers, operators and stemmed
    content words in order ("Compute 3+4." and "What is 3 + 4?" → ('3', '+', '4'))."""
    text = _NUMBER_WORD.sub(_number, fold(text).casefold())
    for pattern, replacement in _KEY_REWRITES:
        text = pattern.sub(replacement, text)
    key = [_stem(t) for t in _KEY_TOKEN.findall(text) if t not in _STOPWORDS and t not in _FRAMING]
    while key and key[-1] == "=":  # "3 + 4 = ?" asks what "3 + 4" asks
        key.pop()
    return tuple(key)


def sentence_keys(text: str) -> list[tuple[str, ...]]:
    """`short_key` of every sentence (clause ending in . ? ! ; : or a line break) that has one."""
    return [key for key in map(short_key, _SENTENCE.split(fold(text))) if key]


class ShortIndex:
    """Items under `n` words, matched whole after normalisation: a sentence of the text, or a run of
    consecutive sentences, has the item's `short_key` (at least `min_tokens` tokens)."""

    def __init__(self, n: int, min_tokens: int = 2) -> None:
        self.n, self.min_tokens = n, min_tokens
        self.keys: dict[tuple[str, ...], str] = {}
        self.sentences = 1  # the most sentences of an indexed item

    def add(self, text: str, label: str) -> None:
        if len(match_words(text)) >= self.n:
            return
        parts = sentence_keys(text)
        key = tuple(t for part in parts for t in part)
        if len(key) >= self.min_tokens:
            self.keys.setdefault(key, label)
            self.sentences = max(self.sentences, len(parts))

    def find(self, text: str) -> tuple[str, str] | None:
        """(label, the matched key as text) of the first item `text` states whole, or None."""
        if not self.keys:
            return None
        parts = sentence_keys(text)
        for start in range(len(parts)):
            key: tuple[str, ...] = ()
            for part in parts[start:start + self.sentences]:
                key += part
                if key in self.keys:
                    return self.keys[key], " ".join(key)
        return None


class OverlapIndex:
    """n-gram → [(item, position)]: which words of which items a text's n-grams cover."""

    def __init__(self, n: int, threshold: float) -> None:
        self.n, self.threshold = n, threshold
        self.grams: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
        self.items: list[tuple[str, int]] = []  # (label, length in words)

    def add(self, text: str, label: str) -> None:
        tokens = match_words(text)
        if len(tokens) < self.n:
            return
        item = len(self.items)
        self.items.append((label, len(tokens)))
        for i in range(len(tokens) - self.n + 1):
            self.grams[tuple(tokens[i:i + self.n])].append((item, i))

    def find(self, text: str) -> tuple[str, float] | None:
        """(label, covered share) of the most covered item at or above the threshold, or None."""
        tokens = match_words(text)
        covered: dict[int, set[int]] = defaultdict(set)
        for gram in {tuple(tokens[i:i + self.n]) for i in range(len(tokens) - self.n + 1)}:
            for item, start in self.grams.get(gram, ()):
                covered[item].update(range(start, start + self.n))
        best = max(((len(c) / self.items[i][1], i) for i, c in covered.items()), default=None)
        if best is None or best[0] < self.threshold:
            return None
        return self.items[best[1]][0], round(best[0], 3)


class ParaphraseIndex:
    """Rare content bigram → items; candidates confirmed by difflib over content words."""

    def __init__(self, ratio: float, min_words: int, rare_items: int) -> None:
        self.ratio, self.min_words, self.rare_items = ratio, min_words, rare_items
        self.bigrams: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.items: list[tuple[str, list[str]]] = []  # (label, content words of the task statement)

    def add(self, text: str, label: str) -> None:
        content = content_words(task_statement(text))
        if len(content) < self.min_words:
            return
        item = len(self.items)
        self.items.append((label, content))
        for bigram in set(zip(content, content[1:])):
            self.bigrams[bigram].append(item)

    def find(self, text: str) -> tuple[str, float, str] | None:
        """(label, matched share, the matched words) of the best paraphrased item, or None."""
        content = content_words(text)
        if len(content) < self.min_words:
            return None
        candidates = {item for bigram in set(zip(content, content[1:]))
                      for item in self.bigrams.get(bigram, ()) if len(self.bigrams[bigram]) <= self.rare_items}
        best = None
        numbers = {w for w in content if w.isdigit()}
        for item in sorted(candidates):
            label, other = self.items[item]
            if not {w for w in other if w.isdigit()} <= numbers:
                continue  # other numbers: another instance of the same kind of problem, not a paraphrase
            matcher = difflib.SequenceMatcher(None, content, other, autojunk=False)
            blocks = [b for b in matcher.get_matching_blocks() if b.size]
            matched = sum(b.size for b in blocks)
            share = matched / min(len(content), len(other))
            if matched >= self.min_words and share >= self.ratio and (best is None or share > best[1]):
                shown = " ".join(w for b in blocks for w in content[b.a:b.a + b.size])
                best = (label, round(share, 3), shown)
        return best
