"""configs/accelerate/*.yaml parse with accelerate's own loader and select what they claim.

Multi-GPU cannot run here, so each file goes through the code `accelerate launch` runs before it
starts processes (`_validate_launch_command` and the environment builders), and we check the
launcher chosen and the environment the training processes would receive.
"""
from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def launch_args(name: str):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / name), "posttrain/sft.py", "--max_steps", "1"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_every_shipped_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["ddp_cpu.yaml", "deepspeed_zero3.yaml", "fsdp.yaml",
                                                             "fsdp_cpu.yaml", "single.yaml"]


def test_cpu_configs_start_two_workers_through_torchrun():
    """`--cpu` would start one process (accelerate needs mpirun for more); the CPU configs take the
    torchrun launcher, whose workers posttrain/distributed.py joins into one gloo group."""
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, defaults = launch_args("ddp_cpu.yaml")
    assert defaults.distributed_type == DistributedType.MULTI_GPU
    assert (args.multi_gpu, args.cpu, args.use_fsdp, args.num_processes) == (True, False, False, 2)
    env = prepare_multi_gpu_env(args)
    assert "ACCELERATE_USE_FSDP" not in env and env["ACCELERATE_MIXED_PRECISION"] == "no"

    args, defaults = launch_args("fsdp_cpu.yaml")
    assert defaults.distributed_type == DistributedType.FSDP
    assert (args.use_fsdp, args.cpu, args.num_processes) == (True, False, 2)
    env = prepare_multi_gpu_env(args)
    assert (env["ACCELERATE_USE_FSDP"], env["FSDP_VERSION"], env["FSDP_STATE_DICT_TYPE"]) == (
        "true", "2", "FULL_STATE_DICT")
    assert args.fsdp_transformer_layer_cls_to_wrap == "HunYuanMoEV1DecoderLayer"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # float32 on CPU


def test_single_device_runs_one_plain_process():
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args, defaults = launch_args("single.yaml")
    assert defaults.distributed_type == DistributedType.NO
    assert (args.num_processes, args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (1, False, False, False)
    cmd, env = prepare_simple_launcher_cmd_env(args)
    assert cmd[-3:] == ["posttrain/sft.py", "--max_steps", "1"]
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    assert "ACCELERATE_USE_FSDP" not in env and "ACCELERATE_USE_DEEPSPEED" not in env


def test_fsdp_fully_shards_hunyuan_decoder_layers():
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, defaults = launch_args("fsdp.yaml")
    assert defaults.distributed_type == DistributedType.FSDP
    assert (args.use_fsdp, args.use_deepspeed, args.num_processes) == (True, False, 8)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "2"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_wraps_a_class_that_exists_in_the_model():
    from transformers.models.hunyuan_v1_moe import modeling_hunyuan_v1_moe

    args, _ = launch_args("fsdp.yaml")
    wrapped = args.fsdp_transformer_layer_cls_to_wrap
    assert wrapped == "HunYuanMoEV1DecoderLayer"
    assert wrapped in modeling_hunyuan_v1_moe.HunYuanMoEV1PreTrainedModel._no_split_modules
    assert hasattr(modeling_hunyuan_v1_moe, wrapped)


def test_deepspeed_selects_zero_stage_3():
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults = launch_args("deepspeed_zero3.yaml")
    assert defaults.distributed_type == DistributedType.DEEPSPEED
    assert (args.use_deepspeed, args.use_fsdp, args.num_processes) == (True, False, 8)
    assert defaults.deepspeed_config["zero_stage"] == 3
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


@pytest.mark.parametrize("name", ["fsdp.yaml", "fsdp_cpu.yaml", "deepspeed_zero3.yaml"])
def test_multi_gpu_configs_need_no_optimizer_of_their_own(name):
    """The Trainer builds the optimizer (MoE parameter groups); a DeepSpeed/FSDP optimizer would bypass it."""
    import yaml

    config = yaml.safe_load((CONFIGS / name).read_text())
    section = config.get("deepspeed_config") or config.get("fsdp_config")
    assert not any("optimizer" in key and "offload" not in key for key in section)
