"""Reading the JSONL files the project ships (eval sets, judge calibration pairs): one JSON object a
line, blank lines skipped, every error naming the file and the line."""
from __future__ import annotations

import json
from pathlib import Path


def read_objects(path: Path, error: type[Exception], what: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; `error(...)` for a missing file, a line that is
    not JSON or not an object."""
    if not path.is_file():
        raise error(f"{what} file not found: {path}")
    items = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as err:
            raise error(f"{path}:{line_no}: invalid JSON ({err})") from None
        if not isinstance(item, dict):
            raise error(f"{path}:{line_no}: expected a JSON object")
        items.append((line_no, item))
    return items
