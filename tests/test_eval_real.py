"""The eval on the real embedded model (SmolLM2-135M-Instruct): in process through transformers, and
the done-when command through a managed vLLM server that must be gone afterwards. Tiny: 2 items per
set, short answers; the figures are not checked (a 135M model's answers), only that every part of
the real path produced them."""
from __future__ import annotations

import json

import pytest

from pipelines import eval as eval_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHORT = ["--answers.math_max_tokens", "48", "--answers.open_max_tokens", "48", "--pairwise.max_tokens", "16"]


def check_outputs(out, limit: int) -> dict:
    results = json.loads((out / "results.json").read_text())
    math_figure = results["tasks"]["math"]["model"]
    assert math_figure["n"] == limit and 0 <= math_figure["value"] <= 1
    judge = results["tasks"]["judge"]
    assert judge["verdicts"]["judged"] == 2 * limit  # both orders of every pair, readable or not
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    judged = [r for r in rows if r["task"] == "judge"]
    assert len(judged) == limit and all(r["answer_model"] and r["reply_ab"] and r["reply_ba"] for r in judged)
    assert all((out / p).stat().st_size > 5000 for p in ("accuracy.png", "judge.png", "lengths.png"))
    return results


def test_tiny_eval_of_the_embedded_model_in_process(tmp_path, capsys):
    out = tmp_path / "eval"
    code = eval_cli.main(["--model", "smollm2-135m", "--baseline", "smollm2-135m", "--judge", "smollm2-135m",
                          "--tasks", "math,judge", "--limit", "2", "--backend", "transformers", "--no_cache",
                          "--output", str(out), *SHORT])
    assert code == 0
    check_outputs(out, 2)
    assert capsys.readouterr().out.startswith("eval smollm2-135m vs smollm2-135m: math ")


@pytest.mark.vllm
@pytest.mark.usefixtures("no_vllm_left_behind")
def test_done_when_command_on_a_vllm_server_leaves_no_server(tmp_path, capsys):
    out = tmp_path / "eval"
    code = eval_cli.main(["--model", "smollm2-135m", "--baseline", "smollm2-135m", "--judge", "smollm2-135m",
                          "--tasks", "math,judge", "--limit", "2", "--no_cache", "--output", str(out), *SHORT])
    assert code == 0
    results = check_outputs(out, 2)
    assert results["tasks"]["judge"]["win_rate"]["value"] in (0.5, None)  # A/A: identical answers
    assert "judge win rate" in capsys.readouterr().out
