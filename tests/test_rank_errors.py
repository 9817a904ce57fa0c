"""Under DDP/FSDP a failure of the main process's round (the vLLM engine, the reward) is one line on
every rank: the main process prints its error, every other rank one line naming it, no traceback.

Two ranks of a real `accelerate launch` (configs/accelerate/ddp_cpu.yaml, gloo), each running the
training command's `run_command` around the real `RoundDriver.build_everywhere`, whose main-process
build raises what the engine raises after its one restart (`EngineError`) or a bug (a plain error,
which keeps its traceback on the main process only). Each rank's stderr goes to a file of its own
(the ranks share the launcher's stderr, where their lines interleave).
"""
from __future__ import annotations

import pytest

from test_multiprocess_training import launch, with_config

ENGINE_FAILURE = ("the vLLM sampling engine failed again after a restart (POST /collective_rpc answered 500); "
                  "first failure: weight sync for step 2 failed")
PROBE = f"""
ENGINE_FAILURE = {ENGINE_FAILURE!r}
import dataclasses, os, sys
from pathlib import Path

rank = os.environ["RANK"]
err = open(Path(__file__).with_name(f"rank-{{rank}}.err"), "w")
os.dup2(err.fileno(), 2)  # this rank's stderr alone
sys.stderr = os.fdopen(2, "w", buffering=1)

from accelerate import PartialState
from posttrain.cli import run_command
from posttrain.online.engine import EngineError
from posttrain.online.round_callback import RoundDriver

@dataclasses.dataclass
class Config:
    bug: bool = False

def train(cfg):
    driver = RoundDriver.__new__(RoundDriver)
    driver.process = PartialState()
    driver.weights_writer = lambda start: None

    def build_on_main(index, start, end, writer):
        if cfg.bug:
            raise KeyError("a bug in the round")
        raise EngineError(ENGINE_FAILURE)
    driver.build_on_main = build_on_main
    driver.build_everywhere(0, 0, 1)
    return {{}}

try:
    code = run_command("probe", "probe", Config, train, sys.argv[1:])
except BaseException as exc:  # what escaped the command: printed as the interpreter would
    import traceback
    traceback.print_exc()
    code = f"raised {{type(exc).__name__}}"
Path(__file__).with_name(f"rank-{{rank}}.txt").write_text(f"code {{code}}")
"""


@pytest.mark.parametrize("bug", [False, True])
def test_a_failed_round_on_the_main_process_is_one_line_on_every_rank(tmp_path, bug):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    run = launch(with_config("ddp_cpu.yaml"), str(script), ["--bug", str(bug).lower()])
    assert run.returncode == 0, run.stderr[-3000:]  # the probe exits 0 once it has written its lines
    outcomes = {rank: (tmp_path / f"rank-{rank}.txt").read_text() for rank in (0, 1)}
    errors = {rank: (tmp_path / f"rank-{rank}.err").read_text() for rank in (0, 1)}
    lines = {rank: [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("[probe]")]
             for rank, text in errors.items()}
    if bug:  # a bug: its traceback on the main process, one line on the other rank, exit code 1 there
        assert outcomes == {0: "code raised KeyError", 1: "code 1"}
        assert "Traceback" in errors[0]
        assert lines[1] == ["error: round 0 failed on the main process: KeyError: 'a bug in the round' "
                            "(its traceback is on the main process)"], errors[1]
    else:  # what a user can act on: one line on every rank, exit code 2 everywhere
        assert outcomes == {0: "code 2", 1: "code 2"}
        assert lines[0] == [f"error: {ENGINE_FAILURE}"], errors[0]
        assert lines[1] == [f"error: round 0 failed on the main process: EngineError: {ENGINE_FAILURE}"], errors[1]
