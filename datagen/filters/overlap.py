"""How much of a benchmark item a text contains: the three tests of the decontam stage.

Words are datagen.filters.text.words (NFKC, case-folded, punctuation dropped, each Han character a word).

- exact (`ExactIndex`): the text shares one `n`-gram with an item (13: the GPT-3 test); items shorter
  than `n` but at least `min_n` words are matched whole.
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
import re
from collections import defaultdict

from datagen.filters.text import words

_STOPWORDS = set("""a an the of in on at to for from by with and or but not no is are was were be been being am do does
did has have had it its this that these those there here which who whom whose what when where why how
as if then than so such can could would should will shall may might must into onto about over under
each every any some all both either neither one your you i we they he she them his her our their my me
us also very just only please given using use""".split()) | set("的了是在和与及或等把被这那个一之其也都而着")
_DOCSTRING = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
_EXAMPLES = re.compile(r"^\s*(?:>>>|for example|example|examples|e\.g\.|note:)", re.I | re.M)


def content_words(text: str) -> list[str]:
    out = []
    for word in words(text):
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
        tokens = words(text)
        if len(tokens) < self.min_n:
            return
        size = min(len(tokens), self.n)
        self.lengths.add(size)
        for i in range(len(tokens) - size + 1):
            self.grams.setdefault(" ".join(tokens[i:i + size]), label)

    def find(self, text: str) -> tuple[str, str] | None:
        """(label, n-gram) of the first shared n-gram in `text`, or None."""
        tokens = words(text)
        for size in sorted(self.lengths, reverse=True):
            for i in range(len(tokens) - size + 1):
                gram = " ".join(tokens[i:i + size])
                if gram in self.grams:
                    return self.grams[gram], gram
        return None


class OverlapIndex:
    """n-gram → [(item, position)]: which words of which items a text's n-grams cover."""

    def __init__(self, n: int, threshold: float) -> None:
        self.n, self.threshold = n, threshold
        self.grams: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
        self.items: list[tuple[str, int]] = []  # (label, length in words)

    def add(self, text: str, label: str) -> None:
        tokens = words(text)
        if len(tokens) < self.n:
            return
        item = len(self.items)
        self.items.append((label, len(tokens)))
        for i in range(len(tokens) - self.n + 1):
            self.grams[tuple(tokens[i:i + self.n])].append((item, i))

    def find(self, text: str) -> tuple[str, float] | None:
        """(label, covered share) of the most covered item at or above the threshold, or None."""
        tokens = words(text)
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
