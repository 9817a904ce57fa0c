"""Comments in configs/ that send the reader to a README section (`README "Section"`) name a section
that exists: the quoted text starts a heading of README.md (a comment may wrap it over lines)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTER = re.compile(r'README\s+"([^"]+)"')


def comment_text(path: Path) -> str:
    """The file's comments as one text (wrapped comments joined with a space)."""
    lines = [line.split("#", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines() if "#" in line]
    return " ".join(lines)


def headings() -> list[str]:
    return [line.lstrip("#").strip() for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("#")]


def test_every_readme_section_a_config_names_exists():
    pointers = {(str(path.relative_to(ROOT)), name) for path in sorted((ROOT / "configs").rglob("*.yaml"))
                for name in POINTER.findall(comment_text(path))}
    assert pointers  # the pattern still finds them
    sections = headings()
    missing = sorted((path, name) for path, name in pointers if not any(h.startswith(name) for h in sections))
    assert not missing, missing
