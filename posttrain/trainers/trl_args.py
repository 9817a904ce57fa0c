"""TRL's own fields, passed through by name instead of copied one by one.

A run config declares the TRL fields its recipe sets, with TRL's names, our defaults and help
(so the YAML is type-checked and `--help` lists them), plus `trl_args`: any other field of the
TRL config class, checked against that class's own fields and types. `build_trl_args` passes
every declared field that TRL knows, then `trl_args`, then what the trainer itself controls.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from datagen.config_loader import ConfigError, coerce


def trl_field_names(trl_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(trl_cls)}


def check_trl_args(trl_cls: type, values: dict[str, Any], run_cfg: Any, fixed: dict[str, str]) -> dict[str, Any]:
    """`values` typed by `trl_cls`'s hints; a key declared by the run config, one the trainer sets
    itself (`fixed`: name → why) or one TRL does not have is a ConfigError naming the key."""
    hints = typing.get_type_hints(trl_cls)
    declared = {f.name for f in dataclasses.fields(run_cfg)}
    checked = {}
    for key, value in values.items():
        where = f"trl_args.{key}"
        if key in declared:
            raise ConfigError(f"{where}: set it at the top level of the config ({key}: ...)")
        if key in fixed:
            raise ConfigError(f"{where}: synthpost sets it itself ({fixed[key]})")
        if key not in hints:
            raise ConfigError(f"{where}: not a field of trl.{trl_cls.__name__}")
        checked[key] = coerce(hints[key], value, where)
    return checked


def build_trl_args(trl_cls: type, run_cfg: Any, defaults: dict[str, Any] | None = None, **fixed: Any):
    """`trl_cls(...)` from, in rising order: our `defaults` for TRL fields the run config does not
    declare, the run config's same-named fields, its `trl_args`, and `fixed`."""
    names = trl_field_names(trl_cls)
    kwargs = dict(defaults or {})
    kwargs.update({f.name: getattr(run_cfg, f.name) for f in dataclasses.fields(run_cfg)
                   if f.name in names and f.name not in fixed})
    kwargs.update(getattr(run_cfg, "trl_args", {}) or {})
    kwargs.update(fixed)
    return trl_cls(**kwargs)


def trainer_owned(cfg: Any) -> dict[str, Any]:
    """What every trainer of ours sets itself, the same way."""
    import torch

    return {
        "save_strategy": "steps",
        "save_total_limit": None,  # CommitCheckpoint rotates, counting only complete checkpoints
        "data_seed": cfg.seed,
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinning needs an accelerator
        "push_to_hub": False,  # posttrain/hub.py pushes the finished model itself
    }
