"""The process group of a training run, set up before anything else (`init_distributed`).

Called first by every training command (posttrain/cli.py), before any model loads, so ZeRO-3 /
FSDP initialisation applies to the weights and every rank joins one job. What it fixes, measured
with accelerate 1.15 and torch 2.13 on a machine without GPUs:

- `accelerate launch --multi_gpu` and FSDP configs start workers through torchrun, but never tell
  them to use the CPU (only the single-process launcher sets ACCELERATE_USE_CPU). accelerate's
  PartialState picks a process group only for an accelerator device unless `cpu=True`, so each
  worker ran as its own one-process job (two trainings saving into one directory; transformers:
  "process group is initialized, but parallel_mode != DISTRIBUTED"). A torchrun worker with no
  accelerator therefore joins a gloo group as a CPU worker here.
- `accelerate launch --cpu --num_processes N` starts **one** process (accelerate starts several CPU
  processes only through mpirun): that process sees MASTER_ADDR but no world size, and would train
  alone. It stops with one line naming a launch that works (`LaunchError`).
- FSDP on CPU: torch's FSDP2 shards over gloo, but accelerate adopts the FSDP plugin only for
  accelerator devices (AcceleratorState keeps MULTI_CPU, i.e. plain data parallel). For a CPU
  process group with FSDP requested, `adopt_fsdp_on_cpu` makes the state adopt the plugin, so
  the Trainer shards the model as it would on GPUs.
- Leaving: a rank that exits without `destroy_process_group` can abort at interpreter shutdown
  (SIGABRT, "terminate called without an active exception": gloo's threads outlive the interpreter,
  pytorch#190489). Measured with 2 torchrun ranks and one all_gather: 5 of 30 runs aborted without
  it, 0 of 30 with a barrier + destroy. `leave_distributed` does that at the end of every command.
"""
from __future__ import annotations

import logging
import os

from datagen.config_loader import ConfigError

log = logging.getLogger("posttrain")

WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
CPU_LAUNCH = "accelerate launch --config_file configs/accelerate/ddp_cpu.yaml"


class LaunchError(ConfigError):
    """A launch that would not run as one job; the message says which launch works."""


class FailedOnAnotherRank(Exception):
    """This rank stops because the main process failed (e.g. its online round: the vLLM engine, the reward).
    The main process reports the cause (a bug with its traceback); every other rank reports one line,
    exit code 2 when the cause is a user error there, 1 for a bug (posttrain/cli.py)."""

    def __init__(self, message: str, user_error: bool) -> None:
        super().__init__(message)
        self.user_error = user_error


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def world_size() -> int:
    return next((int(os.environ[v]) for v in WORLD_SIZE_VARS if os.environ.get(v, "").isdigit()), 1)


def has_accelerator() -> bool:
    import torch

    probe = getattr(torch, "accelerator", None)
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


def check_launch() -> None:
    """A multi-process CPU launch that started a single process is an error, not a lone training."""
    if _flag("ACCELERATE_USE_CPU") and os.environ.get("MASTER_ADDR") and world_size() == 1:
        raise LaunchError(
            "`accelerate launch --cpu` started one process although several were asked for (accelerate "
            f"starts several CPU processes only through mpirun); use `{CPU_LAUNCH} ...` (torchrun, gloo), "
            "or unset MASTER_ADDR for a one-process run")


def init_distributed():
    """The run's PartialState, created before any model loads (see the module docstring)."""
    from accelerate import PartialState

    check_launch()
    cpu = _flag("ACCELERATE_USE_CPU")
    if world_size() > 1 and not has_accelerator():
        os.environ["ACCELERATE_USE_CPU"] = "true"  # TrainingArguments rebuilds the state from it
        cpu = True
        if _flag("ACCELERATE_USE_FSDP"):
            adopt_fsdp_on_cpu()
    state = PartialState(cpu=cpu)
    if state.num_processes > 1:
        log.info("process %d of %d (%s, %s)", state.process_index, state.num_processes, state.backend,
                 "FSDP" if _flag("ACCELERATE_USE_FSDP") else "data parallel")
    return state


def adopt_fsdp_on_cpu() -> None:
    """Let accelerate's state take an FSDP plugin on a CPU (gloo) process group. Idempotent."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "synthpost_cpu_fsdp", False):
        return

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            if self.mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self.mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            self.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    init.synthpost_cpu_fsdp = True
    AcceleratorState.__init__ = init


def leave_distributed(wait: bool) -> None:
    """Destroy the process group before the interpreter exits (see the module docstring).

    `wait` first waits for every rank (a finished run: no rank leaves while another still saves);
    after an error the other ranks may never arrive, so the group is destroyed without waiting."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()
