r"""Train a reward model on preference pairs with TRL's RewardTrainer.

    accelerate launch posttrain/rm.py --config configs/posttrain/rm_tiny.yaml [--output_dir DIR] [--max_steps N] ...

Reads `prompt/chosen/rejected` pairs (the datagen output's `dpo` view, any HF preference dataset on
disk or in the hub cache, or `seeds` for the built-in demo set), puts a one-output score head on
the base model (an SFT checkpoint, an alias or a hub id), and trains it with the Bradley–Terry
loss. The EMA of its weights is exported by default; DPO scores online samples with it
(`reward: {kind: classifier, model: OUTPUT_DIR}`). Rerunning the same command resumes.
"""
from __future__ import annotations

from posttrain.cli import exit_command, run_command
from posttrain.trainers.rm_config import RMRunConfig


def main(argv: list[str] | None = None) -> int:
    def run(cfg: RMRunConfig) -> dict:
        from posttrain.trainers.rm_trainer import train

        return train(cfg)

    return run_command("rm", __doc__, RMRunConfig, run, argv)


if __name__ == "__main__":
    exit_command(main())
