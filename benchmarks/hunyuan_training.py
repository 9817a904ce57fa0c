"""Training tokens/s: our native Hunyuan module vs transformers' `hunyuan_v1_moe`, same tiny size.

Both models get tiny-hunyuan-moe's shape (posttrain/moe/tiny_moe.py: hidden 64, 2 layers, 2 heads,
1 KV head, head_dim 32, one shared + 4 routed experts of width 128, top-1, SmolLM2's 49,152-token
vocabulary) and the same semantics where the two designs meet: QK-norm on, no CLA, dropless
routing (the native module's capacity/recycle off), the router's aux loss in the loss. Each step
is a forward + backward + AdamW update on random token ids, one torch thread. Differences left:
the native top-1 weighs by the raw softmax probability (hunyuan_v1_moe renormalises to 1) and the
experts are dispatched grouped (hunyuan_v1_moe: a mask scan per expert over fused 3-D weights).

    .venv/bin/python benchmarks/hunyuan_training.py --impl native      # one side, for a process timer
    .venv/bin/python benchmarks/hunyuan_training.py --impl both --rounds 4   # alternating, in process

`--vocab 512` shrinks the vocabulary so that the layers, not the LM head, dominate the step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from posttrain.moe.tiny_moe import TINY_MOE_SHAPE

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes

SHAPE = {**TINY_MOE_SHAPE, "moe_intermediate_size": TINY_MOE_SHAPE["intermediate_size"]}


def build(impl: str, vocab: int):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, tie_word_embeddings=True, output_router_logits=True, router_aux_loss_coef=0.01,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if impl == "native":
        from posttrain.hunyuan.configuration import HunYuanConfig
        from posttrain.hunyuan.modeling import HunYuanForCausalLM

        config = HunYuanConfig(**SHAPE, **common, use_qk_norm=True, use_mixed_mlp_moe=True, num_shared_expert=1)
        model = HunYuanForCausalLM(config)
    else:
        from transformers import HunYuanMoEV1Config, HunYuanMoEV1ForCausalLM

        from posttrain.moe.recipe import enable_router_aux_loss

        model = HunYuanMoEV1ForCausalLM(HunYuanMoEV1Config(**TINY_MOE_SHAPE, **common))
        enable_router_aux_loss(model, 0.01)  # hunyuan_v1_moe computes none itself: our trainers' hook adds it
    return model.train()


def steps(model, optimizer, batch: torch.Tensor, count: int) -> float:
    """Seconds for `count` training steps (the router's aux loss is inside `loss` for both)."""
    start = time.perf_counter()
    for _ in range(count):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["native", "hf", "both"], default="both")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--rounds", type=int, default=4, help="with --impl both: alternating rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    impls = ["native", "hf"] if args.impl == "both" else [args.impl]
    models = {i: build(i, args.vocab) for i in impls}
    optimizers = {i: torch.optim.AdamW(m.parameters(), lr=1e-3) for i, m in models.items()}
    batch = torch.randint(3, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    for i in impls:
        steps(models[i], optimizers[i], batch, 2)  # warm-up
    seconds: dict[str, list[float]] = {i: [] for i in impls}
    for r in range(args.rounds if args.impl == "both" else 1):
        for i in (impls if r % 2 == 0 else impls[::-1]):
            seconds[i].append(steps(models[i], optimizers[i], batch, args.steps))
    tokens = args.batch * args.seq * args.steps
    result = {i: {"tokens_per_s": round(tokens / statistics.median(s))} for i, s in seconds.items()}
    if args.impl == "both":
        result["native_over_hf_tokens_per_s"] = round(
            statistics.median(h / n for n, h in zip(seconds["native"], seconds["hf"])), 3)
    print(json.dumps({"shape": {**vars(args), **SHAPE}, **result}))


if __name__ == "__main__":
    main()
