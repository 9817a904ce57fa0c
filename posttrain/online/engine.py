"""One live vLLM engine per DPO run: started once, the policy's new weights synced into it.

    engine = PolicyEngine(cfg.online.vllm, source_dir, step=0)   # launches in the background
    engine.sync(PolicyWeights(policy), step)   # after a round's optimizer steps: load the new policy
    answers = engine.generate(requests)
    engine.stop()                        # at the end, on errors and on Ctrl-C (train()'s finally)

The server is our managed vLLM server (datagen/inference/vllm_server.py) with two additions: the
worker extension `posttrain.online.vllm_worker.WeightSync` and vLLM's development endpoints
(`VLLM_SERVER_DEV_MODE=1`: `/collective_rpc`, `/reset_prefix_cache`), bound to 127.0.0.1 as always.

A sync sends the policy in checkpoint format (posttrain/online/weights.py): on CPU `save_pretrained`
into /dev/shm (memory, not disk) and every worker loads that directory through vLLM's own reload
path; with CUDA an NCCL broadcast (the same code runs over gloo in the CPU tests: only the wire is
untested here). Names and shapes are checked against the served checkpoint first; then the prefix
cache is emptied (KV cached under the old weights must not be reused).

When a sync or a sampling call fails (engine died, tensor names or shapes refused, timeout), the
engine is restarted once, from the last complete checkpoint (`restart_source()`), the current
weights are pushed into it again, and the log says so; a second failure raises `EngineError`
(one line, exit 2). The engine never answers from weights older than the last `sync`: every
failure path either ends in a successful push of the current weights or stops the run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Callable, Sequence

from datagen.inference.base import Completion, InferenceError, Request
from datagen.inference.managed import server_args, server_env
from datagen.inference.registry import ModelConfig
from datagen.inference.vllm_server import VLLMServer
from posttrain.checkpoints import tensor_shapes
from posttrain.online.weights import PolicyWeights

log = logging.getLogger("posttrain.dpo")

WORKER_EXTENSION = "posttrain.online.vllm_worker.WeightSync"
SERVED_NAME = "policy"


class EngineError(InferenceError):
    """The sampling engine could not be brought to the current policy weights."""


@dataclasses.dataclass
class EngineStats:
    starts: int = 0
    syncs: int = 0
    restarts: int = 0
    sync_seconds: float = 0.0


class PolicyEngine:
    """A vLLM server on the policy, kept alive across rounds; see the module docstring."""

    def __init__(self, cfg: ModelConfig, source_dir: str, step: int, tokenizer_dir: str = "",
                 sync_timeout: float = 600.0, restart_source: Callable[[], tuple[str, int]] | None = None,
                 transport: str = "auto") -> None:
        self.cfg = cfg
        self.transport_name = transport
        self.tokenizer_dir = tokenizer_dir
        self.sync_timeout = sync_timeout
        self.restart_source = restart_source or (lambda: (source_dir, step))
        self.stats = EngineStats()
        self.server: VLLMServer | None = None
        self.client = None
        self.weights_step: int | None = None  # the policy step the engine's weights come from
        self.served_tensors = tensor_shapes(source_dir)  # name -> shape the engine was built for
        self.transport = None
        self._weights: PolicyWeights | None = None  # the current policy, pushed again after a restart
        self._weights_step: int | None = None
        self._on_stop: list[Callable[[], None]] = []
        self._launch(source_dir, step)

    # ------------------------------------------------------------------ lifecycle

    def _launch(self, source_dir: str, step: int) -> None:
        args = server_args(self.cfg) + ["--worker-extension-cls", WORKER_EXTENSION]
        if self.tokenizer_dir:
            args += ["--tokenizer", self.tokenizer_dir]
        env = {**server_env(self.cfg), "VLLM_SERVER_DEV_MODE": "1"}
        self.server = VLLMServer(source_dir, SERVED_NAME, args, env=env, start_timeout=self.cfg.start_timeout)
        self.server.launch()  # returns at once: the cold start overlaps with loading the trainer
        self.stats.starts += 1
        self.weights_step = step
        log.info("vLLM engine starting on %s (policy step %d)", source_dir, step)

    def ready(self) -> None:
        """Wait until the server answers (the first round waits here for the cold start)."""
        if self.client is not None:
            return
        from datagen.inference.openai_client import OpenAIEndpointLLM

        self.server.wait_ready()
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per sampled request
        # no `recover`: a restart on the client's own would serve the checkpoint's (stale) weights
        self.transport = make_transport(self.transport_name, self._rpc, self._check_tensors)
        self.client = OpenAIEndpointLLM(self.server.base_url, SERVED_NAME, identity="vllm:policy",
                                        max_concurrency=self.cfg.max_concurrency,
                                        request_timeout=self.cfg.request_timeout,
                                        max_attempts=self.cfg.max_attempts, backoff_seconds=self.cfg.backoff_seconds)

    def on_stop(self, action: Callable[[], None]) -> None:
        """Run `action` when the engine stops for good (e.g. remove the snapshot it started from)."""
        self._on_stop.append(action)

    def stop(self) -> None:
        self._stop_server()
        for action in self._on_stop:
            action()

    def _stop_server(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        client, self.client = self.client, None
        if client is not None:
            client.close()
        if self.server is not None:
            self.server.stop()

    # ------------------------------------------------------------------ weights

    def sync(self, weights: PolicyWeights, step: int) -> None:
        """Load the policy of `step` into the engine (a no-op when it already holds it)."""
        self._weights, self._weights_step = weights, step
        try:
            self.ready()
            if self.weights_step == step:
                return
            self._push(weights, step)
        except (InferenceError, OSError, TimeoutError) as err:
            self._restart(f"weight sync for step {step} failed: {err}")

    def _push(self, weights: PolicyWeights, step: int) -> None:
        start = time.perf_counter()
        self.weights_step = None  # from here until success the engine's weights are unknown
        self.transport.push(weights)
        self._post("/reset_prefix_cache", {})
        self.weights_step = step
        self.stats.syncs += 1
        self.stats.sync_seconds += time.perf_counter() - start

    def _check_tensors(self, pushed: dict) -> None:
        check_same_tensors(self.served_tensors, pushed)

    def _restart(self, reason: str) -> None:
        """Once: a fresh engine from the last checkpoint, then the current weights pushed into it."""
        source, step = self.restart_source()
        log.warning("%s -> restarting the vLLM engine from %s (once)", reason, source)
        self._stop_server()
        self.stats.restarts += 1
        try:
            self._launch(source, step)
            self.ready()
            if self._weights is not None and self._weights_step != step:
                self._push(self._weights, self._weights_step)
        except (InferenceError, OSError, TimeoutError) as err:
            self._stop_server()
            raise EngineError(f"the vLLM sampling engine failed again after a restart ({first_line(err)}); "
                              f"first failure: {first_line(reason)}. Server log: {self.server.log_path}") from None

    # ------------------------------------------------------------------ sampling

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Completions from the current weights; a dead engine is restarted once and asked again."""
        self.ready()
        completions = self.client.generate(list(requests))
        if all(c.ok for c in completions) or self.server.healthy():
            return completions  # single failed requests are the caller's to count
        self._restart("the vLLM engine died while sampling")
        return self.client.generate(list(requests))

    # ------------------------------------------------------------------ HTTP

    def _rpc(self, method: str, args: list[str]) -> list:
        body = {"method": method, "args": args, "timeout": self.sync_timeout}
        return json.loads(self._post("/collective_rpc", body) or "{}").get("results", [])

    def _post(self, path: str, body: dict) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.server.port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.sync_timeout) as response:
                return response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", errors="replace")[-400:]
            raise InferenceError(f"POST {path} answered {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            raise InferenceError(f"POST {path} failed: {err}") from None


def make_transport(name: str, rpc, check):
    """shm (files in /dev/shm), nccl (a broadcast on GPUs), or gloo (the nccl path's code over gloo, on
    CPU: for checking that path where there is no GPU); auto = nccl when CUDA is there."""
    from posttrain.online.weights import BroadcastTransport, SharedMemoryTransport

    if name == "auto":
        import torch

        name = "nccl" if torch.cuda.is_available() else "shm"
    if name == "nccl":
        return BroadcastTransport(rpc, check)
    if name == "gloo":
        return BroadcastTransport(rpc, check, device="cpu", backend="gloo")
    return SharedMemoryTransport(rpc, check)


def check_same_tensors(served: dict, pushed: dict) -> None:
    """The pushed weights must name and shape every tensor as the served checkpoint does."""
    if not served:
        return  # served from a hub id: nothing local to compare against (the worker still checks)
    missing, extra = sorted(set(served) - set(pushed)), sorted(set(pushed) - set(served))
    reshaped = sorted(n for n in set(served) & set(pushed) if served[n] != pushed[n])
    if missing or extra or reshaped:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(extra)} unknown (e.g. {extra[0]})" if extra else "",
                 f"{len(reshaped)} of another shape (e.g. {reshaped[0]}: {pushed[reshaped[0]]} vs served "
                 f"{served[reshaped[0]]})" if reshaped else ""]
        raise InferenceError("the policy's tensors do not match the served model's: " + ", ".join(p for p in parts if p))


def first_line(value) -> str:
    text = str(value).strip() or type(value).__name__
    return text.splitlines()[0][:300]
