"""The eval on real models where the answer is known, so the test can fail: a tiny random-weights MoE
(`tiny-hunyuan-moe`, never trained; its greedy answers are runs of newlines) against
SmolLM2-135M-Instruct, which gets "What is 3 + 4?" and "What is 2 + 2?" of the first five math items
right (read by hand, 2026-12: "3 + 4 = 7 ...", "The answer to this classic math problem is 4."). The
policy must come out worse than the baseline, and every figure must be the one the real answers in
items.jsonl give. In process through transformers, and the done-when command with the baseline and
judge on a managed vLLM server that must be gone afterwards. Tiny: 5 items, short answers."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from pipelines import eval as eval_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LIMIT = 5
SHORT = ["--answers.math_max_tokens", "48", "--answers.open_max_tokens", "48", "--pairwise.max_tokens", "16"]
RIGHT_BY_SMOLLM2 = {"math-0000", "math-0004"}  # 3 + 4 and 2 + 2, each answered right (by hand, see above)


def numbers(text: str) -> list[str]:
    return re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))


def check_math(out) -> dict:
    """The worse model scores below the baseline, and each figure is what the real answers give."""
    results = json.loads((out / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    math_rows = [r for r in rows if r["task"] == "math"]
    assert len(math_rows) == LIMIT
    # the answers are real: the random model's hold no number, SmolLM2's right ones state the reference
    assert all(not numbers(r["answer_model"]) and r["correct_model"] == 0.0 for r in math_rows)
    right = {r["id"] for r in math_rows if r["correct_baseline"] == 1.0}
    assert RIGHT_BY_SMOLLM2 <= right
    for r in math_rows:
        if r["id"] in right:
            assert float(r["reference"]) in [float(x) for x in numbers(r["answer_baseline"])]
    m = results["tasks"]["math"]
    k = len(right)
    assert m["model"]["value"] == 0.0 and m["model"]["n"] == LIMIT and m["model"]["low"] == 0.0
    assert m["baseline"]["value"] == pytest.approx(k / LIMIT) and m["baseline"]["low"] > 0
    assert m["model"]["high"] < m["baseline"]["high"]  # the intervals come from 0 and k right of 5
    assert m["difference"]["value"] < 0 and m["difference"]["high"] <= 0  # the direction
    assert m["difference"]["value"] == pytest.approx(-k / LIMIT)
    det = m["detectable"]
    assert (det["n"], det["model_only"], det["baseline_only"]) == (LIMIT, 0, k)
    assert det["observed"] == pytest.approx(-k / LIMIT) and det["mde"] > 0
    return results


def test_a_random_model_scores_below_smollm2_in_process(tmp_path, capsys):
    out = tmp_path / "eval"
    code = eval_cli.main(["--model", "tiny-hunyuan-moe", "--baseline", "smollm2-135m", "--tasks", "math",
                          "--limit", str(LIMIT), "--backend", "transformers", "--no_cache", "--output", str(out),
                          *SHORT])
    assert code == 0
    results = check_math(out)
    assert (out / "accuracy.png").stat().st_size > 5000
    line = capsys.readouterr().out
    k = round(results["tasks"]["math"]["baseline"]["value"] * LIMIT)
    assert line.startswith("eval tiny-hunyuan-moe vs smollm2-135m: math 0.0% [0.0, ")
    assert f"Δ {-100 * k / LIMIT:+.1f} pts" in line and "detectable ±" in line


@pytest.mark.vllm
@pytest.mark.usefixtures("no_vllm_left_behind")
def test_done_when_command_on_a_vllm_server_leaves_no_server(tmp_path, capsys):
    config = tmp_path / "eval.yaml"  # the baseline and the judge share one vLLM server; the policy is in process
    config.write_text(yaml.safe_dump({"models": {"policy": {"backend": "transformers", "model": "tiny-hunyuan-moe"},
                                                 "start": {"backend": "vllm", "model": "smollm2-135m"}}}))
    out = tmp_path / "eval"
    code = eval_cli.main(["--config", str(config), "--model", "policy", "--baseline", "start", "--judge", "start",
                          "--tasks", "math,judge", "--limit", str(LIMIT), "--no_cache", "--output", str(out), *SHORT])
    assert code == 0
    check_math(out)
    results = json.loads((out / "results.json").read_text())
    judge = results["tasks"]["judge"]
    assert judge["pairs"]["judged"] == LIMIT and judge["verdicts"]["judged"] == 2 * LIMIT
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines() if '"judge"' in line]
    assert all(r["answer_baseline"].strip() and r["reply_ab"] and r["reply_ba"] for r in rows)
    consistency, bias = judge["order_consistency"]["value"], judge["position_bias"]["value"]
    readable = consistency is not None and bias is not None
    assert judge["signal"] is (readable and consistency >= 0.6 and abs(bias) <= 0.3)
    line = capsys.readouterr().out
    if judge["signal"]:  # a judge that can judge does not prefer newlines to SmolLM2's answers
        assert judge["win_rate"]["value"] <= 0.5 and "judge win rate no signal" not in line
    else:
        assert "judge win rate no signal (" in line
    assert (out / "judge.png").stat().st_size > 5000
