"""The import direction of the four packages, read from the source (imports inside functions too).

pipelines → posttrain → rewards → datagen: a package imports only the ones to its right, so
there is no cycle and datagen imports none of the others. Within datagen no stage file imports
another one; the text heuristics and helpers they share live in shared modules. The folders say
what a file is: datagen/stages/ holds the stages and nothing else (one `<Name>Stage` transform a
file), posttrain/trainers/ a config beside every trainer, posttrain/online/ the online round loop.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["datagen", "rewards", "posttrain", "pipelines"]  # each may import only those before it
STAGES = ["seeds", "generate", "evolve", "dedup", "decontam", "respond", "rules", "consistency", "critique",
          "judge_check"]
# The one stage that uses another: the judge check grades with the critique stage's own prompts and parser
# (a copy would drift from what the stage asks).
STAGE_USES_STAGE = {("datagen.stages.judge_check", "datagen.stages.critique")}


def stage_class(stage: str) -> str:
    return "".join(part.capitalize() for part in stage.split("_")) + "Stage"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, wherever it stands."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def files_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_packages_import_only_the_layers_below(package):
    allowed = set(LAYERS[:LAYERS.index(package) + 1])
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for path in files_of(package) for line, target in imported_modules(path)
             if target.split(".")[0] in LAYERS and target.split(".")[0] not in allowed]
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_stages_folder_holds_the_stages_and_only_them():
    files = {p.stem for p in (ROOT / "datagen" / "stages").glob("*.py")} - {"__init__"}
    assert files == set(STAGES)
    for stage in STAGES:
        tree = ast.parse((ROOT / "datagen" / "stages" / f"{stage}.py").read_text(encoding="utf-8"))
        classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        assert stage_class(stage) in classes, f"datagen/stages/{stage}.py defines no {stage_class(stage)}"


def test_every_trainer_has_its_config_beside_it():
    trainers = {p.stem.removesuffix("_trainer") for p in (ROOT / "posttrain" / "trainers").glob("*_trainer.py")}
    assert trainers == {"sft", "dpo", "rm"}
    for name in trainers:
        assert (ROOT / "posttrain" / "trainers" / f"{name}_config.py").is_file()
        assert (ROOT / "posttrain" / f"{name}.py").is_file(), f"`accelerate launch posttrain/{name}.py` needs its entry point"


def test_the_online_round_loop_lives_in_posttrain_online():
    """No round-loop module outside posttrain/online/ (it was spread over dpo_rounds.py and dpo_state.py)."""
    stray = [p.relative_to(ROOT) for p in files_of("posttrain")
             if ("round" in p.stem or p.stem.startswith("online")) and p.parent.name != "online"]
    assert not stray, stray


def test_no_datagen_module_imports_a_stage_file():
    """Stages are leaves: neither another stage nor a shared module imports one (pipelines compose them)."""
    stage_modules = {f"datagen.stages.{stage}" for stage in STAGES}
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for path in files_of("datagen") for line, target in imported_modules(path)
             if target in stage_modules and module_name(path) != target
             and (module_name(path), target) not in STAGE_USES_STAGE]
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checks above are only as good as this reader: lazy, relative and `from x import y` forms."""
    package = tmp_path / "datagen"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = package / "respond.py"
    source.write_text("import posttrain.moe\nfrom . import generate\nfrom .text import words\n"
                      "def f():\n    from rewards import scoring\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert {target for _, target in imported_modules(source)} == {
        "posttrain.moe", "datagen", "datagen.generate", "datagen.text", "datagen.text.words",
        "rewards", "rewards.scoring"}
