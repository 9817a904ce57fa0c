"""`--push_to_hub REPO` for SFT, RM and DPO: the trained model goes up as a hub model repo.

After the final save, the files at the top of `output_dir` go up in one commit: weights, config,
tokenizer, model card (README.md), data report and run summary. Checkpoints, TensorBoard logs and
round logs (sub-directories) stay local. The token comes from HF_TOKEN only: checked before
training starts, never printed, never written (a `trl_args.hub_token` is refused, because the
recipe is written into the card). A failed upload is one line with the command that retries it
without training again: `python -m pipelines.push DIR REPO`.
"""
from __future__ import annotations

import glob
import logging
from pathlib import Path

from datagen.config_loader import ConfigError
from datagen.output.hub import PushError, require_token, upload_folder

log = logging.getLogger("posttrain")

# TRL's own hub fields: the run config's `push_to_hub` / `hub_private_repo` replace them
HUB_FIXED = {
    "push_to_hub": "push_to_hub: REPO uploads once, after the final save",
    "hub_model_id": "push_to_hub: REPO names the repo",
    "hub_strategy": "one upload after the final save, never the checkpoints",
    "hub_token": "HF_TOKEN only (a token in a config would be written into the model card)",
}
# weight shards of an earlier push with another shard count go in the same commit
STALE_WEIGHTS = ["model*.safetensors", "model.safetensors.index.json"]


def check_repo_id(repo_id: str) -> None:
    """A repo id the hub would refuse is a config error before training, not an error after it."""
    if not repo_id:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"push_to_hub: {repo_id!r} is not a hub repo id ({str(err).splitlines()[0]})") from None


def model_files(out_dir: str | Path) -> list[str]:
    """The final model's files: everything at the top of `out_dir` except temporary files."""
    root = Path(out_dir)
    return sorted(p.name for p in root.iterdir()
                  if p.is_file() and not p.name.startswith(".") and ".tmp-" not in p.name)


def push_model(out_dir: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload a trained model directory to the model repo `repo_id`; returns the repo URL."""
    require_token()
    out = Path(out_dir)
    if not (out / "config.json").is_file():
        raise PushError(f"{out} has no config.json: is it a finished training output directory?")
    names = model_files(out)
    url = upload_folder(str(out), repo_id, repo_type="model", private=private,
                        allow=[glob.escape(name) for name in names], delete=STALE_WEIGHTS,
                        message="synthpost: upload trained model")
    log.info("uploaded %d files of %s to %s", len(names), out, url)
    return url


def retry_command(out_dir: str | Path, repo_id: str, private: bool) -> str:
    return f"python -m pipelines.push {out_dir} {repo_id}{'' if private else ' --public'}"
