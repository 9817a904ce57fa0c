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

Sharded training (FSDP, ZeRO-3): the shadow follows whatever `named_parameters` holds on each
rank, so it shards the same way; export gathers through the trainer's own save path.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from datagen.config_loader import option
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


class WeightEMA:
    """θ̄ ← d·θ̄ + (1 − d)·θ over a model's parameters, kept in float32."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        with torch.no_grad():
            self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            self.shadow[name].mul_(self.decay).add_(param.detach().float(), alpha=1.0 - self.decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the model's parameters with the shadow (in the model's dtype)."""
        for name, param in model.named_parameters():
            param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = {k: v.float() for k, v in state["shadow"].items()}


class EMACallback(TrainerCallback):
    """Keeps a `WeightEMA` of the trained model; saves it with every checkpoint.

    The shadow is created at the first `on_train_begin` (or by `restore`) and survives later
    `train()` calls on the same callback object (DPO runs one per online round).
    """

    def __init__(self, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.ema: WeightEMA | None = None

    def restore(self, checkpoint_dir: str, model: torch.nn.Module) -> bool:
        """Load the shadow a checkpoint saved (for resuming); False when it holds none."""
        path = os.path.join(checkpoint_dir, EMA_STATE_FILE)
        if not os.path.isfile(path):
            return False
        self.ema = WeightEMA(model, self.cfg.decay)
        self.ema.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        log.info("EMA shadow restored from %s (%d updates so far)", checkpoint_dir, self.ema.num_updates)
        return True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.ema is None and model is not None:
            self.ema = WeightEMA(model, self.cfg.decay)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.ema is not None and model is not None and state.global_step % self.cfg.update_every == 0:
            self.ema.update(model)

    def on_save(self, args, state, control, **kwargs):
        if self.ema is None or not state.is_world_process_zero:
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(checkpoint):
            atomic_torch_save(self.ema.state_dict(), os.path.join(checkpoint, EMA_STATE_FILE))
