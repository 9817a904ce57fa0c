"""Benchmark: SFT throughput with packing (padding-free BFD) vs padded batches.

    .venv/bin/python benchmarks/sft_packing.py [--samples 96] [--batch_size 8] [--threads 1]

Builds a chat dataset with a skewed length distribution (most answers short, a few long, as in
real SFT data), then trains the tiny hunyuan_v1_moe for one epoch over it twice with the same
trainer (posttrain/trainers/sft_trainer.py): once packed, once padded to the longest sample of each batch. Both
runs see exactly the same real tokens, so real tokens per second is comparable; the script prints
both rates, the share of computed positions that were padding, and the ratio packed / padded.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def skewed_answer_words(rng: random.Random) -> int:
    """~80% short answers (5-30 words), ~20% long ones (150-350 words)."""
    return rng.randint(150, 350) if rng.random() < 0.2 else rng.randint(5, 30)


def build_dataset(path: Path, samples: int, seed: int) -> str:
    from datasets import Dataset

    rng = random.Random(seed)
    words = "the model routes each token to one expert while a shared expert sees every token".split()
    rows = []
    for i in range(samples):
        answer = " ".join(rng.choice(words) for _ in range(skewed_answer_words(rng)))
        rows.append({"messages": [{"role": "user", "content": f"Explain routing, case {i}."},
                                  {"role": "assistant", "content": answer}]})
    Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def run(mode_packed: bool, dataset: str, out: Path, tokenizer, batch_size: int, max_length: int) -> dict:
    from posttrain.moe.recipe import MoEConfig
    from posttrain.trainers.sft_config import SFTRunConfig
    from posttrain.trainers.sft_data import DataConfig
    from posttrain.trainers.sft_trainer import build_trainer
    from posttrain.moe.tiny_moe import build_tiny_moe_model

    cfg = SFTRunConfig(output_dir=str(out), dataset=dataset, num_train_epochs=1, max_steps=-1,
                       learning_rate=1e-4, min_learning_rate=1e-5, per_device_train_batch_size=batch_size,
                       max_length=max_length, packing=mode_packed, logging_steps=1000, eval_steps=0,
                       save_steps=10**6, report_to="none", data=DataConfig(eval_fraction=0.0),
                       moe=MoEConfig(router_aux_loss_coef=0.01))
    trainer, report = build_trainer(cfg, model=build_tiny_moe_model(tokenizer), tokenizer=tokenizer)
    real_tokens, computed = count_positions(trainer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"mode": "packed" if mode_packed else "padded", "steps": trainer.state.global_step,
            "real_tokens": real_tokens, "computed_positions": computed, "seconds": seconds,
            "tokens_per_s": real_tokens / seconds}


def count_positions(trainer) -> tuple[int, int]:
    """(real tokens, positions the model computes) over one epoch of the trainer's batches."""
    real = computed = 0
    for batch in trainer.get_train_dataloader():
        ids = batch["input_ids"]
        computed += ids.numel()
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
    return real, computed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=8, help="samples per padded batch")
    parser.add_argument("--packed_batch_size", type=int, default=2, help="packed sequences per packed batch")
    parser.add_argument("--max_length", type=int, default=1024, help="packed sequence length (>= longest sample)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from datagen.inference.model_names import resolve_model

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-hunyuan-moe"))
    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_dataset(Path(tmp) / "data", args.samples, args.seed)
        results = [run(packed, dataset, Path(tmp) / f"out-{packed}", tokenizer,
                       args.packed_batch_size if packed else args.batch_size, args.max_length)
                   for packed in (False, True)]
    print(f"\n{'mode':<8}{'steps':>7}{'real tok':>10}{'computed':>10}{'padding':>9}{'seconds':>9}{'tok/s':>9}")
    for r in results:
        padding = 1 - r["real_tokens"] / r["computed_positions"]
        print(f"{r['mode']:<8}{r['steps']:>7}{r['real_tokens']:>10}{r['computed_positions']:>10}"
              f"{padding:>8.0%}{r['seconds']:>9.1f}{r['tokens_per_s']:>9.0f}")
    padded, packed = results
    print(f"\npacked / padded throughput: {packed['tokens_per_s'] / padded['tokens_per_s']:.2f}x "
          f"({args.samples} samples, skewed lengths, tiny hunyuan_v1_moe, {args.threads} thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
