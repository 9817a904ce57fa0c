"""Expert dispatch of the native Hunyuan MoE: grouped by expert vs a loop over experts.

`grouped` is what posttrain/hunyuan/modeling.py runs (HunYuanExperts: one stable sort of the
(token, choice) pairs, one contiguous slice per expert, one index_add). `loop` is the usual
reference (transformers' eager MoE): for every expert, find its (token, choice) pairs with a mask
and `where`, run them, index_add. Same experts, same routing, forward + backward, one torch thread.
Goal: grouped never slower than the loop.

    .venv/bin/python benchmarks/hunyuan_dispatch.py --dispatch grouped      # one side, for a process timer
    .venv/bin/python benchmarks/hunyuan_dispatch.py --dispatch both --rounds 4   # both, alternating, in process

Shapes default to smollm2-moe's (hidden 576, expert width 768, 4 experts, top-1) at 2,048 tokens;
`--experts 16 --top-k 2` is a wider router.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from posttrain.hunyuan.configuration import HunYuanConfig
from posttrain.hunyuan.modeling import HunYuanExperts

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes


def loop_dispatch(experts: HunYuanExperts, hidden: torch.Tensor, top_k_index: torch.Tensor,
                  top_k_weights: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(hidden)
    for e, expert in enumerate(experts):
        token_idx, choice = torch.where(top_k_index == e)
        if token_idx.numel():
            out.index_add_(0, token_idx, expert(hidden[token_idx]) * top_k_weights[token_idx, choice, None])
    return out


def setup(args):
    torch.manual_seed(0)
    config = HunYuanConfig(hidden_size=args.hidden, intermediate_size=args.width, num_hidden_layers=1,
                           num_attention_heads=1, num_experts=args.experts, moe_topk=args.top_k)
    experts = HunYuanExperts(config, 0)
    hidden = torch.randn(args.tokens, args.hidden, requires_grad=True)
    probs = torch.randn(args.tokens, args.experts).softmax(-1)
    weights, index = probs.topk(args.top_k, dim=-1)
    return experts, hidden, index, weights


def run(dispatch: str, experts, hidden, index, weights, iters: int) -> float:
    """Seconds for `iters` forward + backward passes."""
    start = time.perf_counter()
    for _ in range(iters):
        out = experts(hidden, index, weights) if dispatch == "grouped" else loop_dispatch(experts, hidden, index, weights)
        out.square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatch", choices=["grouped", "loop", "both"], default="both")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4, help="with --dispatch both: alternating rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = setup(args)
    with torch.no_grad():  # the two dispatches compute the same thing
        torch.testing.assert_close(parts[0](*parts[1:]), loop_dispatch(*parts), atol=1e-5, rtol=1e-5)
    order = ["grouped", "loop"] if args.dispatch == "both" else [args.dispatch]
    seconds: dict[str, list[float]] = {d: [] for d in order}
    run(order[0], *parts, 1)  # warm-up
    for r in range(args.rounds if args.dispatch == "both" else 1):
        for d in (order if r % 2 == 0 else order[::-1]):
            seconds[d].append(run(d, *parts, args.iters))
    result = {d: {"tokens_per_s": round(args.tokens * args.iters / statistics.median(s))} for d, s in seconds.items()}
    if args.dispatch == "both":
        result["grouped_over_loop_tokens_per_s"] = round(
            statistics.median(l / g for g, l in zip(seconds["grouped"], seconds["loop"])), 3)
    print(json.dumps({"shape": vars(args), **result}))


if __name__ == "__main__":
    main()
