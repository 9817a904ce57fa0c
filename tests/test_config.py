from dataclasses import dataclass, field
from typing import Literal

import pytest

from datagen.config_loader import ConfigError, load_config, parse_overrides


@dataclass
class Inner:
    k: int = 3
    rate: float = 0.5
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    mode: Literal["fast", "slow"] = "fast"
    inner: Inner = field(default_factory=Inner)
    table: dict[str, Inner] = field(default_factory=dict)
    limit: int | None = None
    flag: bool = False


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_reach_nested_fields(tmp_path):
    path = write(tmp_path, "inner:\n  k: 5\ntable:\n  x: {k: 1}\n")
    cfg = load_config(Outer, path, ["--inner.rate", "0.25", "--limit=7", "--flag", "--table.x.names", "[b, c]"])
    assert cfg.inner == Inner(k=5, rate=0.25, names=["a"])
    assert cfg.table["x"] == Inner(k=1, rate=0.5, names=["b", "c"])
    assert (cfg.limit, cfg.flag, cfg.mode) == (7, True, "fast")


@pytest.mark.parametrize("text, overrides, message", [
    ("inner:\n  kk: 1\n", [], "unknown key inner.kk"),
    ("", ["--inner.k", "three"], "inner.k: expected an integer"),
    ("mode: medium\n", [], "mode: expected one of ['fast', 'slow']"),
    ("inner: 4\n", [], "inner: expected a mapping"),
    ("flag: 3\n", [], "flag: expected true or false"),
    ("table:\n  x: {rate: abc}\n", [], "table.x.rate: expected a number"),
])
def test_bad_keys_and_values_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, write(tmp_path, text), overrides)
    assert message in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "a: [unclosed\n"))
    with pytest.raises(ConfigError, match="overrides look like --key value"):
        parse_overrides(["positional"])
