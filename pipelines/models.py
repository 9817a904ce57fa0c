r"""`python -m pipelines.models` — build, check, upcycle and serve models.

    python -m pipelines.models prepare [ALIAS ...]      build aliases into the cache (default smollm2-135m)
    python -m pipelines.models list                     the aliases and where they live
    python -m pipelines.models check ALIAS|DIR          read the config and check every tensor's name and shape
    python -m pipelines.models upcycle SRC DEST [--experts N] [--shared-fraction F]
                                                        a dense Llama-shaped HF directory -> native Hunyuan MoE
    python -m pipelines.models serve ALIAS|DIR [--port P] [--kv-cache-gib G] [--max-model-len N]
        [--dtype D] [--served-name NAME] [-- MORE VLLM ARGS]
                                                        the managed vLLM server in the foreground

`serve` starts the same server the pipeline manages (datagen/inference: same flags and
environment), prints its base URL when it is ready and runs until Ctrl-C or SIGTERM, then stops
the API server, engine and workers (no process left). A native Hunyuan model (`model_type:
hunyuan`) needs our vLLM plugin entry point (`bash scripts/setup.sh` installs it).
`main()` registers posttrain's aliases (tiny-hunyuan-moe, smollm2-moe) next to datagen's
embedded smollm2-135m. A bad model or argument is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

from datagen.inference.base import InferenceError
from datagen.inference.model_names import EMBEDDED_ALIAS, alias_dir, is_built, known_aliases, prepare, resolve_model
from posttrain.cli import USER_ERRORS
from posttrain.model_registry import register_models
from posttrain.hunyuan.configuration import HunyuanError

PLUGIN_MODULE = "posttrain.hunyuan.vllm_plugin"


class Stop(Exception):
    """SIGTERM, raised in the main thread so that the server is stopped on the way out."""


def main(argv: list[str] | None = None) -> int:
    register_models()  # posttrain's aliases (tiny-hunyuan-moe, smollm2-moe) for `models:`
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # everything after -- goes to vLLM as it is
    args = build_parser().parse_args(argv[:cut])
    args.extra = argv[cut + 1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except (*USER_ERRORS, HunyuanError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert/build model aliases into the cache (idempotent)")
    prep.add_argument("aliases", nargs="*", default=[EMBEDDED_ALIAS])
    prep.set_defaults(run=run_prepare)
    sub.add_parser("list", help="list the model aliases").set_defaults(run=run_list)
    check = sub.add_parser("check", help="check a model's config and tensors without loading the weights")
    check.add_argument("model", help="alias, HF directory or hub id")
    check.set_defaults(run=run_check)
    up = sub.add_parser("upcycle", help="dense Llama-shaped HF directory -> native Hunyuan MoE computing the same "
                                        "function (posttrain/hunyuan/upcycle.py)")
    up.add_argument("source", help="alias or HF directory of a dense Llama-architecture model")
    up.add_argument("dest", help="output directory")
    up.add_argument("--experts", type=int, default=4, help="routed experts per layer, a power of two (default 4)")
    up.add_argument("--shared-fraction", type=float, default=0.5,
                    help="share of each MLP's neurons that becomes the shared expert (default 0.5)")
    up.set_defaults(run=run_upcycle)
    serve = sub.add_parser("serve", help="run the managed vLLM server for a model in the foreground",
                           epilog="Arguments after -- go to the vLLM server as they are.")
    serve.add_argument("model", help="alias (python -m pipelines.models list), HF directory or hub id")
    serve.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    serve.add_argument("--served-name", default="", help="model name in requests (default: MODEL as given)")
    serve.add_argument("--kv-cache-gib", type=float, default=2.0, help="CPU KV cache in GiB (default 2)")
    serve.add_argument("--max-model-len", type=int, default=0, help="prompt + answer tokens; 0 = the model's own")
    serve.add_argument("--dtype", default="auto", help="auto: float32 on CPUs without bf16, else bfloat16")
    serve.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for the server")
    serve.set_defaults(run=run_serve)
    return parser


def run_prepare(args) -> int:
    for alias in args.aliases:
        print(f"[models] {alias}: {prepare(alias)}")
    return 0


def run_list(args) -> int:
    for alias in known_aliases():
        state = "built" if is_built(alias) else "built on first use"
        print(f"{alias}\t{alias_dir(alias)}\t{state}")
    return 0


def run_check(args) -> int:
    path = resolve_model(args.model)
    print(f"[models] {args.model}: {check_model(args.model, path)}")
    return 0


def run_upcycle(args) -> int:
    from posttrain.hunyuan.upcycle import upcycle_directory

    dest = upcycle_directory(resolve_model(args.source), args.dest, args.experts, args.shared_fraction)
    print(f"[models] {args.source} upcycled into {args.experts} routed experts + 1 shared: {dest}")
    return 0


def check_model(name: str, path: str) -> str:
    """One line on what `path` holds; a HunyuanError / ModelLoadError naming what is wrong."""
    from posttrain.model_loading import ModelSpec, load_model_config

    if model_type(path) == "hunyuan":
        from posttrain.hunyuan.checkpoint_check import check_checkpoint

        config = check_checkpoint(path)
        return (f"hunyuan, {config.num_hidden_layers} layers, {config.num_experts} routed experts (top-"
                f"{config.moe_topk}), CLA {'x' + str(config.cla_share_factor) if config.use_cla else 'off'}: "
                "config and tensors match")
    config = load_model_config(ModelSpec(name=name))
    return f"{config.model_type}: config reads (tensors are checked when the model loads)"


def model_type(path: str) -> str | None:
    config = Path(path) / "config.json"
    if not config.is_file():
        return None  # a hub id: its config is read by the loaders
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as err:
        raise InferenceError(f"cannot read {config}: {err}") from None


def plugin_installed() -> bool:
    return any(e.value.startswith(PLUGIN_MODULE) for e in entry_points(group="vllm.general_plugins"))


def run_serve(args) -> int:
    from datagen.inference.managed import server_args, server_env
    from datagen.inference.registry import ModelConfig
    from datagen.inference.vllm_server import VLLMServer

    path = resolve_model(args.model)
    if model_type(path) == "hunyuan" and not plugin_installed():
        raise InferenceError(f"{args.model} is a native Hunyuan model, but the vLLM plugin entry point "
                             f"({PLUGIN_MODULE}) is not installed in this environment: run scripts/setup.sh")
    print(f"[models] {args.model}: {check_model(args.model, path)}", flush=True)
    cfg = ModelConfig(backend="vllm", model=args.model, served_name=args.served_name, kv_cache_gib=args.kv_cache_gib,
                      max_model_len=args.max_model_len, dtype=args.dtype, extra_server_args=args.extra,
                      start_timeout=args.start_timeout)
    server = VLLMServer(path, cfg.name, server_args(cfg), env=server_env(cfg), start_timeout=cfg.start_timeout)
    server.port = args.port or None
    return serve_until_stopped(server)


def serve_until_stopped(server) -> int:
    """Launch, say where, wait for Ctrl-C / SIGTERM (or the server dying), always stop it."""
    def on_sigterm(signum, frame):
        raise Stop()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    try:
        server.launch()
        print(f"[models] starting vLLM for {server.served_name} (log: {server.log_path}) ...", flush=True)
        server.wait_ready()
        print(f"[models] ready in {time.monotonic() - started:.0f} s: {server.base_url} "
              f"(model name {server.served_name!r}); Ctrl-C or SIGTERM stops it", flush=True)
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1.0)
        print(f"error: the vLLM server exited with code {server.proc.returncode}; last log lines:\n"
              f"{server.log_tail()}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stop):
        print("[models] stopping the server ...", flush=True)
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        print("[models] server stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
