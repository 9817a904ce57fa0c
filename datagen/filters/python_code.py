"""Python in model-written text: the tests an instruction carries and the code an answer gives.

`valid_tests` keeps the `assert` lines (from generate's output, kept through evolve) that parse
and call a function the instruction names; anything else would test nothing. `extract_code`
finds the program in an answer, for the consistency stage's sandbox runs; `defined_names` and
`called_names` say whether the tests call anything the answer defines (if not, the answer fails).
"""
from __future__ import annotations

import ast
import re
import warnings

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3"}


def valid_tests(lines: list[str] | tuple[str, ...], instruction: str) -> tuple[str, ...]:
    """Assert lines that parse and call a function the instruction names (else they test nothing)."""
    names = set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", instruction)) | set(re.findall(r"`(\w+)`", instruction))
    kept = []
    for line in lines:
        line = line.strip().strip("`")
        try:
            tree = ast.parse(line)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert) and calls & names:
            kept.append(line)
    return tuple(dict.fromkeys(kept))[:5]


def parses(code: str) -> bool:
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" and friends are not our business
            warnings.simplefilter("ignore")
            ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def extract_code(text: str) -> str | None:
    """The Python code of a response: its fenced python blocks that parse, joined in order;
    if none parse, the first python block (so the run reports the SyntaxError); unfenced text
    counts when it parses as Python with a definition or statement in it."""
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    good = [b for b in blocks if b.strip() and parses(b)]
    if good:
        return "\n\n".join(b.strip("\n") for b in good)
    if blocks and blocks[0].strip():
        return blocks[0]
    stripped = text.strip()
    if stripped and parses(stripped) and re.search(r"^(def|class|import|from|print)\b", stripped, re.M):
        return stripped
    return None


def defined_names(code: str) -> set[str]:
    """Names the program binds at its top level: functions, classes, assignments, imports."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def called_names(tests: str) -> set[str]:
    """Plain names the tests call (`f(...)`), builtins included."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    return {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
