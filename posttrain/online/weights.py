"""The policy's weights as the sampling engine wants them: in checkpoint format (the names and
layout `save_pretrained` writes, which vLLM's loaders read), by one of two transports.

- `SharedMemoryTransport` (CPU, the default without CUDA): `save_pretrained` into /dev/shm, then
  the worker extension loads that directory (posttrain/online/vllm_worker.py).
- `NcclTransport` (GPUs): the trainer's main process and the engine's workers form one NCCL group
  (vLLM's `StatelessProcessGroup` + `PyNcclCommunicator`, the shape of TRL's weight sync); every
  tensor is broadcast from the trainer in the order announced to the workers. Written against
  vLLM 0.32's API and **untested** here (no GPU on this machine).
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


class NcclTransport:
    """Untested (no GPU here): see the module docstring."""

    def __init__(self, rpc, check, device: str = "cuda:0") -> None:
        self.rpc, self.check, self.device = rpc, check, device
        self.communicator = None

    def open(self) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        workers = len(self.rpc("synthpost_ping", []))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        joined = self._in_background(self.rpc, "synthpost_init_broadcast", ["127.0.0.1", str(port), str(1 + workers)])
        group = StatelessProcessGroup.create(host="127.0.0.1", port=port, rank=0, world_size=1 + workers)
        self.communicator = PyNcclCommunicator(group, device=self.device)
        joined()

    def push(self, weights: PolicyWeights) -> None:
        import torch

        if self.communicator is None:
            self.open()
        tensors = list(weights.tensors())
        self.check({name: tuple(t.shape) for name, t in tensors})
        meta = json.dumps([[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors])
        received = self._in_background(self.rpc, "synthpost_receive_broadcast", [meta])
        for _, tensor in tensors:
            self.communicator.broadcast(tensor.to(self.device, non_blocking=True), src=0, stream=torch.cuda.current_stream())
            self.communicator.group.barrier()
        received()

    def close(self) -> None:
        self.communicator = None

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
