"""One checkpoint and resume policy for every trainer (SFT, reward model, DPO).

- A checkpoint counts only when it is **complete**: `CommitCheckpoint`, the last callback of a
  trainer, writes `MARKER` into `checkpoint-N/` after the Trainer and every other callback (EMA
  shadow, DPO round state) have written their files on every rank (a barrier comes first). A kill
  at any moment of a save leaves either no marker (the checkpoint is ignored and later removed) or
  a complete checkpoint.
- Rotation is ours too (the Trainer's `save_total_limit` is off): after a commit, the newest
  `keep` complete checkpoints stay and everything older goes, so a kill can never leave a run
  with only a half-written checkpoint.
- `find_checkpoint(output_dir, resume)`: `auto` = the newest complete checkpoint (or none, a fresh
  run), `never`, or an explicit path (which must be complete).
- `ExpertSafeResumeMixin`: transformers 5.19's single-device resume loads the weights with a
  plain `load_state_dict(strict=False)`, but `save_pretrained` writes hunyuan_v1_moe experts in
  the per-expert layout (`experts.0.up_proj.weight`, ...) while the model holds them fused
  (`experts.gate_up_proj`): the experts would silently keep their fresh values. We load the
  checkpoint through `from_pretrained`, which converts the layout, and copy it strictly. FSDP and
  DeepSpeed resume from their own formats and are left to the Trainer.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from datagen.config_loader import ConfigError

log = logging.getLogger(__name__)

MARKER = "synthpost-checkpoint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every `checkpoint-N` directory, newest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found, reverse=True)


def is_complete(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / MARKER).is_file()


def find_checkpoint(output_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from, by the `resume` setting (auto | never | a path)."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not is_complete(path):
            raise ConfigError(f"resume: {path} is not a complete synthpost checkpoint (no {MARKER}); "
                              "use resume: auto to take the newest complete one")
        return path
    return next((p for _, p in checkpoints(output_dir) if is_complete(p)), None)


class CommitCheckpoint(TrainerCallback):
    """Marks each saved checkpoint complete, then rotates. Add it after every other callback."""

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        every_rank_done()  # each rank writes its own files (RNG state, FSDP shards): all must be there
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():
            return
        write_json_atomic(checkpoint / MARKER, {"global_step": state.global_step})
        rotate(args.output_dir, self.keep)


def every_rank_done() -> None:
    """A barrier over the run's processes (nothing to wait for in a one-process run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rotate(output_dir: str | Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones, complete or not."""
    if keep <= 0:
        return
    complete = [step for step, p in checkpoints(output_dir) if is_complete(p)]
    if len(complete) < keep:
        return
    oldest_kept = complete[keep - 1]
    for step, path in checkpoints(output_dir):
        if step < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def atomic_torch_save(obj, path: str | Path) -> None:
    """Write to a temporary name, then rename: a killed run never leaves half a file."""
    import torch

    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_weights(model, checkpoint: str | Path) -> None:
    """Load a checkpoint's weights into `model`, strictly, through `from_pretrained` (which converts
    the per-expert checkpoint layout to the model's fused one)."""
    dtype = next(model.parameters()).dtype
    loaded = type(model).from_pretrained(checkpoint, config=model.config, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    log.info("restored model weights from %s", checkpoint)


def drop_tied_copies(state: dict, model) -> dict:
    """A state dict gathered from shards (FSDP, ZeRO-3) holds tied weights twice, as separate tensors
    `save_pretrained` cannot tell apart (it looks for shared storage): keep only the tensor the model
    ties the others to (`lm_head.weight` goes when the embeddings are tied)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    copies = {target for target, source in tied.items() if target in state and source in state}
    return {name: tensor for name, tensor in state.items() if name not in copies} if copies else state


class ExpertSafeResumeMixin:
    """Mix into a transformers/TRL Trainer (before it in the bases): a resume that restores every
    weight, MoE experts included (see the module docstring), and saves of a sharded model without a
    second copy of tied weights (one copy of a 128k x 6400 embedding is 1.6 GB in bf16)."""

    def _save(self, output_dir=None, state_dict=None):
        if state_dict is not None:
            state_dict = drop_tied_copies(state_dict, self.accelerator.unwrap_model(self.model))
        return super()._save(output_dir, state_dict=state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        sharded = getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False)
        if sharded or not hasattr(model, "config") or not (Path(resume_from_checkpoint) / "config.json").is_file():
            # FSDP / DeepSpeed: the Trainer loads the shards from their own format (a plain state dict
            # cannot be copied into DTensor parameters)
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_weights(model, resume_from_checkpoint)


def tensor_shapes(directory: str) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a directory's safetensors files (headers only); {} if none."""
    import glob

    from safetensors import safe_open

    shapes = {}
    for file in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with safe_open(file, framework="pt") as reader:
            shapes.update({name: tuple(reader.get_slice(name).get_shape()) for name in reader.keys()})
    return shapes
