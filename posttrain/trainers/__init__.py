"""The trainers, each a config (a dataclass mapped 1:1 to its YAML) and a trainer: sft, dpo, rm, on the run fields they share (run_config.py) and TRL's arguments (trl_args.py)."""
