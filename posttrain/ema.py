"""Exponential moving average of model weights during training.

The Hunyuan-Large report uses "an exponential moving average strategy to mitigate reward
hacking and reduce alignment tax" without saying what is averaged. The readings we offer:

- **Weights** (`WeightEMA`, `EMACallback`): a float32 shadow θ̄ of a model's parameters. It
  starts as a copy (θ̄₀ = θ₀) and after every update becomes θ̄ ← d·θ̄ + (1 − d)·θ. The policy's
  shadow is exported as the final DPO model (a smoothed policy drifts less from what SFT taught:
  less alignment tax); the reward model's shadow is what scores samples when the RM is
  refreshed between online rounds (a slowly moving target is harder to hack).
- **Scores**: EMA-normalised rewards (rewards/normalize.py).
- **Reference**: TR-DPO's moving reference (TRL's `sync_ref_model`), an EMA of the policy.

Sharded training:
- **FSDP2**: a sharded parameter is a DTensor holding this rank's rows; its shadow is a DTensor of
  the same layout, so each rank averages its own shard (no extra memory, no communication per
  step). A checkpoint holds the **full** shadow: every rank joins the gather of each tensor and
  the main process writes them (`ema_state.pt`, plain tensors, loadable without a process group).
  A resumed run loads the full shadow on every rank and cuts out its own shard the first time it
  meets the sharded parameter (`distribute_tensor` without communication); the export copies the
  shadow into the sharded parameters and the trainer's save gathers them.
- **DeepSpeed ZeRO-3**: a rank's parameters are empty placeholders (the shards live inside the
  engine), so an EMA of them averages nothing. Until the EMA gathers them
  (`deepspeed.zero.GatheredParameters`, not wired in: DeepSpeed is not installed where this is
  tested), a launch with ZeRO-3 and an EMA (the policy's, the refreshed RM's, or TR-DPO's moving
  reference, whose checkpoint would hold empty shards) is refused with one line
  (`refuse_ema_under_zero3`), and a shadow of partitioned parameters is an error (`WeightEMA`).
- TR-DPO's moving reference is saved in full the same way (`full_state_dict`, posttrain/online/round_state.py).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from datagen.config_loader import ConfigError, option
from posttrain.checkpoints import atomic_torch_save

log = logging.getLogger(__name__)

EMA_STATE_FILE = "ema_state.pt"


@dataclass
class EMAConfig:
    """EMA of a model's weights during training."""

    enabled: bool = option(True, "keep a shadow copy of the weights")
    decay: float = option(0.99, "d in θ̄ ← d·θ̄ + (1 − d)·θ; 0.99 ≈ an average over the last 100 updates")
    update_every: int = option(1, "update the shadow every N optimizer steps")
    export: bool = option(True, "save the shadow (not the last weights) as the final model")

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if self.update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {self.update_every}")


def is_sharded(tensor) -> bool:
    """A DTensor: under FSDP2 this rank holds only its shard of the parameter."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def is_zero3_partitioned(param) -> bool:
    """A DeepSpeed ZeRO-3 parameter: an empty placeholder whose data lives in the engine."""
    return hasattr(param, "ds_id") or hasattr(param, "ds_numel")


def zero3_launch() -> bool:
    """True when this process was launched for DeepSpeed ZeRO stage 3 (accelerate's environment, or
    a `deepspeed` config given to the TrainingArguments that were built already)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").strip().lower() in ("1", "true", "yes"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip()
        config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip()
        if not stage and config_file and os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as handle:
                stage = str(json.load(handle).get("zero_optimization", {}).get("stage", ""))
        if stage == "3":
            return True
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers without the DeepSpeed integration
        return False
    return bool(is_deepspeed_zero3_enabled())


def refuse_ema_under_zero3(switches: dict[str, bool]) -> None:
    """One line instead of an EMA of empty shards: `switches` maps each EMA's config key (e.g.
    "ema.enabled") to whether the run uses it. Call before any model loads."""
    used = [key for key, on in switches.items() if on]
    if used and zero3_launch():
        raise ConfigError(
            f"{' and '.join(used)} under DeepSpeed ZeRO-3: every rank holds empty parameter shards, which an EMA "
            "(or the moving reference's checkpoint) would take for the weights (gathering them is not implemented); "
            "use FSDP "
            f"(configs/accelerate/fsdp.yaml) or set {' and '.join(k + ' false' for k in used)}")


def full_state_dict(module: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """`module.state_dict()` as full CPU tensors: under FSDP each sharded tensor is gathered, so every rank
    must call this; ranks with `keep=False` drop each tensor once gathered (and get {})."""
    state = {}
    for name, tensor in module.state_dict().items():
        full = tensor.full_tensor() if is_sharded(tensor) else tensor
        if keep:
            state[name] = full.detach().cpu()
    return state


class WeightEMA:
    """θ̄ ← d·θ̄ + (1 − d)·θ over a model's parameters, kept in float32.

    Under FSDP2 the shadow of a sharded parameter is sharded the same way (module docstring).
    `state` (a `state_dict()`) starts the shadow from a checkpoint instead of the model."""

    def __init__(self, model: torch.nn.Module, decay: float, state: dict | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        params = dict(model.named_parameters())
        partitioned = [name for name, p in params.items() if is_zero3_partitioned(p)]
        if partitioned:
            raise ConfigError(f"an EMA of DeepSpeed ZeRO-3 parameters (e.g. {partitioned[0]}) would average empty "
                              "shards: use FSDP or turn the EMA off")
        self.decay = decay
        self.num_updates = 0
        if state is None:
            with torch.no_grad():
                self.shadow = {name: p.detach().float().clone() for name, p in params.items()}
        else:
            self.shadow = {}
            self.load_state_dict(state, params)

    def _shadow_of(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """The shadow laid out as `param` is: a full shadow (restored from a checkpoint before the
        model was sharded) is cut to this rank's shard once, without communication."""
        shadow = self.shadow[name]
        if is_sharded(param) and not is_sharded(shadow):
            from torch.distributed.tensor import distribute_tensor

            shadow = distribute_tensor(shadow.to(param.device), param.device_mesh, param.placements,
                                       src_data_rank=None)
            self.shadow[name] = shadow
        elif is_sharded(shadow) and not is_sharded(param):
            raise RuntimeError(f"EMA shadow of {name} is sharded but the parameter is not: the model was "
                               "unsharded after the EMA started")
        return shadow

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            self._shadow_of(name, param).mul_(self.decay).add_(param.detach().float(), alpha=1.0 - self.decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the model's parameters with the shadow (in the model's dtype)."""
        for name, param in model.named_parameters():
            param.copy_(self._shadow_of(name, param).to(param.dtype))

    def state_dict(self, keep: bool = True) -> dict:
        """The full shadow as plain CPU tensors. Sharded shadows are gathered, tensor by tensor: under
        FSDP every rank must call this; ranks with `keep=False` drop each gathered tensor at once (only
        the writing rank then holds a full copy)."""
        shadow = {}
        for name, tensor in self.shadow.items():
            full = tensor.full_tensor() if is_sharded(tensor) else tensor
            if keep:
                shadow[name] = full.detach().cpu()
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": shadow}

    def load_state_dict(self, state: dict, params: dict[str, torch.Tensor] | None = None) -> None:
        """Take a (full) shadow from `state`; with `params` (name -> parameter) its names and shapes are
        checked against the model's."""
        names = set(params) if params is not None else set(self.shadow)
        missing = names - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        if any(is_sharded(v) for v in state["shadow"].values()):
            raise ConfigError("this EMA state holds one rank's shards only (written under FSDP before the EMA was "
                              "gathered for saving): it cannot be resumed; resume with --resume never")
        if params is not None:
            wrong = [n for n in names if tuple(state["shadow"][n].shape) != tuple(params[n].shape)]
            if wrong:
                raise ValueError(f"EMA state of {wrong[0]} has shape {tuple(state['shadow'][wrong[0]].shape)}, "
                                 f"the model's parameter {tuple(params[wrong[0]].shape)}")
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = {k: v.float() for k, v in state["shadow"].items() if k in names}


class EMACallback(TrainerCallback):
    """Keeps a `WeightEMA` of the trained model; saves the full shadow with every checkpoint.

    The shadow is created at the first `on_train_begin` (or by `restore`) and survives later
    `train()` calls on the same callback object (DPO runs one per online round).
    """

    def __init__(self, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.ema: WeightEMA | None = None

    def restore(self, checkpoint_dir: str, model: torch.nn.Module) -> bool:
        """Load the shadow a checkpoint saved (for resuming; every rank loads it, the full one); False
        when the checkpoint holds none."""
        path = os.path.join(checkpoint_dir, EMA_STATE_FILE)
        if not os.path.isfile(path):
            return False
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        self.ema = WeightEMA(model, self.cfg.decay, state=state)
        log.info("EMA shadow restored from %s (%d updates so far)", checkpoint_dir, self.ema.num_updates)
        return True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.ema is None and model is not None:
            self.ema = WeightEMA(model, self.cfg.decay)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.ema is not None and model is not None and state.global_step % self.cfg.update_every == 0:
            self.ema.update(model)

    def on_save(self, args, state, control, **kwargs):
        if self.ema is None:
            return
        full = self.ema.state_dict(keep=state.is_world_process_zero)  # every rank joins the gather (FSDP)
        if not state.is_world_process_zero:
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(checkpoint):
            atomic_torch_save(full, os.path.join(checkpoint, EMA_STATE_FILE))
