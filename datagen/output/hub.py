"""Upload a finished dataset directory to the Hugging Face Hub as a dataset repo.

Data, rejects, the SFT/DPO views, the card, stats.json and the picture report go up in one
commit; the request cache and temporary files that share the directory never do. The token
comes from HF_TOKEN and appears in no message, log line or file. A directory on gs:// (a
Dataflow run) is copied to a local temporary directory first, through Beam's filesystems.
Uploading never needs the run again: `python -m pipelines.synth push DIR REPO` retries it.
`upload_folder` (one commit of selected files) serves the model uploads of posttrain/hub.py too.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

from datagen.output.writer import DATA, DPO, REJECTS, SFT, UPLOAD_PATTERNS

log = logging.getLogger(__name__)
# shards of an earlier push with another shard count are deleted in the same commit
DELETE_PATTERNS = [f"{d}/*.parquet" for d in (DATA, REJECTS, SFT, DPO)]


class PushError(RuntimeError):
    """The upload could not start or failed; the message never contains the token."""


def require_token() -> str:
    """The write token from HF_TOKEN; checked before a run, not only after it."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise PushError("push_to_hub needs a Hugging Face token with write access in the HF_TOKEN "
                        "environment variable")
    return token


def push_to_hub(out_dir: str, repo_id: str, private: bool = True) -> str:
    """Upload `out_dir` (local or gs://…) to the dataset repo `repo_id`; returns the repo URL."""
    require_token()
    if "://" not in out_dir:
        return _upload_dataset(out_dir, repo_id, private)
    local = tempfile.mkdtemp(prefix="synthpost-push-")
    try:
        copied = copy_for_upload(out_dir, local)
        log.info("copied %d files from %s for the upload", copied, out_dir)
        return _upload_dataset(local, repo_id, private, shown_as=out_dir)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def copy_for_upload(src: str, dest: str) -> int:
    """Copy the files UPLOAD_PATTERNS select from a Beam filesystem path to a local directory."""
    from apache_beam.io.filesystem import CompressionTypes  # only for gs://…: training pushes skip Beam
    from apache_beam.io.filesystems import FileSystems

    root = src.rstrip("/") + "/"
    copied = 0
    for pattern in UPLOAD_PATTERNS:
        for meta in FileSystems.match([root + pattern])[0].metadata_list:
            relative = meta.path[len(root):]
            target = os.path.join(dest, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED) as f, \
                    open(target, "wb") as out:
                shutil.copyfileobj(f, out)
            copied += 1
    return copied


def _upload_dataset(folder: str, repo_id: str, private: bool, shown_as: str = "") -> str:
    return upload_folder(folder, repo_id, repo_type="dataset", private=private, allow=UPLOAD_PATTERNS,
                         delete=DELETE_PATTERNS, message="synthpost: upload synthetic dataset", shown_as=shown_as)


def upload_folder(folder: str, repo_id: str, *, repo_type: str, private: bool, allow: list[str],
                  delete: list[str], message: str, shown_as: str = "") -> str:
    """One commit of the files `allow` selects in `folder` (remote files matching `delete` that
    this commit does not bring go); creates the repo if needed. Returns the repo URL."""
    from huggingface_hub import HfApi  # imported here: only needed when pushing

    token = require_token()
    shown_as = shown_as or folder
    if not os.path.isfile(os.path.join(folder, "README.md")):
        raise PushError(f"{shown_as} has no README.md: is it a finished synthpost output directory?")
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type, allow_patterns=allow,
                          delete_patterns=delete, commit_message=message)
    except Exception as err:  # noqa: BLE001 - re-raised below with the token scrubbed
        failure = f"upload to {repo_id} failed: {type(err).__name__}: {_one_line(str(err)).replace(token, '***')}"
    else:
        log.info("pushed %s to the hub %s repo %s", shown_as, repo_type, repo_id)
        return str(url)
    raise PushError(failure)  # outside `except`: the original error (and its text) is not chained


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
