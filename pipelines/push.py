r"""Upload a finished output directory to the Hugging Face Hub (again), without rerunning anything.

    python -m pipelines.push DIR REPO_ID [--public]         # a dataset (synth) or a trained model
    python -m pipelines.synth push DIR REPO_ID [--public]   # the same

A datagen output (stats.json, data/, views, card, report) goes to a dataset repo; a training output
of posttrain/sft.py, rm.py or dpo.py (config.json at the top) goes to a model repo: the final
model, tokenizer, card and data report, never the checkpoints or logs. The same uploads run after
`--push_to_hub`; this command retries a failed one. DIR may be local, or gs://… for a dataset.
A new repo is private unless --public. Token: HF_TOKEN, never printed.
"""
from __future__ import annotations

import argparse
import os
import sys

from datagen.output.hub import PushError, push_to_hub
from posttrain.hub import push_model


def is_model_dir(out_dir: str) -> bool:
    return "://" not in out_dir and os.path.isfile(os.path.join(out_dir, "config.json"))


def push_and_report(out_dir: str, repo_id: str, private: bool, after_run: bool = True) -> int:
    """Upload; one line on stdout when done, one line on stderr if not (after a run: with the
    command that retries the upload alone)."""
    model = is_model_dir(out_dir)
    try:
        url = (push_model if model else push_to_hub)(out_dir, repo_id, private=private)
    except PushError as err:
        command = "python -m pipelines.push" if model else "python -m pipelines.synth push"
        retry = f"{command} {out_dir} {repo_id}{'' if private else ' --public'}"
        hint = f" — the output is complete in {out_dir}; retry the upload with: {retry}" if after_run else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return 1
    print(f"uploaded:         {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.push", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a finished output directory: datagen (local or gs://…) or training (local)")
    parser.add_argument("repo_id", help="hub repo, e.g. someone/my-synth-data or someone/my-sft-model")
    parser.add_argument("--public", action="store_true", help="a new repo is private unless this is given")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return push_and_report(args.dir, args.repo_id, private=not args.public, after_run=False)


if __name__ == "__main__":
    sys.exit(main())
