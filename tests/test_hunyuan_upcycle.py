"""Sparse upcycling of a dense Llama-shaped model into the native Hunyuan MoE, exact at init."""
from __future__ import annotations

import json

import pytest
import torch

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from posttrain.hunyuan.upcycle import UpcycleError, upcycle_config, upcycle_directory, upcycle_model

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes


PROMPTS = {  # English, code, Chinese
    "en": "Explain in two sentences why the sky is blue.",
    "code": "Write a Python function that returns the n-th Fibonacci number.",
    "zh": "请用一句话介绍一下长城。",
}


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=50000.0, **overrides)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("num_experts", [2, 4, 8])
def test_upcycled_tiny_llama_computes_the_dense_function(num_experts):
    dense = tiny_llama()
    moe = upcycle_model(dense, num_experts=num_experts)
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        want = dense(ids).logits
        torch.testing.assert_close(moe(ids).logits, want, atol=1e-5, rtol=1e-5)
        moe.train()  # capacity + recycle routing: copies are identical, so still exact
        torch.testing.assert_close(moe(ids).logits, want, atol=1e-5, rtol=1e-5)
    stats = moe.model.layers[0].mlp.last_routing
    assert stats.dropped == 0 and stats.recycled > 0  # the flat router sends all to one expert first
    assert int((stats.load > 0).sum()) == num_experts  # recycling spreads the batch over every expert


def test_non_llama_models_are_refused(tmp_path):
    with pytest.raises(UpcycleError, match="mlp_bias is true"):
        upcycle_config(tiny_llama(mlp_bias=True).config)
    with pytest.raises(UpcycleError, match="model_type 'hunyuan_v1_moe' is not Llama-shaped"):
        upcycle_config({"model_type": "hunyuan_v1_moe", "hidden_size": 64})
    with pytest.raises(UpcycleError, match="power of two"):
        upcycle_config(tiny_llama().config, num_experts=3)
    dense = tiny_llama()
    dense.save_pretrained(tmp_path / "dense")
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    (tmp_path / "dense" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    with pytest.raises(UpcycleError, match=r"lacks tensor model\.layers\.3\.input_layernorm\.weight"):
        upcycle_directory(tmp_path / "dense", tmp_path / "moe")


@pytest.fixture(scope="module")
def smollm2_pair():
    """SmolLM2-135M-Instruct (the embedded model) and the `smollm2-moe` alias built from it (the
    cached build, as `python -m pipelines.models prepare smollm2-moe` makes it), both in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.inference.model_names import resolve_model

    dense_dir = resolve_model("smollm2-135m")
    moe_dir = resolve_model("smollm2-moe")
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32).eval()
    moe = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32).eval()
    return dense, moe, AutoTokenizer.from_pretrained(dense_dir), AutoTokenizer.from_pretrained(moe_dir)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_upcycled_smollm2_logits_equal_the_dense_model(smollm2_pair, kind):
    dense, moe, dense_tok, moe_tok = smollm2_pair
    assert type(moe).__name__ == "HunYuanForCausalLM" and moe.config.num_experts == 4
    messages = [{"role": "user", "content": PROMPTS[kind]}]
    ids = moe_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    want = dense_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert torch.equal(ids["input_ids"], want["input_ids"])  # tokenizer and chat template carried over
    with torch.no_grad():
        diff = (moe(**ids).logits - dense(**want).logits).abs().max().item()
        assert diff < 1e-3
        greedy = moe.generate(**ids, max_new_tokens=12, do_sample=False)
        assert torch.equal(greedy, dense.generate(**want, max_new_tokens=12, do_sample=False))
