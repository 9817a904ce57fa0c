"""`python -m pipelines.eval` — measure a model on the held-out sets that ship with synthpost.

    python -m pipelines.eval --model M [--baseline B] [--judge J] [--reward R]
        [--tasks math,code,judge,reward] [--limit N] [--output DIR] [--backend vllm|transformers|openai]
        [--config FILE] [--no_cache] [--<key> VALUE ...]

Tasks: math (arithmetic and word problems, four levels, math-verify), code (HumanEval pass@1 in the
sandbox), judge (blind pairwise comparison of M and B by J, both orders), reward (mean reward of M's
answers vs B's by the reward model R). Models: an embedded alias (smollm2-135m, ...), a local
directory, a hub id, or a key of the config's `models:` map (`--models.NAME.backend ...`).
Writes DIR/results.json, DIR/items.jsonl and DIR/report.html (with PNG charts); every model server
it starts is stopped at the end. Paired accuracies come with the difference detectable at their n
(80% power, from the observed discordance) and whether the observed one clears it; a judge whose
order consistency is below 0.6 or whose position bias is beyond ±0.3 gets "no signal" for its win
rate; a pair whose answer failed is left out of the judge task and counted.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from datagen.config_loader import ConfigError, format_keys, load_config
from datagen.inference.base import InferenceError
from datagen.inference.model_names import is_hub_id
from posttrain.model_registry import register_models
from pipelines.evaluation import EvalConfig, evaluate
from pipelines.evaluation.report import summary_line


def parse_args(argv: list[str]) -> EvalConfig:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="every config key (also settable in --config FILE):\n" + format_keys(EvalConfig))
    parser.add_argument("--config", help="YAML config with any of the keys below (e.g. a models: map)")
    parser.add_argument("--model", help="the model to evaluate")
    parser.add_argument("--baseline", help="the model to compare against")
    parser.add_argument("--judge", help="the model that judges pairs (judge task)")
    parser.add_argument("--reward", help="the reward model (reward task)")
    parser.add_argument("--tasks", help="comma-separated, from math,code,judge,reward")
    parser.add_argument("--limit", type=int, help="first N items of each set")
    parser.add_argument("--output", help="output directory (default eval_output)")
    parser.add_argument("--backend", help="backend for model names not under models: (default vllm)")
    parser.add_argument("--no_cache", action="store_true", help="do not reuse or store model calls")
    known, rest = parser.parse_known_args(argv)
    overrides: list[str] = []
    for key in ("model", "baseline", "judge", "reward", "output", "backend"):
        value = getattr(known, key)
        if value is not None:
            overrides += [f"--{key}", value]
    if known.limit is not None:
        overrides += ["--limit", str(known.limit)]
    if known.tasks is not None:
        names = [t.strip() for t in known.tasks.split(",") if t.strip()]
        if not names:
            raise ConfigError("tasks: no task given (choose from math, code, judge, reward)")
        overrides += ["--tasks", "[" + ", ".join(names) + "]"]
    if known.no_cache:
        overrides += ["--cache.enabled", "false"]
    return load_config(EvalConfig, known.config, rest + overrides)


def all_models_local(cfg: EvalConfig) -> bool:
    """No role names a hub id (`org/name` that is not a local path); a hub id must stay downloadable."""
    names = [m.model for m in cfg.models.values()]
    names += [n for n in (cfg.model, cfg.baseline, cfg.judge, cfg.reward) if n and n not in cfg.models]
    return not any(is_hub_id(n) for n in names)


def main(argv: list[str] | None = None) -> int:
    register_models()  # posttrain's aliases (tiny-hunyuan-moe, smollm2-moe) for `models:`
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s [eval] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("synthpost.eval").setLevel(logging.INFO)  # our progress lines; others only warn
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        if all_models_local(cfg):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing to fetch: never wait on a hub
        results = evaluate(cfg)
    except (ConfigError, InferenceError, ValueError, OSError) as err:
        print(f"error: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: model servers stopped", file=sys.stderr)
        return 130
    finally:
        from datagen.inference import registry

        registry.shutdown_all()
    print(summary_line(results, cfg.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
