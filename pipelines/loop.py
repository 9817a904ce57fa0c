r"""`python -m pipelines.loop` — seed text in, a post-trained MoE and its measured before/after table out.

    python -m pipelines.loop [--config configs/loop/cpu.yaml] [--output DIR] [--only STEP,...] [--<key> VALUE ...]

Steps, each in its own directory under DIR (see pipelines/looping/work.py):
synth (datagen, the eval sets as decontamination benchmarks) → prompts (verifiable math problems
for the online rounds, disjoint from the eval set) → sft → dpo (offline pairs + online rounds, EMA;
one more DPO per `variants:` entry) → eval of each trained policy against the start (math, judge,
code) → DIR/results.md (README-ready table), DIR/results.json and DIR/charts/.

Rerunning the same command skips finished steps and resumes a killed one (the trainers resume from
their last complete checkpoint); a step whose config changed since its directory was written stops
the run with one line. Progress: a line when a step starts and ends, and every 30 s while it runs
(elapsed, machine load, the step's latest log line; the full log is DIR/<step>/log.txt).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import sys
import threading

from datagen.config_loader import ConfigError, format_keys
from datagen.inference.model_names import is_hub_id, known_aliases
from posttrain.model_registry import register_models
from pipelines.looping.loop_config import LoopConfig, load_loop_config
from pipelines.looping.steps import LoopError, run_steps

log = logging.getLogger("synthpost.loop")
DEFAULT_CONFIG = "configs/loop/cpu.yaml"


def parse_args(argv: list[str]) -> tuple[LoopConfig, list[str] | None]:
    parser = argparse.ArgumentParser(prog="python -m pipelines.loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys (in the YAML, or --key VALUE here):\n" + format_keys(LoopConfig))
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"loop config (default {DEFAULT_CONFIG})")
    parser.add_argument("--output", help="output directory (overrides output)")
    parser.add_argument("--only", help="comma-separated step names: run just these (e.g. dpo-tr-dpo,eval-dpo-tr-dpo)")
    known, rest = parser.parse_known_args(argv)
    overrides = rest + (["--output", known.output] if known.output else [])
    only = [name.strip() for name in known.only.split(",") if name.strip()] if known.only else None
    return load_loop_config(known.config, overrides), only


def start_model(cfg: LoopConfig) -> str:
    """The configured start model, or the fallback when it is an alias this installation lacks."""
    name = cfg.model
    looks_like_alias = "/" not in name and not os.path.exists(name)
    if looks_like_alias and name not in known_aliases():
        log.info("model %s is not available here: starting from %s instead", name, cfg.fallback_model)
        return cfg.fallback_model
    return name


def child_env(cfg: LoopConfig) -> dict[str, str]:
    """Every model in the loop is local unless a hub id is named: children never wait on a hub."""
    names = [cfg.model, cfg.fallback_model, cfg.eval.judge]
    if not any(is_hub_id(n) for n in names):
        return {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    return {}


@contextlib.contextmanager
def interrupted_by_signals():
    """SIGTERM and SIGHUP end the loop as Ctrl-C does: the running step's command (in a session of its own)
    gets its interrupt and is waited for, so its model servers stop with it. Without this a terminated
    loop died alone and the step ran on (seen: `kill <loop>` during DPO left dpo.py and its engine running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    with interrupted_by_signals():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    register_models()  # posttrain's aliases (tiny-hunyuan-moe, smollm2-moe) for `models:`
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="[loop %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    try:
        from pipelines.looping.table import write_table
        from pipelines.looping.work import LoopPlan

        cfg, only = parse_args(argv)
        plan = LoopPlan(cfg, start_model(cfg), child_env(cfg))
        plan.out.mkdir(parents=True, exist_ok=True)
        log.info("output %s: %s", plan.out, " → ".join(s.name for s in plan.steps))
        steps = run_steps(plan.steps, only)
        command = "python -m pipelines.loop " + shlex.join(argv) if argv else "python -m pipelines.loop"
        evals = {name: step.directory for name, step in plan.evals.items()}
        table = write_table(plan.out, evals, steps, command)
    except LoopError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except (ConfigError, ValueError, OSError) as err:
        print(f"error: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    ran = sum(s.seconds for s in steps if not s.skipped)
    total = sum(s.seconds for s in steps)
    log.info("done: %.0f min in this run, %.0f min over all steps: %s", ran / 60, total / 60,
             table.get("results", "no eval results"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
