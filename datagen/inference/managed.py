"""The managed vLLM backend: our own server plus the OpenAI client, restarted on faults."""
from __future__ import annotations

import logging

from datagen.inference.base import InferenceError
from datagen.inference.openai_client import OpenAIEndpointLLM
from datagen.inference.vllm_server import VLLMServer

log = logging.getLogger(__name__)


def on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


def server_env(cfg) -> dict[str, str]:
    return {"VLLM_CPU_KVCACHE_SPACE": str(int(max(1, cfg.kv_cache_gib))),
            **{str(k): str(v) for k, v in cfg.server_env.items()}}


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def server_dtype(cfg) -> str:
    """bf16 weights on a CPU without native bf16 run through slow conversions: use float32 there."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "float32" if on_cpu() and not cpu_has_bf16() else "auto"


def server_args(cfg) -> list[str]:
    args = ["--max-model-len", str(cfg.max_model_len), "--dtype", server_dtype(cfg)]
    eager = on_cpu() if cfg.enforce_eager is None else cfg.enforce_eager
    if eager:
        args.append("--enforce-eager")
    if not cfg.chunked_prefill:
        args.append("--no-enable-chunked-prefill")
    if cfg.trust_remote_code:
        args.append("--trust-remote-code")

    return args + list(cfg.extra_server_args)


class ManagedVLLM(OpenAIEndpointLLM):
    def __init__(self, cfg, model_path: str) -> None:
        self.server = VLLMServer(model_path, cfg.name, server_args(cfg), env=server_env(cfg),
                                 start_timeout=cfg.start_timeout)
        self.max_restarts = cfg.max_restarts
        self.server.start()
        super().__init__(
            # dtype changes the samples, so it is part of the identity (and of cache keys)
            self.server.base_url, cfg.name, identity=f"vllm:{cfg.name}:{server_dtype(cfg)}",
            max_concurrency=cfg.max_concurrency, request_timeout=cfg.request_timeout,
            max_attempts=cfg.max_attempts, backoff_seconds=cfg.backoff_seconds, recover=self._recover)

    def _recover(self, err: BaseException) -> None:
        """Called between retries: bring a dead or failed server back, within a restart budget."""
        if self.server.healthy():
            return
        if self.server.restarts >= self.max_restarts:
            log.error("vLLM server for %s failed %d times; giving up on restarts",
                      self.server.served_name, self.server.restarts)
            return
        try:
            self.server.restart()
        except InferenceError as restart_err:
            log.error("%s", restart_err)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.server.stop()
