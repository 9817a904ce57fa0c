"""`python -m pipelines.models prepare [ALIAS ...]` — build model aliases into the cache.

`python -m pipelines.models list` shows the aliases and where they live. Importing posttrain
registers its aliases (tiny-hunyuan-moe) next to datagen's embedded smollm2-135m.
"""
from __future__ import annotations

import argparse
import logging
import sys

import posttrain  # noqa: F401 - registers posttrain's model aliases
from datagen.inference.base import InferenceError
from datagen.inference.models import EMBEDDED_ALIAS, alias_dir, is_built, known_aliases, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert/build model aliases into the cache (idempotent)")
    prep.add_argument("aliases", nargs="*", default=[EMBEDDED_ALIAS])
    sub.add_parser("list", help="list the model aliases")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        for alias in known_aliases():
            state = "built" if is_built(alias) else "built on first use"
            print(f"{alias}\t{alias_dir(alias)}\t{state}")
        return 0
    try:
        for alias in args.aliases:
            print(f"[models] {alias}: {prepare(alias)}")
    except InferenceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
