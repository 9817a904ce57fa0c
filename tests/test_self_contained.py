"""Self-contained instructions: what the demo model wrote about context only its seed had, caught with
exact reasons (English and Chinese), and instructions that carry their context left alone."""
from __future__ import annotations

import pytest

from datagen.filters.self_contained import ABSENT_TEXT, UNDEFINED_OBJECT, missing_context


@pytest.mark.parametrize("text, reason, detail", [
    # written by SmolLM2-135M in the demo (seeds about a rectangle, an essay, a list comprehension)
    ("What is the area of the rectangle?", UNDEFINED_OBJECT, "'the rectangle' is never introduced"),
    ("What is the volume of the cylinder formed by this rectangle?", UNDEFINED_OBJECT,
     "'the cylinder' is never introduced"),
    ("What are the main points of this essay?", ABSENT_TEXT, "'this essay' is not in the instruction"),
    ("What are the main themes of the essay?", UNDEFINED_OBJECT, "'the essay' is never introduced"),
    ("Summarize the passage above.", ABSENT_TEXT, "'passage above' is not in the instruction"),
    ("According to the text, why did the printing press spread?", ABSENT_TEXT,
     "'According to the text' is not in the instruction"),
    ("What does this code print?", ABSENT_TEXT, "'this code' is not in the instruction"),
    ("Find the mean of the numbers.", UNDEFINED_OBJECT, "'the numbers' is never introduced"),
    ("Explain the following:", ABSENT_TEXT, "'the following:' is followed by nothing"),
    ("As mentioned above, what is the boiling point?", ABSENT_TEXT, "'mentioned above' is not in the instruction"),
    ("根据上文，李白的诗有什么特点？", ABSENT_TEXT, "'上文' is not in the instruction"),
    ("这段代码的输出是什么？", ABSENT_TEXT, "'这段代码' is not in the instruction"),
    ("这个长方形的面积是多少？", UNDEFINED_OBJECT, "'这个长方形' is never described"),
    # evolutions SmolLM2 wrote: a quoted question does not introduce its rectangle; apostrophes do not quote
    ('The question should be "What is the area of the rectangle?"', UNDEFINED_OBJECT,
     "'the rectangle' is never introduced"),
    ("What makes this essay persuasive? It's easy to get wrong, but there's one answer.", ABSENT_TEXT,
     "'this essay' is not in the instruction"),
])
def test_references_to_missing_context_with_exact_reasons(text, reason, detail):
    assert missing_context(text) == (reason, detail)


@pytest.mark.parametrize("text", [
    "A rectangle is 6 cm long and 4 cm wide. What is its area?",
    "What is the area of the rectangle with sides 6 cm and 4 cm?",
    "What is the area of a rectangle? Then double the rectangle's width and compare.",
    "Write a Python function count_vowels(s) that returns the number of vowels in s. The function should ignore case.",
    "Write a Python function that takes a list of strings and returns the number of vowels in the string.",
    "Sort the list [3, 1, 2] in ascending order.",
    "What does this code print?\n```python\nprint(1 + 1)\n```",
    "Summarize this passage: \"The printing press, developed around 1440, made books cheaper and spread literacy.\"",
    "Write a short poem about the first snow. The poem should rhyme.",
    "How does the Socratic method work?",
    "Why do we have seasons?",
    "Explain the following: why does ice float on water?",
    "一个长方形长6厘米，宽4厘米，它的面积是多少？",
    "请写一首关于春天的诗。",
    "Write the opening paragraph of a mystery story set in an old lighthouse.",
])
def test_self_contained_instructions_pass(text):
    assert missing_context(text) is None
