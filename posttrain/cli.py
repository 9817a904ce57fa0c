"""The one `main()` of every training command (sft.py, dpo.py, rm.py).

    accelerate launch posttrain/sft.py --config FILE [--key value ...] [--help]

`--help` prints the command's docstring and every config key with its help text; a bad config,
dataset or model is one line on stderr and exit code 2. The process group exists before any model
loads (posttrain/distributed.py); the trainers never know which launcher runs them (python,
`accelerate launch`, FSDP, DeepSpeed). With `push_to_hub: REPO` the token is checked before
training and the main process uploads the output directory after it (posttrain/hub.py); a failed
upload is one line with the command that retries it, exit 1.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Callable

from datagen.config_loader import ConfigError, format_keys, load_config
from datagen.progress import line_buffered
from datagen.output.hub import PushError, require_token
from datagen.inference.base import InferenceError
from posttrain.data import DataError
from posttrain.distributed import FailedOnAnotherRank, init_distributed, leave_distributed
from posttrain.hub import push_model, retry_command
from posttrain.model_registry import register_models
from posttrain.model_loading import ModelLoadError
from rewards.reward_model import RewardModelError

# What a user can cause and fix: one line, exit 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, DataError, ModelLoadError, RewardModelError, InferenceError, FloatingPointError)


def exit_command(code: int) -> None:
    """The end of a command's process. A rank of a multi-process run (torchrun sets WORLD_SIZE) leaves
    without the interpreter's own teardown, after running the atexit handlers and flushing: even after
    `leave_distributed`, gloo's threads can abort that teardown (SIGABRT, "terminate called without an
    active exception", pytorch#190489) and turn a finished, saved run into a failed command — seen once in
    three FSDP DPO runs of the suite on 2 workers, after "done"."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


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
    line_buffered()  # TRL/transformers print each training log line to stdout: into `| tee` or a log file at once
    register_models()  # the aliases (tiny-hunyuan-moe, smollm2-moe) a config may name
    for noisy in ("httpx", "httpcore"):  # one line per hub request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    finished = False
    try:
        cfg = load_config(config_cls, config_path, overrides)
        repo = getattr(cfg, "push_to_hub", "")
        if repo:
            require_token()  # before any work, not after the training
        process = init_distributed()  # before any model loads: ZeRO-3 / FSDP init, one job over all ranks
        if not process.is_main_process:
            logging.getLogger().setLevel(logging.WARNING)  # one progress log per job, not one per rank
        summary = train(cfg)
        finished = True
    except (*USER_ERRORS, PushError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FailedOnAnotherRank as err:  # the main process reports the cause; here one line, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2 if err.user_error else 1
    finally:
        leave_distributed(wait=finished)  # before the upload below, which runs on the main process alone
    brief = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items() if k != "last_log"}
    logging.getLogger(name).info("done: %s", json.dumps(brief, default=str))
    if repo and process.is_main_process:
        return upload(cfg.output_dir, repo, getattr(cfg, "hub_private_repo", True))
    return 0


def upload(output_dir: str, repo: str, private: bool) -> int:
    """Push the trained model; one line either way (a failure names the command that retries it)."""
    try:
        url = push_model(output_dir, repo, private)
    except PushError as err:
        print(f"error: {err} — the model is complete in {output_dir}; retry the upload with: "
              f"{retry_command(output_dir, repo, private)}", file=sys.stderr)
        return 1
    print(f"uploaded: {url}")
    return 0
