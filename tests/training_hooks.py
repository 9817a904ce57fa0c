"""Test-only pause points in the real training commands, so a test can SIGKILL them at a known moment.

    python tests/training_hooks.py sft|dpo|rm ARGS...     # the command's main(), with the pause set below

SYNTHPOST_PAUSE=POINT:STEP and SYNTHPOST_PAUSE_FILE=PATH: at POINT of optimizer step STEP the process
writes PATH and sleeps; the test waits for PATH and kills the process. Points:

- `step`: after optimizer step STEP, between checkpoints (a crash mid-run);
- `save-model`: inside the save of checkpoint-STEP, after the model is written and before the
  optimizer, scheduler, RNG state and trainer state (a half-written checkpoint);
- `save-marker`: inside the save of checkpoint-STEP, after every state writer and before
  CommitCheckpoint's marker (all files there, the checkpoint not complete).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pause_here(point: str, step: int) -> None:
    wanted = os.environ.get("SYNTHPOST_PAUSE", "")
    if wanted == f"{point}:{step}":
        Path(os.environ["SYNTHPOST_PAUSE_FILE"]).write_text(f"{point}:{step}\n")
        time.sleep(600)  # the test kills us here


def install() -> None:
    from transformers import Trainer
    from transformers.trainer_callback import CallbackHandler

    from posttrain.checkpoints import CommitCheckpoint

    step_end = CallbackHandler.on_step_end

    def on_step_end(self, args, state, control):
        control = step_end(self, args, state, control)
        if not control.should_save:  # a step that saves pauses in the save instead
            pause_here("step", state.global_step)
        return control

    save_optimizer = Trainer._save_optimizer_and_scheduler

    def save_optimizer_and_scheduler(self, output_dir):
        pause_here("save-model", self.state.global_step)
        return save_optimizer(self, output_dir)

    commit = CommitCheckpoint.on_save

    def commit_on_save(self, args, state, control, **kwargs):
        pause_here("save-marker", state.global_step)
        return commit(self, args, state, control, **kwargs)

    CallbackHandler.on_step_end = on_step_end
    Trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler
    CommitCheckpoint.on_save = commit_on_save


def main() -> int:
    import importlib

    sys.path.insert(0, str(ROOT))
    command, argv = sys.argv[1], sys.argv[2:]
    install()
    return importlib.import_module(f"posttrain.{command}").main(argv)


if __name__ == "__main__":
    sys.exit(main())
