"""Model directories on an object store (`gs://bucket/models/X`), copied to local disk once per machine.

vLLM and transformers load from a local directory. The copy goes through Beam's filesystems (gcsio
on Dataflow workers, no extra package) into the synthpost cache: into a temporary directory that is
renamed into place when complete, under a file lock, so the processes of one VM copy the model
once, and none of them ever loads a half-copied one. Later calls see the marker and return at once.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from datagen.inference.base import InferenceError

log = logging.getLogger(__name__)
COMPLETE = ".synthpost-copied-from"  # written last: its presence means the copy is whole
_LOCK = threading.Lock()  # flock is per open file, not per thread: threads queue here first



def local_copy_dir(uri: str, root: Path) -> Path:
    scheme, _, rest = uri.partition("://")
    return root / "models" / "remote" / scheme / rest.strip("/")


def fetch_model(uri: str, root: Path) -> str:
    """The local directory holding a copy of the model directory `uri` (copied on first use)."""
    dest = local_copy_dir(uri, root)
    if (dest / COMPLETE).is_file():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process of this VM may be copying it now
        if not (dest / COMPLETE).is_file():
            _copy_tree(uri, dest)
    return str(dest)


def _copy_tree(uri: str, dest: Path) -> None:
    prefix = uri.rstrip("/") + "/"
    found = FileSystems.match([prefix + "**"])[0].metadata_list
    if not any(m.path == prefix + "config.json" for m in found):
        raise InferenceError(f"model directory {uri} has no config.json ({len(found)} files found there)")
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    started, size = time.monotonic(), 0
    log.info("copying model %s to %s (%d files)", uri, dest, len(found))
    try:
        for meta in found:
            target = tmp.joinpath(*meta.path[len(prefix):].split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            with FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED) as src, \
                    open(target, "wb") as out:
                shutil.copyfileobj(src, out, length=16 << 20)
            size += meta.size_in_bytes
        (tmp / COMPLETE).write_text(f"{uri}\n")
        shutil.rmtree(dest, ignore_errors=True)  # a stale, incomplete copy
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("copied %.1f GB in %.0f s", size / 1e9, time.monotonic() - started)
