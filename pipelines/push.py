"""`python -m pipelines.synth push DIR REPO_ID [--public]` — upload a finished output directory.

The same upload `--push_to_hub` runs after a pipeline; on its own it retries a failed upload
without repeating the run. DIR may be local or gs://… (token: HF_TOKEN, never printed).
"""
from __future__ import annotations

import argparse
import sys

from datagen.hub import PushError, push_to_hub


def push_and_report(out_dir: str, repo_id: str, private: bool, after_run: bool = True) -> int:
    """Upload; one line on stdout when done, one line on stderr if not (after a run: with the
    command that retries the upload alone)."""
    try:
        url = push_to_hub(out_dir, repo_id, private=private)
    except PushError as err:
        retry = f"python -m pipelines.synth push {out_dir} {repo_id}{'' if private else ' --public'}"
        hint = f" — the dataset is complete in {out_dir}; retry the upload with: {retry}" if after_run else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return 1
    print(f"uploaded:         {url}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.synth push", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a finished output directory (local or gs://…)")
    parser.add_argument("repo_id", help="hub dataset repo, e.g. someone/my-synth-data")
    parser.add_argument("--public", action="store_true", help="a new repo is private unless this is given")
    args = parser.parse_args(argv)
    return push_and_report(args.dir, args.repo_id, private=not args.public, after_run=False)
