r"""Supervised fine-tuning of a (MoE) causal LM with TRL, after the Hunyuan-Large recipe.

    accelerate launch posttrain/sft.py --config configs/posttrain/sft_tiny.yaml \
        [--output_dir DIR] [--max_steps N] [--dataset DIR|FILE|HUB_ID] [--moe.expert_lr_ratio 0.31 ...]

Reads the datagen output's `messages` view (or any HF chat dataset), trains with packing, MoE
parameter groups and the router aux loss in the loss, evaluates on a held-out split, checkpoints
every `save_steps` (rerunning the same command resumes from the newest complete checkpoint), logs
to TensorBoard (`DIR/runs`), and saves the final model in HF format with a model card. Works the
same under `python`, `accelerate launch`, FSDP and DeepSpeed.
"""
from __future__ import annotations

from posttrain.cli import exit_command, run_command
from posttrain.trainers.sft_config import SFTRunConfig


def main(argv: list[str] | None = None) -> int:
    def run(cfg: SFTRunConfig) -> dict:
        from posttrain.trainers.sft_trainer import train

        return train(cfg)[1]

    return run_command("sft", __doc__, SFTRunConfig, run, argv)


if __name__ == "__main__":
    exit_command(main())
