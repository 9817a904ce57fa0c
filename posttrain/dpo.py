r"""One-stage DPO after the Hunyuan-Large report: offline + online best/worst-of-N pairs, SFT loss, EMA.

    accelerate launch posttrain/dpo.py --config configs/posttrain/dpo_tiny.yaml \
        [--output_dir DIR] [--max_steps N] [--online.ratio 0.5 ...]

Each online round samples N answers per prompt from the current policy, scores them with the
reward, keeps the best and worst as a pair (skips counted by reason), mixes those with offline
pairs at `online.ratio`, and trains `online.steps_per_round` steps of DPO + SFT loss (+ the MoE
router aux loss). The EMA of the policy is exported; rerunning the command resumes from the last
finished round. Per-round logs: `DIR/rounds/round-NNN.jsonl`; TensorBoard: `DIR/runs/dpo`.
"""
from __future__ import annotations

from posttrain.cli import exit_command, run_command
from posttrain.trainers.dpo_config import DPORunConfig


def main(argv: list[str] | None = None) -> int:
    def run(cfg: DPORunConfig) -> dict:
        from posttrain.trainers.dpo_trainer import train

        return train(cfg)

    return run_command("dpo", __doc__, DPORunConfig, run, argv)


if __name__ == "__main__":
    exit_command(main())
