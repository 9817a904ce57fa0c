"""The one `main()` of every training command (sft.py, dpo.py, rm.py).

    accelerate launch posttrain/sft.py --config FILE [--key value ...] [--help]

`--help` prints the command's docstring and every config key with its help text; a bad config,
dataset or model is one line on stderr and exit code 2. The trainers never know which launcher
runs them (python, `accelerate launch`, FSDP, DeepSpeed).
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any, Callable

from datagen.config import ConfigError, format_keys, load_config
from datagen.inference.base import InferenceError
from posttrain.data import DataError
from posttrain.models import ModelLoadError
from rewards.reward_model import RewardModelError

# What a user can cause and fix: one line, exit 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, DataError, ModelLoadError, RewardModelError, InferenceError, FloatingPointError)


def split_config_arg(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """(`--config FILE` if given, the remaining `--key value` overrides, whether help was asked)."""
    if "--help" in argv or "-h" in argv:
        return None, [], True
    rest, path, i = [], None, 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
        elif argv[i].startswith("--config="):
            path, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return path, rest, False


def run_command(name: str, doc: str, config_cls: type, train: Callable[[Any], dict],
                argv: list[str] | None = None, extra_help: str = "") -> int:
    """Parse, train, report; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    config_path, overrides, wants_help = split_config_arg(argv)
    if wants_help:
        print(f"{doc.strip()}\n\nConfig keys (YAML or --key value):\n{format_keys(config_cls)}\n{extra_help}")
        return 0
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    try:
        cfg = load_config(config_cls, config_path, overrides)
        summary = train(cfg)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    brief = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items() if k != "last_log"}
    logging.getLogger(name).info("done: %s", json.dumps(brief, default=str))
    return 0
