"""Every config field says what it is where it is declared, and `--help` lists every key."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing

import pytest

import datagen
import pipelines
from datagen.config_loader import describe_keys, help_of


def config_classes() -> dict[str, type]:
    """Every `*Config` dataclass defined in datagen/ and pipelines/, and the dataclasses nested in them."""
    found: dict[str, type] = {}
    for package in (datagen, pipelines):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if dataclasses.is_dataclass(obj) and isinstance(obj, type) and obj.__module__ == module.__name__ \
                        and obj.__name__.endswith("Config"):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    pending = list(found.values())
    while pending:  # nested sections (a field typed as another dataclass, or a mapping of them)
        for hint in typing.get_type_hints(pending.pop()).values():
            for tp in (hint, *typing.get_args(hint)):
                name = f"{getattr(tp, '__module__', '')}.{getattr(tp, '__qualname__', '')}"
                if dataclasses.is_dataclass(tp) and name not in found:
                    found[name] = tp
                    pending.append(tp)
    return found


CONFIGS = config_classes()


def test_the_scan_finds_the_synth_sections():
    assert {"pipelines.synth_config.SynthConfig", "datagen.stages.generate.GenerateConfig",
            "datagen.inference.registry.ModelConfig", "datagen.cache.CacheConfig"} <= set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_field_has_help_text(name):
    missing = [f.name for f in dataclasses.fields(CONFIGS[name]) if f.init and not help_of(f).strip()]
    assert not missing, f"{name}: fields without help text: {', '.join(missing)} (declare them with option())"


def test_synth_help_lists_every_key(capsys):
    from pipelines import synth
    from pipelines.synth_config import SynthConfig

    with pytest.raises(SystemExit) as done:
        synth.parse_args(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for key, _, _, text in describe_keys(SynthConfig):
        assert f"--{key} " in shown and text.split()[0] in shown, key
