"""Multi-process training on CPU is one job: `accelerate launch` in a subprocess, as a user runs it.

- SFT with 2 processes (DDP over gloo, configs/accelerate/ddp_cpu.yaml) ends with the weights and
  losses of 1 process at the same global batch (2 x 2 rows vs 1 x 4 rows per step). The router aux
  loss is off for the comparison: each rank balances its own tokens' routing, so the aux term of
  2 x 2 rows is not the aux term of 4 rows (measured: 1.4% of the update with it on, 1.5e-5 off).
- SFT under FSDP on CPU (configs/accelerate/fsdp_cpu.yaml) shards the model (accelerate writes its
  FSDP checkpoint format) and ends where 1 process ends.
- DPO with online rounds and 2 processes trains one job: each round's rows cover both ranks' batches,
  and the rows, the checkpoint's weights and the exported policy EMA are those of 1 process at the same
  global batch (2 x 2 vs 1 x 4 pairs per step; only the sigmoid loss and no aux loss for the comparison:
  TRL's SFT term and the balancing loss are means over each rank's own tokens).
- `accelerate launch --num_processes 2 --cpu` starts one process (accelerate needs mpirun for more):
  refused with one line instead of a lone training.
- Every rank of a training command leaves the process group before it exits (after a finished run
  and after a user error): a gloo rank that does not can abort at interpreter shutdown.
- Marked vllm: DPO with online rounds sampled by vLLM under FSDP on CPU, also against 1 process (sampling
  from its own vLLM engine with the same seeds) at the same global batch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from datagen.inference.model_names import resolve_model
from datagen.inference.vllm_server import reserve_port

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
MODEL = "tiny-hunyuan-moe"
TOLERANCE = 1e-3  # relative difference of two runs' weight updates (float sums in another order: ~2e-5)


def launch(launcher: list[str], script: str, args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch LAUNCHER script args` on a port of its own (other runs may hold 29500), reserved
    for the whole run: a port picked and released is anyone's until torchrun binds it (another test's
    bind, a gloo socket, an outgoing connection), the suspected cause of one unexplained FSDP failure."""
    with reserve_port() as reservation:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--main_process_port",
               str(reservation.getsockname()[1]), script, *args]
        return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=900)


def with_config(name: str) -> list[str]:
    return ["--config_file", str(CONFIGS / name)]


def write_chats(path: Path) -> str:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": " ".join([f"It is {2 * i}."] * (1 + i % 4))}]}
            for i in range(16)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def sft_args(data: str, out: Path, per_device: int) -> list[str]:
    return ["--output_dir", str(out), "--dataset", data, "--model.name", MODEL, "--max_steps", "3",
            "--save_steps", "3", "--per_device_train_batch_size", str(per_device), "--max_length", "64",
            "--learning_rate", "1e-3", "--min_learning_rate", "1e-4", "--logging_steps", "1", "--eval_steps", "0",
            "--data.eval_fraction", "0", "--moe.router_aux_loss_coef", "0", "--moe.attention_dropout", "0",
            "--moe.hidden_dropout", "0", "--report_to", "none",
            # a fixed experts' LR: the ratio derived from the gradient noise measured on the run differs
            # between 1 and 2 processes by float rounding, and this test compares data parallelism only
            "--moe.expert_lr_ratio", "0.59"]


def losses(out: Path) -> list[float]:
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def update_difference(out: Path, reference: Path) -> float:
    """|θ − θ_ref| / |θ_ref − θ_0| over every tensor: how far two runs' updates differ."""
    start = load_file(str(Path(resolve_model(MODEL)) / "model.safetensors"))
    mine, theirs = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert any(not torch.equal(theirs[k], start[k]) for k in start)  # the reference trained
    assert mine.keys() == theirs.keys() == start.keys()
    apart = sum(((mine[k] - theirs[k]) ** 2).sum() for k in mine) ** 0.5
    moved = sum(((theirs[k] - start[k]) ** 2).sum() for k in mine) ** 0.5
    return (apart / moved).item()


def done_lines(run: subprocess.CompletedProcess, name: str) -> list[str]:
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith(f"[{name}] done:")]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> str:
    return write_chats(tmp_path_factory.mktemp("chats") / "chats.jsonl")


@pytest.fixture(scope="module")
def one_process(sft_data, tmp_path_factory) -> Path:
    """The reference: one process, 4 rows per step."""
    from posttrain.sft import main

    out = tmp_path_factory.mktemp("one") / "out"
    assert main(sft_args(sft_data, out, per_device=4)) == 0
    return out


def test_ddp_sft_on_two_processes_ends_like_one_process(sft_data, one_process, tmp_path):
    out = tmp_path / "out"
    run = launch(with_config("ddp_cpu.yaml"), "posttrain/sft.py", sft_args(sft_data, out, per_device=2))
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(done_lines(run, "sft")) == 1  # one job, not one per process
    checkpoint = out / "checkpoint-3"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] == pytest.approx(3 * 4 / 16)
    assert losses(out) == pytest.approx(losses(one_process), rel=1e-4)
    assert update_difference(out, one_process) < TOLERANCE


def test_fsdp_sft_on_cpu_is_one_sharded_job(sft_data, one_process, tmp_path):
    out = tmp_path / "out"
    run = launch(with_config("fsdp_cpu.yaml"), "posttrain/sft.py", sft_args(sft_data, out, per_device=2))
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(done_lines(run, "sft")) == 1
    assert "process 0 of 2 (gloo, FSDP)" in run.stderr
    # accelerate writes this format only for a model it sharded with FSDP (plain DDP saves none)
    assert (out / "checkpoint-3" / "pytorch_model_fsdp.bin").is_file()
    assert losses(out) == pytest.approx(losses(one_process), rel=1e-4)
    assert update_difference(out, one_process) < TOLERANCE  # the final save gathered the full weights


def dpo_args(out: Path, per_device: int = 2) -> list[str]:
    return ["--config", str(ROOT / "configs/posttrain/dpo_tiny.yaml"), "--output_dir", str(out), "--max_steps", "2",
            "--online.steps_per_round", "1", "--online.num_samples", "2", "--online.prompts_per_round", "2",
            "--online.max_new_tokens", "8", "--online.kl_samples", "1", "--online.margin", "0",
            "--per_device_train_batch_size", str(per_device), "--loss_type", "[sigmoid]", "--loss_weights", "[1.0]",
            "--moe.router_aux_loss_coef", "0", "--report_to", "none"]


def train_rows(out: Path, index: int) -> list[dict]:
    lines = [json.loads(line) for line in (out / "rounds" / f"round-{index:03d}.jsonl").open()]
    return [line for line in lines if line["kind"] == "train_row"]


def dpo_one_process(out: Path, extra: list[str] = ()) -> Path:
    """The reference: one process, 4 pairs per step (the global batch of 2 x 2)."""
    from posttrain.dpo import main

    assert main(dpo_args(out, per_device=4) + list(extra)) == 0
    return out


def ends_like_one_process(out: Path, reference: Path) -> None:
    """The same rows in every round, then the same weights: the last checkpoint's (raw) and the exported EMA."""
    for index in (0, 1):
        assert train_rows(out, index) == train_rows(reference, index), index
    assert update_difference(out / "checkpoint-2", reference / "checkpoint-2") < TOLERANCE
    assert update_difference(out, reference) < TOLERANCE


def test_ddp_dpo_with_online_rounds_is_one_job(tmp_path):
    out = tmp_path / "out"
    run = launch(with_config("ddp_cpu.yaml"), "posttrain/dpo.py", dpo_args(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(done_lines(run, "dpo")) == 1
    summary = json.loads((out / "dpo_summary.json").read_text())
    assert summary["global_step"] == 2 and len(summary["round_seconds"]) == 2
    for index in (0, 1):  # 2 rows per device x 2 processes x 1 step: the round fed both ranks
        rows = train_rows(out, index)
        assert len(rows) == 4 and any(r.get("source") == "online" for r in rows), rows
    assert (out / "checkpoint-2" / "rng_state_1.pth").is_file()
    ends_like_one_process(out, dpo_one_process(tmp_path / "one"))


def test_a_cpu_launch_that_starts_one_process_for_two_is_refused(sft_data, tmp_path):
    out = tmp_path / "out"
    run = launch(["--num_processes", "2", "--cpu"], "posttrain/sft.py", sft_args(sft_data, out, per_device=2))
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "started one process" in errors[0] and "ddp_cpu.yaml" in errors[0], run.stderr[-2000:]
    assert not out.exists()


def test_init_distributed_leaves_a_plain_run_alone(monkeypatch):
    from posttrain.distributed import init_distributed

    for name in ("WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    state = init_distributed()
    assert (state.num_processes, state.process_index) == (1, 0) and not torch.distributed.is_initialized()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.usefixtures("no_vllm_left_behind")
def test_fsdp_dpo_samples_online_rounds_from_vllm(tmp_path):
    out = tmp_path / "out"
    engine = ["--online.backend", "vllm", "--online.vllm.dtype", "float32", "--online.vllm.kv_cache_gib", "1",
              "--online.vllm.max_model_len", "512", "--online.vllm.start_timeout", "900"]
    run = launch(with_config("fsdp_cpu.yaml"), "posttrain/dpo.py", dpo_args(out) + engine)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(done_lines(run, "dpo")) == 1
    summary = json.loads((out / "dpo_summary.json").read_text())
    assert summary["global_step"] == 2
    assert summary["engine"]["starts"] == 1 and summary["engine"]["syncs"] == 1  # round 1 got step 1's weights
    assert (out / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    for index in (0, 1):
        assert len(train_rows(out, index)) == 4
    ends_like_one_process(out, dpo_one_process(tmp_path / "one", engine))


COMMAND_IN_TWO_RANKS = """
import dataclasses, os, sys
from pathlib import Path
import torch, torch.distributed as dist
from posttrain.cli import run_command
from datagen.config_loader import ConfigError

@dataclasses.dataclass
class Config:
    fail: bool = False

def train(cfg):
    total = torch.ones(1)
    dist.all_reduce(total)  # the ranks really are one group
    if cfg.fail:
        raise ConfigError("bad input on purpose")
    return {"ranks": int(total.item())}

code = run_command("probe", "probe", Config, train, sys.argv[1:])
# one file per rank: the ranks share the launcher's stdout, and their lines interleave there
Path(__file__).with_name(f"rank-{os.environ['RANK']}.txt").write_text(f"code {code} grouped {dist.is_initialized()}")
"""


@pytest.mark.parametrize("fail", [False, True])
def test_every_rank_leaves_the_process_group_when_the_command_ends(tmp_path, fail):
    script = tmp_path / "probe.py"
    script.write_text(COMMAND_IN_TWO_RANKS)
    run = launch(with_config("ddp_cpu.yaml"), str(script), ["--fail", str(fail).lower()])
    assert run.returncode == 0, run.stderr[-3000:]  # the probe exits 0 once it has written its line
    code = 2 if fail else 0
    for rank in (0, 1):
        assert (tmp_path / f"rank-{rank}.txt").read_text() == f"code {code} grouped False"
    if not fail:
        assert len(done_lines(run, "probe")) == 1 and '"ranks": 2' in done_lines(run, "probe")[0]


class Stop(Exception):
    pass


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_command_exits_with_its_code_after_its_atexit_handlers_and_output(world_size):
    """A rank of a multi-process run skips the interpreter's teardown (where gloo's threads can abort a
    finished run), but not its atexit handlers, its buffered output or its exit code."""
    script = ("import atexit, sys\nfrom posttrain.cli import exit_command\n"
              "atexit.register(lambda: print('atexit ran'))\nsys.stdout.write('buffered, no newline')\n"
              "exit_command(3)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WORLD_SIZE": world_size})
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout == "buffered, no newlineatexit ran\n"


def test_training_arguments_exist_before_any_model_loads(sft_data, tmp_path, monkeypatch):
    """ZeRO-3 / FSDP initialisation hooks into from_pretrained only once TrainingArguments (and with
    them the process group) exist: SFT and RM build them first (DPO builds its DPOConfig first too)."""
    from posttrain.trainers import rm_trainer, sft_trainer
    from posttrain.model_loading import ModelSpec
    from posttrain.trainers.rm_config import RMRunConfig
    from posttrain.trainers.sft_config import SFTRunConfig

    order = []

    def recorded(name, function, stop=False):
        def wrapper(*args, **kwargs):
            order.append(name)
            if stop:
                raise Stop
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(sft_trainer, "build_training_args", recorded("args", sft_trainer.build_training_args))
    monkeypatch.setattr(sft_trainer, "load_policy", recorded("model", sft_trainer.load_policy, stop=True))
    with pytest.raises(Stop):
        sft_trainer.train(SFTRunConfig(output_dir=str(tmp_path / "sft"), dataset=sft_data, report_to="none",
                                       model=ModelSpec(name=MODEL)))
    monkeypatch.setattr(rm_trainer, "build_training_args", recorded("args", rm_trainer.build_training_args))
    monkeypatch.setattr(rm_trainer, "load_reward_model", recorded("model", rm_trainer.load_reward_model, stop=True))
    with pytest.raises(Stop):
        rm_trainer.train(RMRunConfig(output_dir=str(tmp_path / "rm"), model=MODEL, dataset="seeds", report_to="none"))
    assert order == ["args", "model", "args", "model"]
